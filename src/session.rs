//! One node's conversation: input lines in, reply lines out. [`Session::handle_line`] is the
//! single entry point the binary, the tests and the fuzzers share. It writes at most one reply
//! line per input line and returns a diagnostic (for stderr) whenever a line gets no reply.

use crate::executor::{Executor, Simulated};
use crate::transitions::{Machine, Request};
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

/// A node: the state machine plus the node's identity on the wire.
#[derive(Debug, Clone)]
pub struct Session<E = Simulated> {
    machine: Machine<E>,
    node_id: Option<String>,
    line: u64,
}

impl Session<Simulated> {
    /// A session over the built-in example estate.
    pub fn example() -> Self {
        Session::new(Machine::example())
    }
}

impl<E: Executor> Session<E> {
    /// A session driving `machine`.
    pub fn new(machine: Machine<E>) -> Self {
        Session {
            machine,
            node_id: None,
            line: 0,
        }
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
        let answer = incoming.request.and_then(|request| {
            let new_id = match &request {
                Request::Init { node_id, .. } => Some(node_id.clone()),
                _ => None,
            };
            let reply = self.machine.handle(src, Some(msg_id), request);
            if reply.is_ok() && new_id.is_some() {
                self.node_id = new_id;
            }
            reply
        });
        let from = self
            .node_id
            .as_deref()
            .or(incoming.dest.as_deref())
            .unwrap_or(DEFAULT_NODE_ID);
        match &answer {
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
