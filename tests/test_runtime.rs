//! The concurrent runtime in process: a lane whose executor panics still answers (13) and the
//! node still finishes at the end of input; a slow lane does not hold up a fast one.

use rollback_node::core::effects::LayerKind;
use rollback_node::core::effects::{Completion, Effect, Found};
use rollback_node::exec::simulated::Simulated;
use rollback_node::exec::{Executor, Executors, LaneExecutor, Report};
use rollback_node::store::MemoryStore;
use rollback_node::{Estate, Machine, Session, State};
use std::collections::VecDeque;
use std::io::{self, Cursor, Read, Write};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

/// How long a test waits for something that should happen at once before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// A schema executor that panics, or one that holds its operation until told to finish.
enum Odd {
    Panics,
    /// Says it started on `started`, then completes only once `finish` says so.
    Holds {
        started: Sender<()>,
        finish: Receiver<()>,
    },
}

impl Executor for Odd {
    fn perform(&mut self, _effects: &[Effect], _report: Report<'_>) -> Completion {
        match self {
            Odd::Holds { started, finish } => {
                started.send(()).expect("the input waits for the start");
                finish.recv_timeout(PATIENCE).unwrap_or_else(|e| {
                    panic!("the held operation was never released within {PATIENCE:?}: {e}")
                });
                Completion::Done(Default::default())
            }
            Odd::Panics => panic!("the database driver fell over"),
        }
    }

    fn observe(&mut self, believed: &State) -> Found {
        Found {
            schema_version: Some(believed.schema_version),
            ..Found::default()
        }
    }
}

/// An output the test reads after serving (the runtime may write from another thread).
struct Shared<W>(std::sync::Arc<std::sync::Mutex<W>>);

impl<W: Write> Write for Shared<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap().flush()
    }
}

/// Serves `input` with `schema` as the schema lane's executor, writing to `output`.
fn serve_to<W: Write + Send + 'static>(
    schema: Odd,
    input: impl Read + Send + 'static,
    output: W,
) -> W {
    let output = std::sync::Arc::new(std::sync::Mutex::new(output));
    let estate = Estate::example();
    let simulated = Simulated::new(estate.costs.clone(), &estate.state, 0.0);
    let executors = Executors::new(
        LaneExecutor::new(vec![
            (LayerKind::Schema, Box::new(schema)),
            (LayerKind::Backups, simulated.of(LayerKind::Backups)),
        ]),
        LaneExecutor::new(vec![(LayerKind::Traffic, simulated.of(LayerKind::Traffic))]),
        LaneExecutor::new(vec![(LayerKind::Flags, simulated.of(LayerKind::Flags))]),
    );
    let session = Session::new(Machine::new(estate.state), executors, MemoryStore::new());
    rollback_node::runtime::serve(
        session,
        input,
        Shared(std::sync::Arc::clone(&output)),
        std::io::sink(),
    )
    .expect("serving ends cleanly");
    std::sync::Arc::into_inner(output)
        .expect("the runtime keeps no output")
        .into_inner()
        .unwrap()
}

/// The reply bodies in `output`, in the order they were written.
fn bodies(output: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8(output.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["body"].clone())
        .collect()
}

fn serve(schema: Odd, input: &str) -> Vec<serde_json::Value> {
    let output = serve_to(schema, Cursor::new(input.as_bytes().to_vec()), Vec::new());
    bodies(&output)
}

const ROLLBACK: &str =
    r#"{"src":"a","dest":"n1","body":{"type":"rollback","msg_id":1,"version":3}}"#;
const DISABLE: &str = r#"{"src":"a","dest":"n1","body":{"type":"disable_feature","msg_id":2,"feature":"new_checkout"}}"#;

#[test]
fn a_panicking_executor_fails_its_operation_and_the_node_finishes() {
    let replies = serve(Odd::Panics, &format!("{ROLLBACK}\n{DISABLE}\n"));
    assert_eq!(replies.len(), 2, "{replies:?}");
    let rollback = replies.iter().find(|r| r["in_reply_to"] == 1).unwrap();
    assert_eq!(rollback["code"], 13, "{rollback}");
    assert!(rollback["text"]
        .as_str()
        .unwrap()
        .contains("the database driver fell over"));
}

/// Input given in pieces: the first at once, each later one only when `next` says so.
struct Staged {
    now: Vec<u8>,
    later: VecDeque<Vec<u8>>,
    next: Receiver<()>,
}

impl Read for Staged {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.now.is_empty() {
            let Some(piece) = self.later.pop_front() else {
                return Ok(0);
            };
            self.next.recv_timeout(PATIENCE).map_err(|e| {
                io::Error::other(format!(
                    "the rollback did not start within {PATIENCE:?}: {e}"
                ))
            })?;
            self.now = piece;
        }
        let n = buf.len().min(self.now.len());
        buf[..n].copy_from_slice(&self.now[..n]);
        self.now.drain(..n);
        Ok(n)
    }
}

/// Output that says on `seen` when a reply to `in_reply_to` has been written.
struct Watch {
    written: Vec<u8>,
    needle: String,
    seen: Option<Sender<()>>,
}

