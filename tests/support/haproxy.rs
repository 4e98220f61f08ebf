//! A real HAProxy for the tests and the benchmark: two small HTTP servers answering their colour,
//! HAProxy in front of them (a child process, killed on drop) and a bounded keep-alive load
//! generator. Everything listens on 127.0.0.1 ephemeral ports.

#![allow(dead_code)]

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The effects `switch_traffic` emits for a real traffic layer: check the target, ready it,
/// drain the source.
pub fn switch_effects(
    from: rollback_node::Environment,
    to: rollback_node::Environment,
) -> Vec<rollback_node::core::effects::Effect> {
    use rollback_node::core::effects::{Effect, ServerState};
    vec![
        Effect::CheckHealthy { server: to },
        Effect::SetServerState {
            server: to,
            state: ServerState::Ready,
        },
        Effect::SetServerState {
            server: from,
            state: ServerState::Drain,
        },
    ]
}

/// Performs a switch's effects with the HAProxy executor.
pub fn switch(
    hx: &mut rollback_node::exec::haproxy::Haproxy,
    from: rollback_node::Environment,
    to: rollback_node::Environment,
) -> rollback_node::core::effects::Completion {
    use rollback_node::exec::Executor;
    hx.perform(&switch_effects(from, to), &mut |_| {})
}

/// The `haproxy` binary; installs Debian's package when missing and running as root, else
/// panics saying how to install it.
pub fn ensure_haproxy() -> &'static str {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return "haproxy";
    }
    let present = |_: ()| {
        Command::new("haproxy")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !present(()) {
        let root = fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        });
        assert!(
            root,
            "haproxy is not installed; install it with `sudo apt-get update && sudo apt-get install -y haproxy`"
        );
        for args in [
            &["update", "-qq"][..],
            &["install", "-y", "-qq", "haproxy"][..],
        ] {
            let out = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
                .expect("run apt-get");
            assert!(
                out.status.success(),
                "apt-get {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(present(()), "haproxy still missing after apt-get install");
    }
    *done = true;
    "haproxy"
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
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

/// An HTTP/1.1 server answering `200` with its colour as the body, keep-alive.
pub struct ColourServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl ColourServer {
    /// Starts serving `colour`.
    pub fn start(colour: &'static str) -> ColourServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let flag = flag.clone();
                std::thread::spawn(move || serve(conn, colour, flag));
            }
        });
        ColourServer {
            port,
            stop,
            accept: Some(accept),
        }
    }

    /// Stops accepting (new connections are refused) and closes idle connections.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ColourServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(conn: TcpStream, colour: &str, stop: Arc<AtomicBool>) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = conn.set_nodelay(true);
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut head = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line == "\r\n" || line == "\n" {
                        break;
                    }
                    head.push(line.trim_end().to_ascii_lowercase());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let http10 = head.first().is_some_and(|l| l.ends_with("http/1.0"));
        let close = head.iter().any(|h| h == "connection: close")
            || (http10 && !head.iter().any(|h| h == "connection: keep-alive"));
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{colour}",
            colour.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// HAProxy running as a child with backend `app` (servers `blue`, `green`), a backend `solo`
/// (server `blue` only), an admin socket and a user-level socket.
pub struct HaproxyProc {
    child: Child,
    /// The directory of the configuration, sockets and log.
    pub dir: tempfile::TempDir,
    /// `stats socket … level admin`.
    pub admin: PathBuf,
    /// `stats socket … level user`.
    pub user: PathBuf,
    /// The frontend's port.
    pub frontend: u16,
}

