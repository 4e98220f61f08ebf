//! The blue-green traffic switch through HAProxy's runtime API.
//!
//! The estate names HAProxy's admin socket and a backend with two servers, `blue` and `green`
//! (`[haproxy] socket = PATH`, `backend = NAME`). [`Haproxy`] speaks the runtime API over that
//! unix socket, one command per connection:
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

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// One of the two servers of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Colour {
    /// The server named `blue`.
    Blue,
    /// The server named `green`.
    Green,
}

impl Colour {
    /// The server's name in the backend.
    pub fn as_str(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        }
    }

    /// The other colour.
    pub fn other(self) -> Colour {
        match self {
            Colour::Blue => Colour::Green,
            Colour::Green => Colour::Blue,
        }
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Colour {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Colour::Blue),
            "green" => Ok(Colour::Green),
            other => Err(format!("{other:?} is neither \"blue\" nor \"green\"")),
        }
    }
}

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
    #[error("cannot switch from {from}: it is not live in HAProxy ({states})")]
    FromNotLive {
        /// The server that should be live.
        from: Colour,
        /// The two servers' states as read.
        states: String,
    },
    /// HAProxy's health checks do not call the target healthy: the switch is refused.
    #[error("refusing to switch to {to}: HAProxy's health checks say {health} ({detail})")]
    Unhealthy {
        /// The target.
        to: Colour,
        /// HAProxy's verdict.
        health: Health,
        /// The server's check status as HAProxy reports it, e.g. `L4CON`.
        detail: String,
    },
    /// The switch started but did not finish; says where traffic stands as read back.
    #[error("switch from {from} to {to} stopped at \"{step}\": {cause}; traffic now: {traffic}")]
    Incomplete {
        /// The source.
        from: Colour,
        /// The target.
        to: Colour,
        /// The step that failed.
        step: &'static str,
        /// Why.
        cause: Box<HaproxyError>,
        /// The servers' states read back afterwards, or why they could not be read.
        traffic: String,
    },
}

impl HaproxyError {
    /// Whether this is a refusal for a precondition (unhealthy target, source not live): the
    /// switch did nothing.
    pub fn is_precondition(&self) -> bool {
        matches!(
            self,
            HaproxyError::Unhealthy { .. } | HaproxyError::FromNotLive { .. }
        )
    }
}

/// HAProxy's health-check verdict on a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
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

impl Health {
    /// Only [`Health::Up`] is healthy enough to take traffic.
    pub fn is_healthy(self) -> bool {
        self == Health::Up
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Failing => "up but failing its last check",
            Health::Down => "down",
            Health::Transitioning => "starting or stopping",
            Health::Paused => "checks paused (maintenance)",
            Health::Unchecked => "no health check configured",
        })
    }
}

/// One server's row of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
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

