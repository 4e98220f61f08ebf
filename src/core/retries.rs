//! The memory of answered state-changing requests, so that a retry gets the identical reply and
//! changes nothing.
//!
//! The window is bounded: the last [`PER_SENDER`] answered changes of each sender, for at most
//! [`SENDERS`] senders (when a new sender would exceed that, the sender seen first is
//! forgotten), and at most [`MAX_BYTES`] of requests and replies in all (beyond that the
//! sender's own oldest answers are forgotten first, then the senders seen first). A retry that
//! arrives after its answer left the window is treated as new.

use crate::core::transitions::Request;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Answers remembered per sender.
pub const PER_SENDER: usize = 10_000;
/// Senders remembered.
pub const SENDERS: usize = 1_024;
/// Bytes of requests and replies remembered in all (about: each answer counts its request's
/// and reply's JSON, its sender's name and a fixed overhead).
pub const MAX_BYTES: usize = 16 << 20;
/// What one answer costs beyond its JSON.
const OVERHEAD: usize = 96;
/// The largest body capacity a forgotten answer may have to be reused.
const REUSE_BODY_BYTES: usize = 4096;

/// The hasher of the msg_id index: keyed per process, and much cheaper than SipHash for the
/// short keys used here. Every map is bounded, so a sender that provoked collisions could slow
/// down only its own lookups, and only so far.
type Hasher = foldhash::fast::RandomState;

/// A remembered request and the answer it got.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The request as decoded.
    pub request: Request,
    /// The reply body it got, as encoded (`in_reply_to` is the request's msg_id).
    pub body: String,
    /// Whether it was carried out (not refused, not failed).
    pub accepted: bool,
    /// What it costs to remember, in bytes (see [`MAX_BYTES`]).
    weight: usize,
}

impl Answer {
    /// An answer to remember.
    pub fn new(request: Request, body: String, accepted: bool) -> Self {
        let request_bytes = json_len(&request);
        Answer::sized(request, request_bytes, body, accepted)
    }

    /// An answer to remember, its request `request_bytes` long as it arrived (cheaper than
    /// measuring it again).
    pub fn sized(request: Request, request_bytes: usize, body: String, accepted: bool) -> Self {
        let weight = request_bytes + body.len() + OVERHEAD;
        Answer {
            request,
            body,
            accepted,
            weight,
        }
    }

    /// What it costs to remember, in bytes.
    pub fn weight(&self) -> usize {
        self.weight
    }
}

/// The length of a value's JSON, counted without building it.
fn json_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The bounded memory of answers, keyed by (sender, msg_id).
///
/// Each sender's answers are kept in arrival order in a ring, from which the oldest is dropped.
/// While a sender's msg_ids in the ring are ascending (as a sender that counts them produces),
/// a lookup is a comparison with the newest one or a binary search, and nothing is hashed; once
/// they are out of order, an index from msg_id to position is kept as well, until the ring is
/// in order again. Answers are shared ([`Arc`]) with the audit trail, not copied.
#[derive(Debug, Clone, Default)]
pub struct Answered {
    /// Each sender's log, found through `by_name` (or `last`).
    logs: Vec<SenderLog>,
    by_name: HashMap<Arc<str>, usize, Hasher>,
    /// Where the sender looked up last is in `logs` (checked by name before it is used): a
    /// stream from one sender finds its log without hashing its name.
    last: usize,
    arrival: VecDeque<Arc<str>>,
    /// The weight of every answer remembered.
    bytes: usize,
    /// The last answer inserted, when the memory could not keep it.
    spare: Option<Arc<Answer>>,
    /// An answer forgotten that nothing else held: [`Answered::fresh`] builds the next one in
    /// its allocations.
    recycled: Option<Arc<Answer>>,
}

#[derive(Debug, Clone)]
struct SenderLog {
    /// The sender, shared with [`Answered::arrival`] and the audit trail.
    name: Arc<str>,
    /// How many answers are kept.
    capacity: usize,
    /// The answers in arrival order: `answers[i]` has arrival number `first + i`.
    answers: VecDeque<(u64, Arc<Answer>)>,
    /// The arrival number of `answers[0]`.
    first: u64,
    /// How many neighbours in `answers` are out of order (a msg_id below the one before it).
    descents: usize,
    /// msg_id to arrival number, kept exactly while `descents > 0`.
    index: Option<HashMap<u64, u64, Hasher>>,
}

