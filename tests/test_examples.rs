//! The README's runnable examples, run as it says (`examples/NAME/run.sh`, the binary given as
//! `ROLLBACK_NODE`), in a copy of the checkout's example files and `.gitignore`: each does what
//! the README says, and afterwards the checkout is clean (`git status --porcelain` says nothing,
//! and every example file is byte for byte what it was). The HAProxy example needs a running
//! HAProxy and two backends; here its script's HAProxy branch only checks the configuration
//! (where `haproxy` is installed) and the node is refused for want of a socket, and both leave the
//! checkout clean.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const NODE: &str = env!("CARGO_BIN_EXE_rollback-node");

fn checkout() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The README's block of runnable examples.
fn readme_examples() -> String {
    let readme = std::fs::read_to_string(checkout().join("README.md")).unwrap();
    let start = readme
        .find("Runnable examples, one per real executor")
        .expect("the README has its runnable examples");
    let block = &readme[start..];
    let open = block.find("```sh\n").unwrap() + "```sh\n".len();
    let close = block[open..].find("```").unwrap();
    block[open..open + close].to_owned()
}

/// The README's line that runs `script`, with what follows the script on it.
fn readme_command<'a>(block: &'a str, script: &str) -> &'a str {
    block
        .lines()
        .find_map(|line| line.strip_prefix(script))
        .unwrap_or_else(|| panic!("the README runs {script}:\n{block}"))
        .trim()
}

