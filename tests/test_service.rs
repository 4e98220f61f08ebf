//! The node as a service, through the binary: `--listen`, tokens and roles, every route and its
//! refusals, the reply bytes against stdin's, the event stream, the cookie, the limits, and the
//! graceful stop.

#[path = "support/service.rs"]
mod service;

use serde_json::{json, Value};
use service::{request, Events, Node, ADMIN, OPERATOR, VIEWER};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rollback-node"))
}

/// The reply bodies stdin gives these request bodies from `src`, in a fresh process.
fn stdin_bodies(src: &str, bodies: &[&str], args: &[&str]) -> Vec<String> {
    let mut input = String::new();
    for body in bodies {
        input.push_str(&format!(
            "{{\"src\":\"{src}\",\"dest\":\"n1\",\"body\":{body}}}\n"
        ));
    }
    String::from_utf8(stdin_run(&input, args))
        .unwrap()
        .lines()
        .map(|line| {
            // The body is the envelope's last member: cut it out as bytes.
            let start = line.find(",\"body\":").unwrap() + ",\"body\":".len();
            line[start..line.len() - 1].to_owned()
        })
        .collect()
}

/// What a node without `--listen` writes on stdout for `input`, in a fresh process.
fn stdin_run(input: &str, args: &[&str]) -> Vec<u8> {
    let mut child = binary()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap().stdout
}

/// A stdin line from `ops` turning new_checkout off (odd msg_id) or on (even).
fn toggle_line(msg_id: u64) -> String {
    let kind = if msg_id % 2 == 1 {
        "disable_feature"
    } else {
        "enable_feature"
    };
    format!(
        r#"{{"src":"ops","dest":"n1","body":{{"type":"{kind}","msg_id":{msg_id},"feature":"new_checkout"}}}}"#
    )
}

#[test]
fn listen_without_tokens_refuses_to_start_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = binary()
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("[[tokens]]") && stderr.contains("new-token"),
        "{stderr}"
    );
    assert!(!state.exists(), "a refused start adopts nothing");
}

