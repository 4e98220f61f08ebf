//! What a new user meets: a state directory they may read but not write, the README's recovery
//! steps as written, hostile input that must not grow memory, the built-in estate printed and
//! announced, estate errors on one line, and the README's commands and `--help` as the binary
//! really answers them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const NODE: &str = env!("CARGO_BIN_EXE_rollback-node");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the node as the current user, or as `nobody` when `unprivileged` and the tests run as
/// root (root ignores permission bits).
fn run(args: &[&str], input: &str, unprivileged: bool) -> Output {
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if unprivileged && root {
        let mut command = Command::new("runuser");
        command.args(["-u", "nobody", "--"]).arg(node_for_anyone());
        command
    } else {
        Command::new(NODE)
    };
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the node starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A copy of the binary that any user may run, whatever the permissions of the checkout it was
/// built in.
fn node_for_anyone() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rollback-node-anyone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("rollback-node");
        std::fs::copy(NODE, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
    .clone()
}

const CHANGES: &str = concat!(
    r#"{"src":"oncall","dest":"n1","body":{"type":"switch_traffic","msg_id":1,"from":"green","to":"blue"}}"#,
    "\n",
    r#"{"src":"oncall","dest":"n1","body":{"type":"rollback","msg_id":2,"version":3}}"#,
    "\n",
    r#"{"src":"oncall","dest":"n1","body":{"type":"disable_feature","msg_id":3,"feature":"new_checkout"}}"#,
    "\n",
);

/// A state directory holding three accepted changes, readable by everyone.
fn populated() -> (tempfile::TempDir, PathBuf) {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("state");
    let output = run(&["--state-dir", dir.to_str().unwrap()], CHANGES, false);
    assert!(output.status.success(), "{}", text(&output.stderr));
    use std::os::unix::fs::PermissionsExt;
    for path in [top.path(), &dir] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    (top, dir)
}

#[test]
fn a_directory_that_cannot_be_written_is_not_called_damaged() {
    let (_top, dir) = populated();
    let dir_arg = dir.to_str().unwrap();
    // status and history only read: they work.
    let status = run(&["status", "--state-dir", dir_arg], "", true);
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(text(&status.stdout).contains(r#""live_environment":"blue""#));
    let history = run(&["history", "--state-dir", dir_arg], "", true);
    assert!(history.status.success(), "{}", text(&history.stderr));
    assert_eq!(text(&history.stdout).lines().count(), 3);
    // The node must write: it says so, naming the directory and what to do.
    let serve = run(&["--state-dir", dir_arg], "", true);
    assert_eq!(serve.status.code(), Some(2));
    let stderr = text(&serve.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot be written"), "{stderr}");
    assert!(stderr.contains(dir_arg), "{stderr}");
    assert!(stderr.contains("--state-dir"), "{stderr}");
    assert!(!stderr.contains("damaged"), "{stderr}");
}

#[test]
fn the_readme_recovery_steps_hold() {
    let readme = include_str!("../README.md");
    assert!(readme
        .contains("`rollback-node history --state-dir OLD` prints every change before the damage"));
    let (top, dir) = populated();
    let conn = rusqlite::Connection::open(dir.join("journal.sqlite3")).unwrap();
    conn.execute(
        r#"UPDATE journal SET request = '{"type":"rollback","version":1}' WHERE seq = 2"#,
        [],
    )
    .unwrap();
    drop(conn);
    // 1. Keep the damaged directory: move it aside.
    let old = top.path().join("old");
    std::fs::rename(&dir, &old).unwrap();
    let old_arg = old.to_str().unwrap();
    // 2. Read what can be read: the entries before the damage, the damaged one named.
    let history = run(&["history", "--state-dir", old_arg], "", false);
    assert_ne!(history.status.code(), Some(0));
    let lines: Vec<String> = text(&history.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(r#""seq":1"#), "{}", lines[0]);
    assert!(
        text(&history.stderr).contains("journal entry 2 fails its checksum"),
        "{}",
        text(&history.stderr)
    );
    // ... and every row, with the statement the README gives.
    let conn = rusqlite::Connection::open(old.join("journal.sqlite3")).unwrap();
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT seq, src, msg_id, request, reply FROM journal)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 3);
    assert!(readme.contains("'SELECT seq, src, msg_id, request, reply FROM journal'"));
    // 3. The real position, written into an estate, started in a new directory.
    let estate = rollback_node::EXAMPLE_ESTATE
        .replace("schema_version = 3", "schema_version = 2")
        .replace("live = \"green\"", "live = \"blue\"")
        .replace("new_checkout = true", "new_checkout = false");
    let estate_path = top.path().join("position.toml");
    std::fs::write(&estate_path, estate).unwrap();
    let new = top.path().join("new");
    let status_line = r#"{"src":"oncall","dest":"n1","body":{"type":"status","msg_id":1}}"#;
    let started = run(
        &[
            "--state-dir",
            new.to_str().unwrap(),
            "--estate",
            estate_path.to_str().unwrap(),
        ],
        status_line,
        false,
    );
    assert!(started.status.success(), "{}", text(&started.stderr));
    assert!(text(&started.stdout).contains(
        r#""schema_version":2,"live_environment":"blue","flags":{"new_checkout":false}"#
    ));
}

#[test]
fn hostile_names_are_quoted_short_and_memory_stays_bounded() {
    use rollback_node::core::retries::MAX_BYTES;
    let mut node = rollback_node::Session::example();
    let name = "x".repeat(512 * 1024);
    for id in 1..=100u64 {
        let line = format!(
            r#"{{"src":"c","dest":"n1","body":{{"type":"disable_feature","msg_id":{id},"feature":"{name}"}}}}"#
        );
        let mut out = Vec::new();
        node.handle_line(line.as_bytes(), &mut out);
        assert!(out.len() < 512, "a {} byte reply", out.len());
        let reply = text(&out);
        assert!(
            reply.contains(&format!("… ({} bytes in all)", name.len())),
            "{reply}"
        );
    }
    assert!(node.machine().answered().bytes() <= MAX_BYTES);
    assert!(
        node.machine().answered().len() < 100,
        "old refusals were forgotten"
    );
}

#[test]
fn the_built_in_estate_can_be_printed_and_is_announced() {
    let printed = run(&["example-estate"], "", false);
    assert!(printed.status.success());
    assert_eq!(
        text(&printed.stdout).trim_end(),
        rollback_node::EXAMPLE_ESTATE.trim_end()
    );
    let dir = tempfile::tempdir().unwrap();
    let estate = dir.path().join("my.toml");
    std::fs::write(&estate, &printed.stdout).unwrap();
    let line = r#"{"src":"a","dest":"n1","body":{"type":"rollback","msg_id":1,"version":3}}"#;
    let with_it = run(&["--estate", estate.to_str().unwrap()], line, false);
    assert!(text(&with_it.stdout).contains("rollback_complete"));
    // The first start with --state-dir and no --estate says so, in one line.
    let state = dir.path().join("state");
    let first = run(&["--state-dir", state.to_str().unwrap()], line, false);
    let stderr = text(&first.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("built-in example estate"), "{stderr}");
    assert!(stderr.contains("--estate"), "{stderr}");
    let again = run(&["--state-dir", state.to_str().unwrap()], "", false);
    assert!(!text(&again.stderr).contains("built-in example estate"));
}

#[test]
fn a_bad_estate_is_one_line_naming_file_line_and_what_is_right() {
    let dir = tempfile::tempdir().unwrap();
    let estate = dir.path().join("bad.toml");
    std::fs::write(
        &estate,
        rollback_node::EXAMPLE_ESTATE.replace("rows = 100000", "rows = -1"),
    )
    .unwrap();
    let output = run(&["--estate", estate.to_str().unwrap()], "", false);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bad.toml: line"), "{stderr}");
    assert!(stderr.contains("rows = -1"), "{stderr}");
    assert!(
        stderr.contains("from 0 to 18446744073709551615"),
        "{stderr}"
    );
}

/// The text between `<!-- NAME -->` and `<!-- /NAME -->` in the README, without the code fence.
fn readme_block(name: &str) -> String {
    let readme = include_str!("../README.md");
    let start = readme
        .find(&format!("<!-- {name} -->"))
        .unwrap_or_else(|| panic!("README has no <!-- {name} --> block"));
    let end = readme[start..]
        .find(&format!("<!-- /{name} -->"))
        .map(|e| start + e)
        .unwrap();
    let block = &readme[start..end];
    let body_start = block
        .find("```")
        .map(|i| i + block[i..].find('\n').unwrap() + 1)
        .unwrap();
    let body_end = block.rfind("```").unwrap();
    block[body_start..body_end].to_owned()
}

#[test]
fn the_readme_help_is_what_help_prints() {
    let help = run(&["--help"], "", false);
    assert!(help.status.success());
    let lines = |text: &str| -> Vec<String> {
        text.trim_end()
            .lines()
            .map(|l| l.trim_end().to_owned())
            .collect()
    };
    assert_eq!(
        lines(&readme_block("help")),
        lines(&format!("$ rollback-node --help\n{}", text(&help.stdout))),
        "the README's --help block drifted from the binary's; copy the binary's output into it"
    );
}

#[test]
fn the_readme_example_is_what_the_node_answers() {
    let block = readme_block("example");
    let mut requests = String::new();
    let mut replies = Vec::new();
    for line in block.lines() {
        match line.strip_prefix("-> ") {
            Some(reply) => replies.push(reply.to_owned()),
            None => {
                requests.push_str(line);
                requests.push('\n');
            }
        }
    }
    assert_eq!(
        requests,
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/task.jsonl"))
            .unwrap()
    );
    let output = run(&[], &requests, false);
    let got: Vec<String> = text(&output.stdout).lines().map(str::to_owned).collect();
    assert_eq!(got, replies);
}