impl SenderLog {
    fn new(name: Arc<str>, capacity: usize) -> Self {
        SenderLog {
            name,
            capacity,
            answers: VecDeque::new(),
            first: 0,
            descents: 0,
            index: None,
        }
    }

    /// Where `msg_id` is in `answers`.
    fn position(&self, msg_id: u64) -> Option<usize> {
        match &self.index {
            Some(index) => usize::try_from(*index.get(&msg_id)? - self.first).ok(),
            None => {
                // In order: the common case, a new msg_id above every remembered one, is one
                // comparison.
                let (newest, _) = self.answers.back()?;
                if msg_id > *newest {
                    return None;
                }
                let at = self.answers.partition_point(|(id, _)| *id < msg_id);
                (self.answers.get(at)?.0 == msg_id).then_some(at)
            }
        }
    }

    fn get(&self, msg_id: u64) -> Option<&Arc<Answer>> {
        Some(&self.answers.get(self.position(msg_id)?)?.1)
    }

    /// The weight of its answers and its name.
    fn weight(&self) -> usize {
        self.name.len() + self.answers.iter().map(|(_, a)| a.weight).sum::<usize>()
    }

    /// Forgets the oldest answer; returns it.
    fn pop_oldest(&mut self) -> Option<Arc<Answer>> {
        let (oldest, answer) = self.answers.pop_front()?;
        if self.answers.front().is_some_and(|(next, _)| *next < oldest) {
            self.descents -= 1;
        }
        if let Some(index) = &mut self.index {
            index.remove(&oldest);
            if self.descents == 0 {
                self.index = None;
            }
        }
        self.first += 1;
        Some(answer)
    }

    /// Remembers an answer; returns where it is in `answers`, the weight it added less what it
    /// made the log forget, and the answer it forgot or replaced.
    fn insert(&mut self, msg_id: u64, answer: Arc<Answer>) -> (usize, isize, Option<Arc<Answer>>) {
        if let Some(at) = self.position(msg_id) {
            let change = answer.weight as isize - self.answers[at].1.weight as isize;
            let replaced = std::mem::replace(&mut self.answers[at].1, answer);
            return (at, change, Some(replaced));
        }
        let mut change = answer.weight as isize;
        let mut forgot = None;
        if self.answers.len() >= self.capacity {
            forgot = self.pop_oldest();
            change -= forgot.as_ref().map_or(0, |a| a.weight) as isize;
        }
        if self
            .answers
            .back()
            .is_some_and(|(newest, _)| msg_id < *newest)
        {
            self.descents += 1;
        }
        self.answers.push_back((msg_id, answer));
        let arrival = self.first + self.answers.len() as u64 - 1;
        match (&mut self.index, self.descents) {
            (None, 0) => {}
            (Some(_), 0) => self.index = None,
            (Some(index), _) => {
                index.insert(msg_id, arrival);
            }
            (None, _) => {
                let first = self.first;
                self.index = Some(
                    self.answers
                        .iter()
                        .zip(first..)
                        .map(|((id, _), arrival)| (*id, arrival))
                        .collect(),
                );
            }
        }
        (self.answers.len() - 1, change, forgot)
    }
}

impl Answered {
    /// Where `src`'s log is in `logs`.
    #[inline]
    fn find(&self, src: &str) -> Option<usize> {
        match self.logs.get(self.last) {
            Some(log) if &*log.name == src => Some(self.last),
            _ => self.by_name.get(src).copied(),
        }
    }

    /// As [`Answered::find`], remembered for the next look-up.
    #[inline]
    fn find_again(&mut self, src: &str) -> Option<usize> {
        let at = self.find(src)?;
        self.last = at;
        Some(at)
    }

    fn log(&self, src: &str) -> Option<&SenderLog> {
        self.find(src).map(|at| &self.logs[at])
    }

    /// Forgets the sender `name` with its log; returns the log.
    fn remove(&mut self, name: &str) -> Option<SenderLog> {
        let at = self.by_name.remove(name)?;
        let log = self.logs.swap_remove(at);
        if let Some(moved) = self.logs.get(at) {
            if let Some(index) = self.by_name.get_mut(&*moved.name) {
                *index = at;
            }
        }
        Some(log)
    }

