//! A Python virtual environment with the OpenFeature SDK and the flagd and OFREP providers, and a
//! handle on `openfeature_client.py` running in it.
//!
//! The environment lives under the integration tests' target temporary directory and is reused
//! across runs; a file lock keeps concurrent test binaries from building it twice. If it cannot be
//! built, the caller panics with pip's output: these tests never skip.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The packages installed, pinned to versions whose options the client script uses.
pub const PACKAGES: [&str; 3] = [
    "openfeature-sdk==0.10.0",
    "openfeature-provider-flagd==0.6.1",
    "openfeature-provider-ofrep==0.3.0",
];

/// The client script.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/openfeature_client.py")
}

/// The venv's python, building the venv first if needed. Panics with the reason if it cannot.
pub fn venv_python() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(base).expect("create the target temporary directory");
    let venv = base.join("openfeature-venv");
    let python = venv.join("bin/python");
    let marker = venv.join("installed.txt");
    let wanted = PACKAGES.join("\n");
    let lock = File::create(base.join("openfeature-venv.lock")).expect("create the venv lock file");
    lock.lock().expect("lock the venv lock file");
    if fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return python;
    }
    let interpreter = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let _ = fs::remove_dir_all(&venv);
    run(
        Command::new(&interpreter).args(["-m", "venv"]).arg(&venv),
        &format!("{interpreter} -m venv"),
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PACKAGES),
        "pip install of the OpenFeature SDK and providers (needs the Python package index)",
    );
    fs::write(&marker, &wanted).expect("write the venv marker");
    python
}

fn run(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| {
        panic!("{what}: could not start: {e}; install python3 with the venv module")
    });
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nanoseconds since the Unix epoch, the clock the script prints.
pub fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// `openfeature_client.py` running; killed on drop.
pub struct PyClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// The script's first line (`ready …`).
    pub ready: String,
}

impl PyClient {
    /// Starts the script: `provider` is `flagd-file` or `ofrep`, `behaviour` `watch` or `step`.
    /// Waits (up to 60 s) for its `ready` line.
    pub fn spawn(
        provider: &str,
        source: &str,
        flag: &str,
        behaviour: &str,
        poll_ms: u64,
    ) -> PyClient {
        let python = venv_python();
        let mut child = Command::new(python)
            .arg(script())
            .args([provider, source, flag, behaviour, &poll_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start openfeature_client.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut client = PyClient {
            child,
            stdin: None,
            lines,
            stderr,
            ready: String::new(),
        };
        client.stdin = client.child.stdin.take();
        client.ready = client.line(Duration::from_secs(60));
        assert!(
            client.ready.starts_with("ready"),
            "unexpected first line {:?}",
            client.ready
        );
        client
    }

    /// The next line printed, or a panic with the script's stderr after `timeout`.
    pub fn line(&self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(e) => panic!(
                "openfeature_client.py printed nothing within {timeout:?} ({e}); its stderr:\n{}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// `step` behaviour: evaluates once; returns `(value, variant, reason)`.
    pub fn step(&mut self) -> (bool, String, String) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(b"eval\n")
            .and_then(|_| stdin.flush())
            .expect("write to the client");
        let line = self.line(Duration::from_secs(10));
        let parts: Vec<&str> = line.split(' ').collect();
        assert!(
            parts.len() == 4 && parts[0] == "value",
            "unexpected line {line:?}"
        );
        (parts[1] == "True", parts[2].to_owned(), parts[3].to_owned())
    }

    /// `watch` behaviour: waits for the next change; returns `(value, unix_ns when seen)`.
    pub fn change(&self, timeout: Duration) -> (bool, u128) {
        let line = self.line(timeout);
        let parts: Vec<&str> = line.split(' ').collect();
        assert!(
            parts.len() == 3 && parts[0] == "change",
            "unexpected line {line:?}"
        );
        (parts[1] == "True", parts[2].parse().expect("a timestamp"))
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
