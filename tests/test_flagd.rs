//! The flagd flag file: round trips that keep hand-written content, atomic durable writes, the
//! kill switch and its exact undo, refusals, and a real OpenFeature flagd provider (Python, file
//! mode) seeing the kill switch.

#[path = "support/pyclient.rs"]
mod pyclient;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use rollback_node::exec::flagd::{FlagFile, FlagdError, STASH_KEY};
use serde_json::Value;

/// A hand-written file: odd spacing, one-line objects, targeting, metadata, `$evaluators`, an
/// unknown top-level key and a non-boolean flag.
const HAND_WRITTEN: &str = r##"{
    "$schema": "https://flagd.dev/schema/v0/flags.json",
    "x-owner": {"team": "payments", "pager": [1, 2]},
    "flags": {
        "new-checkout": {
            "state": "ENABLED",
            "variants": { "on": true, "off": false },
            "defaultVariant": "on",
            "targeting": {
                "if": [ { "$ref": "beta-users" }, "off", null ]
            },
            "metadata": { "ticket": "PAY-1234", "rollout": 50 }
        },
        "dark-mode": {"state": "ENABLED", "variants": {"yes": true, "no": false}, "defaultVariant": "yes"},
        "banner-colour": {
            "state": "ENABLED",
            "variants": {"red": "#f00", "blue": "#00f"},
            "defaultVariant": "red"
        },
        "legacy": {
            "state": "DISABLED",
            "variants": {"enabled": true},
            "defaultVariant": "enabled"
        }
    },
    "$evaluators": {
        "beta-users": { "in": [ { "var": "email" }, [ "a@example.com" ] ] }
    },
    "metadata": {"flagSetId": "shop", "version": "7"}
}
"##;

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("flags.json");
    fs::write(&path, text).unwrap();
    path
}

fn no_initial() -> BTreeMap<String, bool> {
    BTreeMap::new()
}

fn flag(path: &Path, key: &str) -> serde_json::Map<String, Value> {
    let value: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    value["flags"][key].as_object().unwrap().clone()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The text outside `key`'s value is unchanged: the common prefix ends inside that flag and the
/// common suffix starts inside it (`next` is the text that follows the flag in `before`).
fn assert_only_flag_changed(before: &str, after: &str, key: &str, next: &str) {
    let at = before.find(&format!("\"{key}\"")).unwrap();
    let prefix = before
        .bytes()
        .zip(after.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = before
        .bytes()
        .rev()
        .zip(after.bytes().rev())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(prefix > at, "bytes before flag {key:?} changed:\n{after}");
    let end_of_flag = before.find(next).unwrap();
    assert!(
        before.len() - suffix <= end_of_flag,
        "bytes after flag {key:?} changed:\n{after}"
    );
}

#[test]
fn creates_the_file_from_the_initial_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let initial = BTreeMap::from([("a".to_owned(), true), ("b".to_owned(), false)]);
    let file = FlagFile::open(&path, &initial).unwrap();
    assert_eq!(file.read().unwrap(), initial);
    assert_eq!(file.added_on_open(), ["a", "b"]);
    let b = flag(&path, "b");
    assert_eq!(b["state"], "ENABLED");
    assert_eq!(b["defaultVariant"], "off");
    assert_eq!(b["variants"], serde_json::json!({"on": true, "off": false}));
    assert_eq!(entries(dir.path()), ["flags.json"]);
}

#[test]
fn an_existing_file_is_the_truth_and_gets_only_the_missing_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    let initial = BTreeMap::from([
        ("new-checkout".to_owned(), false),
        ("zz-new".to_owned(), true),
    ]);
    let file = FlagFile::open(&path, &initial).unwrap();
    assert_eq!(file.added_on_open(), ["zz-new"]);
    let view = file.read().unwrap();
    assert!(
        view["new-checkout"],
        "the file, not the initial map, is the truth"
    );
    assert!(view["zz-new"]);
    assert!(
        !view.contains_key("banner-colour"),
        "non-boolean flags are left out"
    );
    let after = fs::read_to_string(&path).unwrap();
    let cut = HAND_WRITTEN.find("\n    },\n    \"$evaluators\"").unwrap();
    assert!(after.starts_with(&HAND_WRITTEN[..cut]), "{after}");
    assert!(after.ends_with(&HAND_WRITTEN[cut..]), "{after}");
    assert!(
        after.contains("        \"zz-new\": {\n            \"state\": \"ENABLED\""),
        "{after}"
    );
}

