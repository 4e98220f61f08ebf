//! The blue-green traffic switch through HAProxy's runtime API.
//!
//! The estate names HAProxy's admin socket and a backend with two servers, `blue` and `green`
//! (`[haproxy] socket = PATH`, `backend = NAME`). [`Haproxy`] speaks the runtime API over that
//! unix socket, one command per connection, each answer read up to HAProxy's end-of-answer
//! empty line (not until HAProxy closes the connection):
//!
//! - the load balancer is the truth: [`Haproxy::live`] reads `show servers state BACKEND` and says
//!   which server takes new traffic (administratively ready — neither drain nor maintenance — and
//!   operationally up);
//! - [`Haproxy::health`] is HAProxy's own health-check verdict for a server;
//! - [`Haproxy::switch`] refuses a target that HAProxy's checks do not call healthy, then sets the
//!   target `ready` and the source `drain` (open connections finish, new requests go to the
//!   target), reads the states back and verifies them.
//!
//! `show servers state` columns used: `srv_op_state` (0 stopped, 1 starting, 2 running,
//! 3 stopping), `srv_admin_state` (bit flags: 0x01 forced maintenance, 0x02 inherited maintenance,
//! 0x20 resolution maintenance, 0x08/0x10 forced/inherited drain; 0x04 only records a `disabled`
//! keyword in the configuration), `srv_check_state` (0x02 configured, 0x04 enabled, 0x08 paused)
//! and `srv_check_result` (2 failed, 3 passed, 4 conditionally passed).

use crate::protocol::Environment;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why HAProxy could not be asked or did not do what was asked. One line each.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    /// Nothing at the socket path.
    #[error("HAProxy admin socket {} does not exist (is HAProxy running with `stats socket {} level admin`?)", .socket.display(), .socket.display())]
    SocketMissing {
        /// The socket path.
        socket: PathBuf,
    },
    /// The socket exists but could not be connected to or talked over.
    #[error("HAProxy admin socket {}: cannot {what}: {source}", .socket.display())]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// What was being done, e.g. `connect` or `run "show servers state app"`.
        what: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The socket answers, but not at `level admin`.
    #[error("{}: not an admin socket (level {level}); the switch needs `stats socket {} level admin`", .socket.display(), .socket.display())]
    NotAdmin {
        /// The socket path.
        socket: PathBuf,
        /// The level it reported, or what it answered.
        level: String,
    },
    /// Whatever is on the socket did not answer like HAProxy's runtime API.
    #[error("{}: does not answer like HAProxy's runtime API: {answer:?}", .socket.display())]
    NotHaproxy {
        /// The socket path.
        socket: PathBuf,
        /// Its answer to `show cli level`.
        answer: String,
    },
    /// No such backend.
    #[error("HAProxy has no backend {backend:?}: {answer}")]
    NoBackend {
        /// The backend asked for.
        backend: String,
        /// HAProxy's answer.
        answer: String,
    },
    /// The backend lacks `blue` or `green`.
    #[error("HAProxy backend {backend:?} must have servers \"blue\" and \"green\"; it has: {}", .found.join(", "))]
    MissingServers {
        /// The backend.
        backend: String,
        /// The servers it has.
        found: Vec<String>,
    },
    /// HAProxy refused a command; its answer is quoted.
    #[error("HAProxy rejected {command:?}: {answer}")]
    Rejected {
        /// The command.
        command: String,
        /// HAProxy's answer.
        answer: String,
    },
    /// HAProxy's answer could not be read as expected.
    #[error("unexpected answer from HAProxy to {command:?}: {problem}")]
    Unexpected {
        /// The command.
        command: String,
        /// What was wrong with the answer.
        problem: String,
    },
    /// Not exactly one of blue and green takes new traffic.
    #[error("HAProxy backend {backend:?} has {} live: {states}", if *.both { "both blue and green" } else { "neither blue nor green" })]
    NotExactlyOneLive {
        /// The backend.
        backend: String,
        /// Whether both are live (else none is).
        both: bool,
        /// The two servers' states as read.
        states: String,
    },
    /// The switch's source is not the live server (and the target is not live either).
    #[error("refusing to switch to {to}: HAProxy's health checks say {health} ({detail})")]
    Unhealthy {
        /// The target.
        to: Environment,
        /// HAProxy's verdict.
        health: CheckVerdict,
        /// The server's check status as HAProxy reports it, e.g. `L4CON`.
        detail: String,
    },
}

