//! A throwaway Prometheus (the `prometheus` on `PATH`) for the tests: a temp dir for its
//! configuration, targets and TSDB, a free port on 127.0.0.1, `scrape_interval: 1s`, and the
//! scrape targets in a file (`file_sd`) that a test extends while it runs, each target with an
//! `app` label of its own. [`PromServer::start`] gives a server of one's own, killed on drop (or
//! [`PromServer::stop`], to make Prometheus unreachable mid-test); [`shared`] one per test
//! binary, killed when the process exits. If the test process is killed, the server gets
//! SIGKILL with it. A server that cannot start fails the test with its log.

#![allow(dead_code)]

use rollback_node::exec::prometheus::{NoData, Prometheus};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The binary.
pub const BIN: &str = "prometheus";

/// A running Prometheus.
pub struct PromServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its temp dir: `prometheus.yml`, `targets.json`, `data/`, `prometheus.log`.
    pub dir: PathBuf,
    child: Arc<Mutex<Option<Child>>>,
    keeper: Option<mpsc::Sender<()>>,
    targets: Mutex<Vec<(SocketAddr, String)>>,
    /// Targets registered ahead and not yet handed out ([`PromServer::take_target`]).
    pool: Mutex<Vec<(SocketAddr, String)>>,
    remove_dir: bool,
}

static SHARED: OnceLock<PromServer> = OnceLock::new();
static SHARED_PID: AtomicI32 = AtomicI32::new(0);
static SHARED_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// How many targets the shared server registers ahead ([`PromServer::take_target`]).
pub const SHARED_POOL: usize = 32;

/// The server shared by the tests of this binary, started on first use, with
/// [`SHARED_POOL`] targets registered ahead.
pub fn shared() -> &'static PromServer {
    SHARED.get_or_init(|| {
        let mut server = PromServer::start();
        server.remove_dir = false;
        server.reserve_targets(SHARED_POOL);
        if let Some(child) = server.child.lock().unwrap().as_ref() {
            SHARED_PID.store(child.id() as i32, Ordering::SeqCst);
        }
        *SHARED_DIR.lock().unwrap() = Some(server.dir.clone());
        unsafe {
            libc::atexit(stop_shared_at_exit);
        }
        server
    })
}

extern "C" fn stop_shared_at_exit() {
    let pid = SHARED_PID.swap(0, Ordering::SeqCst);
    if pid > 0 {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    }
    if let Ok(mut dir) = SHARED_DIR.lock() {
        if let Some(dir) = dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A port free now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &Path) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: app\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
        dir.join("targets.json").display()
    )
}

