//! The concurrent runtime in process: a lane whose executor panics still answers (13) and the
//! node still finishes at the end of input; a slow lane does not hold up a fast one.

use rollback_node::core::effects::LayerKind;
use rollback_node::core::effects::{Completion, Effect, Found};
use rollback_node::exec::simulated::Simulated;
use rollback_node::exec::{Executor, Executors, LaneExecutor, Report};
use rollback_node::store::MemoryStore;
use rollback_node::{Estate, Machine, Session, State};
use std::io::Cursor;
use std::time::Duration;

/// A schema executor that panics, or sleeps.
struct Odd {
    sleep: Option<Duration>,
}

impl Executor for Odd {
    fn perform(&mut self, _effects: &[Effect], _report: Report<'_>) -> Completion {
        match self.sleep {
            Some(pause) => {
                std::thread::sleep(pause);
                Completion::Done(Default::default())
            }
            None => panic!("the database driver fell over"),
        }
    }

    fn observe(&mut self, believed: &State) -> Found {
        Found {
            schema_version: Some(believed.schema_version),
            ..Found::default()
        }
    }
}

fn serve(schema: Odd, input: &str) -> Vec<serde_json::Value> {
    let estate = Estate::example();
    let simulated = Simulated::new(estate.costs.clone(), &estate.state, 0.0);
    let executors = Executors::new(
        LaneExecutor::new(vec![
            (LayerKind::Schema, Box::new(schema)),
            (LayerKind::Backups, simulated.of(LayerKind::Backups)),
        ]),
        LaneExecutor::new(vec![(LayerKind::Traffic, simulated.of(LayerKind::Traffic))]),
        LaneExecutor::new(vec![(LayerKind::Flags, simulated.of(LayerKind::Flags))]),
    );
    let session = Session::new(Machine::new(estate.state), executors, MemoryStore::new());
    let mut output = Vec::new();
    rollback_node::runtime::serve(
        session,
        Cursor::new(input.as_bytes().to_vec()),
        &mut output,
        std::io::sink(),
    )
    .expect("serving ends cleanly");
    String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["body"].clone())
        .collect()
}

const ROLLBACK: &str =
    r#"{"src":"a","dest":"n1","body":{"type":"rollback","msg_id":1,"version":3}}"#;
const DISABLE: &str = r#"{"src":"a","dest":"n1","body":{"type":"disable_feature","msg_id":2,"feature":"new_checkout"}}"#;

#[test]
fn a_panicking_executor_fails_its_operation_and_the_node_finishes() {
    let replies = serve(Odd { sleep: None }, &format!("{ROLLBACK}\n{DISABLE}\n"));
    assert_eq!(replies.len(), 2, "{replies:?}");
    let rollback = replies.iter().find(|r| r["in_reply_to"] == 1).unwrap();
    assert_eq!(rollback["code"], 13, "{rollback}");
    assert!(rollback["text"]
        .as_str()
        .unwrap()
        .contains("the database driver fell over"));
}

#[test]
fn a_slow_lane_does_not_hold_up_a_fast_one() {
    let replies = serve(
        Odd {
            sleep: Some(Duration::from_millis(300)),
        },
        &format!("{ROLLBACK}\n{DISABLE}\n"),
    );
    let order: Vec<u64> = replies
        .iter()
        .map(|r| r["in_reply_to"].as_u64().unwrap())
        .collect();
    assert_eq!(
        order,
        [2, 1],
        "the flag is answered before the slow rollback"
    );
    assert_eq!(replies[1]["type"], "rollback_complete");
}