#[test]
fn disable_then_enable_restores_the_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    let file = FlagFile::open(&path, &no_initial()).unwrap();

    let report = file.set("new-checkout", false).unwrap();
    assert!(report.changed && !report.enabled);
    let killed = fs::read_to_string(&path).unwrap();
    assert_only_flag_changed(HAND_WRITTEN, &killed, "new-checkout", "\"dark-mode\"");
    let f = flag(&path, "new-checkout");
    assert_eq!(f["state"], "ENABLED");
    assert_eq!(f["defaultVariant"], "off");
    assert!(
        !f.contains_key("targeting"),
        "targeting would override the default variant"
    );
    assert_eq!(f["metadata"]["ticket"], "PAY-1234");
    assert_eq!(f["metadata"]["rollout"], 50);
    assert!(f["metadata"][STASH_KEY]
        .as_str()
        .unwrap()
        .contains("beta-users"));
    assert!(!file.read().unwrap()["new-checkout"]);
    // The hand-written indentation of the file is kept for the rewritten flag.
    assert!(
        killed.contains("\n        \"new-checkout\": {\n            \"state\": \"ENABLED\",\n"),
        "{killed}"
    );

    let again = file.set("new-checkout", false).unwrap();
    assert!(!again.changed, "disabling a disabled flag changes nothing");
    assert_eq!(fs::read_to_string(&path).unwrap(), killed);

    let report = file.set("new-checkout", true).unwrap();
    assert!(report.changed && report.enabled);
    assert_eq!(fs::read_to_string(&path).unwrap(), HAND_WRITTEN);
    assert!(!file.set("new-checkout", true).unwrap().changed);
    assert_eq!(
        entries(dir.path()),
        ["flags.json"],
        "no temporary file left behind"
    );
}

#[test]
fn kill_switch_adds_an_off_variant_and_overrides_a_disabled_state_then_undoes_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    let file = FlagFile::open(&path, &no_initial()).unwrap();
    file.set("legacy", false).unwrap();
    let f = flag(&path, "legacy");
    // DISABLED would hand clients their code default; the kill switch serves `false` instead.
    assert_eq!(f["state"], "ENABLED");
    assert_eq!(
        f["variants"],
        serde_json::json!({"enabled": true, "off": false})
    );
    assert_eq!(f["defaultVariant"], "off");
    assert_only_flag_changed(
        HAND_WRITTEN,
        &fs::read_to_string(&path).unwrap(),
        "legacy",
        "\"$evaluators\"",
    );
    file.set("legacy", true).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), HAND_WRITTEN);
}

#[test]
fn hand_edits_made_while_disabled_survive_enable() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    let file = FlagFile::open(&path, &no_initial()).unwrap();
    file.set("new-checkout", false).unwrap();
    let edited = fs::read_to_string(&path)
        .unwrap()
        .replace("\"ticket\": \"PAY-1234\"", "\"ticket\": \"PAY-9999\"");
    fs::write(&path, &edited).unwrap();
    file.set("new-checkout", true).unwrap();
    let f = flag(&path, "new-checkout");
    assert_eq!(
        f["metadata"],
        serde_json::json!({"ticket": "PAY-9999", "rollout": 50})
    );
    assert_eq!(f["defaultVariant"], "on");
    assert_eq!(f["targeting"]["if"][1], "off");
    assert!(file.read().unwrap()["new-checkout"]);
}

#[test]
fn every_change_reads_the_file_as_it_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    let file = FlagFile::open(&path, &no_initial()).unwrap();
    file.set("dark-mode", false).unwrap();
    // Someone edits another flag by hand between two changes.
    let edited = fs::read_to_string(&path)
        .unwrap()
        .replace("\"blue\": \"#00f\"", "\"blue\": \"#00e\"");
    fs::write(&path, &edited).unwrap();
    file.set("dark-mode", true).unwrap();
    let after = fs::read_to_string(&path).unwrap();
    assert_eq!(
        after,
        HAND_WRITTEN.replace("\"blue\": \"#00f\"", "\"blue\": \"#00e\"")
    );
}

