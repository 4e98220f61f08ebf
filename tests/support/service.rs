//! The node started as a service (`--listen 127.0.0.1:0`), the way a user starts it, with a plain
//! HTTP/1.1 client on std sockets so that every header sent and received is what the test says.
#![allow(dead_code)]

use rollback_node::service::auth::sha256;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The secrets of the three tokens every test estate has, by role.
pub const VIEWER: &str = "viewer-secret-0123456789";
pub const OPERATOR: &str = "operator-secret-0123456789";
pub const ADMIN: &str = "admin-secret-0123456789";

/// `[[tokens]]` lines for `vic` (viewer), `olga` (operator) and `ada` (admin).
pub fn tokens_toml() -> String {
    [
        ("vic", "viewer", VIEWER),
        ("olga", "operator", OPERATOR),
        ("ada", "admin", ADMIN),
    ]
    .iter()
    .map(|(name, role, secret)| {
        format!(
            "\n[[tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            hex(&sha256(secret.as_bytes()))
        )
    })
    .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The example estate with the three tokens, written into `dir`.
pub fn estate_file(dir: &Path) -> PathBuf {
    let path = dir.join("estate.toml");
    std::fs::write(
        &path,
        format!("{}{}", rollback_node::EXAMPLE_ESTATE, tokens_toml()),
    )
    .unwrap();
    path
}

/// A running node with `--listen`.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<ChildStdout>,
    pub stderr: mpsc::Receiver<String>,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// The example estate with tokens, in memory, with these extra arguments.
    pub fn start(args: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let estate = estate_file(dir.path());
        Node::start_with(dir, &estate, args)
    }

    /// A node on `estate` with these extra arguments; fails loudly when it does not listen.
    pub fn start_with(dir: tempfile::TempDir, estate: &Path, args: &[&str]) -> Node {
        Node::start_listening(dir, estate, "127.0.0.1:0", args)
    }

    /// A node on `estate` listening on `listen` (such as the address an earlier node had),
    /// with these extra arguments; fails loudly when it does not listen.
    pub fn start_listening(
        dir: tempfile::TempDir,
        estate: &Path,
        listen: &str,
        args: &[&str],
    ) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rollback-node"))
            .arg("--estate")
            .arg(estate)
            .args(["--listen", listen])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the node starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.split("listening on http://").nth(1) {
                        break addr.trim().parse().unwrap();
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("the node did not say it listens; stderr: {seen:?}");
                }
            }
        };
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Node {
            child,
            addr,
            stdin,
            stdout,
            stderr: rx,
            dir,
        }
    }

    /// Sends a protocol line on stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next stdout line.
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    /// A request with `secret` as bearer token.
    pub fn call(&self, method: &str, path: &str, secret: Option<&str>, body: &str) -> Response {
        let auth = secret.map(|s| format!("Bearer {s}"));
        let mut headers = Vec::new();
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth.as_str()));
        }
        request(self.addr, method, path, &headers, body.as_bytes())
    }

    /// `POST /v1/messages` with a bearer token.
    pub fn post(&self, secret: &str, body: &str) -> Response {
        self.call("POST", "/v1/messages", Some(secret), body)
    }

    /// Sends SIGTERM and waits for the exit; returns its status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "the node did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One request on a new connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    // A refused body may close the connection before all of it is written.
    let _ = stream.write_all(body);
    read_response(&mut BufReader::new(stream))
}

/// Reads one response (its body by Content-Length, or to the end).
pub fn read_response(reader: &mut impl BufRead) -> Response {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let mut body = Vec::new();
    match length {
        Some(length) => {
            body.resize(length, 0);
            reader.read_exact(&mut body).unwrap();
        }
        None => {
            let _ = reader.read_to_end(&mut body);
        }
    }
    Response {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

/// An open event stream.
pub struct Events {
    reader: BufReader<TcpStream>,
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sse {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl Events {
    /// Opens `GET /v1/events` with these extra headers; panics unless it is 200
    /// `text/event-stream`.
    pub fn open(addr: SocketAddr, secret: &str, extra: &[(&str, &str)]) -> Events {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut head = format!(
            "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {secret}\r\n"
        );
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        let mut event_stream = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line
                .to_ascii_lowercase()
                .starts_with("content-type: text/event-stream")
            {
                event_stream = true;
            }
            if line.trim().is_empty() {
                break;
            }
        }
        assert!(event_stream, "not text/event-stream");
        Events { reader }
    }

    /// The next event (comments, such as heartbeats, and chunk sizes are skipped); `None` at
    /// the end of the stream.
    pub fn next(&mut self) -> Option<Sse> {
        let mut event = Sse {
            event: String::new(),
            id: None,
            data: String::new(),
        };
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = line.strip_prefix("event: ") {
                event.event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("id: ") {
                event.id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                event.data.push_str(v);
            } else if line.is_empty() && !event.event.is_empty() {
                return Some(event);
            }
        }
    }

    /// Reads until a comment line (`:…`, a heartbeat) and returns it; `None` at the end.
    pub fn next_comment(&mut self) -> Option<String> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(comment) = line.strip_prefix(':') {
                return Some(comment.trim().to_owned());
            }
        }
    }

    /// The next event of type `kind`, skipping others.
    pub fn next_of(&mut self, kind: &str) -> Sse {
        loop {
            let event = self.next().expect("the stream ended");
            if event.event == kind {
                return event;
            }
        }
    }
}
