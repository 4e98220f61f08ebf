//! The cluster tests' harness, tested on its own (no cluster mode needed). PgBouncer in
//! transaction pooling mode, in front of the throwaway PostgreSQL server, passes the queries the
//! way a store must send them (and drops startup `options`); it really pools (many clients, a
//! few server connections, an open transaction holding one); it breaks the `postgres` crate's
//! named prepared statements, which a store behind it must not use; it survives
//! `terminate_backends`. Then the node handle of `cluster.rs`, on the plain (in-memory) node.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/pg.rs"]
mod pg;
#[path = "support/pgbouncer.rs"]
mod pgbouncer;

use postgres::types::Type;
use serde_json::json;
use std::ffi::OsString;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

/// The backends of `database` the server has now, seen over a direct connection.
fn backends(database: &str) -> i64 {
    pg::server()
        .connect("postgres")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
            &[&database],
        )
        .unwrap()
        .get(0)
}

/// A `SHOW POOLS` column of `database`'s pool, as a number.
fn pool_count(database: &str, column: &str) -> i64 {
    let pool = pgbouncer::bouncer()
        .pool(database)
        .unwrap_or_else(|| panic!("PgBouncer has no pool for {database}"));
    pool[column].parse().unwrap()
}

/// The server connections of `database`'s pool, in any state.
fn servers(database: &str) -> i64 {
    ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"]
        .iter()
        .map(|column| pool_count(database, column))
        .sum()
}

#[test]
fn queries_a_store_sends_pass_through_the_pooler() {
    let bouncer = pgbouncer::bouncer();
    let (_, db) = bouncer.server.create_database("queries");
    let url = bouncer.url(&db);
    assert!(
        url.ends_with(&format!(
            "?host={}&port={}",
            bouncer.dir.display(),
            bouncer.port
        )),
        "{url}"
    );
    let mut client = bouncer.connect(&db);

    // Simple query protocol.
    let rows: Vec<_> = client
        .simple_query("SELECT 1 AS one, 'two' AS two")
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => Some((
                row.get(0).unwrap().to_owned(),
                row.get(1).unwrap().to_owned(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(rows, [("1".to_owned(), "two".to_owned())]);

    // A multi-statement transaction in one simple query.
    client
        .batch_execute(
            "BEGIN;
             CREATE TABLE kv (k text PRIMARY KEY, v bigint NOT NULL);
             INSERT INTO kv VALUES ('a', 1);
             INSERT INTO kv VALUES ('b', 2);
             COMMIT;",
        )
        .unwrap();

    // Parameters through the unnamed statement (parse, bind, execute in one round trip).
    let rows = client
        .query_typed(
            "SELECT (sum(v) + $1)::int8, count(*)::int4 FROM kv WHERE k <> $2",
            &[(&40i64, Type::INT8), (&"none", Type::TEXT)],
        )
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), 43);
    assert_eq!(rows[0].get::<_, i32>(1), 2);

    // A transaction of typed queries, rolled back: nothing of it stays.
    let mut tx = client.transaction().unwrap();
    tx.query_typed(
        "INSERT INTO kv VALUES ($1, $2)",
        &[(&"c", Type::TEXT), (&3i64, Type::INT8)],
    )
    .unwrap();
    let inside: i64 = tx.query_typed("SELECT count(*) FROM kv", &[]).unwrap()[0].get(0);
    assert_eq!(inside, 3);
    tx.rollback().unwrap();
    let after: i64 = client.query_typed("SELECT count(*) FROM kv", &[]).unwrap()[0].get(0);
    assert_eq!(after, 2);

    // A URL may name the application (PgBouncer tracks it), and ask for options it ignores.
    let named = format!("{url}&application_name=n7&options=-c%20statement_timeout%3D5s");
    let mut named = postgres::Client::connect(&named, postgres::NoTls).unwrap();
    let app: String = named
        .query_typed("SELECT current_setting('application_name')", &[])
        .unwrap()[0]
        .get(0);
    assert_eq!(app, "n7");
    let timeout: String = named
        .query_typed("SELECT current_setting('statement_timeout')", &[])
        .unwrap()[0]
        .get(0);
    assert_eq!(timeout, "0", "PgBouncer 1.18 drops startup options");
    drop(named);

    // It went through PgBouncer, in transaction mode.
    let pool = bouncer.pool(&db).expect("a pool for the database");
    assert_eq!(pool["pool_mode"], "transaction");
    assert!(
        cluster::wait_until(10 * SECOND, || pool_count(&db, "cl_active") == 1),
        "{:?}",
        bouncer.pool(&db)
    );
}

#[test]
fn many_clients_share_a_few_server_connections() {
    let bouncer = pgbouncer::bouncer();
    let (_, db) = bouncer.server.create_database("sharing");
    let clients = 3 * pgbouncer::POOL_SIZE;
    let mut conns: Vec<_> = (0..clients).map(|_| bouncer.connect(&db)).collect();
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..3 {
        for c in &mut conns {
            let pid: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).unwrap()[0].get(0);
            pids.insert(pid);
        }
    }
    assert!(
        !pids.is_empty() && pids.len() <= pgbouncer::POOL_SIZE,
        "{clients} clients ran on backends {pids:?}"
    );
    assert!(
        backends(&db) <= pgbouncer::POOL_SIZE as i64,
        "{} backends for {clients} clients",
        backends(&db)
    );
    assert_eq!(pool_count(&db, "cl_active"), clients as i64);

    // A transaction holds its server connection: POOL_SIZE open transactions hold them all,
    // and the next client's query waits until one of them ends.
    let mut waiter = conns.pop().unwrap();
    let holders = &mut conns[..pgbouncer::POOL_SIZE];
    for c in holders.iter_mut() {
        c.batch_execute("BEGIN; SELECT 1").unwrap();
    }
    assert_eq!(backends(&db), pgbouncer::POOL_SIZE as i64);
    let query = std::thread::spawn(move || {
        let n: i32 = waiter.query_typed("SELECT 7", &[]).unwrap()[0].get(0);
        n
    });
    assert!(
        cluster::wait_until(10 * SECOND, || pool_count(&db, "cl_waiting") == 1),
        "no client waits for a server: {:?}",
        bouncer.pool(&db)
    );
    assert!(!query.is_finished());
    holders[0].batch_execute("COMMIT").unwrap();
    assert_eq!(query.join().unwrap(), 7);
    assert_eq!(pool_count(&db, "cl_waiting"), 0);
}