/// HAProxy's health-check verdict on a server (the node's own [`crate::core::state::Health`]
/// is whether it may take traffic: only [`CheckVerdict::Up`] is healthy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckVerdict {
    /// Up, and its last check passed.
    Up,
    /// Still up, but its last check failed (it goes down after `fall` failures).
    Failing,
    /// Down: its checks fail.
    Down,
    /// Coming up (slow start) or going down.
    Transitioning,
    /// Checks paused: the server is in maintenance.
    Paused,
    /// No health check configured (`check` missing), so HAProxy has no verdict.
    Unchecked,
}

impl CheckVerdict {
    /// Only [`CheckVerdict::Up`] is healthy enough to take traffic.
    pub fn is_healthy(self) -> bool {
        self == CheckVerdict::Up
    }
}

impl fmt::Display for CheckVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckVerdict::Up => "up",
            CheckVerdict::Failing => "up but failing its last check",
            CheckVerdict::Down => "down",
            CheckVerdict::Transitioning => "starting or stopping",
            CheckVerdict::Paused => "checks paused (maintenance)",
            CheckVerdict::Unchecked => "no health check configured",
        })
    }
}

/// One server's row of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRow {
    /// `srv_name`.
    pub name: String,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u32,
    /// `srv_admin_state` bit flags.
    pub admin_state: u32,
    /// `srv_check_state` bit flags.
    pub check_state: u32,
    /// `srv_check_result`: 0 unknown, 1 neutral, 2 failed, 3 passed, 4 conditionally passed.
    pub check_result: u32,
}

impl ServerRow {
    /// In maintenance (forced, inherited or for address resolution).
    pub fn in_maintenance(&self) -> bool {
        self.admin_state & 0x23 != 0
    }

    /// Draining (forced or inherited).
    pub fn draining(&self) -> bool {
        self.admin_state & 0x18 != 0
    }

    /// Administratively ready: neither maintenance nor drain.
    pub fn ready(&self) -> bool {
        !self.in_maintenance() && !self.draining()
    }

    /// Takes new traffic: ready and operationally running.
    pub fn live(&self) -> bool {
        self.ready() && self.op_state == 2
    }

    /// HAProxy's health-check verdict.
    pub fn health(&self) -> CheckVerdict {
        if self.check_state & 0x02 == 0 || self.check_state & 0x04 == 0 {
            return CheckVerdict::Unchecked;
        }
        if self.check_state & 0x08 != 0 || self.in_maintenance() {
            return CheckVerdict::Paused;
        }
        match (self.op_state, self.check_result) {
            (2, 2) => CheckVerdict::Failing,
            (2, _) => CheckVerdict::Up,
            (0, _) => CheckVerdict::Down,
            _ => CheckVerdict::Transitioning,
        }
    }

    /// E.g. `ready, up` or `drain, down`.
    pub fn describe(&self) -> String {
        let admin = if self.in_maintenance() {
            "maint"
        } else if self.draining() {
            "drain"
        } else {
            "ready"
        };
        let op = match self.op_state {
            0 => "down",
            1 => "starting",
            2 => "up",
            3 => "stopping",
            _ => "unknown",
        };
        format!("{admin}, {op}, health {}", self.health())
    }
}

/// A client of one HAProxy backend through the runtime API's admin socket.
#[derive(Debug, Clone)]
pub struct Haproxy {
    socket: PathBuf,
    backend: String,
    timeout: Duration,
}

