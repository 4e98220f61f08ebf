//! The blue-green switch against a real HAProxy: zero failed requests under keep-alive load while
//! switching back and forth, new requests on the target as soon as a switch returns, refusal of
//! an unhealthy target, idempotent server states, the core's refusals of a switch that makes no
//! sense, and clear errors for a missing socket, a user-level socket, a backend without both
//! servers, something that is not HAProxy, and HAProxy going away mid-switch.
//!
//! The node decides a switch (`switch_traffic`, in the core) and the HAProxy executor performs
//! the effects decided: [`switch`] performs exactly the effects the transition emits for a real
//! traffic layer, which one test checks against the transition itself.

#[path = "support/haproxy.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollback_node::core::effects::{Completion, Decision, Done, Failure, FailureKind, Plan};
use rollback_node::core::state::{Health, Layer};
use rollback_node::exec::haproxy::{CheckVerdict, Haproxy, HaproxyError};
use rollback_node::exec::Executor;
use rollback_node::{Environment, Estate, Refusal, Request, State};
use support::{get_once, switch, switch_effects, wait_until, ColourServer, HaproxyProc, Load};

const BLUE: Environment = Environment::Blue;
const GREEN: Environment = Environment::Green;

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

fn done(completion: Completion) -> Done {
    match completion {
        Completion::Done(done) => done,
        Completion::Failed(failure) => panic!("expected the switch to complete: {failure:?}"),
    }
}

fn failed(completion: Completion) -> Failure {
    match completion {
        Completion::Failed(failure) => failure,
        Completion::Done(done) => panic!("expected the switch to fail, it completed: {done:?}"),
    }
}

fn name(environment: Environment) -> &'static str {
    environment.into()
}

/// What the node believes when its traffic layer is this HAProxy: an estate whose traffic is
/// real, with what HAProxy says applied (as the node does at start).
fn believed(hx: &Haproxy) -> State {
    let mut state = Estate::example().state;
    state.layers.traffic = Layer::Real(format!(
        "haproxy {} backend {}",
        hx.socket().display(),
        hx.backend()
    ));
    hx.found().unwrap().apply(&mut state);
    state
}

fn switch_request(from: Environment, to: Environment) -> Request {
    Request::SwitchTraffic { from, to }
}

/// A socket at `path` that passes each runtime-API command on to the real socket `to` and
/// records it. Serves until the test process ends.
fn recording_proxy(path: PathBuf, to: PathBuf) -> Arc<Mutex<Vec<String>>> {
    let listener = UnixListener::bind(&path).unwrap();
    let commands = Arc::new(Mutex::new(Vec::new()));
    let seen = commands.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            seen.lock().unwrap().push(line.trim().to_owned());
            let mut upstream = UnixStream::connect(&to).unwrap();
            upstream.write_all(line.as_bytes()).unwrap();
            let mut answer = Vec::new();
            upstream.read_to_end(&mut answer).unwrap();
            let _ = reader.get_mut().write_all(&answer);
        }
    });
    commands
}