#[test]
fn a_flag_that_is_off_by_hand_is_not_stashed_and_enable_turns_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let file = FlagFile::open(&path, &BTreeMap::from([("x".to_owned(), false)])).unwrap();
    let before = fs::read_to_string(&path).unwrap();
    assert!(!file.set("x", false).unwrap().changed);
    assert_eq!(fs::read_to_string(&path).unwrap(), before);
    assert!(file.set("x", true).unwrap().changed);
    assert!(file.read().unwrap()["x"]);
}

#[test]
fn unknown_and_non_boolean_flags_are_refused_naming_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    let file = FlagFile::open(&path, &no_initial()).unwrap();
    let err = file.set("nope", false).unwrap_err();
    assert!(matches!(err, FlagdError::UnknownFlag { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("\"nope\"") && msg.contains("new-checkout, dark-mode, banner-colour, legacy"),
        "{msg}"
    );
    let err = file.set("banner-colour", false).unwrap_err();
    assert!(matches!(err, FlagdError::NotBoolean { .. }), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap(), HAND_WRITTEN);
}

#[test]
fn bad_files_are_refused_in_one_line_and_never_overwritten() {
    let cases = [
        ("{\"flags\": {", "not valid JSON"),
        ("[1, 2]", "the top level is an array"),
        ("{\"$schema\": \"x\"}", "no \"flags\" object"),
        ("{\"flags\": [{\"key\": \"a\", \"state\": \"ENABLED\", \"variants\": {\"on\": true}}]}", "import form"),
        ("{\"flags\": {\"a\": {\"variants\": {\"on\": true}}}}", "flag \"a\": no \"state\""),
        ("{\"flags\": {\"a\": {\"state\": \"ON\", \"variants\": {\"on\": true}}}}", "\"state\" is \"ON\""),
        ("{\"flags\": {\"a\": {\"state\": \"ENABLED\", \"variants\": {}}}}", "\"variants\" is empty"),
        (
            "{\"flags\": {\"a\": {\"state\": \"ENABLED\", \"variants\": {\"on\": true, \"n\": 1}}}}",
            "variants mix types",
        ),
        (
            "{\"flags\": {\"a\": {\"state\": \"ENABLED\", \"variants\": {\"on\": true}, \"defaultVariant\": \"x\"}}}",
            "\"defaultVariant\" \"x\" is not one of its variants",
        ),
        (
            "{\"flags\": {\"a\": {\"state\": \"ENABLED\", \"variants\": {\"on\": true}, \"metadata\": {\"k\": [1]}}}}",
            "\"k\" is an array",
        ),
        (
            "{\"flags\": {\"a\": {\"state\": \"ENABLED\", \"variants\": {\"on\": true}, \"owner\": \"me\"}}}",
            "unknown key \"owner\"",
        ),
    ];
    for (text, problem) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), text);
        let initial = BTreeMap::from([("a".to_owned(), true), ("b".to_owned(), true)]);
        let err = FlagFile::open(&path, &initial).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains(problem),
            "{text}: expected {problem:?} in {msg:?}"
        );
        assert!(!msg.contains('\n'), "one line: {msg:?}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            text,
            "never overwritten"
        );
        assert_eq!(entries(dir.path()), ["flags.json"]);
    }
}

#[test]
fn a_file_broken_at_run_time_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    let file = FlagFile::open(&path, &no_initial()).unwrap();
    fs::write(&path, "{ half written").unwrap();
    assert!(matches!(
        file.set("dark-mode", false),
        Err(FlagdError::NotJson { .. })
    ));
    assert!(matches!(file.read(), Err(FlagdError::NotJson { .. })));
    assert_eq!(fs::read_to_string(&path).unwrap(), "{ half written");
}

#[test]
fn a_file_that_disappears_is_an_error_and_is_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    let file = FlagFile::open(&path, &no_initial()).unwrap();
    fs::remove_file(&path).unwrap();
    let err = file.set("dark-mode", false).unwrap_err();
    match &err {
        FlagdError::Io { source, .. } => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("expected an I/O error, got {other}"),
    }
    assert!(err.to_string().contains("flags.json"), "{err}");
    assert!(!path.exists());
    assert!(entries(dir.path()).is_empty());
}

/// Makes `dir` unwritable even for root (immutable attribute) or, for others, by its mode.
struct Unwritable<'a>(&'a Path, bool);