impl Haproxy {
    /// A client of `backend` through `socket`, checked: the socket exists and is at level admin,
    /// and the backend has servers `blue` and `green`.
    pub fn connect(socket: impl AsRef<Path>, backend: &str) -> Result<Self, HaproxyError> {
        let client = Haproxy::unchecked(socket, backend);
        client.check_admin()?;
        client.states()?;
        Ok(client)
    }

    /// A client that checks nothing until used.
    pub fn unchecked(socket: impl AsRef<Path>, backend: &str) -> Self {
        Haproxy {
            socket: socket.as_ref().to_path_buf(),
            backend: backend.to_owned(),
            timeout: Duration::from_secs(2),
        }
    }

    /// How long one command may take (connect, send, read the answer); 2 s by default.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The backend.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Runs one runtime-API command on a fresh connection and returns HAProxy's answer, read up
    /// to its end-of-answer empty line or the end of the stream.
    pub fn command(&self, command: &str) -> Result<String, HaproxyError> {
        let io = |what: String| {
            let socket = self.socket.clone();
            move |source: io::Error| HaproxyError::Io {
                socket,
                what,
                source,
            }
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                HaproxyError::SocketMissing {
                    socket: self.socket.clone(),
                }
            } else {
                io("connect".into())(e)
            }
        })?;
        let run = format!("run {command:?}");
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|_| stream.set_write_timeout(Some(self.timeout)))
            .map_err(io(run.clone()))?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(io(run.clone()))?;
        read_answer(&mut stream).map_err(io(run))
    }

    /// Checks that the socket is HAProxy's runtime API at level admin.
    pub fn check_admin(&self) -> Result<(), HaproxyError> {
        let answer = self.command("show cli level")?;
        match answer.trim() {
            "admin" => Ok(()),
            level @ ("operator" | "user") => Err(HaproxyError::NotAdmin {
                socket: self.socket.clone(),
                level: level.to_owned(),
            }),
            other if other.contains("Permission denied") => Err(HaproxyError::NotAdmin {
                socket: self.socket.clone(),
                level: other.to_owned(),
            }),
            other => Err(HaproxyError::NotHaproxy {
                socket: self.socket.clone(),
                answer: other.chars().take(200).collect(),
            }),
        }
    }

    /// Every server of the backend, by name, from `show servers state BACKEND`.
    pub fn servers(&self) -> Result<BTreeMap<String, ServerRow>, HaproxyError> {
        check_name(&self.backend)?;
        let command = format!("show servers state {}", self.backend);
        let answer = self.command(&command)?;
        let unexpected = |problem: String| HaproxyError::Unexpected {
            command: command.clone(),
            problem,
        };
        let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().unwrap_or("").trim();
        if first != "1" {
            if first.contains("Can't find backend") || first.contains("No such backend") {
                return Err(HaproxyError::NoBackend {
                    backend: self.backend.clone(),
                    answer: first.to_owned(),
                });
            }
            if first.contains("Permission denied") {
                return Err(HaproxyError::NotAdmin {
                    socket: self.socket.clone(),
                    level: first.to_owned(),
                });
            }
            return Err(unexpected(format!(
                "expected format version 1, got {first:?}"
            )));
        }
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix('#'))
            .ok_or_else(|| unexpected("no header line".into()))?
            .split_whitespace()
            .collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or_else(|| unexpected(format!("no column {name}")))
        };
        let (name, op, admin, check_state, check_result) = (
            column("srv_name")?,
            column("srv_op_state")?,
            column("srv_admin_state")?,
            column("srv_check_state")?,
            column("srv_check_result")?,
        );
        let mut servers = BTreeMap::new();
        for line in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| -> Result<u32, HaproxyError> {
                fields
                    .get(i)
                    .and_then(|f| f.parse().ok())
                    .ok_or_else(|| unexpected(format!("bad row {line:?}")))
            };
            let server = ServerRow {
                name: fields
                    .get(name)
                    .ok_or_else(|| unexpected(format!("bad row {line:?}")))?
                    .to_string(),
                op_state: number(op)?,
                admin_state: number(admin)?,
                check_state: number(check_state)?,
                check_result: number(check_result)?,
            };
            servers.insert(server.name.clone(), server);
        }
        Ok(servers)
    }

    /// The states of `blue` and `green`.
    pub fn states(&self) -> Result<[ServerRow; 2], HaproxyError> {
        let mut servers = self.servers()?;
        match (servers.remove("blue"), servers.remove("green")) {
            (Some(blue), Some(green)) => Ok([blue, green]),
            (blue, green) => Err(HaproxyError::MissingServers {
                backend: self.backend.clone(),
                found: blue
                    .into_iter()
                    .chain(green)
                    .map(|s| s.name)
                    .chain(servers.into_keys())
                    .collect(),
            }),
        }
    }

    /// Which of blue and green takes new traffic, as HAProxy says. Both or neither is an error
    /// naming the states.
    pub fn live(&self) -> Result<Environment, HaproxyError> {
        self.live_of(&self.states()?)
    }

    /// Which of blue and green takes new traffic in `rows` (blue's, green's).
    fn live_of(&self, rows: &[ServerRow; 2]) -> Result<Environment, HaproxyError> {
        let [blue, green] = rows;
        match (blue.live(), green.live()) {
            (true, false) => Ok(Environment::Blue),
            (false, true) => Ok(Environment::Green),
            (both, _) => Err(HaproxyError::NotExactlyOneLive {
                backend: self.backend.clone(),
                both,
                states: describe(blue, green),
            }),
        }
    }

    /// HAProxy's health-check verdict on `server`.
    pub fn health(&self, server: Environment) -> Result<CheckVerdict, HaproxyError> {
        let [blue, green] = self.states()?;
        Ok(match server {
            Environment::Blue => blue.health(),
            Environment::Green => green.health(),
        })
    }

    /// `set server BACKEND/SERVER state STATE`; any answer is a rejection.
    pub fn set_state(&self, server: Environment, state: &str) -> Result<(), HaproxyError> {
        let command = format!("set server {}/{server} state {state}", self.backend);
        let answer = self.command(&command)?;
        let answer = answer.trim();
        if answer.is_empty() {
            Ok(())
        } else if answer.contains("Permission denied") {
            Err(HaproxyError::NotAdmin {
                socket: self.socket.clone(),
                level: answer.to_owned(),
            })
        } else {
            Err(HaproxyError::Rejected {
                command,
                answer: answer.replace('\n', " "),
            })
        }
    }

    /// The server's `check_status`, `check_code` and `check_desc` from `show stat`, for messages.
    fn check_status(&self, server: Environment) -> String {
        let Ok(stat) = self.command("show stat") else {
            return "check status unavailable".into();
        };
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            let get = |name: &str| col(name).and_then(|i| f.get(i)).copied().unwrap_or("");
            if get("pxname") == self.backend && get("svname") == <&str>::from(server) {
                let mut out = format!("status {}, check {}", get("status"), get("check_status"));
                if !get("check_code").is_empty() {
                    out.push_str(&format!(" {}", get("check_code")));
                }
                if !get("check_desc").is_empty() {
                    out.push_str(&format!(": {}", get("check_desc")));
                }
                return out;
            }
        }
        "no check status".into()
    }
}

