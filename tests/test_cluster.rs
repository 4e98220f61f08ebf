//! Several nodes on one PostgreSQL store, through the binary: three node processes per test on
//! a throwaway PostgreSQL 15 (one server for this test binary, one store database per test).
//! Any node accepts any request; one leads; a retry sent to another node joins the original;
//! the kill switch is answered with no leader; a leader killed in the middle of a rollback is
//! replaced and the request is answered with the interruption; bad starts are refused.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/pg.rs"]
mod pg;
#[path = "support/pgbouncer.rs"]
mod pgbouncer;
#[path = "support/service.rs"]
mod service;

use cluster::{wait_until, Node};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const REPLY: Duration = Duration::from_secs(15);

/// A fresh store database and its URL.
fn store(hint: &str) -> (String, String) {
    pg::server().create_database(hint)
}

fn three(url: &str, extra: &[&str]) -> [Node; 3] {
    ["n1", "n2", "n3"].map(|id| Node::start(url, id, None, extra))
}

fn status(node: &Node) -> Value {
    node.request("ops", json!({"type": "status"}), REPLY)["body"].clone()
}

/// The leader every node names, once they agree (and someone leads).
fn agreed_leader(nodes: &[Node]) -> String {
    let mut leader = String::new();
    let agreed = wait_until(Duration::from_secs(15), || {
        let named: Vec<Value> = nodes
            .iter()
            .map(|n| status(n)["cluster"]["leader"].clone())
            .collect();
        match named[0].as_str() {
            Some(first) if named.iter().all(|l| l.as_str() == Some(first)) => {
                leader = first.to_owned();
                true
            }
            _ => false,
        }
    });
    assert!(agreed, "the nodes never agreed on a leader");
    leader
}

/// The leader, a follower that accepts the request, and the other follower.
fn roles<'a>(nodes: &'a [Node], leader: &str) -> (&'a Node, &'a Node, &'a Node) {
    let leading = nodes.iter().find(|n| n.node_id == leader).unwrap();
    let mut followers = nodes.iter().filter(|n| n.node_id != leader);
    (
        leading,
        followers.next().unwrap(),
        followers.next().unwrap(),
    )
}

/// Sends a rollback to version 2 (`msg_id`) to `accepting`, waits until `leading` runs it, and
/// kills `leading` with SIGKILL; returns when.
fn kill_the_leader_mid_rollback(leading: &Node, accepting: &Node, msg_id: u64) -> Instant {
    accepting.send_body(
        "deploy",
        &json!({"type": "rollback", "msg_id": msg_id, "version": 2}),
    );
    assert!(wait_until(Duration::from_secs(5), || {
        status(leading)["in_flight"]
            .as_array()
            .is_some_and(|f| f.iter().any(|o| o["msg_id"] == msg_id))
    }));
    let killed = Instant::now();
    leading.kill9();
    killed
}