    /// The answer given to `(src, msg_id)`, if still remembered.
    pub fn get(&self, src: &str, msg_id: u64) -> Option<&Answer> {
        self.log(src)?.get(msg_id).map(|answer| &**answer)
    }

    /// Remembers an answer, forgetting the oldest when a window is full.
    pub fn insert(&mut self, src: &str, msg_id: u64, answer: Answer) {
        self.insert_shared(src, msg_id, Arc::new(answer));
    }

    /// The shared name of a sender already remembered.
    pub fn sender(&self, src: &str) -> Option<&Arc<str>> {
        self.log(src).map(|log| &log.name)
    }

    /// Every remembered answer, senders in the order they were first seen and each sender's
    /// answers in arrival order: inserting them in this order into an empty memory rebuilds it.
    pub fn entries(&self) -> impl Iterator<Item = (&Arc<str>, u64, &Arc<Answer>)> {
        self.arrival.iter().flat_map(move |src| {
            self.log(src)
                .into_iter()
                .flat_map(|log| log.answers.iter().map(move |(id, a)| (&log.name, *id, a)))
        })
    }

    /// As [`Answered::insert`], sharing the answer; returns the sender's name (shared) and the
    /// answer as remembered.
    pub fn insert_shared(
        &mut self,
        src: &str,
        msg_id: u64,
        answer: Arc<Answer>,
    ) -> (&Arc<str>, &Arc<Answer>) {
        let found = match self.find_again(src) {
            Some(found) => found,
            None => {
                if self.arrival.len() >= SENDERS {
                    if let Some(oldest) = self.arrival.pop_front() {
                        if let Some(log) = self.remove(&oldest) {
                            self.bytes = self.bytes.saturating_sub(log.weight());
                        }
                    }
                }
                let name: Arc<str> = Arc::from(src);
                self.bytes += name.len();
                self.arrival.push_back(Arc::clone(&name));
                self.by_name.insert(Arc::clone(&name), self.logs.len());
                self.logs.push(SenderLog::new(name, PER_SENDER));
                self.last = self.logs.len() - 1;
                self.last
            }
        };
        let (at, change, forgot) = self.logs[found].insert(msg_id, Arc::clone(&answer));
        self.keep_for_reuse(forgot);
        self.bytes = self.bytes.saturating_add_signed(change);
        let kept_at = at.checked_sub(self.shed(src));
        // Only a replaced answer older than the ones shed can be shed itself (it was the
        // sender's oldest): what the caller records is then the answer it gave.
        self.spare = kept_at.is_none().then_some(answer);
        let found = self
            .find_again(src)
            .expect("a sender being answered is kept");
        let log = &self.logs[found];
        match (kept_at, &self.spare) {
            (Some(at), _) => (&log.name, &log.answers[at].1),
            (None, spare) => (&log.name, spare.as_ref().expect("just kept")),
        }
    }

    /// Forgets answers until the memory is within [`MAX_BYTES`]: `src`'s own oldest first
    /// (never its newest), then whole senders, the one seen first first. Returns how many of
    /// `src`'s answers it forgot.
    fn shed(&mut self, src: &str) -> usize {
        let mut shed = 0;
        while self.bytes > MAX_BYTES {
            let found = self.find(src).expect("the sender being answered");
            let log = &mut self.logs[found];
            if log.answers.len() > 1 {
                let forgot = log.pop_oldest();
                self.bytes = self
                    .bytes
                    .saturating_sub(forgot.as_ref().map_or(0, |a| a.weight));
                self.keep_for_reuse(forgot);
                shed += 1;
                continue;
            }
            let Some(at) = self.arrival.iter().position(|s| &**s != src) else {
                return shed;
            };
            let oldest = self.arrival.remove(at).expect("found");
            if let Some(log) = self.remove(&oldest) {
                self.bytes = self.bytes.saturating_sub(log.weight());
            }
        }
        shed
    }