impl ServerState {
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
    pub fn health(&self) -> Health {
        if self.check_state & 0x02 == 0 || self.check_state & 0x04 == 0 {
            return Health::Unchecked;
        }
        if self.check_state & 0x08 != 0 || self.in_maintenance() {
            return Health::Paused;
        }
        match (self.op_state, self.check_result) {
            (2, 2) => Health::Failing,
            (2, _) => Health::Up,
            (0, _) => Health::Down,
            _ => Health::Transitioning,
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

/// What a successful [`Haproxy::switch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchReport {
    /// The server drained.
    pub from: Colour,
    /// The server now live.
    pub to: Colour,
    /// `false` if `to` already was live and `from` not (nothing was sent).
    pub changed: bool,
    /// From the start of the call until the new states were read back.
    pub duration: Duration,
    /// The two servers' states as read back, e.g. `blue: drain, up, health up; green: …`.
    pub states: String,
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

    /// Runs one runtime-API command on a fresh connection and returns HAProxy's answer.
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
        let mut answer = String::new();
        stream.read_to_string(&mut answer).map_err(io(run))?;
        Ok(answer)
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
    pub fn servers(&self) -> Result<BTreeMap<String, ServerState>, HaproxyError> {
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
            let server = ServerState {
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
    pub fn states(&self) -> Result<[ServerState; 2], HaproxyError> {
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
    pub fn live(&self) -> Result<Colour, HaproxyError> {
        let [blue, green] = self.states()?;
        match (blue.live(), green.live()) {
            (true, false) => Ok(Colour::Blue),
            (false, true) => Ok(Colour::Green),
            (both, _) => Err(HaproxyError::NotExactlyOneLive {
                backend: self.backend.clone(),
                both,
                states: describe(&blue, &green),
            }),
        }
    }

    /// HAProxy's health-check verdict on `server`.
    pub fn health(&self, server: Colour) -> Result<Health, HaproxyError> {
        let [blue, green] = self.states()?;
        Ok(match server {
            Colour::Blue => blue.health(),
            Colour::Green => green.health(),
        })
    }

    /// Moves new traffic from `from` to `to`: refuses if HAProxy's checks do not call `to`
    /// healthy or `from` is not live; sets `to` ready, then `from` drain; reads back and verifies.
    pub fn switch(&self, from: Colour, to: Colour) -> Result<SwitchReport, HaproxyError> {
        let start = Instant::now();
        let [blue, green] = self.states()?;
        let (f, t) = match from {
            Colour::Blue => (&blue, &green),
            Colour::Green => (&green, &blue),
        };
        if from == to && !f.live() {
            return Err(HaproxyError::FromNotLive {
                from,
                states: describe(&blue, &green),
            });
        }
        if from == to || (t.live() && !f.live()) {
            return Ok(SwitchReport {
                from,
                to,
                changed: false,
                duration: start.elapsed(),
                states: describe(&blue, &green),
            });
        }
        if !f.live() {
            return Err(HaproxyError::FromNotLive {
                from,
                states: describe(&blue, &green),
            });
        }
        let health = t.health();
        if !health.is_healthy() {
            return Err(HaproxyError::Unhealthy {
                to,
                health,
                detail: self.check_status(to),
            });
        }
        let incomplete = |step: &'static str, cause: HaproxyError| HaproxyError::Incomplete {
            from,
            to,
            step,
            cause: Box::new(cause),
            traffic: self.traffic(),
        };
        // A refusal of the first command changed nothing: report it as it is.
        self.set_state(to, "ready").map_err(|e| match e {
            HaproxyError::NotAdmin { .. } | HaproxyError::Rejected { .. } => e,
            e => incomplete("set the target ready", e),
        })?;
        self.set_state(from, "drain")
            .map_err(|e| incomplete("set the source drain", e))?;
        let [blue, green] = self
            .states()
            .map_err(|e| incomplete("read back the states", e))?;
        let (f, t) = match from {
            Colour::Blue => (&blue, &green),
            Colour::Green => (&green, &blue),
        };
        if !t.live() || f.live() {
            let states = describe(&blue, &green);
            return Err(incomplete(
                "verify",
                HaproxyError::Unexpected {
                    command: format!("show servers state {}", self.backend),
                    problem: format!("expected {to} live and {from} not: {states}"),
                },
            ));
        }
        Ok(SwitchReport {
            from,
            to,
            changed: true,
            duration: start.elapsed(),
            states: describe(&blue, &green),
        })
    }

    /// `set server BACKEND/SERVER state STATE`; any answer is a rejection.
    fn set_state(&self, server: Colour, state: &str) -> Result<(), HaproxyError> {
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

    /// Where traffic stands, as read back now, or why it could not be read.
    fn traffic(&self) -> String {
        match self.states() {
            Ok([blue, green]) => describe(&blue, &green),
            Err(e) => format!("could not be read back ({e})"),
        }
    }

    /// The server's `check_status`, `check_code` and `check_desc` from `show stat`, for messages.
    fn check_status(&self, server: Colour) -> String {
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
            if get("pxname") == self.backend && get("svname") == server.as_str() {
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

fn describe(blue: &ServerState, green: &ServerState) -> String {
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

/// An environment as the server of the same name.
fn colour(environment: crate::protocol::Environment) -> Colour {
    match environment {
        crate::protocol::Environment::Blue => Colour::Blue,
        crate::protocol::Environment::Green => Colour::Green,
    }
}

/// A server as the environment of the same name.
fn environment(colour: Colour) -> crate::protocol::Environment {
    match colour {
        Colour::Blue => crate::protocol::Environment::Blue,
        Colour::Green => crate::protocol::Environment::Green,
    }
}

impl Haproxy {
    /// What HAProxy says: the live environment and the health of both.
    ///
    /// # Errors
    /// HAProxy could not be asked, or neither or both servers are live.
    pub fn found(&self) -> Result<crate::core::effects::Found, HaproxyError> {
        use crate::core::state::Health as NodeHealth;
        let health = |server| -> Result<NodeHealth, HaproxyError> {
            Ok(if self.health(server)?.is_healthy() {
                NodeHealth::Healthy
            } else {
                NodeHealth::Unhealthy
            })
        };
        Ok(crate::core::effects::Found {
            live_environment: Some(environment(self.live()?)),
            health: Some((health(Colour::Blue)?, health(Colour::Green)?)),
            ..crate::core::effects::Found::default()
        })
    }
}

/// HAProxy as the node's [`Traffic`](crate::exec::Traffic) executor: the target must be healthy
/// by HAProxy's own checks (else the switch is refused, 22), it is made ready, the old one
/// drained, and the result read back before the reply.
impl crate::exec::Traffic for Haproxy {
    fn switch(
        &mut self,
        from: crate::protocol::Environment,
        to: crate::protocol::Environment,
    ) -> crate::core::effects::Completion {
        use crate::core::effects::{Completion, Done, ExecError, Failure};
        match Haproxy::switch(self, colour(from), colour(to)) {
            Ok(report) => Completion::Done(Done {
                duration: crate::protocol::values::Seconds::measured(report.duration),
                rows: None,
                ..Done::default()
            }),
            Err(e) => {
                let place = Some(format!(
                    "{} backend {}",
                    self.socket().display(),
                    self.backend()
                ));
                let refused = e.is_precondition();
                let part_way = matches!(e, HaproxyError::Incomplete { .. });
                Completion::Failed(Failure {
                    completed: 0,
                    part_way,
                    refused,
                    missing: false,
                    error: ExecError::failed(
                        format!("switching traffic from {from} to {to}"),
                        place,
                        e,
                    ),
                    now: self.found().ok().map(Box::new),
                })
            }
        }
    }

    fn observe(&mut self, _believed: &crate::core::state::State) -> crate::core::effects::Found {
        self.found()
            .unwrap_or_else(|e| crate::core::effects::Found {
                unknown: Some(e.to_string()),
                ..crate::core::effects::Found::default()
            })
    }
}