#[test]
fn switches_back_and_forth_under_load_without_a_failed_request() {
    let rig = rig();
    let mut hx = Haproxy::connect(&rig.haproxy.admin, "app").unwrap();
    assert_eq!(hx.live().unwrap(), BLUE);
    assert_eq!(hx.health(GREEN).unwrap(), CheckVerdict::Up);

    let load = Load::start(
        rig.haproxy.frontend,
        4,
        100_000,
        Duration::from_secs(60),
        Duration::from_micros(200),
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut switches = Vec::new();
    let mut from = BLUE;
    for _ in 0..10 {
        let to = from.other();
        let started = Instant::now();
        let report = done(switch(&mut hx, from, to));
        let returned = Instant::now();
        assert_eq!(hx.live().unwrap(), to);
        // A new request right after the switch returns reaches the target.
        let (status, body) = get_once(rig.haproxy.frontend).expect("a request after the switch");
        assert_eq!((status, body.as_str()), (200, name(to)));
        let [blue, green] = hx.states().unwrap();
        eprintln!(
            "switch {from} -> {to}: {:?} (blue: {}; green: {})",
            report.duration,
            blue.describe(),
            green.describe()
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
                    Some(name(*to)),
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
    let mut hx = Haproxy::connect(&rig.haproxy.admin, "app").unwrap();
    // The node read both healthy; then green goes down.
    let stale = believed(&hx);
    rig.green.stop();
    assert!(
        wait_until(Duration::from_secs(10), || hx.health(GREEN).unwrap()
            == CheckVerdict::Down),
        "haproxy never saw green go down"
    );
    // The node still believes green healthy and decides the switch; the executor's health check
    // asks HAProxy again and refuses, changing nothing.
    let Ok(Decision::Accept(operation)) = stale.decide(&switch_request(BLUE, GREEN)) else {
        panic!("a node that believes green healthy decides the switch")
    };
    assert_eq!(operation.effects, switch_effects(BLUE, GREEN));
    let failure = failed(hx.perform(&operation.effects, &mut |_| {}));
    assert_eq!(failure.kind, FailureKind::Refused, "{failure:?}");
    assert_eq!(failure.completed, 0);
    assert!(!failure.is_part_way(&switch_effects(Environment::Blue, Environment::Green)));
    let text = failure.error.to_string();
    assert!(
        text.contains("refusing to switch to green: HAProxy's health checks say down"),
        "{text}"
    );
    assert!(text.contains("L4CON"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    let now = failure.now.expect("HAProxy says where traffic stands");
    assert_eq!(now.live_environment, Some(BLUE));
    assert_eq!(now.health, Some((Health::Healthy, Health::Unhealthy)));

    // Nothing changed.
    assert_eq!(hx.live().unwrap(), BLUE);
    assert_eq!(get_once(rig.haproxy.frontend).unwrap().1, "blue");
    let [_, green] = hx.states().unwrap();
    assert!(
        green.draining(),
        "green stays drained: {}",
        green.describe()
    );

    // A node that has read the health since refuses the switch itself.
    match believed(&hx).decide(&switch_request(BLUE, GREEN)) {
        Err(refusal @ Refusal::PreconditionFailed(_)) => {
            assert_eq!(refusal.code(), 22);
            assert!(
                refusal.text().starts_with("green is unhealthy"),
                "{refusal}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(rig.blue);
}

#[test]
fn performing_a_switch_again_changes_nothing() {
    let rig = rig();
    let via = rig.haproxy.dir.path().join("recorded.sock");
    let commands = recording_proxy(via.clone(), rig.haproxy.admin.clone());
    let mut hx = Haproxy::connect(&via, "app").unwrap();
    commands.lock().unwrap().clear();

    done(switch(&mut hx, BLUE, GREEN));
    let sets = |commands: &Arc<Mutex<Vec<String>>>| -> Vec<String> {
        let all = std::mem::take(&mut *commands.lock().unwrap());
        all.into_iter().filter(|c| c.starts_with("set ")).collect()
    };
    assert_eq!(
        sets(&commands),
        [
            "set server app/green state ready",
            "set server app/blue state drain"
        ]
    );
    assert_eq!(hx.live().unwrap(), GREEN);
    let before = hx.states().unwrap();

    // The same effects again: both servers already are so, nothing is sent, and it succeeds.
    done(switch(&mut hx, BLUE, GREEN));
    assert_eq!(sets(&commands), Vec::<String>::new());
    assert_eq!(hx.states().unwrap(), before);
    assert_eq!(hx.live().unwrap(), GREEN);
    assert_eq!(get_once(rig.haproxy.frontend).unwrap().1, "green");
}

#[test]
fn the_core_refuses_a_switch_to_the_live_server_and_from_a_server_not_live() {
    let rig = rig();
    let mut hx = Haproxy::connect(&rig.haproxy.admin, "app").unwrap();
    let state = believed(&hx);
    assert_eq!(state.traffic.live, BLUE);

    // What the transition decides for a real HAProxy is what `switch` performs.
    let Ok(Decision::Accept(operation)) = state.decide(&switch_request(BLUE, GREEN)) else {
        panic!("blue to green is decided")
    };
    assert_eq!(
        operation.plan,
        Plan::SwitchTraffic {
            from: BLUE,
            to: GREEN
        }
    );
    assert_eq!(operation.effects, switch_effects(BLUE, GREEN));
    done(hx.perform(&operation.effects, &mut |_| {}));
    assert_eq!(hx.live().unwrap(), GREEN);

    // Now green is live, as HAProxy says.
    let state = believed(&hx);
    assert_eq!(state.traffic.live, GREEN);
    match state.decide(&switch_request(BLUE, GREEN)) {
        Err(refusal @ Refusal::PreconditionFailed(_)) => {
            assert_eq!(refusal.code(), 22);
            assert_eq!(
                refusal.text(),
                "blue is not live (green is); switch_traffic needs from = the live environment"
            );
        }
        other => panic!("expected a refusal of a source not live, got {other:?}"),
    }
    for same in [BLUE, GREEN] {
        match state.decide(&switch_request(same, same)) {
            Err(refusal @ Refusal::MalformedRequest(_)) => {
                assert_eq!(refusal.code(), 12);
                assert!(
                    refusal
                        .text()
                        .starts_with(&format!("from and to are both {same}")),
                    "{refusal}"
                );
            }
            other => panic!("expected a refusal of from == to, got {other:?}"),
        }
    }
    // Refusals touch nothing.
    assert_eq!(hx.live().unwrap(), GREEN);
    assert_eq!(get_once(rig.haproxy.frontend).unwrap().1, "green");
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
    // Without the upfront check, HAProxy itself refuses the switch and nothing moves.
    let failure = failed(switch(
        &mut Haproxy::unchecked(&rig.haproxy.user, "app"),
        BLUE,
        GREEN,
    ));
    assert_eq!(failure.kind, FailureKind::NothingChanged, "{failure:?}");
    let text = failure.error.to_string();
    // A user-level socket may read the states (the health check passes), not set them.
    assert_eq!(failure.completed, 1, "{failure:?}");
    // Only the health check completed, and it changes nothing: the node answers 14, not 13.
    assert!(!failure.is_part_way(&switch_effects(BLUE, GREEN)));
    assert!(text.contains("setting green ready failed"), "{text}");
    assert!(
        text.contains("not an admin socket (level Permission denied)"),
        "{text}"
    );
    assert!(text.contains("user.sock level admin"), "{text}");
    let now = failure.now.expect("HAProxy says where traffic stands");
    assert_eq!(now.live_environment, Some(BLUE));
    let hx = Haproxy::connect(&rig.haproxy.admin, "app").unwrap();
    assert_eq!(hx.live().unwrap(), BLUE);
    let [_, green] = hx.states().unwrap();
    assert!(green.draining(), "{}", green.describe());

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
        text,
    ] {
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn haproxy_gone_is_an_error_not_a_hang() {
    let mut rig = rig();
    let mut hx = Haproxy::connect(&rig.haproxy.admin, "app").unwrap();
    rig.haproxy.kill();
    let started = Instant::now();
    let failure = failed(switch(&mut hx, BLUE, GREEN));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(failure.kind, FailureKind::NothingChanged, "{failure:?}");
    assert_eq!(failure.completed, 0);
    assert_eq!(failure.now, None, "nothing to read back");
    let text = failure.error.to_string();
    assert!(text.contains("checking green's health"), "{text}");
    assert!(text.contains("cannot connect"), "{text}");
}

/// A fake runtime API that answers like HAProxy for `answers.len()` connections, then goes away
/// (its socket is gone before the last connection closes). Returns the commands it was sent.
fn fake_haproxy(
    path: std::path::PathBuf,
    answers: Vec<&'static str>,
) -> std::thread::JoinHandle<Vec<String>> {
    fake_runtime_api(path, answers, false)
}

/// A fake runtime API that answers one command a connection with the next of `answers`: with
/// `linger`, each connection is held open until the client closes it (as HAProxy may still hold
/// its end when its answer is all sent); without, the socket is removed before the last
/// connection closes. Returns the commands it was sent.
fn fake_runtime_api(
    path: std::path::PathBuf,
    answers: Vec<&'static str>,
    linger: bool,
) -> std::thread::JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let mut commands = Vec::new();
        let last = answers.len();
        for (i, answer) in answers.into_iter().enumerate() {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            commands.push(line.trim().to_owned());
            reader.get_mut().write_all(answer.as_bytes()).unwrap();
            if linger {
                // Held open until the client has read its answer and closed.
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
            } else if i + 1 == last {
                std::fs::remove_file(&path).unwrap();
            }
        }
        commands
    })
}

const STATES_BLUE_LIVE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 app 1 blue 127.0.0.1 2 0 1 1 10 15 3 4 6 0 0 0 - 8001 - 0 0 - - 0
3 app 2 green 127.0.0.1 2 8 1 1 10 15 3 4 6 0 0 0 - 8002 - 0 0 - - 0

";

const BOTH_LIVE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state
3 app 1 blue 127.0.0.1 2 0 1 1 10 15 3 4 6 0
3 app 2 green 127.0.0.1 2 0 1 1 10 15 3 4 6 0
";

const SHOW: &str = "show servers state app";

#[test]
fn haproxy_stopping_mid_switch_says_the_switch_is_part_way() {
    // Gone right after `set green ready` (its read-back fails: one effect completed), or right
    // after `set blue drain` (two completed).
    let cases: [(&[&'static str], &[&str], usize, &str); 2] = [
        (
            &[STATES_BLUE_LIVE, ""],
            &[SHOW, "set server app/green state ready"],
            1,
            "setting green ready failed",
        ),
        (
            &[STATES_BLUE_LIVE, "", BOTH_LIVE, ""],
            &[
                SHOW,
                "set server app/green state ready",
                SHOW,
                "set server app/blue state drain",
            ],
            2,
            "setting blue drain failed",
        ),
    ];
    for (answers, sent, completed, action) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let fake = fake_haproxy(path.clone(), answers.to_vec());
        let failure = failed(switch(&mut Haproxy::unchecked(&path, "app"), BLUE, GREEN));
        assert_eq!(fake.join().unwrap(), sent);
        assert_eq!(failure.kind, FailureKind::PartWay, "{failure:?}");
        assert_eq!(failure.completed, completed, "{failure:?}");
        assert!(failure.is_part_way(&switch_effects(Environment::Blue, Environment::Green)));
        assert_eq!(failure.now, None, "traffic could not be read back");
        let text = failure.error.to_string();
        assert!(text.contains(action), "{text}");
        assert!(text.contains("does not exist"), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
    }
}

#[test]
fn a_rejected_drain_says_what_haproxy_answered_after_the_target_went_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let fake = fake_haproxy(
        path.clone(),
        vec![
            STATES_BLUE_LIVE,
            "",
            BOTH_LIVE,
            "No such server.\n",
            BOTH_LIVE,
        ],
    );
    let failure = failed(switch(&mut Haproxy::unchecked(&path, "app"), BLUE, GREEN));
    assert_eq!(
        fake.join().unwrap(),
        [
            SHOW,
            "set server app/green state ready",
            SHOW,
            "set server app/blue state drain",
            SHOW
        ]
    );
    // The drain itself changed nothing, but green went ready before it: part-way.
    assert_eq!(failure.kind, FailureKind::NothingChanged, "{failure:?}");
    assert_eq!(failure.completed, 2);
    assert!(failure.is_part_way(&switch_effects(Environment::Blue, Environment::Green)));
    let text = failure.error.to_string();
    assert!(text.contains("setting blue drain failed"), "{text}");
    assert!(
        text.contains("HAProxy rejected \"set server app/blue state drain\": No such server."),
        "{text}"
    );
    // Read back after the failure, both take traffic: HAProxy gives no one live environment.
    assert_eq!(failure.now, None);
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

#[test]
fn an_answer_is_complete_at_haproxys_empty_line_without_waiting_for_the_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let fake = fake_runtime_api(
        path.clone(),
        vec!["admin\n\n", "\n", STATES_BLUE_LIVE],
        true,
    );
    // A client that waited for the close would time out here instead.
    let hx = Haproxy::unchecked(&path, "app").with_timeout(Duration::from_secs(10));
    hx.check_admin().unwrap();
    hx.set_state(GREEN, "ready").unwrap();
    assert_eq!(hx.live().unwrap(), BLUE);
    assert_eq!(
        fake.join().unwrap(),
        ["show cli level", "set server app/green state ready", SHOW]
    );
}

/// A socket at `path` that passes each runtime-API command on to the real socket `to`, hands
/// back HAProxy's whole answer (read to HAProxy's close) and then holds the connection open until
/// the client closes it. Serves until the test process ends.
fn lingering_proxy(path: PathBuf, to: PathBuf) {
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let to = to.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut upstream = UnixStream::connect(&to).unwrap();
                upstream.write_all(line.as_bytes()).unwrap();
                let mut answer = Vec::new();
                upstream.read_to_end(&mut answer).unwrap();
                let _ = reader.get_mut().write_all(&answer);
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
            });
        }
    });
}

#[test]
fn every_answer_the_real_haproxy_gives_ends_at_its_empty_line() {
    let rig = rig();
    // A `set server` that prints nothing answers a lone empty line.
    assert_eq!(
        rig.haproxy.raw("set server app/blue state ready").unwrap(),
        "\n"
    );
    let via = rig.haproxy.dir.path().join("lingering.sock");
    lingering_proxy(via.clone(), rig.haproxy.admin.clone());
    // Each command the module sends is read to its end without HAProxy's close: a client that
    // waited for the close would time out on the first.
    let mut hx = Haproxy::connect(&via, "app")
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    done(switch(&mut hx, BLUE, GREEN));
    assert_eq!(hx.live().unwrap(), GREEN);
    done(switch(&mut hx, GREEN, BLUE));
    assert_eq!(hx.live().unwrap(), BLUE);
    let stat = hx.command("show stat").unwrap();
    assert!(stat.contains("\napp,green,"), "{stat}");
    // An error answer ends there too.
    let err = Haproxy::unchecked(&via, "solo")
        .with_timeout(Duration::from_secs(10))
        .set_state(GREEN, "ready")
        .unwrap_err();
    assert!(
        matches!(&err, HaproxyError::Rejected { answer, .. } if answer == "No such server."),
        "{err}"
    );
    // And an unhealthy target's refusal, which reads `show stat` for its message.
    let mut rig = rig;
    rig.green.stop();
    assert!(wait_until(Duration::from_secs(10), || {
        hx.health(GREEN).is_ok_and(|h| h == CheckVerdict::Down)
    }));
    let failure = failed(switch(&mut hx, BLUE, GREEN));
    assert_eq!(failure.kind, FailureKind::Refused, "{failure:?}");
    let text = failure.error.to_string();
    assert!(text.contains("L4CON"), "{text}");
}
