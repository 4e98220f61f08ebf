//! A throwaway PgBouncer (Debian's 1.18, `/usr/sbin/pgbouncer`) in front of the throwaway
//! PostgreSQL server of `pg.rs`, shared by the tests of one binary, in transaction pooling mode:
//! a server connection belongs to a client only for one transaction, and clients take turns on a
//! pool of [`POOL_SIZE`] server connections per database. It listens only on a Unix socket in a
//! temp dir of its own; it authenticates nobody (`auth_type = trust`, the server's superuser in
//! its `auth_file`), and the server trusts it in turn. It runs as the server's user, so as an
//! unprivileged user when the tests run as root (PgBouncer refuses to run as root). It is
//! stopped and its dir removed when the process exits, and it gets SIGKILL if the process is
//! killed. A PgBouncer that cannot start fails the test with its log.
//!
//! Include it beside `pg.rs`, which it uses as `super::pg`:
//!
//! ```ignore
//! #[path = "support/pg.rs"]
//! mod pg;
//! #[path = "support/pgbouncer.rs"]
//! mod pgbouncer;
//! ```

#![allow(dead_code)]

use super::pg;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The PgBouncer binary.
pub const BIN: &str = "/usr/sbin/pgbouncer";

/// Server connections per (database, user) pool: small, so that pooling is real.
pub const POOL_SIZE: usize = 5;

/// Client connections PgBouncer accepts in all.
pub const MAX_CLIENT_CONN: usize = 100;

/// A running PgBouncer.
pub struct PgBouncer {
    /// The temp dir: configuration, auth file, socket and log.
    pub dir: PathBuf,
    /// The port number in the socket's name (`.s.PGSQL.PORT`); nothing listens on TCP.
    pub port: u16,
    /// The user clients log in as: the server's superuser.
    pub user: String,
    /// The PostgreSQL server behind it.
    pub server: &'static pg::PgServer,
}

static BOUNCER: OnceLock<PgBouncer> = OnceLock::new();
static PID: AtomicI32 = AtomicI32::new(0);
static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The shared PgBouncer (and the PostgreSQL server behind it), started on first use.
pub fn bouncer() -> &'static PgBouncer {
    BOUNCER.get_or_init(start)
}