impl<'a> Unwritable<'a> {
    fn new(dir: &'a Path) -> Self {
        let root = fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        if root {
            let out = std::process::Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .output();
            let ok = out.as_ref().is_ok_and(|o| o.status.success());
            assert!(
                ok,
                "as root, the test needs `chattr +i` (e2fsprogs) on the temp directory: {out:?}"
            );
        } else {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
        }
        Unwritable(dir, root)
    }
}

impl Drop for Unwritable<'_> {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(self.0)
                .status();
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(self.0, fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn an_unwritable_directory_is_an_error_and_leaves_the_file_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    let file = FlagFile::open(&path, &no_initial()).unwrap();
    {
        let _guard = Unwritable::new(dir.path());
        let err = file.set("dark-mode", false).unwrap_err();
        match &err {
            FlagdError::Io { what, .. } => assert!(what.contains("temporary file"), "{err}"),
            other => panic!("expected an I/O error, got {other}"),
        }
        assert!(!err.to_string().contains('\n'));
        assert_eq!(fs::read_to_string(&path).unwrap(), HAND_WRITTEN);
        assert!(file.read().unwrap()["dark-mode"]);
    }
    assert_eq!(entries(dir.path()), ["flags.json"]);
    assert!(
        file.set("dark-mode", false).unwrap().changed,
        "works again once writable"
    );
}

#[test]
fn many_changes_leave_no_temporary_files_and_keep_the_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let file = FlagFile::open(&path, &no_initial()).unwrap();
    for i in 0..50 {
        let report = file.set("dark-mode", i % 2 == 1).unwrap();
        assert!(report.changed);
        assert!(report.duration > Duration::ZERO);
    }
    assert_eq!(entries(dir.path()), ["flags.json"]);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), HAND_WRITTEN);
}

/// Pollers (the Python flagd provider) notice a change by a later mtime; the kernel's file clock is
/// coarse, so quick successive changes must still get strictly later modification times.
#[test]
fn quick_successive_changes_get_strictly_later_modification_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    let file = FlagFile::open(&path, &no_initial()).unwrap();
    let mut last = fs::metadata(&path).unwrap().modified().unwrap();
    for i in 0..20 {
        file.set("dark-mode", i % 2 == 1).unwrap();
        let now = fs::metadata(&path).unwrap().modified().unwrap();
        assert!(now > last, "change {i}: mtime {now:?} not after {last:?}");
        last = now;
    }
}

/// A real client: the OpenFeature flagd provider (Python) in file mode, evaluating with a code
/// default of `true`, sees the kill switch turn the flag off, then on again.
#[test]
fn a_real_flagd_file_mode_client_sees_the_kill_switch() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), HAND_WRITTEN);
    let file = FlagFile::open(&path, &no_initial()).unwrap();
    let client = pyclient::PyClient::spawn(
        "flagd-file",
        path.to_str().unwrap(),
        "new-checkout",
        "watch",
        10,
    );
    assert!(client.ready.starts_with("ready True"), "{}", client.ready);
    for round in 0..3 {
        let report = file.set("new-checkout", false).unwrap();
        let written = pyclient::unix_ns();
        let (value, seen) = client.change(Duration::from_secs(10));
        assert!(!value, "round {round}: the client must see false");
        eprintln!(
            "round {round}: kill durable in {:?}, client saw false {:.1} ms after",
            report.duration,
            (seen as f64 - written as f64) / 1e6
        );
        let report = file.set("new-checkout", true).unwrap();
        let written = pyclient::unix_ns();
        let (value, seen) = client.change(Duration::from_secs(10));
        assert!(value, "round {round}: the client must see true again");
        eprintln!(
            "round {round}: enable durable in {:?}, client saw true {:.1} ms after",
            report.duration,
            (seen as f64 - written as f64) / 1e6
        );
    }
}

#[test]
fn the_example_flag_file_is_valid_and_round_trips() {
    let example = include_str!("../examples/flagd/flags.json");
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), example);
    let initial = BTreeMap::from([("new_checkout".to_owned(), true)]);
    let file = FlagFile::open(&path, &initial).unwrap();
    assert!(file.added_on_open().is_empty());
    assert_eq!(file.read().unwrap(), initial);
    file.set("new_checkout", false).unwrap();
    assert!(!file.read().unwrap()["new_checkout"]);
    file.set("new_checkout", true).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), example);
}