/// The `postgres` crate's `prepare` and `query(&str, …)` name a statement (`s0`, `s1`, …) in one
/// transaction of the pooler and bind it in a later one, which may run on another server
/// connection: PgBouncer 1.18 does not carry prepared statements across in transaction mode.
/// Here it does run elsewhere, for sure: the statement is prepared on the pool's only server
/// connection, which another client then holds in a transaction. (Two processes — two nodes —
/// each naming their first statement `s0` on one server connection collide the other way:
/// "prepared statement "s0" already exists".) `query_typed` sends the unnamed statement and
/// works.
#[test]
fn named_prepared_statements_break_under_transaction_pooling() {
    let bouncer = pgbouncer::bouncer();
    let (_, db) = bouncer.server.create_database("prepared");
    let mut a = bouncer.connect(&db);
    let mut b = bouncer.connect(&db);
    // The logins made the pool's first server connection, and only it.
    assert_eq!(backends(&db), 1);
    let statement = a.prepare("SELECT 1::int4").unwrap();
    b.batch_execute("BEGIN").unwrap();
    let err = a
        .query(&statement, &[])
        .expect_err("a statement prepared on a server connection another client holds");
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME),
        "{err}"
    );
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("does not exist"), "{message}");
    assert_eq!(backends(&db), 2);
    let n: i32 = a.query_typed("SELECT 1::int4", &[]).unwrap()[0].get(0);
    assert_eq!(n, 1);
    b.batch_execute("COMMIT").unwrap();
}

/// A database outage as the cluster tests make it: every connection to the database cut. A
/// direct client loses its connection; a client of PgBouncer keeps its own, and its next query
/// runs on a fresh server connection once PgBouncer has dropped the dead ones.
#[test]
fn terminate_backends_cuts_servers_and_pgbouncer_survives() {
    let bouncer = pgbouncer::bouncer();
    let server = bouncer.server;
    let (direct_url, db) = server.create_database("outage");
    let mut direct = postgres::Client::connect(&direct_url, postgres::NoTls).unwrap();
    direct.simple_query("SELECT 1").unwrap();
    let mut pooled = bouncer.connect(&db);
    let before: i32 = pooled.query_typed("SELECT pg_backend_pid()", &[]).unwrap()[0].get(0);
    assert_eq!(backends(&db), 2);

    assert_eq!(cluster::terminate_backends(&server.url("postgres"), &db), 2);
    assert_eq!(backends(&db), 0);
    assert!(direct.simple_query("SELECT 1").is_err());
    assert!(
        cluster::wait_until(10 * SECOND, || servers(&db) == 0),
        "PgBouncer kept a dead server connection: {:?}",
        bouncer.pool(&db)
    );
    let after: i32 = pooled.query_typed("SELECT pg_backend_pid()", &[]).unwrap()[0].get(0);
    assert_ne!(before, after);
    assert_eq!(backends(&db), 1);
}