fn sql(db: &str, text: &str) -> Vec<postgres::SimpleQueryMessage> {
    pg::server()
        .connect(db)
        .simple_query(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn count(db: &str, text: &str) -> i64 {
    let rows: Vec<i64> = sql(db, text)
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .collect();
    rows[0]
}

#[test]
fn any_node_accepts_and_one_leads() {
    let (url, db) = store("accepts");
    let nodes = three(&url, &[]);
    let leader = agreed_leader(&nodes);
    let follower = nodes.iter().find(|n| n.node_id != leader).unwrap();
    let other = nodes
        .iter()
        .find(|n| n.node_id != leader && n.node_id != follower.node_id)
        .unwrap();

    // Agreeing on a leader does not wait for the last node's first heartbeat to be read.
    let mut first = Value::Null;
    wait_until(Duration::from_secs(5), || {
        first = status(follower);
        first["cluster"]["nodes"].as_array().map_or(0, Vec::len) == 3
    });
    assert_eq!(first["schema_version"], 3);
    let cluster = &first["cluster"];
    assert_eq!(cluster["node"], follower.node_id.as_str());
    assert_eq!(cluster["leader"], leader.as_str());
    assert!(cluster["epoch"].as_u64().unwrap() >= 1, "{cluster}");
    assert_eq!(cluster["nodes"], json!(["n1", "n2", "n3"]));

    // Accepted by a follower, run by the leader, answered by the follower.
    let reply = follower.request(
        "deploy",
        json!({"type": "rollback", "msg_id": 1, "version": 2}),
        REPLY,
    );
    assert_eq!(reply["src"], follower.node_id.as_str());
    assert_eq!(reply["dest"], "deploy");
    assert_eq!(reply["body"]["type"], "rollback_complete", "{reply}");
    assert_eq!(reply["body"]["rolled_back_to"], 1);
    // The same request again, to another node: the original's reply, not a second run.
    let retry = other.request(
        "deploy",
        json!({"type": "rollback", "msg_id": 1, "version": 2}),
        REPLY,
    );
    assert_eq!(retry["body"], reply["body"]);
    for node in &nodes {
        assert_eq!(status(node)["schema_version"], 1, "{}", node.node_id);
    }
    // A request refused by the leader's machine is refused on every node alike.
    let refused = other.request(
        "deploy",
        json!({"type": "rollback", "msg_id": 2, "version": 7}),
        REPLY,
    );
    assert_eq!(refused["body"]["type"], "error");

    // One history entry for the rollback, the same on every node.
    for node in &nodes {
        let history = node.request("ops", json!({"type": "history"}), REPLY);
        let entries = history["body"]["entries"].as_array().unwrap().clone();
        let rollbacks: Vec<&Value> = entries
            .iter()
            .filter(|e| e["request"]["type"] == "rollback" && e["msg_id"] == 1)
            .collect();
        assert_eq!(rollbacks.len(), 1, "{}: {entries:?}", node.node_id);
        assert_eq!(rollbacks[0]["reply"], reply["body"]);
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM rollback_node.journal WHERE hseq IS NOT NULL AND msg_id = 1"
        ),
        1
    );
}

#[test]
fn the_kill_switch_is_answered_with_no_leader() {
    let (url, db) = store("killswitch");
    let nodes = three(&url, &[]);
    agreed_leader(&nodes);
    // A holder that is not a node keeps the lease: nobody leads.
    sql(
        &db,
        "UPDATE rollback_node.lease SET holder = 'ghost', epoch = epoch + 1, expires_at = clock_timestamp() + interval '1 hour'",
    );
    assert!(wait_until(Duration::from_secs(10), || nodes
        .iter()
        .all(|n| status(n)["cluster"]["leader"] == "ghost")));

    let started = Instant::now();
    let reply = nodes[1].request(
        "oncall",
        json!({"type": "disable_feature", "msg_id": 5, "feature": "new_checkout"}),
        REPLY,
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        reply["body"],
        json!({"type": "feature_disabled", "in_reply_to": 5, "feature": "new_checkout", "rolled_back_instant": true})
    );
    // Every node serves the store's flags.
    assert!(wait_until(Duration::from_secs(5), || nodes
        .iter()
        .all(|n| status(n)["flags"]["new_checkout"] == false)));
    // A retry on another node is answered from the store, once.
    let retry = nodes[2].request(
        "oncall",
        json!({"type": "disable_feature", "msg_id": 5, "feature": "new_checkout"}),
        REPLY,
    );
    assert_eq!(retry["body"], reply["body"]);
    assert_eq!(count(&db, "SELECT count(*) FROM rollback_node.flags"), 1);
    // An unknown flag is refused and recorded nowhere.
    let unknown = nodes[0].request(
        "oncall",
        json!({"type": "disable_feature", "msg_id": 6, "feature": "nope"}),
        REPLY,
    );
    assert_eq!(unknown["body"]["code"], 20, "{unknown}");
    assert_eq!(count(&db, "SELECT count(*) FROM rollback_node.flags"), 1);

    // A rollback waits for a leader, and is run once one takes the lease.
    nodes[0].send_body(
        "deploy",
        &json!({"type": "rollback", "msg_id": 9, "version": 3}),
    );
    assert!(nodes[0].try_recv_reply(9, Duration::from_secs(1)).is_none());
    sql(
        &db,
        "UPDATE rollback_node.lease SET holder = NULL, expires_at = clock_timestamp()",
    );
    let reply = nodes[0].recv_reply(9, REPLY);
    assert_eq!(reply["body"]["type"], "rollback_complete", "{reply}");

    // The cluster's trail pages with `after: SEQ` on any node: the flag change, then the rollback.
    let all = nodes[2].request("ops", json!({"type": "history"}), REPLY);
    let entries = all["body"]["entries"].as_array().unwrap().clone();
    let kinds: Vec<&Value> = entries.iter().map(|e| &e["request"]["type"]).collect();
    assert_eq!(
        kinds,
        [&json!("disable_feature"), &json!("rollback")],
        "{all}"
    );
    let first = entries[0]["seq"].as_u64().unwrap();
    for node in &nodes {
        let page = node.request(
            "ops",
            json!({"type": "history", "after": first, "limit": 1}),
            REPLY,
        );
        assert_eq!(page["body"]["entries"], json!([entries[1]]), "{page}");
        let first_page = node.request(
            "ops",
            json!({"type": "history", "after": 0, "limit": 1}),
            REPLY,
        );
        assert_eq!(
            first_page["body"]["entries"],
            json!([entries[0]]),
            "{first_page}"
        );
        let last = entries[1]["seq"].as_u64().unwrap();
        let past = node.request("ops", json!({"type": "history", "after": last}), REPLY);
        assert_eq!(past["body"]["entries"], json!([]), "{past}");
    }
}

#[test]
fn a_leader_killed_mid_rollback_is_replaced_and_the_request_answered_with_the_interruption() {
    let (url, _db) = store("failover");
    // A rollback to 1 is 25 modelled seconds: 5 s of wall time at this pace.
    let nodes = three(&url, &["--pace", "0.2"]);
    let leader = agreed_leader(&nodes);
    let epoch = status(&nodes[0])["cluster"]["epoch"].as_u64().unwrap();
    let (leading, accepting, third) = roles(&nodes, &leader);
    let killed = kill_the_leader_mid_rollback(leading, accepting, 3);

    let reply = accepting.recv_reply(3, REPLY);
    let took = killed.elapsed();
    assert_eq!(reply["body"]["type"], "error", "{reply}");
    assert_eq!(reply["body"]["code"], 13, "{reply}");
    assert!(
        reply["body"]["text"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{reply}"
    );
    assert!(
        took < Duration::from_secs(10),
        "answered {took:?} after the kill"
    );
    // A retry anywhere gets the same; every node lists the interruption; a higher epoch leads.
    let retry = third.request(
        "deploy",
        json!({"type": "rollback", "msg_id": 3, "version": 2}),
        REPLY,
    );
    assert_eq!(retry["body"], reply["body"]);
    for node in [accepting, third] {
        let s = status(node);
        let interrupted = s["interrupted"].as_array().cloned().unwrap_or_default();
        assert!(
            interrupted
                .iter()
                .any(|i| i["msg_id"] == 3 && i["src"] == "deploy"),
            "{}: {s}",
            node.node_id
        );
        assert!(s["cluster"]["epoch"].as_u64().unwrap() > epoch, "{s}");
        assert_ne!(s["cluster"]["leader"], leader.as_str(), "{s}");
        let history = node.request("ops", json!({"type": "history"}), REPLY);
        let entries = history["body"]["entries"].as_array().unwrap().clone();
        let mine: Vec<&Value> = entries.iter().filter(|e| e["msg_id"] == 3).collect();
        assert_eq!(mine.len(), 1, "{entries:?}");
        assert!(mine[0]["reply"]["text"]
            .as_str()
            .unwrap()
            .contains("interrupted"));
    }
    // The queue carries on under the new leader.
    let next = third.request(
        "deploy",
        json!({"type": "switch_traffic", "msg_id": 4, "from": "green", "to": "blue"}),
        REPLY,
    );
    assert_eq!(next["body"]["type"], "traffic_switched", "{next}");
}

#[test]
fn nodes_with_different_estates_are_refused_naming_both() {
    let (url, _db) = store("estates");
    let first = Node::start(&url, "n1", None, &[]);
    status(&first);
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.toml");
    let text = rollback_node::EXAMPLE_ESTATE.replace("new_checkout", "old_checkout");
    std::fs::write(&other, text).unwrap();
    let second = Node::start(&url, "n2", Some(&other), &[]);
    let exit = second.wait_exit(Duration::from_secs(15)).expect("refused");
    assert_eq!(exit.code(), Some(2));
    let said = second.stderr_text();
    assert!(said.contains("another estate"), "{said}");
    assert!(said.contains("the built-in example estate"), "{said}");
    assert!(said.contains("other.toml"), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "{said}");
}

#[test]
fn an_unreachable_store_at_start_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://nobody@/rb?host={}", dir.path().display());
    let node = Node::start(&url, "n1", None, &[]);
    let exit = node.wait_exit(Duration::from_secs(15)).expect("refused");
    assert_eq!(exit.code(), Some(2));
    let said = node.stderr_text();
    assert!(said.contains("cannot reach the store"), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "{said}");
}

#[test]
fn a_store_connection_cut_while_a_node_starts_is_waited_out() {
    let (url, db) = store("startcut");
    let server = pg::server();
    let mut retried = false;
    // Every established connection to the store is cut, again and again, for the first
    // seconds of each start (a connection still in its handshake is left alone: a node
    // that cannot reach the store at all rightly exits, which is another test).
    // Until a start has been cut at least once (timing decides whether a cut lands in one),
    // and at least three starts.
    for round in 0..10 {
        if retried && round >= 3 {
            break;
        }
        let cutting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cutter = {
            let cutting = cutting.clone();
            let (admin, db) = (server.url("postgres"), db.clone());
            std::thread::spawn(move || {
                let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
                let mut cut = 0;
                while cutting.load(std::sync::atomic::Ordering::SeqCst) {
                    let rows = client
                        .query(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE datname = $1 AND pid <> pg_backend_pid() AND state IS NOT NULL",
                            &[&db],
                        )
                        .unwrap();
                    cut += rows.len();
                    std::thread::sleep(Duration::from_millis(15));
                }
                cut
            })
        };
        let node = Node::start(&url, &format!("s{round}"), None, &[]);
        std::thread::sleep(Duration::from_millis(1500));
        cutting.store(false, std::sync::atomic::Ordering::SeqCst);
        let cut = cutter.join().unwrap();
        assert!(cut > 0, "round {round}: no connection was cut");
        assert!(
            node.wait_stderr_contains("joined the cluster", REPLY),
            "round {round}: {}",
            node.stderr_all()
        );
        assert!(node.is_running(), "round {round}: {}", node.stderr_all());
        assert_eq!(status(&node)["cluster"]["node"], format!("s{round}"));
        let said = node.stderr_all();
        eprintln!("round {round}: {cut} connections cut; the node said:\n{said}");
        retried |= said.contains("while starting") || said.contains("while claiming");
    }
    assert!(retried, "no start was cut: the test did not test");
}

#[test]
fn a_live_node_id_is_refused_and_a_crashed_one_is_waited_for() {
    let (url, _db) = store("ids");
    let first = Node::start(&url, "n1", None, &[]);
    status(&first);
    let twin = Node::start(&url, "n1", None, &[]);
    let exit = twin.wait_exit(Duration::from_secs(15)).expect("refused");
    assert_eq!(exit.code(), Some(2), "{}", twin.stderr_text());
    assert!(
        twin.stderr_text().contains("held by a live node"),
        "{}",
        twin.stderr_text()
    );

    // After a kill -9 the same id starts again, once its old heartbeat is a lease old.
    first.kill9();
    let restarted = Instant::now();
    first.restart();
    assert_eq!(status(&first)["cluster"]["node"], "n1");
    assert!(
        first.stderr_text().contains("waiting up to"),
        "{}",
        first.stderr_text()
    );
    assert!(restarted.elapsed() >= Duration::from_secs(1));
}

#[test]
fn a_store_that_goes_away_refuses_changes_and_comes_back_by_itself() {
    let (url, db) = store("outage");
    let nodes = three(&url, &[]);
    agreed_leader(&nodes);
    let server = pg::server();
    sql(
        "postgres",
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"),
    );
    cluster::terminate_backends(&server.url("postgres"), &db);

    let refused = nodes[1].request(
        "oncall",
        json!({"type": "disable_feature", "msg_id": 1, "feature": "new_checkout"}),
        REPLY,
    );
    assert_eq!(refused["body"]["code"], 11, "{refused}");
    let forwarded = nodes[2].request(
        "deploy",
        json!({"type": "rollback", "msg_id": 2, "version": 3}),
        REPLY,
    );
    assert_eq!(forwarded["body"]["code"], 11, "{forwarded}");
    let known = status(&nodes[0]);
    assert_eq!(known["schema_version"], 3);
    assert!(
        known["cluster"]["store"]
            .as_str()
            .unwrap()
            .starts_with("cut off"),
        "{known}"
    );

    sql(
        "postgres",
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"),
    );
    let mut last = Value::Null;
    let back = wait_until(Duration::from_secs(20), || {
        last = nodes[1].request(
            "oncall",
            json!({"type": "disable_feature", "feature": "new_checkout"}),
            REPLY,
        );
        last["body"]["type"] == "feature_disabled"
    });
    assert!(back, "{last}");
    // Each node reconnects on its own schedule: until node 3 has, it answers 11, which says a
    // retry with the same msg_id is safe; the deploy pipeline retries as told.
    let mut reply = Value::Null;
    let answered = wait_until(Duration::from_secs(20), || {
        reply = nodes[2].request(
            "deploy",
            json!({"type": "rollback", "msg_id": 3, "version": 3}),
            REPLY,
        );
        reply["body"]["code"] != 11
    });
    assert!(answered, "{reply}");
    assert_eq!(reply["body"]["type"], "rollback_complete", "{reply}");
    assert_eq!(status(&nodes[0])["cluster"]["store"], "connected");
}

/// A PostgreSQL target with a second migration whose up() takes 1.5 s inside its transaction.
fn slow_target(dir: &std::path::Path) -> (String, String) {
    let (url, name) = pg::server().create_database("fence_target");
    let migrations = dir.join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    for (file, text) in [
        (
            "1_create_items.up.sql",
            "CREATE TABLE items (id bigint PRIMARY KEY);",
        ),
        ("1_create_items.down.sql", "DROP TABLE items;"),
        (
            "2_add_price.up.sql",
            "SELECT pg_sleep(1.5);\nALTER TABLE items ADD COLUMN price bigint;",
        ),
        (
            "2_add_price.down.sql",
            "ALTER TABLE items DROP COLUMN price;",
        ),
    ] {
        std::fs::write(migrations.join(file), text).unwrap();
    }
    std::fs::write(
        dir.join("estate.toml"),
        format!("[schema]\ndatabase = \"{url}\"\nmigrations = \"migrations\"\n\n[flags]\nnew_checkout = true\n"),
    )
    .unwrap();
    (url, name)
}

#[test]
fn a_leader_paused_in_a_migration_cannot_write_after_its_successor() {
    let (url, _) = store("fence_store");
    let dir = tempfile::tempdir().unwrap();
    let (_, target) = slow_target(dir.path());
    let estate = dir.path().join("estate.toml");
    let nodes = ["n1", "n2", "n3"].map(|id| Node::start(&url, id, Some(&estate), &[]));
    let leader = agreed_leader(&nodes);
    let leading = nodes.iter().find(|n| n.node_id == leader).unwrap();
    let accepting = nodes.iter().find(|n| n.node_id != leader).unwrap();
    let first = accepting.request("deploy", json!({"type": "migrate", "version": 1}), REPLY);
    assert_eq!(first["body"]["type"], "migrate_complete", "{first}");
    let epoch = status(accepting)["cluster"]["epoch"].as_u64().unwrap();
    assert_eq!(
        count(&target, "SELECT epoch FROM rollback_node_fence"),
        epoch as i64
    );

    // Paused inside the slow migration's transaction, past its lease.
    accepting.send_body(
        "deploy",
        &json!({"type": "migrate", "msg_id": 2, "version": 2}),
    );
    assert!(wait_until(Duration::from_secs(5), || count(
        &target,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(1.5)%'"
    ) == 1));
    leading.sigstop();
    // While the next leader waits for the paused transaction to end before it can advance the
    // fence, every survivor answers the kill switch at once.
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.node_id != leader).collect();
    assert!(wait_until(Duration::from_secs(10), || {
        let l = status(survivors[0])["cluster"]["leader"].clone();
        l.is_string() && l != leader.as_str()
    }));
    for (k, node) in survivors.iter().enumerate() {
        let asked = Instant::now();
        let off = node.request(
            "oncall",
            json!({"type": "disable_feature", "msg_id": 100 + k, "feature": "new_checkout"}),
            REPLY,
        );
        assert_eq!(off["body"]["type"], "feature_disabled", "{off}");
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "{:?}",
            asked.elapsed()
        );
    }
    assert!(
        accepting.try_recv_reply(2, Duration::ZERO).is_none(),
        "not before the fence"
    );
    let reply = accepting.recv_reply(2, Duration::from_secs(30));
    assert_eq!(reply["body"]["code"], 13, "{reply}");
    assert!(
        reply["body"]["text"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{reply}"
    );
    let after = status(accepting);
    let new_epoch = after["cluster"]["epoch"].as_u64().unwrap();
    assert!(new_epoch > epoch, "{after}");
    assert_eq!(
        count(&target, "SELECT epoch FROM rollback_node_fence"),
        new_epoch as i64,
        "the successor advanced the fence before it reconciled"
    );
    // The paused node comes back: it must not finish the migration it started.
    leading.sigcont();
    assert!(
        leading.wait_stderr_contains("stops leading", Duration::from_secs(15)),
        "{}",
        leading.stderr_text()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count(&target, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'price'"),
        0,
        "the paused leader's migration wrote after its successor"
    );
    assert_eq!(count(&target, "SELECT version FROM schema_migrations"), 1);
    // The new leader runs it when asked again, once.
    let again = accepting.request(
        "deploy",
        json!({"type": "migrate", "msg_id": 3, "version": 2}),
        Duration::from_secs(30),
    );
    assert_eq!(again["body"]["type"], "migrate_complete", "{again}");
    assert_eq!(count(&target, "SELECT version FROM schema_migrations"), 2);
}

#[test]
fn three_nodes_through_pgbouncer_in_transaction_pooling() {
    let (_, db) = store("bouncer");
    let bouncer = pgbouncer::bouncer();
    let url = bouncer.url(&db);
    let nodes = three(&url, &["--pace", "0.2"]);
    let leader = agreed_leader(&nodes);
    let (leading, accepting, third) = roles(&nodes, &leader);
    // Every node holds several client connections; they share the pool's few server ones.
    let pool = bouncer.pool(&db).expect("a pool for the store");
    let clients: usize =
        pool["cl_active"].parse::<usize>().unwrap() + pool["cl_waiting"].parse::<usize>().unwrap();
    let servers: usize = pool["sv_active"].parse::<usize>().unwrap()
        + pool["sv_idle"].parse::<usize>().unwrap()
        + pool["sv_used"].parse::<usize>().unwrap();
    assert!(clients >= 6, "{pool:?}");
    assert!(servers <= pgbouncer::POOL_SIZE, "{pool:?}");

    let off = third.request(
        "oncall",
        json!({"type": "disable_feature", "msg_id": 1, "feature": "new_checkout"}),
        REPLY,
    );
    assert_eq!(off["body"]["type"], "feature_disabled", "{off}");
    let switched = accepting.request(
        "deploy",
        json!({"type": "switch_traffic", "msg_id": 2, "from": "green", "to": "blue"}),
        REPLY,
    );
    assert_eq!(switched["body"]["type"], "traffic_switched", "{switched}");

    // Failover behind the pooler.
    kill_the_leader_mid_rollback(leading, accepting, 3);
    let reply = accepting.recv_reply(3, REPLY);
    assert_eq!(reply["body"]["code"], 13, "{reply}");
    let next = third.request(
        "deploy",
        json!({"type": "switch_traffic", "msg_id": 4, "from": "blue", "to": "green"}),
        REPLY,
    );
    assert_eq!(next["body"]["type"], "traffic_switched", "{next}");
    for node in [accepting, third] {
        let s = status(node);
        assert_eq!(s["live_environment"], "green", "{s}");
        assert_eq!(s["flags"]["new_checkout"], false, "{s}");
        assert_eq!(s["cluster"]["store"], "connected", "{s}");
    }
}

/// The value OFREP at `addr` gives `flag` now.
fn ofrep(addr: &str, flag: &str) -> Option<bool> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "POST /ofrep/v1/evaluate/flags/{flag} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .ok()?;
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        if header.trim().is_empty() {
            break;
        }
        if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice::<Value>(&body).ok()?["value"].as_bool()
}