extern "C" fn stop_at_exit() {
    let pid = PID.swap(0, Ordering::SeqCst);
    if pid > 0 {
        // SIGTERM: PgBouncer's immediate shutdown.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
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

/// The uid and gid of `user` when running as root (`None`: run as ourselves).
fn ids_of(user: &str) -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let c = CString::new(user).unwrap();
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    assert!(
        !pw.is_null(),
        "PgBouncer: the server's user {user:?} does not exist"
    );
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let r = unsafe { libc::chown(c.as_ptr(), uid, gid) };
    assert_eq!(
        r,
        0,
        "chown {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A port number no loopback TCP listener holds (bound, then released). Only the socket's name
/// carries it, but a free one keeps it from being mistaken for another service's.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn log_of(dir: &Path) -> String {
    fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_else(|e| format!("(no log: {e})"))
}

/// The configuration: transaction pooling, every database of the server behind one wildcard
/// entry (so each database gets a pool of its own, made on first use). The `postgres` crate's
/// startup packet holds `client_encoding` (which PgBouncer tracks), `user` and `database`, and
/// `options` or `application_name` only when the URL sets them; `extra_float_digits` is what
/// JDBC and psycopg send. `server_reset_query` is empty: transaction mode runs none anyway.
fn config(dir: &Path, port: u16, user: &str, server: &pg::PgServer) -> String {
    format!(
        "[databases]
* = host={server_dir} port=5432

[pgbouncer]
listen_port = {port}
unix_socket_dir = {dir}
auth_type = trust
auth_file = {dir}/userlist.txt
admin_users = {user}
stats_users = {user}
pool_mode = transaction
max_client_conn = {MAX_CLIENT_CONN}
default_pool_size = {POOL_SIZE}
min_pool_size = 0
reserve_pool_size = 0
server_reset_query =
server_login_retry = 1
server_connect_timeout = 5
ignore_startup_parameters = extra_float_digits,options
",
        server_dir = server.dir.display(),
        dir = dir.display(),
    )
}

fn start() -> PgBouncer {
    let server = pg::server();
    assert!(
        Path::new(BIN).exists(),
        "PgBouncer is not installed at {BIN}; install it with `sudo apt-get install -y pgbouncer`"
    );
    let dir = tempfile::Builder::new()
        .prefix("rn-pgb-")
        .tempdir_in("/tmp")
        .expect("a temp dir for PgBouncer")
        .keep();
    *DIR.lock().unwrap() = Some(dir.clone());
    unsafe {
        libc::atexit(stop_at_exit);
    }
    let user = server.user.clone();
    let ids = ids_of(&user);
    let port = free_port();
    let ini = dir.join("pgbouncer.ini");
    fs::write(&ini, config(&dir, port, &user, server)).unwrap();
    // trust: no password is checked, but the user must be listed.
    fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n")).unwrap();
    // It logs to stderr (no `logfile`), which goes here.
    let log_path = dir.join("pgbouncer.log");
    fs::File::create(&log_path).unwrap();
    if let Some(ids) = ids {
        for path in [&dir, &ini, &dir.join("userlist.txt"), &log_path] {
            chown(path, ids);
        }
    }

    // Spawned from a thread that lives as long as the process, so the parent-death signal
    // kills PgBouncer only when the process goes.
    let (tx, rx) = std::sync::mpsc::channel();
    let spawn_dir = dir.clone();
    std::thread::spawn(move || {
        let log = fs::OpenOptions::new()
            .append(true)
            .open(spawn_dir.join("pgbouncer.log"))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg(spawn_dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("HOME", &spawn_dir)
            .current_dir(&spawn_dir);
        if let Some((uid, gid)) = ids {
            cmd.uid(uid).gid(gid);
        }
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
        panic!("PgBouncer: cannot spawn {BIN}: {e}");
    }

    let bouncer = PgBouncer {
        dir,
        port,
        user,
        server,
    };
    // Up when its admin console answers (which needs no server connection).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = postgres::Client::connect(&bouncer.url("pgbouncer"), postgres::NoTls)
            .and_then(|mut c| c.simple_query("SHOW VERSION"));
        match answer {
            Ok(_) => break,
            Err(e) => {
                let pid = PID.load(Ordering::SeqCst);
                let mut status = 0;
                let exited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid;
                if exited || Instant::now() > deadline {
                    panic!(
                        "PgBouncer did not start ({e}{}); its log:\n{}",
                        if exited { ", it exited" } else { "" },
                        log_of(&bouncer.dir)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    bouncer
}

impl PgBouncer {
    /// The URL of a database of the server, through PgBouncer's Unix socket:
    /// `postgres://USER@/DATABASE?host=DIR&port=PORT`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@/{}?host={}&port={}",
            self.user,
            database,
            self.dir.display(),
            self.port
        )
    }

    /// A client connection to a database through PgBouncer.
    pub fn connect(&self, database: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(database), postgres::NoTls).unwrap_or_else(|e| {
            panic!(
                "cannot connect to {database} through PgBouncer: {e}; its log:\n{}",
                self.log()
            )
        })
    }

    /// A connection to the admin console (the `pgbouncer` database; simple queries only).
    pub fn admin(&self) -> postgres::Client {
        self.connect("pgbouncer")
    }

    /// One admin console command (such as `SHOW POOLS`), its rows as column → value maps
    /// (NULL as an empty string).
    pub fn show(&self, command: &str) -> Vec<BTreeMap<String, String>> {
        let messages = self
            .admin()
            .simple_query(command)
            .unwrap_or_else(|e| panic!("PgBouncer admin console: {command}: {e}"));
        messages
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => Some(
                    row.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.name().to_owned(), row.get(i).unwrap_or("").to_owned()))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// The `SHOW POOLS` row of `database`, if it has a pool yet.
    pub fn pool(&self, database: &str) -> Option<BTreeMap<String, String>> {
        self.show("SHOW POOLS")
            .into_iter()
            .find(|row| row.get("database").map(String::as_str) == Some(database))
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        log_of(&self.dir)
    }
}