    /// An answer to remember: `request` (`request_bytes` long as it arrived), whether it was
    /// carried out, and the reply body `body` writes. It is built in the allocations of an
    /// answer this memory forgot when nothing else holds that one, so a steady stream of answers
    /// (the memory full, each new one making it forget its oldest) allocates nothing for them.
    pub fn fresh(
        &mut self,
        request: Request,
        request_bytes: usize,
        accepted: bool,
        body: impl FnOnce(&mut String),
    ) -> Arc<Answer> {
        if let Some(mut kept) = self.recycled.take() {
            if let Some(answer) = Arc::get_mut(&mut kept) {
                answer.body.clear();
                body(&mut answer.body);
                answer.request = request;
                answer.accepted = accepted;
                answer.weight = request_bytes + answer.body.len() + OVERHEAD;
                return kept;
            }
        }
        let mut text = String::with_capacity(128);
        body(&mut text);
        Arc::new(Answer::sized(request, request_bytes, text, accepted))
    }

    /// Keeps a forgotten answer for [`Answered::fresh`] if nothing else holds it and its body
    /// is of an ordinary size (a huge one is let go rather than kept alive unaccounted).
    fn keep_for_reuse(&mut self, forgot: Option<Arc<Answer>>) {
        if let Some(answer) = forgot {
            if Arc::strong_count(&answer) == 1 && answer.body.capacity() <= REUSE_BODY_BYTES {
                self.recycled = Some(answer);
            }
        }
    }

    /// The weight of every answer remembered, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many answers are remembered in all.
    pub fn len(&self) -> usize {
        self.logs.iter().map(|log| log.answers.len()).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }
}

/// Two memories are equal when they remember the same senders in the same order, each with the
/// same answers in the same order (how many were forgotten before does not matter).
impl PartialEq for Answered {
    fn eq(&self, other: &Self) -> bool {
        self.arrival == other.arrival
            && self
                .arrival
                .iter()
                .all(|src| match (self.log(src), other.log(src)) {
                    (Some(mine), Some(theirs)) => mine.answers == theirs.answers,
                    (None, None) => true,
                    _ => false,
                })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer::new(Request::Status {}, "x".into(), false)
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

    fn numbered(n: u64) -> Arc<Answer> {
        Arc::new(Answer::new(Request::Status {}, n.to_string(), false))
    }

    proptest::proptest! {
        /// A sender's log against the obvious model (a map plus the arrival order), for msg_ids
        /// in order, out of order and repeated, across many evictions: the same answers are
        /// remembered, the index exists exactly while the ring is out of order.
        #[test]
        fn sender_log_matches_a_map_and_a_queue(
            capacity in 1usize..8,
            ops in proptest::collection::vec((0u64..24, proptest::bool::ANY), 0..200),
        ) {
            let mut log = SenderLog::new(Arc::from("a"), capacity);
            let mut model: std::collections::HashMap<u64, u64> = Default::default();
            let mut order: VecDeque<u64> = VecDeque::new();
            for (step, (id, ascending)) in ops.into_iter().enumerate() {
                // Half the time, continue upwards from the newest msg_id, as counters do.
                let id = match (ascending, order.back()) {
                    (true, Some(&newest)) => newest + 1 + id % 3,
                    _ => id,
                };
                let n = step as u64;
                if model.insert(id, n).is_none() {
                    if order.len() >= capacity {
                        let oldest = order.pop_front().unwrap();
                        model.remove(&oldest);
                    }
                    order.push_back(id);
                }
                let (at, _, _) = log.insert(id, numbered(n));
                proptest::prop_assert_eq!(&*log.answers[at].1, &*numbered(n));
                let kept: Vec<u64> = log.answers.iter().map(|(id, _)| *id).collect();
                proptest::prop_assert_eq!(&kept, &order.iter().copied().collect::<Vec<_>>());
                for probe in 0..48 {
                    let want = model.get(&probe).map(|&n| numbered(n));
                    proptest::prop_assert_eq!(log.get(probe).cloned(), want, "msg_id {}", probe);
                }
                let sorted = kept.windows(2).all(|w| w[0] < w[1]);
                proptest::prop_assert_eq!(log.index.is_none(), sorted);
                if let Some(index) = &log.index {
                    proptest::prop_assert_eq!(index.len(), kept.len());
                }
            }
        }
    }

    #[test]
    fn equality_ignores_what_was_forgotten() {
        let mut one = Answered::default();
        let mut two = Answered::default();
        for id in 0..(PER_SENDER as u64 + 3) {
            one.insert("a", id, answer());
        }
        for id in 3..(PER_SENDER as u64 + 3) {
            two.insert("a", id, answer());
        }
        assert_eq!(one, two);
        two.insert("a", 1, answer());
        assert_ne!(one, two);
    }
}