impl Write for Watch {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buf);
        let text = String::from_utf8_lossy(&self.written);
        if text.contains(&self.needle) {
            if let Some(seen) = self.seen.take() {
                let _ = seen.send(());
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_slow_lane_does_not_hold_up_a_fast_one() {
    // The rollback starts and is held; only then does the flag request arrive; the rollback is
    // released only once the flag's reply has been written. Had the flag waited for the schema
    // lane, the held rollback would time out instead.
    let (started, rollback_started) = channel();
    let (flag_answered, finish) = channel();
    let input = Staged {
        now: format!("{ROLLBACK}\n").into_bytes(),
        later: VecDeque::from([format!("{DISABLE}\n").into_bytes()]),
        next: rollback_started,
    };
    let output = Watch {
        written: Vec::new(),
        needle: r#""in_reply_to":2"#.to_owned(),
        seen: Some(flag_answered),
    };
    let output = serve_to(Odd::Holds { started, finish }, input, output);
    let replies = bodies(&output.written);
    let order: Vec<u64> = replies
        .iter()
        .map(|r| r["in_reply_to"].as_u64().unwrap())
        .collect();
    assert_eq!(
        order,
        [2, 1],
        "the flag is answered while the rollback runs: {replies:?}"
    );
    assert_eq!(replies[0]["type"], "feature_disabled", "{replies:?}");
    assert_eq!(replies[1]["type"], "rollback_complete", "{replies:?}");
}

/// A reply to a request that came over HTTP is held, like a stdout line, until the store has
/// committed what it answers; only then does its waiter get it.
#[test]
fn a_waiters_reply_waits_for_the_commit() {
    use rollback_node::runtime::session::Waiter;
    let mut session = Session::new(
        Machine::new(Estate::example().state),
        Simulated::new(Estate::example().costs, &Estate::example().state, 0.0).executors(),
        MemoryStore::durable(),
    );
    let (tx, rx) = channel();
    let waiter = Waiter::new(move |answer| tx.send(answer).unwrap());
    let mut out = Vec::new();
    session.handle_message(
        "ada",
        br#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#,
        waiter,
        &mut out,
    );
    assert!(out.is_empty(), "nothing for stdout");
    assert!(rx.try_recv().is_err(), "handed over before the commit");
    assert_eq!(session.holding(), 1);
    assert!(session.store().entries().is_empty(), "not yet committed");
    session.commit().unwrap();
    assert_eq!(session.store().entries().len(), 1);
    session.deliver();
    let body = rx.try_recv().unwrap().unwrap();
    assert_eq!(
        body,
        r#"{"type":"feature_disabled","in_reply_to":1,"feature":"new_checkout","rolled_back_instant":true}"#
    );
}

/// Three requests under one (sender, msg_id): a restore that runs, a rollback refused at once and
/// a dry run that waits behind the restore. Each waiter gets its own request's reply, not the
/// first reply that comes under that id.
#[test]
fn a_reply_given_at_once_goes_to_its_own_request_whatever_waits_under_its_id() {
    use rollback_node::runtime::session::{Performing, Waiter};
    let estate = Estate::example();
    let mut session = Session::new(
        Machine::new(estate.state.clone()),
        Simulated::new(estate.costs.clone(), &estate.state, 0.0).executors(),
        MemoryStore::new(),
    )
    .performing(Performing::Manual);
    let mut out = Vec::new();
    let waiting = |session: &mut Session, body: &[u8], out: &mut Vec<u8>| {
        let (tx, rx) = channel();
        session.handle_message(
            "alice",
            body,
            Waiter::new(move |a| tx.send(a).unwrap()),
            out,
        );
        rx
    };
    let restore = waiting(
        &mut session,
        br#"{"type":"restore","msg_id":22,"backup":"users_backup_20240115"}"#,
        &mut out,
    );
    let rollback = waiting(
        &mut session,
        br#"{"type":"rollback","msg_id":22,"version":2}"#,
        &mut out,
    );
    let dry = waiting(
        &mut session,
        br#"{"type":"restore","msg_id":22,"backup":"users_backup_20240115","dry_run":true}"#,
        &mut out,
    );
    session.commit().unwrap();
    session.deliver();
    let refused: serde_json::Value =
        serde_json::from_str(&rollback.try_recv().unwrap().unwrap()).unwrap();
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(restore.try_recv().is_err(), "the restore is still running");
    assert!(
        dry.try_recv().is_err(),
        "the dry run waits behind the restore"
    );
    let starts = session.take_starts();
    assert_eq!(starts.len(), 1);
    let (lane, seq, operation) = starts.into_iter().next().unwrap();
    let completion = Simulated::new(estate.costs.clone(), &estate.state, 0.0)
        .executors()
        .lane(lane)
        .unwrap()
        .perform(&operation, &mut |_| {});
    session.complete(lane, seq, completion, &mut out);
    session.commit().unwrap();
    session.deliver();
    let done: serde_json::Value =
        serde_json::from_str(&restore.try_recv().unwrap().unwrap()).unwrap();
    assert_eq!(done["type"], "restore_complete", "{done}");
    let planned: serde_json::Value =
        serde_json::from_str(&dry.try_recv().unwrap().unwrap()).unwrap();
    assert_eq!(planned["type"], "plan_ok", "{planned}");
    assert!(
        out.is_empty(),
        "nothing for stdout: {}",
        String::from_utf8_lossy(&out)
    );
}
