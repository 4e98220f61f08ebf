use rollback_node::core::Decision;
use rollback_node::{protocol, Refusal};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lane {
    Counting,
}

pub struct Counter {
    total: u64,
}

#[derive(Debug, Clone, PartialEq, rollback_node::Reply)]
pub struct Added {
    total: u64,
}

#[derive(Debug, Clone, PartialEq, rollback_node::Reply)]
pub struct Total {
    total: u64,
}

#[protocol]
impl Counter {
    /// Adds `by` to the total (here only decided: the reply says what it would be).
    #[transition(lane = Lane::Counting)]
    fn add(&self, by: u64) -> Result<Decision<Added>, Refusal> {
        Ok(Decision::Reply(Added {
            total: self.total + by,
        }))
    }

    /// Reads the total.
    #[transition(rename = "read")]
    fn total(&self) -> Result<Total, Refusal> {
        Ok(Total { total: self.total })
    }
}

fn main() {
    let counter = Counter { total: 40 };
    let request = Request::Add { by: 2 };
    assert!(request.changes_state());
    assert_eq!(request.lane(), Some(Lane::Counting));
    assert_eq!(Request::Read {}.lane(), None);
    assert_eq!(Request::TYPES, ["add", "read"]);
    assert_eq!(Request::fields("add"), Some(&["by"][..]));
    assert_eq!(
        counter.decide(&request),
        Ok(Decision::Reply(Reply::Added(Added { total: 42 })))
    );
}
