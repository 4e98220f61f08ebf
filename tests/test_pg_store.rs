//! The PostgreSQL store as a library, on a throwaway PostgreSQL 15: the leader's journal is the
//! second implementation of the store trait, so a machine rebuilt from it is the machine that
//! wrote it (snapshot and tail included); a commit at an epoch whose lease has moved on writes
//! nothing; a commit sent again after a lost connection makes no second history entry.

#[path = "support/pg.rs"]
mod pg;

use rollback_node::cluster::lease::Deadline;
use rollback_node::cluster::store::{self, Db, PgJournal, SNAPSHOT_EVERY};
use rollback_node::store::replay;
use rollback_node::{Estate, Machine, Session, Simulated};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn fresh(hint: &str) -> (Db, String) {
    let (url, name) = pg::server().create_database(hint);
    let mut db = Db::connect(&url).unwrap();
    store::prepare(&mut db).unwrap();
    (db, name)
}

/// Gives the lease to `node` at the next epoch, for an hour; returns the epoch.
fn lease(db_name: &str, node: &str) -> u64 {
    let row = pg::server()
        .connect(db_name)
        .query_one(
            "UPDATE rollback_node.lease SET holder = $1, epoch = epoch + 1, expires_at = clock_timestamp() + interval '1 hour' RETURNING epoch",
            &[&node],
        )
        .unwrap();
    row.get::<_, i64>(0) as u64
}

fn session(db: Db, node: &str, epoch: u64) -> Session<PgJournal> {
    let estate = Estate::example();
    let executors = Simulated::new(estate.costs.clone(), &estate.state, 0.0).executors();
    let deadline = Arc::new(Deadline::until(Instant::now() + Duration::from_secs(3600)));
    let journal = PgJournal::new(db, node, epoch, Vec::new(), deadline);
    Session::new(Machine::new(estate.state), executors, journal)
}

