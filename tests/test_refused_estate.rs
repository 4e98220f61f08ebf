//! An estate refused at start (exit 2, one line) leaves `--state-dir` exactly as it was: a new
//! directory is not created, an existing one keeps every file byte for byte, and the corrected
//! estate then starts on the same directory. Through the binary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const NODE: &str = env!("CARGO_BIN_EXE_rollback-node");

const STATUS: &str = r#"{"src":"admin","dest":"n1","body":{"type":"status","msg_id":1}}"#;
const DISABLE: &str = r#"{"src":"admin","dest":"n1","body":{"type":"disable_feature","msg_id":2,"feature":"new_checkout"}}"#;

fn node(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(NODE)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the node starts");
    // A refused start exits without reading its input: a broken pipe is no failure.
    let written = child.stdin.take().unwrap().write_all(input.as_bytes());
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

fn start(estate: &Path, state: &Path, input: &str) -> Output {
    node(
        &[
            "--estate",
            estate.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        input,
    )
}

/// Asserts a refusal: exit 2, one line on stderr that contains `names`, nothing on stdout.
fn assert_refused(output: &Output, names: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(names), "{names:?} in {stderr}");
    assert!(output.stdout.is_empty());
}

/// Asserts a start that served: exit 0 and a `status_ok` reply.
fn assert_serves(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(r#""type":"status_ok""#), "{stdout}");
}

/// Every file under `dir` (recursively), with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            for (inner, bytes) in files(&path) {
                all.insert(format!("{name}/{inner}"), bytes);
            }
        } else {
            all.insert(name, std::fs::read(&path).unwrap());
        }
    }
    all
}

const GOOD_FLAGD: &str = "[flags]\nnew_checkout = true\n\n[flagd]\nfile = \"flags/flags.json\"\n";

#[test]
fn an_estate_that_does_not_parse_creates_no_state_directory() {
    let top = tempfile::tempdir().unwrap();
    let state = top.path().join("state");
    let bad = top.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[flags]\nnew_checkout = true\ncolour = \"blue\"\n[nonsense]\n",
    )
    .unwrap();
    let output = start(&bad, &state, STATUS);
    assert_refused(&output, "bad.toml");
    assert!(
        !state.exists(),
        "a refused estate created {}",
        state.display()
    );

    // The corrected estate starts on the same directory.
    let good = top.path().join("good.toml");
    std::fs::write(&good, "[flags]\nnew_checkout = true\n").unwrap();
    assert_serves(&start(&good, &state, STATUS));
    assert!(state.join("journal.sqlite3").is_file());
}

#[test]
fn an_estate_whose_flag_file_cannot_be_written_creates_no_state_directory() {
    let top = tempfile::tempdir().unwrap();
    let state = top.path().join("state");
    let estate = top.path().join("estate.toml");
    std::fs::write(&estate, GOOD_FLAGD).unwrap();
    // flags/ does not exist yet: the flag file cannot be made, so the estate is refused.
    let output = start(&estate, &state, STATUS);
    assert_refused(&output, "flags");
    assert!(
        !state.exists(),
        "a refused estate created {}",
        state.display()
    );

    std::fs::create_dir(top.path().join("flags")).unwrap();
    assert_serves(&start(&estate, &state, STATUS));
    assert!(top.path().join("flags/flags.json").is_file());
}

#[test]
fn an_estate_whose_migrations_are_missing_creates_no_state_directory() {
    let top = tempfile::tempdir().unwrap();
    let state = top.path().join("state");
    let estate = top.path().join("estate.toml");
    std::fs::write(
        &estate,
        "[schema]\ndatabase = \"sqlite:app.db\"\nmigrations = \"migrations\"\n",
    )
    .unwrap();
    let output = start(&estate, &state, STATUS);
    assert_refused(&output, "migrations");
    assert!(
        !state.exists(),
        "a refused estate created {}",
        state.display()
    );

    let migrations = top.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(
        migrations.join("1_create_users.up.sql"),
        "CREATE TABLE users (id INTEGER PRIMARY KEY);",
    )
    .unwrap();
    std::fs::write(
        migrations.join("1_create_users.down.sql"),
        "DROP TABLE users;",
    )
    .unwrap();
    assert_serves(&start(&estate, &state, STATUS));
}

#[test]
fn a_refused_start_leaves_an_existing_state_directory_byte_for_byte() {
    let top = tempfile::tempdir().unwrap();
    let state = top.path().join("state");
    let estate = top.path().join("estate.toml");
    std::fs::write(&estate, GOOD_FLAGD).unwrap();
    std::fs::create_dir(top.path().join("flags")).unwrap();
    let first = start(&estate, &state, &format!("{DISABLE}\n"));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let before = files(&state);
    assert!(
        before.contains_key("journal.sqlite3"),
        "{:?}",
        before.keys()
    );

    // Another estate than the one the directory was created for.
    let other = top.path().join("other.toml");
    std::fs::write(&other, "[flags]\nnew_checkout = true\nbogus_key = [\n").unwrap();
    assert_refused(&start(&other, &state, STATUS), "other.toml");
    assert_eq!(files(&state), before);

    // The stored estate's flag file cannot be reached now: refused at connect.
    std::fs::rename(top.path().join("flags"), top.path().join("moved")).unwrap();
    let resumed = node(&["--state-dir", state.to_str().unwrap()], STATUS);
    assert_refused(&resumed, "flags");
    assert_eq!(files(&state), before);
    assert_refused(&start(&estate, &state, STATUS), "flags");
    assert_eq!(files(&state), before);

    // Put back, the same directory resumes where it stopped.
    std::fs::rename(top.path().join("moved"), top.path().join("flags")).unwrap();
    let output = node(&["--state-dir", state.to_str().unwrap()], STATUS);
    assert_serves(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(r#""new_checkout":false"#), "{stdout}");
}

#[test]
fn a_refused_start_leaves_an_empty_state_directory_empty() {
    let top = tempfile::tempdir().unwrap();
    let state = top.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let bad = top.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[haproxy]\nsocket = \"nowhere.sock\"\nbackend = \"app\"\n",
    )
    .unwrap();
    assert_refused(&start(&bad, &state, STATUS), "nowhere.sock");
    assert!(files(&state).is_empty(), "{:?}", files(&state).keys());

    let good = top.path().join("good.toml");
    std::fs::write(&good, "[flags]\nnew_checkout = true\n").unwrap();
    assert_serves(&start(&good, &state, STATUS));
}
