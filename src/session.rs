//! One node's conversation: input lines in, reply lines out. [`Session::handle_line`] is the
//! single entry point the binary, the tests and the fuzzers share. It writes at most one reply
//! line per input line and returns a diagnostic (for stderr) whenever a line gets no reply.

use crate::executor::{Executor, Simulated};
use crate::refusal::Refusal;
use crate::transitions::{Answering, Machine, Outcome, Reply, Request};
use crate::wire::{self, write_reply, MAX_LINE_BYTES};
use std::fmt;

/// The node id used before `init` when a message does not say whom it was addressed to.
pub const DEFAULT_NODE_ID: &str = "rollback-node";

/// Why a line got no reply, with its line number; the binary prints it on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based input line number.
    pub line: u64,
    /// What was wrong.
    pub text: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.text)
    }
}

/// A freshly answered state-changing request, handed to the [`Recorder`] before its reply is
/// written.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Its sequence number among answered changes, from 1.
    pub seq: u64,
    /// The sender.
    pub src: &'a str,
    /// The request's msg_id.
    pub msg_id: u64,
    /// The request.
    pub request: &'a Request,
    /// The answer.
    pub reply: &'a Result<Reply, Refusal>,
}

/// Where a session records its fresh answers: nowhere (`()`, the in-memory node) or a durable
/// [`Journal`](crate::journal::Journal).
pub trait Recorder {
    /// Records one answer. A failure is kept and reported by the next [`Recorder::commit`].
    fn record(&mut self, entry: Entry<'_>);

    /// Makes what was recorded durable; called before replies are written out.
    ///
    /// # Errors
    /// A failed record or commit: the replies written since the last commit must not be sent.
    fn commit(&mut self) -> Result<(), String> {
        Ok(())
    }
}

impl Recorder for () {
    fn record(&mut self, _entry: Entry<'_>) {}
}

/// A node: the state machine plus the node's identity on the wire and its recorder.
#[derive(Debug, Clone)]
pub struct Session<E = Simulated, R = ()> {
    machine: Machine<E>,
    node_id: Option<String>,
    line: u64,
    recorder: R,
}

impl Session<Simulated> {
    /// A session over the built-in example estate.
    pub fn example() -> Self {
        Session::new(Machine::example())
    }
}

impl<E: Executor> Session<E> {
    /// An in-memory session driving `machine`.
    pub fn new(machine: Machine<E>) -> Self {
        Session::with_recorder(machine, ())
    }
}

impl<E: Executor, R: Recorder> Session<E, R> {
    /// A session driving `machine` that records every fresh answer with `recorder`.
    pub fn with_recorder(machine: Machine<E>, recorder: R) -> Self {
        Session {
            machine,
            node_id: None,
            line: 0,
            recorder,
        }
    }

    /// The recorder, to commit what it recorded.
    pub fn recorder_mut(&mut self) -> &mut R {
        &mut self.recorder
    }

    /// The state machine.
    pub fn machine(&self) -> &Machine<E> {
        &self.machine
    }

    /// The id given by `init`, if any.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// Handles one input line (without `\n`; a trailing `\r` is ignored). Appends at most one
    /// reply line to `out`. Blank lines are skipped silently.
    pub fn handle_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Option<Diagnostic> {
        self.line += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        if line.len() > MAX_LINE_BYTES {
            return Some(self.too_long_now(line.len()));
        }
        let text = match std::str::from_utf8(line) {
            Ok(text) => text,
            Err(e) => {
                return self.diagnostic(format!(
                    "not UTF-8 (invalid byte at offset {}); skipped",
                    e.valid_up_to()
                ))
            }
        };
        let incoming = match wire::decode(text) {
            Ok(incoming) => incoming,
            Err(problem) => return self.diagnostic(format!("{problem}; skipped")),
        };
        let (Some(src), Some(msg_id)) = (incoming.src.as_deref(), incoming.msg_id) else {
            let why = match incoming.request {
                Err(refusal) => refusal.text().to_owned(),
                Ok(request) if request.changes_state() => format!(
                    "{} has no msg_id, so a retry could not be told apart; refused, nothing changed",
                    request.type_name()
                ),
                Ok(request) => format!(
                    "{} has no msg_id, so there is nothing to reply to; add \"msg_id\": N",
                    request.type_name()
                ),
            };
            return self.diagnostic(why);
        };
        let outcome = match incoming.request {
            Err(refusal) => Outcome::Computed(Err(refusal)),
            Ok(request) => {
                let new_id = match &request {
                    Request::Init { node_id, .. } => Some(node_id.clone()),
                    _ => None,
                };
                let (outcome, answering) = self.machine.handle_shared(src, Some(msg_id), request);
                if let (Answering::Fresh(seq), Outcome::Remembered(answer)) = (answering, &outcome)
                {
                    self.recorder.record(Entry {
                        seq,
                        src,
                        msg_id,
                        request: &answer.request,
                        reply: &answer.reply,
                    });
                }
                if outcome.reply().is_ok() && new_id.is_some() {
                    self.node_id = new_id;
                }
                outcome
            }
        };
        let from = self
            .node_id
            .as_deref()
            .or(incoming.dest.as_deref())
            .unwrap_or(DEFAULT_NODE_ID);
        match outcome.reply() {
            Ok(reply) => write_reply(out, from, src, Some(msg_id), reply),
            Err(refusal) => write_reply(out, from, src, Some(msg_id), refusal),
        }
        None
    }

    /// Records a line that the reader dropped for being longer than [`MAX_LINE_BYTES`].
    pub fn too_long(&mut self, bytes: usize) -> Diagnostic {
        self.line += 1;
        self.too_long_now(bytes)
    }

    fn too_long_now(&self, bytes: usize) -> Diagnostic {
        Diagnostic {
            line: self.line,
            text: format!(
                "{bytes} bytes is over the {MAX_LINE_BYTES}-byte line limit; skipped without reading"
            ),
        }
    }

    fn diagnostic(&self, text: String) -> Option<Diagnostic> {
        Some(Diagnostic {
            line: self.line,
            text,
        })
    }
}