fn line(msg_id: u64, body: &str) -> String {
    format!(r#"{{"src":"c","dest":"n1","body":{{"msg_id":{msg_id},{body}}}}}"#)
}

#[test]
fn a_machine_rebuilt_from_the_store_is_the_one_that_wrote_it() {
    let (db, name) = fresh("rebuild");
    let epoch = lease(&name, "n1");
    let mut s = session(db, "n1", epoch);
    let mut out = Vec::new();
    let n = SNAPSHOT_EVERY + 25;
    for i in 1..=n {
        let body = if i % 2 == 0 {
            r#""type":"enable_feature","feature":"new_checkout""#
        } else {
            r#""type":"disable_feature","feature":"new_checkout""#
        };
        s.handle_line(line(i, body).as_bytes(), &mut out);
        if i % 500 == 0 {
            s.commit().unwrap();
        }
    }
    s.handle_line(
        line(n + 1, r#""type":"rollback","version":2"#).as_bytes(),
        &mut out,
    );
    s.commit().unwrap();

    let mut db = Db::connect(&pg::server().url(&name)).unwrap();
    let (snapshot, entries) = store::load(&mut db).unwrap();
    let snapshot = snapshot.expect("a snapshot after SNAPSHOT_EVERY entries");
    assert!(snapshot.seq >= SNAPSHOT_EVERY, "{}", snapshot.seq);
    assert!(
        (entries.len() as u64) < n - SNAPSHOT_EVERY + 600,
        "the tail only: {} entries",
        entries.len()
    );
    let mut rebuilt = Machine::from_snapshot(snapshot);
    let open = replay::rebuild(&mut rebuilt, entries).unwrap();
    assert!(open.is_empty());
    assert_eq!(rebuilt.seq(), s.machine().seq());
    assert_eq!(rebuilt.state(), s.machine().state());
    assert_eq!(rebuilt.status(), s.machine().status());
    // The history is served from the store: the last entries, oldest first.
    let history = store::history(&mut db, None, 3).unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[2].msg_id, n + 1);
    assert!(history[0].seq < history[1].seq && history[1].seq < history[2].seq);
    let after = store::history(&mut db, Some(history[0].seq), 10).unwrap();
    assert_eq!(after.len(), 2);
}

#[test]
fn a_commit_at_an_epoch_whose_lease_moved_on_writes_nothing() {
    let (db, name) = fresh("stale");
    let epoch = lease(&name, "n1");
    let mut s = session(db, "n1", epoch);
    let mut out = Vec::new();
    s.handle_line(
        line(1, r#""type":"disable_feature","feature":"new_checkout""#).as_bytes(),
        &mut out,
    );
    s.commit().unwrap();
    // Another node takes the lease (as after this one was paused past it).
    let newer = lease(&name, "n2");
    assert!(newer > epoch);
    s.handle_line(
        line(2, r#""type":"rollback","version":2"#).as_bytes(),
        &mut out,
    );
    let refused = s.commit().unwrap_err();
    assert!(refused.0.contains("no longer held"), "{refused}");
    let rows: i64 = pg::server()
        .connect(&name)
        .query_one("SELECT count(*) FROM rollback_node.journal", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "only the entry committed under the lease");
}

#[test]
fn a_commit_sent_again_after_a_lost_connection_is_one_history_entry() {
    let (db, name) = fresh("again");
    let epoch = lease(&name, "n1");
    let mut s = session(db, "n1", epoch);
    let mut out = Vec::new();
    s.handle_line(
        line(1, r#""type":"rollback","version":3"#).as_bytes(),
        &mut out,
    );
    s.commit().unwrap();
    // The server ends every connection of the store (as pg_terminate_backend does): the next
    // commit finds its connection dead and is sent again on a new one.
    let mut admin = pg::server().connect("postgres");
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.handle_line(
        line(2, r#""type":"switch_traffic","from":"green","to":"blue""#).as_bytes(),
        &mut out,
    );
    s.commit().unwrap();
    // The same statement again (as when a commit's answer was lost) makes no second entry.
    let mut db = Db::connect(&pg::server().url(&name)).unwrap();
    let (_, entries) = store::load(&mut db).unwrap();
    assert_eq!(entries.len(), 2);
    let before = store::history(&mut db, None, 100).unwrap();
    db.batch(&store::upsert(&entries, epoch)).unwrap();
    db.batch(&store::upsert(&entries, epoch)).unwrap();
    let history = store::history(&mut db, None, 100).unwrap();
    let ids: Vec<u64> = history.iter().map(|e| e.msg_id).collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(history, before, "the same entries, with the same numbers");
}

#[test]
fn flag_changes_are_recorded_once_per_sender_and_msg_id_and_the_latest_wins() {
    use rollback_node::cluster::store::FlagChange;
    let (mut db, _) = fresh("flags");
    let change = |src: &str, msg_id: u64, enabled: bool| FlagChange {
        src: src.to_owned(),
        msg_id,
        flag: "new_checkout".to_owned(),
        enabled,
    };
    let replies = store::record_flags(
        &mut db,
        "n1",
        &[
            change("a", 1, false),
            change("a", 1, false),
            change("b", 1, true),
        ],
    )
    .unwrap();
    assert_eq!(replies.len(), 3);
    assert!(replies[0].contains("feature_disabled"), "{replies:?}");
    assert_eq!(replies[0], replies[1], "a retry in the same batch");
    assert!(replies[2].contains("feature_enabled"), "{replies:?}");
    let names = vec!["new_checkout".to_owned()];
    assert!(store::flags(&mut db, &names).unwrap()["new_checkout"]);
    // A retry in a later batch, even with another body, gets the original's reply and
    // changes nothing.
    let again = store::record_flags(&mut db, "n2", &[change("a", 1, true)]).unwrap();
    assert_eq!(again[0], replies[0]);
    assert!(store::flags(&mut db, &names).unwrap()["new_checkout"]);
    let history = store::history(&mut db, None, 10).unwrap();
    let order: Vec<(String, u64)> = history.iter().map(|e| (e.src.clone(), e.msg_id)).collect();
    assert_eq!(order, vec![("a".to_owned(), 1), ("b".to_owned(), 1)]);
}