/// Reads one answer: up to HAProxy's end-of-answer line or the end of the stream, whichever
/// comes first. HAProxy ends every answer with an empty line (`\n` alone for a command that
/// prints nothing, `…\n\n` otherwise) before it closes the connection; stopping there spares
/// waiting for the close, which is a second wake-up of this thread and, on a busy machine, can
/// wait on the run queue for a whole scheduler tick.
fn read_answer(stream: &mut impl Read) -> io::Result<String> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                if answer_complete(&answer) {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(answer).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Whether `answer` ends with HAProxy's end-of-answer empty line. None of the commands sent
/// here prints an empty line inside its output.
fn answer_complete(answer: &[u8]) -> bool {
    answer == b"\n" || answer.ends_with(b"\n\n")
}

fn describe(blue: &ServerRow, green: &ServerRow) -> String {
    format!("blue: {}; green: {}", blue.describe(), green.describe())
}

/// Names go into runtime-API commands: no spaces, separators or slashes.
fn check_name(name: &str) -> Result<(), HaproxyError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == ';' || c == '/' || c.is_control())
    {
        return Err(HaproxyError::NoBackend {
            backend: name.to_owned(),
            answer: "not a usable backend name (empty, or has spaces, ';' or '/')".into(),
        });
    }
    Ok(())
}

