//! Node processes for the cluster tests: each [`Node`] is a `rollback-node` child speaking the
//! Maelstrom JSON lines on its stdin and stdout, with its stdout read line by line into a channel
//! and its stderr kept for failure messages. Nodes are killed when their handle drops, when the
//! process exits, and (through the parent-death signal of a spawner thread that lives as long as
//! the process) when the process is killed.
//!
//! Also here: [`terminate_backends`], the database outage of a test (every server connection to
//! a database cut at once), and [`wait_until`].

#![allow(dead_code)]

use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

/// The node binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_rollback-node");

/// Where [`Node::request`]'s own message ids start when the body has none: far above the small
/// ids tests write by hand.
pub const AUTO_MSG_ID: u64 = 1_000_000;

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Cuts every connection to `database` of the server at `server_url` (a direct URL of the
/// server, not of a pooler) but the one asking: `pg_terminate_backend` on each, then waits until
/// those backends are gone. Returns how many there were. Connections made afterwards (such as a
/// pooler's or a node's reconnection) are left alone.
pub fn terminate_backends(server_url: &str, database: &str) -> usize {
    let mut client = postgres::Client::connect(server_url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("terminate_backends: cannot connect to {server_url}: {e}"));
    let rows = client
        .query(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&database],
        )
        .unwrap_or_else(|e| panic!("terminate_backends({database}): {e}"));
    let pids: Vec<i32> = rows
        .iter()
        .filter(|row| row.get::<_, bool>(1))
        .map(|row| row.get(0))
        .collect();
    let gone = wait_until(Duration::from_secs(10), || {
        let left: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .unwrap()
            .get(0);
        left == 0
    });
    assert!(
        gone,
        "terminate_backends({database}): backends {pids:?} still there after 10 s"
    );
    pids.len()
}

/// One protocol line: `{"src":SRC,"dest":DEST,"body":BODY}`.
pub fn envelope(src: &str, dest: &str, body: &Value) -> String {
    json!({"src": src, "dest": dest, "body": body}).to_string()
}

// Every live node's pid, for the exit handler.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

fn live() -> MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

extern "C" fn kill_at_exit() {
    // The lock is held only for a push or a removal; give up rather than hang an exit.
    for _ in 0..100 {
        if let Ok(pids) = LIVE.try_lock() {
            for &pid in pids.iter() {
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from a thread that lives as long as the process: the parent-death signal
/// (SIGKILL) is tied to the spawning thread, and test threads come and go.
fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(kill_at_exit);
    });
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("node-spawner".into())
            .spawn(move || {
                for (mut cmd, answer) in rx {
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let child = cmd.spawn();
                    if let Ok(child) = &child {
                        live().push(child.id());
                    }
                    let _ = answer.send(child);
                }
                // The senders live in a static: this loop never ends, and the thread with it.
            })
            .unwrap();
        Mutex::new(tx)
    });
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, tx))
        .unwrap();
    rx.recv().unwrap()
}

/// One run of the node process: a restart makes a new one.
struct Run {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Everything it wrote on stderr so far.
    stderr: Arc<Mutex<String>>,
    /// Its exit status once reaped.
    status: Option<ExitStatus>,
    /// The thread reading stderr: joined once the process is reaped, so that what it wrote
    /// before it exited is all there.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Run {
    /// Starts a run, and the channel of its stdout lines (disconnected when stdout closes).
    fn start(args: &[OsString]) -> (Run, Receiver<String>) {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        let mut child = spawn(cmd).unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stderr_pipe.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        let run = Run {
            stdin: child.stdin.take(),
            child,
            stderr,
            status: None,
            stderr_reader: Some(stderr_reader),
        };
        (run, lines)
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped(status);
            }
        }
        self.status
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.status = Some(status);
        // Its stderr closed with it, unless a child of its own keeps the pipe open: then wait
        // only briefly.
        if let Some(reader) = self.stderr_reader.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        let pid = self.child.id();
        live().retain(|&p| p != pid);
    }

    /// SIGKILL (if still running) and reap.
    fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let status = self.child.wait().expect("wait for the node");
        self.reaped(status);
        status
    }
}

