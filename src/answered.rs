//! The memory of answered state-changing requests, so that a retry gets the identical reply and
//! changes nothing.
//!
//! The window is bounded: the last [`PER_SENDER`] answered changes of each sender, for at most
//! [`SENDERS`] senders (when a new sender would exceed that, the sender seen first is
//! forgotten). A retry that arrives after its answer left the window is treated as new.

use crate::refusal::Refusal;
use crate::transitions::{Reply, Request};
use std::collections::{HashMap, VecDeque};

/// Answers remembered per sender.
pub const PER_SENDER: usize = 10_000;
/// Senders remembered.
pub const SENDERS: usize = 1_024;

/// A remembered request and the answer it got.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The request as decoded.
    pub request: Request,
    /// What it was answered.
    pub reply: Result<Reply, Refusal>,
}

/// The bounded memory of answers, keyed by (sender, msg_id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answered {
    senders: HashMap<Box<str>, SenderLog>,
    arrival: VecDeque<Box<str>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct SenderLog {
    answers: HashMap<u64, Answer>,
    arrival: VecDeque<u64>,
}

impl Answered {
    /// The answer given to `(src, msg_id)`, if still remembered.
    pub fn get(&self, src: &str, msg_id: u64) -> Option<&Answer> {
        self.senders.get(src)?.answers.get(&msg_id)
    }

    /// Remembers an answer, forgetting the oldest when a window is full.
    pub fn insert(&mut self, src: &str, msg_id: u64, answer: Answer) {
        if !self.senders.contains_key(src) {
            if self.arrival.len() >= SENDERS {
                if let Some(oldest) = self.arrival.pop_front() {
                    self.senders.remove(&oldest);
                }
            }
            self.arrival.push_back(src.into());
            self.senders.insert(src.into(), SenderLog::default());
        }
        let log = self.senders.get_mut(src).expect("inserted above");
        if log.answers.insert(msg_id, answer).is_none() {
            if log.arrival.len() >= PER_SENDER {
                if let Some(oldest) = log.arrival.pop_front() {
                    log.answers.remove(&oldest);
                }
            }
            log.arrival.push_back(msg_id);
        }
    }

    /// How many answers are remembered in all.
    pub fn len(&self) -> usize {
        self.senders.values().map(|log| log.answers.len()).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transitions::Request;

    fn answer() -> Answer {
        Answer {
            request: Request::Status {},
            reply: Err(Refusal::Abort("x".into())),
        }
    }

    #[test]
    fn window_per_sender_is_bounded() {
        let mut answered = Answered::default();
        for id in 0..(PER_SENDER as u64 + 5) {
            answered.insert("a", id, answer());
        }
        assert_eq!(answered.len(), PER_SENDER);
        assert!(answered.get("a", 4).is_none());
        assert!(answered.get("a", 5).is_some());
        assert!(answered.get("a", PER_SENDER as u64 + 4).is_some());
    }

    #[test]
    fn senders_are_bounded() {
        let mut answered = Answered::default();
        for sender in 0..(SENDERS + 1) {
            answered.insert(&format!("s{sender}"), 1, answer());
        }
        assert_eq!(answered.len(), SENDERS);
        assert!(answered.get("s0", 1).is_none());
        assert!(answered.get(&format!("s{SENDERS}"), 1).is_some());
    }
}