impl HaproxyProc {
    /// Starts HAProxy in front of the two ports, with green set to `drain`, and waits until blue
    /// is live and both are healthy.
    pub fn start(blue: u16, green: u16) -> HaproxyProc {
        let binary = ensure_haproxy();
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin.sock");
        let user = dir.path().join("user.sock");
        let frontend = free_port();
        let cfg = format!(
            "global
    stats socket {admin} mode 600 level admin
    stats socket {user} mode 600 level user
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout http-keep-alive 10s

frontend fe
    bind 127.0.0.1:{frontend}
    default_backend app

backend app
    option httpchk GET /health
    default-server check inter 100ms fall 2 rise 2
    server blue 127.0.0.1:{blue}
    server green 127.0.0.1:{green}

backend solo
    server blue 127.0.0.1:{blue}
",
            admin = admin.display(),
            user = user.display()
        );
        let cfg_path = dir.path().join("haproxy.cfg");
        fs::write(&cfg_path, cfg).unwrap();
        let log = fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(binary)
            .arg("-f")
            .arg(&cfg_path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let proc = HaproxyProc {
            child,
            dir,
            admin,
            user,
            frontend,
        };
        let up = wait_until(Duration::from_secs(10), || {
            proc.raw("show cli level")
                .is_ok_and(|a| a.trim() == "admin")
        });
        assert!(up, "haproxy did not come up: {}", proc.log());
        assert_eq!(
            proc.raw("set server app/green state drain").unwrap().trim(),
            ""
        );
        let ready = wait_until(Duration::from_secs(10), || {
            let s = proc.raw("show stat").unwrap_or_default();
            s.contains("app,blue,")
                && s.lines()
                    .filter(|l| l.starts_with("app,blue,") || l.starts_with("app,green,"))
                    .all(|l| l.contains(",UP,") || l.contains(",DRAIN,"))
                && s.lines()
                    .any(|l| l.starts_with("app,blue,") && l.contains(",UP,"))
                && s.lines()
                    .any(|l| l.starts_with("app,green,") && l.contains(",DRAIN,"))
        });
        assert!(
            ready,
            "backends not healthy in haproxy: {}",
            proc.raw("show stat").unwrap_or_default()
        );
        proc
    }

    /// One runtime-API command on the admin socket, answered raw.
    pub fn raw(&self, command: &str) -> io::Result<String> {
        let mut s = UnixStream::connect(&self.admin)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// HAProxy's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// Kills HAProxy now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HaproxyProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One request of the load generator.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent.
    pub start: Instant,
    /// The body (the colour) if a 200 came back.
    pub colour: Option<String>,
    /// The status, 0 if the request failed.
    pub status: u16,
}

/// A GET over a keep-alive connection; `None` when the connection failed.
pub fn get(stream: &mut BufReader<TcpStream>) -> Option<(u16, String)> {
    stream
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .ok()?;
    let mut line = String::new();
    stream.read_line(&mut line).ok()?;
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = 0usize;
    loop {
        line.clear();
        stream.read_line(&mut line).ok()?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A fresh connection to the port.
pub fn connect(port: u16) -> io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(BufReader::new(s))
}

/// One request on a new connection: `(status, body)`.
pub fn get_once(port: u16) -> Option<(u16, String)> {
    get(&mut connect(port).ok()?)
}

/// Keep-alive load: `threads` connections sending requests back to back (with `pause` between),
/// each stopping after `max_requests`, at `deadline`, or when stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts the load against `port`.
    pub fn start(
        port: u16,
        threads: usize,
        max_requests: usize,
        max_time: Duration,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + max_time;
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    let mut conn = connect(port).ok();
                    while !stop.load(Ordering::Relaxed)
                        && samples.len() < max_requests
                        && Instant::now() < deadline
                    {
                        let start = Instant::now();
                        let answer = conn.as_mut().and_then(get);
                        match answer {
                            Some((status, body)) => samples.push(Sample {
                                start,
                                colour: (status == 200).then_some(body),
                                status,
                            }),
                            None => {
                                samples.push(Sample {
                                    start,
                                    colour: None,
                                    status: 0,
                                });
                                conn = connect(port).ok();
                            }
                        }
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                    samples
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops it and returns every request, in no particular order.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}
