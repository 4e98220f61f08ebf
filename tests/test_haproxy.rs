//! The blue-green switch against a real HAProxy: zero failed requests under keep-alive load while
//! switching back and forth, new requests on the target as soon as a switch returns, refusal of
//! an unhealthy target, and clear errors for a missing socket, a user-level socket, a backend
//! without both servers, something that is not HAProxy, and HAProxy going away mid-switch.

#[path = "support/haproxy.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use rollback_node::exec::haproxy::{Colour, Haproxy, HaproxyError, Health};
use support::{get_once, wait_until, ColourServer, HaproxyProc, Load};

struct Rig {
    blue: ColourServer,
    green: ColourServer,
    haproxy: HaproxyProc,
}

fn rig() -> Rig {
    let blue = ColourServer::start("blue");
    let green = ColourServer::start("green");
    let haproxy = HaproxyProc::start(blue.port, green.port);
    Rig {
        blue,
        green,
        haproxy,
    }
}

#[test]
fn switches_back_and_forth_under_load_without_a_failed_request() {
    let rig = rig();
    let hx = Haproxy::connect(&rig.haproxy.admin, "app").unwrap();
    assert_eq!(hx.live().unwrap(), Colour::Blue);
    assert_eq!(hx.health(Colour::Green).unwrap(), Health::Up);

    let load = Load::start(
        rig.haproxy.frontend,
        4,
        100_000,
        Duration::from_secs(60),
        Duration::from_micros(200),
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut switches = Vec::new();
    let mut from = Colour::Blue;
    for _ in 0..10 {
        let to = from.other();
        let started = Instant::now();
        let report = hx.switch(from, to).unwrap();
        let returned = Instant::now();
        assert!(report.changed);
        assert_eq!(hx.live().unwrap(), to);
        // A new request right after the switch returns reaches the target.
        let (status, body) = get_once(rig.haproxy.frontend).expect("a request after the switch");
        assert_eq!((status, body.as_str()), (200, to.as_str()));
        eprintln!(
            "switch {from} -> {to}: {:?} ({})",
            report.duration, report.states
        );
        switches.push((started, returned, to));
        std::thread::sleep(Duration::from_millis(100));
        from = to;
    }
    let samples = load.finish();

    let failed: Vec<_> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed or were not 200: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
    // Every request sent after a switch returned (and before the next began) reached its target.
    let mut checked = 0;
    for (i, (_, returned, to)) in switches.iter().enumerate() {
        let next = switches.get(i + 1).map(|s| s.0);
        for s in &samples {
            if s.start > *returned && next.is_none_or(|n| s.start < n) {
                checked += 1;
                assert_eq!(
                    s.colour.as_deref(),
                    Some(to.as_str()),
                    "a request after switch {i} went elsewhere"
                );
            }
        }
    }
    assert!(
        checked > 100,
        "too few requests between switches to judge: {checked}"
    );
    eprintln!(
        "{} requests served during 10 switches, 0 failed; {checked} checked for their target",
        samples.len()
    );
}

#[test]
fn an_unhealthy_target_is_refused_and_traffic_stays() {
    let mut rig = rig();
    let hx = Haproxy::connect(&rig.haproxy.admin, "app").unwrap();
    rig.green.stop();
    assert!(
        wait_until(Duration::from_secs(10), || hx
            .health(Colour::Green)
            .unwrap()
            == Health::Down),
        "haproxy never saw green go down"
    );
    let err = hx.switch(Colour::Blue, Colour::Green).unwrap_err();
    assert!(err.is_precondition(), "{err}");
    match &err {
        HaproxyError::Unhealthy { to, health, detail } => {
            assert_eq!((*to, *health), (Colour::Green, Health::Down));
            assert!(detail.contains("L4CON"), "{detail}");
        }
        other => panic!("expected Unhealthy, got {other}"),
    }
    assert!(
        err.to_string().starts_with("refusing to switch to green"),
        "{err}"
    );
    assert_eq!(hx.live().unwrap(), Colour::Blue);
    assert_eq!(get_once(rig.haproxy.frontend).unwrap().1, "blue");
    drop(rig.blue);
}

#[test]
fn switching_to_the_live_server_changes_nothing_and_a_dead_source_is_refused() {
    let rig = rig();
    let hx = Haproxy::connect(&rig.haproxy.admin, "app").unwrap();
    hx.switch(Colour::Blue, Colour::Green).unwrap();
    let again = hx.switch(Colour::Blue, Colour::Green).unwrap();
    assert!(!again.changed);
    assert_eq!(hx.live().unwrap(), Colour::Green);
    let err = hx.switch(Colour::Blue, Colour::Blue).unwrap_err();
    assert!(
        matches!(
            err,
            HaproxyError::FromNotLive {
                from: Colour::Blue,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn both_or_neither_live_is_an_error_naming_the_states() {
    let rig = rig();
    let hx = Haproxy::connect(&rig.haproxy.admin, "app").unwrap();
    rig.haproxy.raw("set server app/green state ready").unwrap();
    let err = hx.live().unwrap_err();
    assert!(
        matches!(err, HaproxyError::NotExactlyOneLive { both: true, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("blue: ready, up"), "{err}");
    rig.haproxy.raw("set server app/green state maint").unwrap();
    rig.haproxy.raw("set server app/blue state drain").unwrap();
    let err = hx.live().unwrap_err();
    assert!(
        matches!(err, HaproxyError::NotExactlyOneLive { both: false, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("green: maint"), "{err}");
}

#[test]
fn missing_socket_user_socket_and_bad_backends_are_clear_errors() {
    let rig = rig();
    let missing = rig.haproxy.dir.path().join("nope.sock");
    let err = Haproxy::connect(&missing, "app").unwrap_err();
    assert!(matches!(err, HaproxyError::SocketMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("nope.sock does not exist"),
        "{err}"
    );

    let err = Haproxy::connect(&rig.haproxy.user, "app").unwrap_err();
    assert!(matches!(err, HaproxyError::NotAdmin { .. }), "{err}");
    assert!(err.to_string().contains("level user"), "{err}");
    // Without the upfront check, the switch itself is refused by HAProxy and nothing moves.
    let err = Haproxy::unchecked(&rig.haproxy.user, "app")
        .switch(Colour::Blue, Colour::Green)
        .unwrap_err();
    assert!(matches!(err, HaproxyError::NotAdmin { .. }), "{err}");
    let hx = Haproxy::connect(&rig.haproxy.admin, "app").unwrap();
    assert_eq!(hx.live().unwrap(), Colour::Blue);

    let err = Haproxy::connect(&rig.haproxy.admin, "nope").unwrap_err();
    assert!(matches!(err, HaproxyError::NoBackend { .. }), "{err}");
    let err = Haproxy::connect(&rig.haproxy.admin, "solo").unwrap_err();
    assert!(matches!(err, HaproxyError::MissingServers { .. }), "{err}");
    assert!(err.to_string().ends_with("it has: blue"), "{err}");
    let err = Haproxy::connect(&rig.haproxy.admin, "a b").unwrap_err();
    assert!(matches!(err, HaproxyError::NoBackend { .. }), "{err}");

    for e in [
        HaproxyError::SocketMissing {
            socket: missing.clone(),
        }
        .to_string(),
        err.to_string(),
    ] {
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn haproxy_gone_is_an_error_not_a_hang() {
    let mut rig = rig();
    let hx = Haproxy::connect(&rig.haproxy.admin, "app").unwrap();
    rig.haproxy.kill();
    let err = hx.switch(Colour::Blue, Colour::Green).unwrap_err();
    assert!(matches!(err, HaproxyError::Io { .. }), "{err}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

/// A fake runtime API that answers like HAProxy for `answers.len()` connections, then goes away.
fn fake_haproxy(
    path: std::path::PathBuf,
    answers: Vec<&'static str>,
) -> std::thread::JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let mut commands = Vec::new();
        for answer in answers {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            commands.push(line.trim().to_owned());
            reader.get_mut().write_all(answer.as_bytes()).unwrap();
        }
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        commands
    })
}

const STATES_BLUE_LIVE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 app 1 blue 127.0.0.1 2 0 1 1 10 15 3 4 6 0 0 0 - 8001 - 0 0 - - 0
3 app 2 green 127.0.0.1 2 8 1 1 10 15 3 4 6 0 0 0 - 8002 - 0 0 - - 0

";

#[test]
fn haproxy_stopping_mid_switch_says_traffic_could_not_be_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    // Answers the state read and `set green ready`, then is gone before `set blue drain`.
    let fake = fake_haproxy(path.clone(), vec![STATES_BLUE_LIVE, ""]);
    let err = Haproxy::unchecked(&path, "app")
        .switch(Colour::Blue, Colour::Green)
        .unwrap_err();
    assert_eq!(
        fake.join().unwrap(),
        ["show servers state app", "set server app/green state ready"]
    );
    match &err {
        HaproxyError::Incomplete { step, traffic, .. } => {
            assert_eq!(*step, "set the source drain");
            assert!(traffic.starts_with("could not be read back"), "{traffic}");
        }
        other => panic!("expected Incomplete, got {other}"),
    }
    assert!(!err.to_string().contains('\n'), "{err}");
}

#[test]
fn a_rejected_drain_reports_where_traffic_stands() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    const BOTH_LIVE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state
3 app 1 blue 127.0.0.1 2 0 1 1 10 15 3 4 6 0
3 app 2 green 127.0.0.1 2 0 1 1 10 15 3 4 6 0
";
    let fake = fake_haproxy(
        path.clone(),
        vec![STATES_BLUE_LIVE, "", "No such server.\n", BOTH_LIVE],
    );
    let err = Haproxy::unchecked(&path, "app")
        .switch(Colour::Blue, Colour::Green)
        .unwrap_err();
    fake.join().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("stopped at \"set the source drain\""), "{msg}");
    assert!(msg.contains("No such server."), "{msg}");
    assert!(
        msg.contains("traffic now: blue: ready, up, health up; green: ready, up, health up"),
        "{msg}"
    );
}

#[test]
fn something_that_is_not_haproxy_is_named_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.sock");
    let fake = fake_haproxy(path.clone(), vec!["hello from something else\n"]);
    let err = Haproxy::connect(&path, "app").unwrap_err();
    fake.join().unwrap();
    assert!(matches!(err, HaproxyError::NotHaproxy { .. }), "{err}");
}
