//! A throwaway PostgreSQL 15 server shared by the tests of one binary: `initdb` into a temp
//! dir, `postgres` listening only on a Unix socket in that dir, one database per test. As root
//! (CI), the server runs as an unprivileged user (`rollbacktest`, created if missing, else
//! `nobody`). The server is stopped and its dir removed when the process exits; if the process
//! is killed, the server gets SIGKILL with it. A server that cannot start fails the test with its
//! log.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where the PostgreSQL 15 binaries are.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running server.
pub struct PgServer {
    /// The temp dir: data, socket and log.
    pub dir: PathBuf,
    /// The user the server runs as, also its superuser.
    pub user: String,
}

static SERVER: OnceLock<PgServer> = OnceLock::new();
static PID: AtomicI32 = AtomicI32::new(0);
static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The shared server, started on first use.
pub fn server() -> &'static PgServer {
    SERVER.get_or_init(start)
}

extern "C" fn stop_at_exit() {
    let pid = PID.swap(0, Ordering::SeqCst);
    if pid > 0 {
        // SIGQUIT: PostgreSQL's immediate shutdown.
        unsafe {
            libc::kill(pid, libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let mut status = 0;
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid || r < 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    if let Ok(mut dir) = DIR.lock() {
        if let Some(dir) = dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what}: {}: {text}", out.status))
    }
}

/// The user to run the server as, and its uid/gid (`None`: ourselves).
fn server_user() -> (String, Option<(u32, u32)>) {
    if unsafe { libc::geteuid() } != 0 {
        let name = std::env::var("USER").unwrap_or_else(|_| "postgres".into());
        let name = run(Command::new("id").arg("-un"), "id -un")
            .map(|s| s.trim().to_owned())
            .unwrap_or(name);
        return (name, None);
    }
    let lookup = |name: &str| -> Option<(u32, u32)> {
        let c = CString::new(name).ok()?;
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if pw.is_null() {
            None
        } else {
            unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
        }
    };
    if lookup("rollbacktest").is_none() {
        let _ = run(
            Command::new("useradd").args([
                "-r",
                "-M",
                "-d",
                "/nonexistent",
                "-s",
                "/usr/sbin/nologin",
                "rollbacktest",
            ]),
            "useradd rollbacktest",
        );
    }
    for name in ["rollbacktest", "nobody"] {
        if let Some(ids) = lookup(name) {
            return (name.to_owned(), Some(ids));
        }
    }
    panic!("running as root and neither `rollbacktest` (useradd failed) nor `nobody` exists");
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    unsafe {
        libc::chown(c.as_ptr(), uid, gid);
    }
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

fn log_of(dir: &Path) -> String {
    fs::read_to_string(dir.join("server.log")).unwrap_or_else(|e| format!("(no log: {e})"))
}

fn start() -> PgServer {
    let dir = tempfile::Builder::new()
        .prefix("rn-pg-")
        .tempdir_in("/tmp")
        .expect("a temp dir for PostgreSQL")
        .keep();
    *DIR.lock().unwrap() = Some(dir.clone());
    unsafe {
        libc::atexit(stop_at_exit);
    }
    let (user, ids) = server_user();
    if let Some((uid, gid)) = ids {
        chown_tree(&dir, uid, gid);
    }
    let as_user = |cmd: &mut Command| {
        if let Some((uid, gid)) = ids {
            cmd.uid(uid).gid(gid);
        }
        cmd.env("HOME", &dir).current_dir(&dir);
    };
    let data = dir.join("data");
    let mut initdb = Command::new(format!("{BIN}/initdb"));
    initdb.args([
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
        "-U",
        &user,
        "-D",
    ]);
    initdb.arg(&data);
    as_user(&mut initdb);
    if let Err(e) = run(&mut initdb, "initdb") {
        panic!("PostgreSQL: {e}");
    }

    // Spawned from a thread that lives as long as the process, so the parent-death signal
    // kills the server only when the process goes.
    let (tx, rx) = std::sync::mpsc::channel();
    let spawn_dir = dir.clone();
    let spawn_data = data.clone();
    std::thread::spawn(move || {
        let log = fs::File::create(spawn_dir.join("server.log")).unwrap();
        if let Some((uid, gid)) = ids {
            chown_tree(&spawn_dir.join("server.log"), uid, gid);
        }
        let mut cmd = Command::new(format!("{BIN}/postgres"));
        cmd.arg("-D")
            .arg(&spawn_data)
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", spawn_dir.display()))
            .args(["-c", "fsync=off", "-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((uid, gid)) = ids {
            cmd.uid(uid).gid(gid);
        }
        cmd.env("HOME", &spawn_dir).current_dir(&spawn_dir);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => {
                PID.store(child.id() as i32, Ordering::SeqCst);
                tx.send(Ok(())).unwrap();
                // Keep the child handle (and this thread) alive until the process exits.
                let _child = child;
                loop {
                    std::thread::park();
                }
            }
            Err(e) => tx.send(Err(e.to_string())).unwrap(),
        }
    });
    if let Err(e) = rx.recv().unwrap() {
        panic!("PostgreSQL: cannot spawn postgres: {e}");
    }

    let server = PgServer { dir, user };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match postgres::Client::connect(&server.url("postgres"), postgres::NoTls) {
            Ok(_) => break,
            Err(e) => {
                let pid = PID.load(Ordering::SeqCst);
                let mut status = 0;
                let exited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid;
                if exited || Instant::now() > deadline {
                    panic!(
                        "PostgreSQL did not start ({e}); its log:\n{}",
                        log_of(&server.dir)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    server
}

impl PgServer {
    /// The URL of a database on this server, over the Unix socket.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@/{}?host={}",
            self.user,
            database,
            self.dir.display()
        )
    }

    /// A connection to a database.
    pub fn connect(&self, database: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(database), postgres::NoTls).unwrap_or_else(|e| {
            panic!(
                "cannot connect to {database}: {e}; server log:\n{}",
                log_of(&self.dir)
            )
        })
    }

    /// Creates a fresh database named after `hint` and returns its URL.
    pub fn create_database(&self, hint: &str) -> (String, String) {
        let n = NEXT_DB.fetch_add(1, Ordering::SeqCst);
        let clean: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let name = format!("t{n}_{clean}");
        self.connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        (self.url(&name), name)
    }
}