/// A `rollback-node` process under test, restartable with the same arguments. Every method
/// takes `&self`: a node can be shared between threads (one sending load while another kills).
pub struct Node {
    /// Its `--node-id` (the `dest` of the lines [`Node::send_body`] writes).
    pub node_id: String,
    args: Vec<OsString>,
    // Lock order: `lines` before `run`; `unmatched` and `earlier_stderr` last, held briefly.
    run: Mutex<Run>,
    /// The current run's stdout lines.
    lines: Mutex<Receiver<String>>,
    /// Replies read while waiting for another one, by arrival.
    unmatched: Mutex<Vec<Value>>,
    /// Stderr of the runs before the current one.
    earlier_stderr: Mutex<String>,
    next_msg_id: AtomicU64,
    pid: AtomicU32,
}

impl Node {
    /// A cluster node: `rollback-node --store STORE_URL --node-id NODE_ID [--estate ESTATE]
    /// EXTRA_ARGS…`. It is not waited for: the first request's timeout covers its start.
    pub fn start(
        store_url: &str,
        node_id: &str,
        estate: Option<&Path>,
        extra_args: &[&str],
    ) -> Node {
        let mut args: Vec<OsString> = vec![
            "--store".into(),
            store_url.into(),
            "--node-id".into(),
            node_id.into(),
        ];
        if let Some(estate) = estate {
            args.push("--estate".into());
            args.push(estate.into());
        }
        args.extend(extra_args.iter().map(OsString::from));
        Node::spawn(node_id, args)
    }

    /// A node with exactly these arguments; `node_id` is only the `dest` of the lines
    /// [`Node::send_body`] writes and the name in failure messages.
    pub fn spawn(node_id: &str, args: Vec<OsString>) -> Node {
        let (run, lines) = Run::start(&args);
        Node {
            node_id: node_id.to_owned(),
            pid: AtomicU32::new(run.child.id()),
            args,
            run: Mutex::new(run),
            lines: Mutex::new(lines),
            unmatched: Mutex::new(Vec::new()),
            earlier_stderr: Mutex::new(String::new()),
            next_msg_id: AtomicU64::new(AUTO_MSG_ID),
        }
    }