impl Haproxy {
    /// What HAProxy says: the live environment and the health of both.
    ///
    /// # Errors
    /// HAProxy could not be asked, or neither or both servers are live.
    pub fn found(&self) -> Result<crate::core::effects::Found, HaproxyError> {
        use crate::core::state::Health as NodeHealth;
        let rows = self.states()?;
        let health = |row: &ServerRow| {
            if row.health().is_healthy() {
                NodeHealth::Healthy
            } else {
                NodeHealth::Unhealthy
            }
        };
        Ok(crate::core::effects::Found {
            live_environment: Some(self.live_of(&rows)?),
            health: Some((health(&rows[0]), health(&rows[1]))),
            ..crate::core::effects::Found::default()
        })
    }
}

/// `[haproxy] socket = PATH, backend = NAME`: HAProxy's runtime API over its admin socket,
/// a backend with servers `blue` and `green`.
pub const SYSTEM: System = System {
    section: "haproxy",
    layer: LayerKind::Traffic,
    applies: crate::exec::system::any_value,
    conflict: Some("[haproxy] names a real load balancer, so [traffic] must not be given too: HAProxy's server states are the truth"),
    needs: None,
    read: |section| Ok(Box::new(section.parse::<HaproxyConfig>()?)),
};

/// `[haproxy]`: `socket = PATH` (the admin socket, relative to the estate file), `backend =
/// NAME` (with servers `blue` and `green`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyConfig {
    /// The admin socket.
    pub socket: String,
    /// The backend holding the `blue` and `green` servers.
    pub backend: String,
}

impl Config for HaproxyConfig {
    fn describe(&self) -> String {
        format!("haproxy {} backend {}", self.socket, self.backend)
    }

    fn connect(&self, with: &Connecting<'_>) -> Result<Connected, String> {
        let haproxy = Haproxy::connect(with.resolve(&self.socket), &self.backend)
            .map_err(|e| e.to_string())?;
        let found = haproxy.found().map_err(|e| e.to_string())?;
        Ok(Connected {
            executor: Box::new(haproxy),
            found,
            reader: None,
        })
    }
}

/// HAProxy as the traffic layer's [`Executor`]. `CheckHealthy` asks HAProxy's own checks and
/// refuses (22, nothing changed) a server they do not call up; `SetServerState` reads the
/// server's state, sends `set server BE/SRV state ready|drain` unless it already is so, and reads
/// it back. A failure reports where traffic stands, as read back.
impl Executor for Haproxy {
    fn perform(&mut self, effects: &[Effect], _report: Report<'_>) -> Completion {
        let started = Instant::now();
        // The servers' states as last read: each effect reads them before acting (once, then
        // each read-back serves the next effect), so a switch takes five commands.
        let mut rows = None;
        for (i, effect) in effects.iter().enumerate() {
            let result = match effect {
                Effect::CheckHealthy { server } => self.check_healthy(*server, &mut rows),
                Effect::SetServerState { server, state } => {
                    self.set_server(*server, *state, &mut rows)
                }
                other => Err((
                    FailureKind::NothingChanged,
                    HaproxyError::Unexpected {
                        command: String::new(),
                        problem: format!("{other:?} is not a traffic effect"),
                    },
                )),
            };
            if let Err((kind, error)) = result {
                let place = Some(format!(
                    "{} backend {}",
                    self.socket.display(),
                    self.backend
                ));
                return Completion::Failed(Failure {
                    completed: i,
                    ..Failure::new(
                        kind,
                        ExecError::failed(describe_effect(effect), place, error),
                    )
                    .found(self.found().ok())
                });
            }
        }
        Completion::Done(Done::took(Seconds::measured(started.elapsed())))
    }