/// The lines of the here-document that follows the README's line running `script`.
fn readme_input(block: &str, script: &str) -> String {
    let mut lines = block.lines().skip_while(|line| !line.starts_with(script));
    let first = lines.next().unwrap();
    assert!(first.ends_with("<<'EOF'"), "{first}");
    let mut input = String::new();
    for line in lines.take_while(|line| *line != "EOF") {
        input.push_str(line);
        input.push('\n');
    }
    input
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(files(&path));
        } else {
            all.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    all
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            // Keeps the permission bits: run.sh stays executable.
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<Output> {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=examples",
            "-c",
            "user.email=examples@localhost",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(output)
}

/// A copy of the example `name` and the checkout's `.gitignore`, committed to a repository of
/// its own when git is there.
struct Copy {
    top: tempfile::TempDir,
    before: BTreeMap<PathBuf, Vec<u8>>,
    git: bool,
}

impl Copy {
    fn of(name: &str) -> Copy {
        let top = tempfile::tempdir().unwrap();
        copy_tree(
            &checkout().join("examples").join(name),
            &top.path().join("examples").join(name),
        );
        std::fs::copy(checkout().join(".gitignore"), top.path().join(".gitignore")).unwrap();
        let has_git = git(top.path(), &["init", "-q"]).is_some();
        if has_git {
            git(top.path(), &["add", "-A"]);
            git(
                top.path(),
                &["commit", "-q", "-m", "the example as checked out"],
            );
        }
        let before = files(&top.path().join("examples"));
        Copy {
            top,
            before,
            git: has_git,
        }
    }

    fn path(&self) -> &Path {
        self.top.path()
    }

    /// Runs `examples/NAME/run.sh ARGS` from the copy's top, as the README does, with `input`.
    fn run(&self, script: &str, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(self.path().join(script))
            .args(args)
            .current_dir(self.path())
            .env("ROLLBACK_NODE", NODE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{script} starts: {e}"));
        let written = child.stdin.take().unwrap().write_all(input.as_bytes());
        if let Err(e) = written {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
        child.wait_with_output().unwrap()
    }

    /// The checkout is as it was: nothing changed or new that git would show, and every example
    /// file byte for byte what it was, none added.
    fn assert_clean(&self) {
        if self.git {
            let status = git(
                self.path(),
                &["status", "--porcelain", "--untracked-files=all"],
            )
            .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&status.stdout),
                "",
                "the example left the checkout changed"
            );
        }
        assert_eq!(files(&self.path().join("examples")), self.before);
    }
}

#[test]
fn the_sqlite_example_writes_only_under_target() {
    let block = readme_examples();
    let script = "examples/sqlite/run.sh";
    let copy = Copy::of("sqlite");
    let output = copy.run(script, &[], &readme_input(&block, script));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(r#""type":"migrate_complete""#), "{stdout}");
    assert!(stdout.contains(r#""type":"rollback_complete""#), "{stdout}");

    // The README's sqlite3 line, and the row it says it prints.
    let line = block
        .lines()
        .find(|line| line.starts_with("sqlite3 "))
        .expect("the README reads the database");
    let database = line.split_whitespace().nth(1).unwrap();
    assert_eq!(database, "target/examples/sqlite/app.db");
    let said = line.rsplit("# ").next().unwrap().trim();
    let db = rusqlite::Connection::open(copy.path().join(database)).unwrap();
    let row: (i64, i64) = db
        .query_row("SELECT * FROM schema_migrations", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(format!("{}|{}", row.0, row.1), said);

    copy.assert_clean();
    // Run again: a fresh copy, the same answers, still clean.
    let again = copy.run(script, &[], &readme_input(&block, script));
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout).lines().count(), 3);
    copy.assert_clean();
}

#[test]
fn the_flagd_example_writes_only_under_target() {
    let block = readme_examples();
    let script = "examples/flagd/run.sh";
    let args: Vec<&str> = readme_command(&block, script).split_whitespace().collect();
    assert_eq!(args, ["--ofrep", "127.0.0.1:8016"]);
    // The README's arguments, on a port of the system's choosing: tests run side by side.
    let copy = Copy::of("flagd");
    let disable = concat!(
        r#"{"src":"oncall","dest":"n1","body":{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}}"#,
        "\n"
    );
    let output = copy.run(script, &["--ofrep", "127.0.0.1:0"], disable);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("serving OFREP"), "{stderr}");
    assert!(stdout.contains(r#""in_reply_to":1"#), "{stdout}");
    assert!(!stdout.contains(r#""type":"error""#), "{stdout}");

    // The kill switch wrote the copy's flag file, where the README says.
    let written: serde_json::Value = serde_json::from_slice(
        &std::fs::read(copy.path().join("target/examples/flagd/flags.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        written["flags"]["new_checkout"]["defaultVariant"],
        serde_json::json!("off")
    );
    copy.assert_clean();
}

#[test]
fn the_haproxy_example_stays_out_of_the_checkout() {
    let block = readme_examples();
    assert_eq!(
        readme_command(&block, "examples/haproxy/run.sh haproxy"),
        "&"
    );
    let copy = Copy::of("haproxy");
    // Where HAProxy is installed, the script's HAProxy branch checks the copied configuration
    // (`-c`: nothing is bound or made).
    if Command::new("haproxy").arg("-v").output().is_ok() {
        let checked = copy.run("examples/haproxy/run.sh", &["haproxy", "-c"], "");
        assert!(
            checked.status.success(),
            "{}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    // No HAProxy runs here: the node is refused at start, naming the copy's socket.
    let output = copy.run("examples/haproxy/run.sh", &[], "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("target/examples/haproxy/admin.sock"),
        "{stderr}"
    );
    assert!(copy
        .path()
        .join("target/examples/haproxy/haproxy.cfg")
        .is_file());
    copy.assert_clean();
}

/// The README's service example: it listens, its operator secret works over HTTP as the curl
/// line shows, SIGTERM stops it with 0, and the checkout is clean.
#[test]
fn the_service_example_listens_and_stays_out_of_the_checkout() {
    use std::io::{BufRead, BufReader, Read};
    let readme = std::fs::read_to_string(checkout().join("README.md")).unwrap();
    let section = &readme[readme.find("## As a service").unwrap()..];
    assert!(section.contains("examples/service/run.sh &"));
    let said = section
        .lines()
        .find(|l| l.starts_with("# {\"type\":\"feature_disabled\""))
        .expect("the README shows the reply")
        .trim_start_matches("# ");
    let copy = Copy::of("service");
    let mut child = Command::new(copy.path().join("examples/service/run.sh"))
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(copy.path())
        .env("ROLLBACK_NODE", NODE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the example did not listen"
        );
        if let Some(addr) = line.split("listening on http://").nth(1) {
            break addr.trim().to_owned();
        }
    };
    let work = copy.path().join("target/examples/service");
    let secret = std::fs::read_to_string(work.join("operator.secret")).unwrap();
    let estate = std::fs::read_to_string(work.join("estate.toml")).unwrap();
    assert!(
        !estate.contains(secret.trim()),
        "the estate holds hashes, never secrets"
    );
    let body = r#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /v1/messages HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        secret.trim(),
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(said), "{response}");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
    copy.assert_clean();
}

#[test]
fn the_cluster_example_fails_over_and_leaves_nothing() {
    let readme = std::fs::read_to_string(checkout().join("README.md")).unwrap();
    let section = &readme[readme.find("## Several nodes").unwrap()..];
    assert!(section.contains("examples/cluster/run.sh"));
    let copy = Copy::of("cluster");
    let out = copy.run("examples/cluster/run.sh", &[], "");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(r#""type":"feature_disabled""#), "{stdout}");
    assert!(stdout.contains(r#""type":"rollback_complete""#), "{stdout}");
    assert!(stderr.contains("new leader "), "{stderr}");
    let host = stderr
        .split("host=")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("the example names its store");
    assert!(
        !Path::new(host).parent().unwrap().exists(),
        "the example left {host}"
    );
    copy.assert_clean();
}

#[test]
fn the_ladder_example_climbs_to_an_approved_rollback_and_leaves_nothing() {
    let readme = std::fs::read_to_string(checkout().join("README.md")).unwrap();
    let section = &readme[readme.find("## The escalation ladder").unwrap()..];
    assert!(section.contains("examples/ladder/run.sh"));
    // `cargo test` builds the examples beside the binary.
    let app = Path::new(NODE)
        .parent()
        .unwrap()
        .join("examples")
        .join("ladder_app");
    assert!(app.is_file(), "{} was not built", app.display());
    let before = ladder_dirs();
    let copy = Copy::of("ladder");
    let mut command = Command::new(copy.path().join("examples/ladder/run.sh"));
    let out = command
        .current_dir(copy.path())
        .env("ROLLBACK_NODE", NODE)
        .env("LADDER_APP", &app)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    // status_ok.ladder climbed through the three rungs, waited, and cleared at the rollback.
    for state in [
        r#""rung": 0, "runs": 1, "signals": {"error_rate": 0.5}, "state": "verifying""#,
        r#""rung": 2, "runs": 1, "signals": {"error_rate": 0.5}, "state": "awaiting_approval""#,
        r#""rung": 2, "runs": 1, "signals": {"error_rate": 0.01}, "state": "cleared""#,
    ] {
        assert!(stdout.contains(state), "{state}\n{stdout}");
    }
    assert!(
        stdout.contains(r#"{"type":"rung_approved","in_reply_to":1,"rung":2}"#),
        "{stdout}"
    );
    // One history entry per rung, each with its why; the rollback's names who approved it.
    let entries: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with(r#"{"reply""#))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["request"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["disable_feature", "switch_traffic", "rollback"],
        "{stdout}"
    );
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["why"]["rung"], i, "{e}");
        assert_eq!(e["why"]["run"], 1, "{e}");
        assert!(!e["why"]["signals"]["error_rate"]
            .as_array()
            .unwrap()
            .is_empty());
    }
    assert_eq!(entries[2]["why"]["approved_by"], "alice");
    assert_eq!(entries[2]["reply"], "rollback_complete");
    assert!(stderr.contains("incident page is at http://"), "{stderr}");
    let left: Vec<PathBuf> = ladder_dirs().difference(&before).cloned().collect();
    assert!(left.is_empty(), "the example left {left:?}");
    copy.assert_clean();
}

/// The example's temp dirs under /tmp.
fn ladder_dirs() -> std::collections::BTreeSet<PathBuf> {
    std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rn-ladder."))
        })
        .collect()
}