/// What a flagd file says of `flag`.
fn flagd_value(path: &std::path::Path, flag: &str) -> bool {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let flag = &file["flags"][flag];
    flag["variants"][flag["defaultVariant"].as_str().unwrap()]
        .as_bool()
        .unwrap()
}

#[test]
fn every_nodes_flag_file_and_ofrep_follow_the_store() {
    let (url, _) = store("flagd");
    // Three hosts: the same estate, each its own flag file beside it.
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        for file in ["estate.toml", "flags.json"] {
            std::fs::copy(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("examples/flagd")
                    .join(file),
                dir.path().join(file),
            )
            .unwrap();
        }
    }
    let ports: Vec<String> = (0..3)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        })
        .collect();
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::start(
                &url,
                &format!("n{}", i + 1),
                Some(&dirs[i].path().join("estate.toml")),
                &["--ofrep", &ports[i]],
            )
        })
        .collect();
    agreed_leader(&nodes);
    assert!(ports.iter().all(|p| ofrep(p, "new_checkout") == Some(true)));

    let reply = nodes[2].request(
        "oncall",
        json!({"type": "disable_feature", "msg_id": 1, "feature": "new_checkout"}),
        REPLY,
    );
    assert_eq!(reply["body"]["type"], "feature_disabled", "{reply}");
    // The node that answered has its file and OFREP set before its reply.
    assert_eq!(ofrep(&ports[2], "new_checkout"), Some(false));
    assert!(!flagd_value(
        &dirs[2].path().join("flags.json"),
        "new_checkout"
    ));
    // The others follow within their next look at the store.
    let changed = Instant::now();
    assert!(wait_until(Duration::from_secs(3), || {
        (0..2).all(|i| {
            ofrep(&ports[i], "new_checkout") == Some(false)
                && !flagd_value(&dirs[i].path().join("flags.json"), "new_checkout")
        })
    }));
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "{:?}",
        changed.elapsed()
    );
    // A file changed by hand is set back to the store's flags.
    let path = dirs[0].path().join("flags.json");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/flagd/flags.json"),
        &path,
    )
    .unwrap();
    assert!(flagd_value(&path, "new_checkout"));
    assert!(wait_until(Duration::from_secs(3), || !flagd_value(
        &path,
        "new_checkout"
    )));
}