#[test]
fn new_token_prints_a_fresh_secret_and_lines_the_estate_accepts() {
    let run = || {
        let out = binary()
            .args(["new-token", "deploy-bot", "operator"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let (first, second) = (run(), run());
    let secret = first.lines().next().unwrap();
    assert_eq!(secret.len(), 64);
    assert_ne!(
        secret,
        second.lines().next().unwrap(),
        "each secret is fresh"
    );
    assert!(
        !first[secret.len()..].contains(secret),
        "the estate lines never hold the secret"
    );
    let hash = service::tokens_toml(); // the same hashing the tests use
    assert!(hash.contains("sha256 = \""));
    let expected = rollback_node::service::auth::sha256(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert!(
        first.contains(&format!("sha256 = \"{expected}\"")),
        "{first}"
    );
    assert!(first.contains("name = \"deploy-bot\"") && first.contains("role = \"operator\""));
    // The lines go into an estate as they are, and the secret then works.
    let dir = tempfile::tempdir().unwrap();
    let estate = dir.path().join("estate.toml");
    let lines: String = first.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(
        &estate,
        format!("{}\n{lines}", rollback_node::EXAMPLE_ESTATE),
    )
    .unwrap();
    let node = Node::start_with(dir, &estate, &[]);
    let reply = node.post(
        secret,
        r#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["type"], "feature_disabled");
    // A role that does not exist is refused by the command line.
    let out = binary().args(["new-token", "x", "boss"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("viewer, operator or admin"));
}

#[test]
fn reply_bodies_are_byte_for_byte_the_ones_stdin_gives() {
    let bodies = [
        r#"{"type":"status","msg_id":1}"#,
        r#"{"type":"disable_feature","msg_id":2,"feature":"new_checkout"}"#,
        r#"{"type":"disable_feature","msg_id":2,"feature":"new_checkout"}"#,
        r#"{"type":"switch_traffic","msg_id":3,"from":"green","to":"blue"}"#,
        r#"{"type":"rollback","msg_id":4,"version":3,"dry_run":true}"#,
        r#"{"type":"rollback","msg_id":5,"version":3}"#,
        r#"{"type":"rollback","msg_id":6,"version":9}"#,
        r#"{"type":"restore","msg_id":7,"backup":"users_backup_20240115"}"#,
        r#"{"type":"enable_feature","msg_id":2,"feature":"new_checkout"}"#,
        r#"{"type":"frobnicate","msg_id":8}"#,
        r#"{"type":"rollback","msg_id":9,"version":"three"}"#,
        r#"{"type":"backups","msg_id":10}"#,
        r#"{"type":"history","msg_id":11,"limit":3}"#,
        r#"{"type":"status","msg_id":12}"#,
    ];
    let expected = stdin_bodies("ada", &bodies, &[]);
    assert_eq!(expected.len(), bodies.len());
    let node = Node::start(&[]);
    for (body, expected) in bodies.iter().zip(&expected) {
        let reply = node.post(ADMIN, body);
        assert_eq!(reply.status, 200, "{body}: {}", reply.body);
        assert_eq!(&reply.body, expected, "{body}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    // Nothing went to stdout: the replies went to their HTTP callers.
    let mut node = node;
    drop(node.stdin.take());
    let (status, _) = node.terminate();
    assert!(status.success());
    let mut rest = String::new();
    node.stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
}

#[test]
fn each_role_may_do_what_it_may_and_a_refusal_changes_nothing() {
    let node = Node::start(&[]);
    let status = |node: &Node| node.call("GET", "/v1/status", Some(VIEWER), "").body;
    let before = status(&node);
    let flag = r#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#;
    let switch = r#"{"type":"switch_traffic","msg_id":2,"from":"green","to":"blue"}"#;
    let rollback = r#"{"type":"rollback","msg_id":3,"version":3}"#;
    let restore = r#"{"type":"restore","msg_id":4,"backup":"users_backup_20240115"}"#;
    let init = r#"{"type":"init","msg_id":5,"node_id":"n9","node_ids":["n9"]}"#;
    // No token, an unknown token, a malformed header: 401, nothing changes.
    for auth in [None, Some("Bearer nope"), Some("Basic YWRhOmFkYQ==")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        for path in [
            "/v1/status",
            "/v1/history",
            "/v1/backups",
            "/v1/events",
            "/v1/whoami",
        ] {
            let r = request(node.addr, "GET", path, &headers, b"");
            assert_eq!(r.status, 401, "{path} {auth:?}");
            assert_eq!(r.json()["error"], "unauthorized");
        }
        let r = request(node.addr, "POST", "/v1/messages", &headers, flag.as_bytes());
        assert_eq!(r.status, 401);
    }
    // A viewer may not change anything, an operator not the schema: 403 naming the role.
    for (secret, body, needed) in [
        (VIEWER, flag, "operator"),
        (VIEWER, switch, "operator"),
        (VIEWER, rollback, "admin"),
        (OPERATOR, rollback, "admin"),
        (OPERATOR, restore, "admin"),
        (OPERATOR, init, "admin"),
        (
            VIEWER,
            r#"{"type":"rollback","msg_id":6,"version":3,"dry_run":true}"#,
            "operator",
        ),
    ] {
        let r = node.post(secret, body);
        assert_eq!(r.status, 403, "{body}");
        assert_eq!(r.json()["role_needed"], needed, "{body}");
        assert!(r.json()["text"]
            .as_str()
            .unwrap()
            .contains("nothing changed"));
    }
    assert_eq!(status(&node), before, "refusals changed nothing");
    let history = node.call("GET", "/v1/history", Some(ADMIN), "").json();
    assert_eq!(history["entries"], json!([]), "and left no history");
    // Everyone may read, and an unknown type is answered 10 whatever the role.
    for secret in [VIEWER, OPERATOR, ADMIN] {
        for path in [
            "/v1/status",
            "/v1/history?limit=5",
            "/v1/backups",
            "/v1/whoami",
        ] {
            assert_eq!(
                node.call("GET", path, Some(secret), "").status,
                200,
                "{path}"
            );
        }
        let r = node.post(secret, r#"{"type":"frob","msg_id":1}"#);
        assert_eq!((r.status, r.json()["code"].clone()), (200, json!(10)));
        let r = node.post(secret, r#"{"type":"status","msg_id":7}"#);
        assert_eq!(r.json()["type"], "status_ok");
    }
    let me = node.call("GET", "/v1/whoami", Some(OPERATOR), "").json();
    assert_eq!(
        (me["name"].clone(), me["role"].clone()),
        (json!("olga"), json!("operator"))
    );
    assert_eq!(me["systems"]["flags"], "simulated");
    // An operator may change flags and traffic, and dry-run a rollback; an admin roll back.
    assert_eq!(node.post(OPERATOR, flag).json()["type"], "feature_disabled");
    assert_eq!(
        node.post(OPERATOR, switch).json()["type"],
        "traffic_switched"
    );
    let plan = node.post(
        OPERATOR,
        r#"{"type":"rollback","msg_id":8,"version":3,"dry_run":true}"#,
    );
    assert_eq!(plan.json()["type"], "plan_ok");
    assert_eq!(
        node.post(ADMIN, rollback).json()["type"],
        "rollback_complete"
    );
    // The sender is the token's name.
    let history = node.call("GET", "/v1/history", Some(VIEWER), "").json();
    let senders: Vec<&str> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["src"].as_str().unwrap())
        .collect();
    assert_eq!(senders, ["olga", "olga", "ada"]);
}

#[test]
fn bodies_stdin_could_not_answer_are_400_and_large_ones_413() {
    let node = Node::start(&[]);
    for (body, says) in [
        ("{not json", "not JSON"),
        ("[1,2]", "not a JSON object"),
        ("\"status\"", "not a JSON object"),
        ("{\"type\":\"status\"} trailing", "not JSON"),
        (
            r#"{"type":"disable_feature","feature":"new_checkout"}"#,
            "no msg_id",
        ),
        (r#"{"type":"status"}"#, "no msg_id"),
        ("", "not JSON"),
    ] {
        let r = node.post(ADMIN, body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(
            r.json()["text"].as_str().unwrap().contains(says),
            "{body}: {}",
            r.body
        );
    }
    // Whatever the content type says, the body is read as JSON.
    let r = request(
        node.addr,
        "POST",
        "/v1/messages",
        &[
            ("Authorization", &format!("Bearer {ADMIN}")),
            ("Content-Type", "text/plain"),
        ],
        br#"{"type":"status","msg_id":1}"#,
    );
    assert_eq!(r.json()["type"], "status_ok");
    // Over 1 MiB: 413, and the node still answers.
    let big = format!(
        r#"{{"type":"disable_feature","msg_id":2,"feature":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    assert_eq!(node.post(ADMIN, &big).status, 413);
    let r = node.call("GET", "/v1/history", Some(ADMIN), "");
    assert_eq!(r.json()["entries"], json!([]), "nothing was decided");
    // A wait that is not a number; an unknown route.
    let r = node.call(
        "POST",
        "/v1/messages?wait=soon",
        Some(ADMIN),
        r#"{"type":"status","msg_id":3}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("wait=soon"));
    assert_eq!(node.call("GET", "/v1/nope", Some(ADMIN), "").status, 404);
    assert_eq!(
        node.call("GET", "/v1/history?limit=0", Some(ADMIN), "")
            .status,
        400
    );
    let r = node.call("GET", "/v1/history?after=soon", Some(ADMIN), "");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("after=soon"), "{}", r.body);
}

#[test]
fn history_pages_with_after_over_http() {
    let node = Node::start(&[]);
    for (msg_id, kind) in [(1, "disable"), (2, "enable"), (3, "disable")] {
        let body =
            format!(r#"{{"type":"{kind}_feature","msg_id":{msg_id},"feature":"new_checkout"}}"#);
        assert_eq!(node.post(OPERATOR, &body).status, 200);
    }
    let all = node.call("GET", "/v1/history", Some(VIEWER), "").json();
    let entries = all["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 3, "{all}");
    let first = entries[0]["seq"].as_u64().unwrap();
    let page = node
        .call(
            "GET",
            &format!("/v1/history?after={first}&limit=1"),
            Some(VIEWER),
            "",
        )
        .json();
    assert_eq!(page["entries"], json!([entries[1]]));
}

#[test]
fn a_long_operation_is_202_then_its_reply_comes_to_a_retry_and_on_the_stream() {
    let node = Node::start(&["--pace", "0.02"]);
    let mut events = Events::open(node.addr, VIEWER, &[]);
    let first = events.next_of("status");
    assert_eq!(
        serde_json::from_str::<Value>(&first.data).unwrap()["schema_version"],
        3
    );
    let restore = r#"{"type":"restore","msg_id":7,"backup":"users_backup_20240115"}"#;
    let started = Instant::now();
    let r = node.call("POST", "/v1/messages?wait=0.2", Some(ADMIN), restore);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        r.body,
        r#"{"type":"accepted","in_reply_to":7,"state":"running"}"#
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // It shows in flight, with progress, on the stream.
    let running = loop {
        let status: Value = serde_json::from_str(&events.next_of("status").data).unwrap();
        if status["in_flight"][0]["progress"]["done"]
            .as_u64()
            .unwrap_or(0)
            > 0
        {
            break status;
        }
    };
    assert_eq!(running["in_flight"][0]["msg_id"], 7);
    assert_eq!(running["in_flight"][0]["src"], "ada");
    // A retry joins it and gets the final reply; it does not run twice.
    let r = node.call("POST", "/v1/messages?wait=30", Some(ADMIN), restore);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["type"], "restore_complete");
    let entry = events.next_of("entry");
    let entry_json: Value = serde_json::from_str(&entry.data).unwrap();
    assert_eq!(entry_json["reply"]["type"], "restore_complete");
    assert_eq!(
        entry.id.as_deref(),
        Some(entry_json["seq"].to_string().as_str())
    );
    let history = node.call("GET", "/v1/history", Some(VIEWER), "").json();
    assert_eq!(
        history["entries"].as_array().unwrap().len(),
        1,
        "one run, one entry"
    );
}

#[test]
fn the_event_stream_pushes_changes_from_stdin_and_resumes_after_last_event_id() {
    let mut node = Node::start(&[]);
    let mut events = Events::open(node.addr, VIEWER, &[]);
    let at_connect = events.next_of("status");
    assert_eq!(
        serde_json::from_str::<Value>(&at_connect.data).unwrap()["flags"]["new_checkout"],
        true
    );
    for msg_id in 1..=3 {
        node.send_line(&toggle_line(msg_id));
        assert!(
            node.read_line().contains("in_reply_to"),
            "stdin still answers"
        );
        let entry = events.next_of("entry");
        assert_eq!(entry.id, Some(msg_id.to_string()));
        let entry: Value = serde_json::from_str(&entry.data).unwrap();
        assert_eq!(
            (entry["src"].clone(), entry["msg_id"].clone()),
            (json!("ops"), json!(msg_id))
        );
    }
    // The latest status always arrives: the flag ends disabled.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status: Value = serde_json::from_str(&events.next_of("status").data).unwrap();
        if status["flags"]["new_checkout"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "the last status never came");
    }
    // A refusal is not an entry; a reconnect after entry 1 gets 2 and 3, then live ones.
    node.send_line(r#"{"src":"ops","dest":"n1","body":{"type":"disable_feature","msg_id":9,"feature":"nope"}}"#);
    assert!(node.read_line().contains("\"code\":20"));
    let mut resumed = Events::open(node.addr, VIEWER, &[("Last-Event-ID", "1")]);
    let ids: Vec<Option<String>> = (0..2).map(|_| resumed.next_of("entry").id).collect();
    assert_eq!(ids, [Some("2".into()), Some("3".into())]);
    node.send_line(r#"{"src":"ops","dest":"n1","body":{"type":"enable_feature","msg_id":10,"feature":"new_checkout"}}"#);
    assert_eq!(
        resumed.next_of("entry").id,
        Some("5".into()),
        "seq 4 was the refusal"
    );
}

#[test]
fn the_page_session_cookie_is_strict_and_refuses_changes_from_other_origins() {
    let node = Node::start(&[]);
    let login = |token: &str| {
        request(
            node.addr,
            "POST",
            "/v1/session",
            &[("Content-Type", "application/json")],
            format!(r#"{{"token":"{token}"}}"#).as_bytes(),
        )
    };
    let refused = login("wrong");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("set-cookie"), None);
    let r = login(OPERATOR);
    assert_eq!(r.status, 204);
    let cookie = r.header("set-cookie").unwrap().to_owned();
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(attributes[0].starts_with("rollback_session="), "{cookie}");
    assert!(
        attributes.contains(&"HttpOnly") && attributes.contains(&"SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(OPERATOR), "the cookie is not the secret");
    let pair = attributes[0];
    let host = node.addr.to_string();
    let origin = format!("http://{host}");
    let flag = br#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#;
    // The cookie reads like the token.
    let r = request(node.addr, "GET", "/v1/whoami", &[("Cookie", pair)], b"");
    assert_eq!(r.json()["name"], "olga");
    // A change it carries needs the page's own origin.
    for origin in [None, Some("http://evil.example"), Some("https://127.0.0.1")] {
        let mut headers = vec![("Cookie", pair)];
        headers.extend(origin.map(|o| ("Origin", o)));
        let r = request(node.addr, "POST", "/v1/messages", &headers, flag);
        assert_eq!(r.status, 403, "{origin:?}");
        assert_eq!(r.json()["error"], "cross_origin");
    }
    let status = node.call("GET", "/v1/status", Some(VIEWER), "").json();
    assert_eq!(status["flags"]["new_checkout"], true, "nothing changed");
    let r = request(
        node.addr,
        "POST",
        "/v1/messages",
        &[("Cookie", pair), ("Origin", &origin)],
        flag,
    );
    assert_eq!(r.json()["type"], "feature_disabled");
    // Logging out ends the session.
    let r = request(
        node.addr,
        "DELETE",
        "/v1/session",
        &[("Cookie", pair), ("Origin", &origin)],
        b"",
    );
    assert_eq!(r.status, 204);
    let r = request(node.addr, "GET", "/v1/whoami", &[("Cookie", pair)], b"");
    assert_eq!(r.status, 401);
}

#[test]
fn the_page_and_ofrep_are_served_without_a_token() {
    let node = Node::start(&[]);
    let page = request(node.addr, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(
        page.body.contains("data-testid"),
        "the page is the incident page"
    );
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "nothing is loaded from another host"
    );
    let r = request(
        node.addr,
        "POST",
        "/ofrep/v1/evaluate/flags/new_checkout",
        &[],
        b"{}",
    );
    assert_eq!((r.status, r.json()["value"].clone()), (200, json!(true)));
    node.post(
        OPERATOR,
        r#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#,
    );
    let r = request(
        node.addr,
        "POST",
        "/ofrep/v1/evaluate/flags/new_checkout",
        &[],
        b"{}",
    );
    assert_eq!(
        r.json()["value"],
        false,
        "the next evaluation after the reply sees the change"
    );
    let bulk = request(node.addr, "POST", "/ofrep/v1/evaluate/flags", &[], b"");
    let etag = bulk.header("etag").unwrap().to_owned();
    let again = request(
        node.addr,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(again.status, 304);
}

#[test]
fn stdin_is_byte_for_byte_unchanged_with_a_listener() {
    let input: String = [
        r#"{"src":"admin","dest":"migrations","body":{"type":"rollback","msg_id":1,"version":3}}"#,
        r#"{"src":"admin","dest":"features","body":{"type":"disable_feature","msg_id":2,"feature":"new_checkout"}}"#,
        r#"{"src":"c","dest":"n1","body":{"type":"init","msg_id":3,"node_id":"n1","node_ids":["n1"]}}"#,
        r#"{"src":"c","dest":"n1","body":{"type":"switch_traffic","msg_id":4,"from":"green","to":"blue"}}"#,
        r#"{"src":"c","dest":"n1","body":{"type":"restore","msg_id":5,"backup":"users_backup_20240115"}}"#,
        r#"{"src":"c","dest":"n1","body":{"type":"history","msg_id":6}}"#,
        r#"{"src":"c","dest":"n1","body":{"type":"status","msg_id":7}}"#,
        "not json",
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect();
    let plain = stdin_run(&input, &[]);
    let mut node = Node::start(&[]);
    node.stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let mut listened = Vec::new();
    for _ in 0..7 {
        listened.extend_from_slice(node.read_line().as_bytes());
    }
    assert_eq!(
        String::from_utf8(listened).unwrap(),
        String::from_utf8(plain).unwrap()
    );
    // The end of stdin did not stop it: it still answers over HTTP.
    std::thread::sleep(Duration::from_millis(200));
    assert!(node.child.try_wait().unwrap().is_none());
    assert_eq!(node.call("GET", "/v1/status", Some(VIEWER), "").status, 200);
}

#[test]
fn sigterm_closes_streams_lets_the_running_operation_finish_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let estate = service::estate_file(dir.path());
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let mut node = Node::start_with(dir, &estate, &["--pace", "0.01", "--state-dir", &state_arg]);
    let mut events = Events::open(node.addr, VIEWER, &[]);
    events.next_of("status");
    let r = node.call(
        "POST",
        "/v1/messages?wait=0",
        Some(ADMIN),
        r#"{"type":"restore","msg_id":1,"backup":"users_backup_20240115"}"#,
    );
    assert_eq!(r.status, 202);
    let (status, took) = node.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(10), "{took:?}");
    while events.next().is_some() {}
    // The restore (0.6 s at this pace) finished before the exit: it is in the journal's history.
    let out = binary()
        .args(["history", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let history = String::from_utf8(out.stdout).unwrap();
    assert!(history.contains("restore_complete"), "{history}");
    assert!(node.stderr_lines().iter().any(|l| l.contains("stopping")));
}

#[test]
fn slow_idle_and_silent_clients_are_bounded_and_the_node_still_answers() {
    let mut node = Node::start(&[]);
    // A thousand connections that send nothing, and one that never finishes its headers.
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(node.addr).unwrap())
        .collect();
    let mut slow = TcpStream::connect(node.addr).unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let r = node.call("GET", "/v1/status", Some(VIEWER), "");
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // An event client that never reads while sixty thousand changes go by.
    let mut silent = TcpStream::connect(node.addr).unwrap();
    silent
        .write_all(
            format!("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {VIEWER}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut input = String::new();
    for msg_id in 1..=60_000 {
        input.push_str(&toggle_line(msg_id));
        input.push('\n');
    }
    let started = Instant::now();
    let mut stdin = node.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(input.as_bytes()).unwrap();
        stdin
    });
    for _ in 0..60_000 {
        node.read_line();
    }
    let took = started.elapsed();
    node.stdin = Some(writer.join().unwrap());
    assert!(
        took < Duration::from_secs(20),
        "the silent client slowed the node: {took:?}"
    );
    let r = node.call("GET", "/v1/status", Some(VIEWER), "");
    assert_eq!(r.json()["flags"]["new_checkout"], true);
    // The silent client was dropped: what it can still read ends.
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let ended = BufReader::new(&silent).read_to_end(&mut sink);
    assert!(ended.is_ok(), "the stream was not closed: {ended:?}");
    // The slow client was timed out.
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || String::from_utf8_lossy(&answer).contains("408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    drop(idle);
    let mut keep = BufReader::new(TcpStream::connect(node.addr).unwrap());
    keep.get_mut()
        .write_all(
            format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {VIEWER}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(service::read_response(&mut keep).status, 200);
    let _ = keep.fill_buf();
}

#[test]
fn a_sigterm_as_soon_as_it_says_it_listens_is_a_graceful_stop() {
    for _ in 0..3 {
        let mut node = Node::start(&[]);
        let (status, took) = node.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "the signal handlers were not in place yet"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}

#[test]
fn an_idle_event_stream_carries_heartbeats_so_proxies_keep_it_open() {
    let node = Node::start(&[]);
    let mut events = Events::open(node.addr, VIEWER, &[]);
    events.next_of("status");
    let started = Instant::now();
    let comment = events.next_comment().expect("the stream stayed open");
    assert_eq!(comment, "heartbeat");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(17), "{waited:?}");
}