    fn run(&self) -> MutexGuard<'_, Run> {
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The arguments it runs with.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// The process id of the current run.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Writes one line (a newline is added) on its stdin; panics if stdin is closed or broken.
    pub fn send(&self, line: &str) {
        let mut run = self.run();
        let written = match run.stdin.as_mut() {
            Some(stdin) => writeln!(stdin, "{line}").and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("stdin was closed")),
        };
        if let Err(e) = written {
            let status = run.try_wait();
            drop(run);
            panic!(
                "{}: cannot send {line} ({e}; exit status {status:?}); stderr:\n{}",
                self.node_id,
                self.stderr_text()
            );
        }
    }

    /// Sends `body` from `src` to this node.
    pub fn send_body(&self, src: &str, body: &Value) {
        self.send(&envelope(src, &self.node_id, body));
    }

    /// Closes its stdin (the end of input).
    pub fn close_stdin(&self) {
        self.run().stdin = None;
    }

    /// The reply whose `body.in_reply_to` is `msg_id`, if it comes within `timeout` (`None` also
    /// when stdout closes first). Other replies read meanwhile are kept for later calls.
    /// Panics on a stdout line that is not JSON: the protocol allows none.
    pub fn try_recv_reply(&self, msg_id: u64, timeout: Duration) -> Option<Value> {
        self.wait_reply(msg_id, timeout).ok()
    }

    /// The reply whose `body.in_reply_to` is `msg_id`; panics (with the node's stderr) when none
    /// comes within `timeout` or stdout closes.
    pub fn recv_reply(&self, msg_id: u64, timeout: Duration) -> Value {
        match self.wait_reply(msg_id, timeout) {
            Ok(reply) => reply,
            Err(why) => panic!(
                "{}: no reply to msg_id {msg_id} ({why}); replies to other messages: {:?}; stderr:\n{}",
                self.node_id,
                self.unmatched(),
                self.stderr_text()
            ),
        }
    }

    fn wait_reply(&self, msg_id: u64, timeout: Duration) -> Result<Value, String> {
        let matches = |v: &Value| v["body"]["in_reply_to"].as_u64() == Some(msg_id);
        {
            let mut unmatched = self.unmatched.lock().unwrap();
            if let Some(i) = unmatched.iter().position(matches) {
                return Ok(unmatched.remove(i));
            }
        }
        let deadline = Instant::now() + timeout;
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let value: Value = match serde_json::from_str(&line) {
                        Ok(v) => v,
                        Err(e) => {
                            drop(lines);
                            panic!(
                                "{}: stdout line is not JSON ({e}): {line:?}; stderr:\n{}",
                                self.node_id,
                                self.stderr_text()
                            )
                        }
                    };
                    if matches(&value) {
                        return Ok(value);
                    }
                    self.unmatched.lock().unwrap().push(value);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("none within {timeout:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the process is gone or going.
                    drop(lines);
                    let status = self.wait_exit(Duration::from_secs(2));
                    return Err(format!("its stdout closed; exit status {status:?}"));
                }
            }
        }
    }

    /// Sends `body` from `src` and waits for its reply. A body without `msg_id` gets one of the
    /// node's own (from [`AUTO_MSG_ID`] up).
    pub fn request(&self, src: &str, body: Value, timeout: Duration) -> Value {
        let mut body = body;
        let msg_id = match body["msg_id"].as_u64() {
            Some(id) => id,
            None => {
                let id = self.next_msg_id.fetch_add(1, Ordering::SeqCst);
                body["msg_id"] = json!(id);
                id
            }
        };
        self.send_body(src, &body);
        self.recv_reply(msg_id, timeout)
    }

    /// Replies read that no call has asked for yet (they stay kept).
    pub fn unmatched(&self) -> Vec<Value> {
        self.unmatched.lock().unwrap().clone()
    }

    /// Every stdout line already read or waiting in the channel, as JSON, taking them: the
    /// kept replies, then the rest (non-blocking).
    pub fn drain_output(&self) -> Vec<Value> {
        let mut all = std::mem::take(&mut *self.unmatched.lock().unwrap());
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        for line in lines.try_iter() {
            all.push(serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("{}: stdout line is not JSON ({e}): {line:?}", self.node_id)
            }));
        }
        all
    }

    /// SIGKILL, and reap it. Its unread output stays readable until a restart.
    pub fn kill9(&self) -> ExitStatus {
        self.run().kill()
    }

    /// SIGSTOP: frozen (a paused VM, a long GC), its connections open.
    pub fn sigstop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT: thawed.
    pub fn sigcont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Sends `signal` to the current run (if it has not been reaped).
    pub fn signal(&self, signal: i32) {
        let mut run = self.run();
        if run.try_wait().is_none() {
            unsafe {
                libc::kill(run.child.id() as i32, signal);
            }
        }
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.run().try_wait()
    }

    /// Whether the current run is still alive (a stopped process is).
    pub fn is_running(&self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }

    /// Starts it again with the same arguments, killing the current run first if it is still
    /// alive. Unread replies of the old run are dropped; its stderr moves to
    /// [`Node::stderr_all`].
    pub fn restart(&self) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let mut run = self.run();
        let status = run.kill();
        {
            let mut earlier = self.earlier_stderr.lock().unwrap();
            earlier.push_str(&run.stderr());
            earlier.push_str(&format!(
                "--- {} run ended: {} ---\n",
                self.node_id,
                describe(status)
            ));
        }
        self.unmatched.lock().unwrap().clear();
        let (fresh, fresh_lines) = Run::start(&self.args);
        *run = fresh;
        *lines = fresh_lines;
        self.pid.store(run.child.id(), Ordering::SeqCst);
    }

    /// What the current run has written on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.run().stderr()
    }

    /// Stderr of every run so far, the ends of the earlier ones marked.
    pub fn stderr_all(&self) -> String {
        format!(
            "{}{}",
            self.earlier_stderr.lock().unwrap(),
            self.stderr_text()
        )
    }

    /// Whether the current run's stderr contains `text` within `timeout`.
    pub fn wait_stderr_contains(&self, text: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr_text().contains(text))
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => format!("{status:?}"),
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.run().kill();
    }
}