#[test]
fn a_store_of_a_newer_format_is_refused_and_said() {
    let (url, db) = store("format");
    let first = Node::start(&url, "n1", None, &[]);
    status(&first);
    first.kill9();
    sql(
        &db,
        "UPDATE rollback_node.meta SET value = '99' WHERE key = 'format'",
    );
    let again = Node::start(&url, "n2", None, &[]);
    let exit = again.wait_exit(Duration::from_secs(15)).expect("refused");
    assert_eq!(exit.code(), Some(2));
    let said = again.stderr_text();
    assert!(
        said.contains("format 99, newer than this build understands"),
        "{said}"
    );
    assert_eq!(said.trim().lines().count(), 1, "{said}");
}

/// The address a node started with `--listen 127.0.0.1:0` says it listens on.
fn listening(node: &Node) -> std::net::SocketAddr {
    assert!(
        node.wait_stderr_contains("listening on http://", Duration::from_secs(20)),
        "{}",
        node.stderr_text()
    );
    // The line may still be arriving: wait for its end before reading the address.
    assert!(
        wait_until(Duration::from_secs(5), || node
            .stderr_text()
            .split("listening on http://")
            .nth(1)
            .is_some_and(|rest| rest.contains('\n'))),
        "{}",
        node.stderr_text()
    );
    let said = node.stderr_text();
    said.split("listening on http://")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn every_node_serves_the_http_api_with_tokens() {
    let (url, _) = store("listen");
    let dir = tempfile::tempdir().unwrap();
    let estate = service::estate_file(dir.path());
    let nodes = ["n1", "n2", "n3"]
        .map(|id| Node::start(&url, id, Some(&estate), &["--listen", "127.0.0.1:0"]));
    let addrs: Vec<_> = nodes.iter().map(listening).collect();
    let leader = agreed_leader(&nodes);
    let i = nodes.iter().position(|n| n.node_id != leader).unwrap();
    let j = (0..3)
        .find(|&j| j != i && nodes[j].node_id != leader)
        .unwrap();

    let bearer = |secret: &str| format!("Bearer {secret}");
    let no_token = service::request(addrs[i], "GET", "/v1/status", &[], b"");
    assert_eq!(no_token.status, 401);
    let viewer = bearer(service::VIEWER);
    let refused = service::request(
        addrs[i],
        "POST",
        "/v1/messages",
        &[("Authorization", &viewer)],
        br#"{"type":"rollback","msg_id":1,"version":2}"#,
    );
    assert_eq!(refused.status, 403, "{}", refused.body);

    let mut events = service::Events::open(addrs[j], service::VIEWER, &[]);
    let admin = bearer(service::ADMIN);
    let done = service::request(
        addrs[i],
        "POST",
        "/v1/messages",
        &[("Authorization", &admin)],
        br#"{"type":"rollback","msg_id":1,"version":2}"#,
    );
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["type"], "rollback_complete", "{}", done.body);
    // Another node's stream tells the entry, and its status the new version and the cluster.
    let entry = events.next_of("entry");
    let entry: Value = serde_json::from_str(&entry.data).unwrap();
    assert_eq!(entry["msg_id"], 1, "{entry}");
    assert_eq!(entry["src"], "ada", "{entry}");
    let status = service::request(
        addrs[j],
        "GET",
        "/v1/status",
        &[("Authorization", &viewer)],
        b"",
    );
    let status = status.json();
    assert_eq!(status["schema_version"], 1, "{status}");
    assert_eq!(
        status["cluster"]["node"],
        nodes[j].node_id.as_str(),
        "{status}"
    );
    assert!(status.get("in_reply_to").is_none(), "{status}");
    let operator = bearer(service::OPERATOR);
    let off = service::request(
        addrs[j],
        "POST",
        "/v1/messages",
        &[("Authorization", &operator)],
        br#"{"type":"disable_feature","msg_id":2,"feature":"new_checkout"}"#,
    );
    assert_eq!(off.json()["type"], "feature_disabled", "{}", off.body);
    let history = service::request(
        addrs[i],
        "GET",
        "/v1/history",
        &[("Authorization", &viewer)],
        b"",
    );
    let entries = history.json()["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2, "{entries:?}");
    // SIGTERM stops a node cleanly.
    nodes[j].signal(libc::SIGTERM);
    let exit = nodes[j]
        .wait_exit(Duration::from_secs(15))
        .expect("stopped");
    assert_eq!(exit.code(), Some(0), "{}", nodes[j].stderr_text());
}