    fn observe(&mut self, _believed: &State) -> Found {
        self.found().unwrap_or_else(|e| Found {
            unknown: Some(e.to_string()),
            ..Found::default()
        })
    }
}

/// `server`'s row of `rows` (blue's, green's).
fn row_of(rows: &[ServerRow; 2], server: Environment) -> &ServerRow {
    match server {
        Environment::Blue => &rows[0],
        Environment::Green => &rows[1],
    }
}

fn describe_effect(effect: &Effect) -> String {
    match effect {
        Effect::CheckHealthy { server } => format!("checking {server}'s health"),
        Effect::SetServerState { server, state } => format!("setting {server} {state}"),
        other => format!("{other:?}"),
    }
}

impl Haproxy {
    /// `server` must be up by HAProxy's own checks.
    fn check_healthy(
        &self,
        server: Environment,
        rows: &mut Option<[ServerRow; 2]>,
    ) -> Result<(), (FailureKind, HaproxyError)> {
        let read = self
            .states()
            .map_err(|e| (FailureKind::NothingChanged, e))?;
        let verdict = row_of(&read, server).health();
        *rows = Some(read);
        if verdict.is_healthy() {
            return Ok(());
        }
        Err((
            FailureKind::Refused,
            HaproxyError::Unhealthy {
                to: server,
                health: verdict,
                detail: self.check_status(server),
            },
        ))
    }

    /// Sets `server` to `state` unless it already is, and reads it back.
    fn set_server(
        &self,
        server: Environment,
        state: TargetState,
        rows: &mut Option<[ServerRow; 2]>,
    ) -> Result<(), (FailureKind, HaproxyError)> {
        let is_so = |row: &ServerRow| match state {
            TargetState::Ready => row.ready(),
            TargetState::Drain => row.draining() && !row.in_maintenance(),
        };
        let before = match rows.take() {
            Some(read) => read,
            None => self
                .states()
                .map_err(|e| (FailureKind::NothingChanged, e))?,
        };
        if is_so(row_of(&before, server)) {
            *rows = Some(before);
            return Ok(());
        }
        // A refusal changed nothing; a lost answer may have.
        self.set_state(server, &state.to_string())
            .map_err(|e| match e {
                HaproxyError::NotAdmin { .. } | HaproxyError::Rejected { .. } => {
                    (FailureKind::NothingChanged, e)
                }
                e => (FailureKind::PartWay, e),
            })?;
        let read = self.states().map_err(|e| (FailureKind::PartWay, e))?;
        let after = row_of(&read, server).clone();
        *rows = Some(read);
        if !is_so(&after) {
            return Err((
                FailureKind::PartWay,
                HaproxyError::Unexpected {
                    command: format!("show servers state {}", self.backend),
                    problem: format!("expected {server} {state}, read back {}", after.describe()),
                },
            ));
        }
        Ok(())
    }
}

use crate::core::effects::{
    Completion, Done, Effect, ExecError, Failure, FailureKind, Found, LayerKind,
    ServerState as TargetState,
};
use crate::core::state::State;
use crate::exec::system::{Config, Connected, Connecting, System};
use crate::exec::{Executor, Report};
use crate::protocol::values::Seconds;