impl PromServer {
    /// Starts a server of its own, with no targets yet; panics with its log if it does not
    /// become ready.
    pub fn start() -> PromServer {
        let dir = tempfile::Builder::new()
            .prefix("rn-prometheus-")
            .tempdir_in("/tmp")
            .expect("a temp dir for Prometheus")
            .keep();
        std::fs::write(dir.join("prometheus.yml"), config(&dir)).unwrap();
        std::fs::write(dir.join("targets.json"), "[]").unwrap();
        // The port is free when asked but may be taken before Prometheus binds it: try again.
        let mut last_log = String::new();
        for _ in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut server = PromServer::spawn(&dir, addr);
            match server.wait_ready() {
                Ok(()) => return server,
                Err(log) => {
                    server.kill();
                    if !log.contains("address already in use") {
                        let _ = std::fs::remove_dir_all(&dir);
                        panic!("Prometheus did not start; its log:\n{log}");
                    }
                    last_log = log;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("Prometheus found no free port; its log:\n{last_log}");
    }

    /// Spawns `prometheus` from a thread that lives as long as the server, so that the
    /// parent-death signal kills it only when the server is stopped or the process dies.
    fn spawn(dir: &Path, addr: SocketAddr) -> PromServer {
        let (child, keeper) = PromServer::spawn_child(dir, addr);
        PromServer {
            addr,
            dir: dir.to_owned(),
            child,
            keeper: Some(keeper),
            targets: Mutex::new(Vec::new()),
            pool: Mutex::new(Vec::new()),
            remove_dir: true,
        }
    }

    /// Spawns the process (its log appended to `prometheus.log`); returns where the keeper
    /// thread holds it and the keeper's stop channel.
    fn spawn_child(dir: &Path, addr: SocketAddr) -> (Arc<Mutex<Option<Child>>>, mpsc::Sender<()>) {
        let child: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
        let (keeper, stop) = mpsc::channel::<()>();
        let (ready, spawned) = mpsc::channel();
        let (held, spawn_dir) = (Arc::clone(&child), dir.to_owned());
        std::thread::spawn(move || {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(spawn_dir.join("prometheus.log"))
                .unwrap();
            let mut cmd = Command::new(BIN);
            cmd.arg(format!(
                "--config.file={}",
                spawn_dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                spawn_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .current_dir(&spawn_dir);
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(c) => {
                    *held.lock().unwrap() = Some(c);
                    ready.send(Ok(())).unwrap();
                    // Until stopped (a message, or the server dropped).
                    let _ = stop.recv();
                    if let Some(mut c) = held.lock().unwrap().take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                }
                Err(e) => ready.send(Err(e.to_string())).unwrap(),
            }
        });
        if let Err(e) = spawned.recv().unwrap() {
            panic!("cannot spawn {BIN} (is Prometheus installed?): {e}");
        }
        (child, keeper)
    }

    /// Starts it again after [`PromServer::stop`], on the same address, configuration, targets
    /// and TSDB; panics with its log if it does not become ready.
    pub fn restart(&mut self) {
        assert!(self.keeper.is_none(), "Prometheus is still running");
        let (child, keeper) = PromServer::spawn_child(&self.dir, self.addr);
        self.child = child;
        self.keeper = Some(keeper);
        if let Err(log) = self.wait_ready() {
            self.kill();
            panic!(
                "Prometheus did not start again on {}; its log:\n{log}",
                self.addr
            );
        }
    }

    /// Waits until `/-/ready` answers 200; the log when it exits or 30 s pass first.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if get(self.addr, "/-/ready").is_some_and(|(status, _)| status == 200) {
                return Ok(());
            }
            let exited = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if exited || Instant::now() > deadline {
                return Err(self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of its API.
    pub fn client(&self) -> Prometheus {
        Prometheus::new(&self.base(), Duration::from_secs(2)).unwrap()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Scrapes `addr` (its `/metrics`) from now on, its series labelled `app="{app}"`. A new
    /// target is discovered within about 5 s (Prometheus sends discovery updates at most every
    /// 5 s); [`PromServer::take_target`] saves that wait.
    pub fn add_target(&self, addr: SocketAddr, app: &str) {
        self.add_targets(&[(addr, app.to_owned())]);
    }

    /// Registers `n` targets on addresses free now, labelled `app="pool-K"`, scraped (and
    /// failing) until something serves there: [`PromServer::take_target`] hands them out.
    pub fn reserve_targets(&self, n: usize) {
        let first = self.targets.lock().unwrap().len();
        let reserved: Vec<(SocketAddr, String)> = (0..n)
            .map(|k| {
                let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                (addr, format!("pool-{}", first + k))
            })
            .collect();
        self.add_targets(&reserved);
        self.pool.lock().unwrap().extend(reserved);
    }

    /// A target registered ahead, already being scraped: an address to serve `/metrics` on and
    /// its `app` label; `None` when none is left.
    pub fn take_target(&self) -> Option<(SocketAddr, String)> {
        let mut pool = self.pool.lock().unwrap();
        (!pool.is_empty()).then(|| pool.remove(0))
    }

    fn add_targets(&self, new: &[(SocketAddr, String)]) {
        let mut targets = self.targets.lock().unwrap();
        targets.extend_from_slice(new);
        let groups: Vec<serde_json::Value> = targets
            .iter()
            .map(|(addr, app)| {
                serde_json::json!({"targets": [addr.to_string()], "labels": {"app": app}})
            })
            .collect();
        let tmp = self.dir.join("targets.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&groups).unwrap()).unwrap();
        std::fs::rename(&tmp, self.dir.join("targets.json")).unwrap();
    }

    /// Asks `query` until `ok` holds of its answer; panics with the last answer and the log
    /// after `within`.
    pub fn wait_for(
        &self,
        query: &str,
        within: Duration,
        ok: impl Fn(&Result<f64, NoData>) -> bool,
    ) {
        let client = self.client();
        let deadline = Instant::now() + within;
        loop {
            let got = client.query(query);
            if ok(&got) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{query}: still {got:?} after {within:?}; the Prometheus log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills it now (its API becomes unreachable); its dir stays until drop.
    pub fn stop(&mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.send(());
        }
        // The keeper thread kills and reaps it; wait until it has.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.lock().unwrap().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        self.kill();
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A plain `GET` on a new connection: the status and body, or `None` when there is no answer.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}