fn plain_node() -> cluster::Node {
    // The plain node: no store, the built-in estate in memory.
    cluster::Node::spawn("n1", Vec::<OsString>::new())
}

#[test]
fn node_handle_requests_and_matches_replies() {
    let node = plain_node();
    assert!(node.pid() > 0);
    let status = node.request("c1", json!({"type": "status", "msg_id": 1}), 20 * SECOND);
    assert_eq!(status["src"], "n1");
    assert_eq!(status["dest"], "c1");
    assert_eq!(status["body"]["type"], "status_ok");
    assert_eq!(status["body"]["in_reply_to"], 1);

    // Replies are matched by in_reply_to, whatever order they are asked for in.
    node.send_body("c1", &json!({"type": "status", "msg_id": 2}));
    node.send_body(
        "c2",
        &json!({"type": "disable_feature", "msg_id": 3, "feature": "new_checkout"}),
    );
    let third = node.recv_reply(3, 10 * SECOND);
    assert_eq!(third["body"]["type"], "feature_disabled");
    assert_eq!(third["dest"], "c2");
    assert_eq!(node.unmatched().len(), 1);
    // Handled in order: the status came before the kill switch.
    let second = node.recv_reply(2, 10 * SECOND);
    assert_eq!(second["body"]["flags"]["new_checkout"], true);
    assert!(node.unmatched().is_empty());

    // Its own message ids when the body has none.
    let auto = node.request("c1", json!({"type": "status"}), 10 * SECOND);
    assert_eq!(auto["body"]["in_reply_to"], cluster::AUTO_MSG_ID);
    assert_eq!(auto["body"]["flags"]["new_checkout"], false);
    assert!(node
        .try_recv_reply(99, Duration::from_millis(100))
        .is_none());

    // Stderr is kept.
    node.send("not json");
    assert!(
        node.wait_stderr_contains("not a Maelstrom envelope", 10 * SECOND),
        "{}",
        node.stderr_text()
    );

    // The end of input ends the plain node, with 0.
    node.close_stdin();
    let status = node.wait_exit(10 * SECOND).expect("it exits");
    assert!(status.success(), "{status:?}");
    assert!(node.try_recv_reply(4, SECOND).is_none());
}

#[test]
fn node_handle_stops_kills_and_restarts() {
    use std::os::unix::process::ExitStatusExt;
    let node = plain_node();
    let first_pid = node.pid();
    node.request("c1", json!({"type": "status", "msg_id": 1}), 20 * SECOND);

    // Stopped, it answers nothing; continued, it answers what came meanwhile.
    node.sigstop();
    node.send_body("c1", &json!({"type": "status", "msg_id": 2}));
    assert!(node.try_recv_reply(2, Duration::from_millis(300)).is_none());
    assert!(node.is_running());
    node.sigcont();
    assert_eq!(node.recv_reply(2, 10 * SECOND)["body"]["type"], "status_ok");

    // Killed while stopped.
    node.send("garbage before the kill");
    assert!(node.wait_stderr_contains("not a Maelstrom envelope", 10 * SECOND));
    node.sigstop();
    let status = node.kill9();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!node.is_running());
    assert!(node.try_recv_reply(3, SECOND).is_none());

    // Restarted with the same arguments: a new process, fresh (in-memory) state and stderr.
    node.restart();
    assert_ne!(node.pid(), first_pid);
    let reply = node.request("c1", json!({"type": "status", "msg_id": 3}), 20 * SECOND);
    assert_eq!(reply["body"]["flags"]["new_checkout"], true);
    assert!(!node.stderr_text().contains("not a Maelstrom envelope"));
    let all = node.stderr_all();
    assert!(all.contains("not a Maelstrom envelope"), "{all}");
    assert!(all.contains("n1 run ended: signal 9"), "{all}");

    // Restarting a live node kills it first.
    let pid = node.pid();
    node.restart();
    assert_eq!(unsafe { libc::kill(pid as i32, 0) }, -1);
    node.request("c1", json!({"type": "status", "msg_id": 4}), 20 * SECOND);
}

#[test]
fn node_handle_kills_its_process_on_drop() {
    let node = plain_node();
    node.request("c1", json!({"type": "status", "msg_id": 1}), 20 * SECOND);
    let pid = node.pid() as i32;
    drop(node);
    // Reaped by the drop: the pid is gone.
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1);
}
