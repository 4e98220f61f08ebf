use rollback_node::{protocol, Refusal};

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
    /// Adds `by` to the total.
    #[transition]
    fn add(&mut self, by: u64) -> Result<Added, Refusal> {
        self.total += by;
        Ok(Added { total: self.total })
    }

    /// Reads the total.
    #[transition(rename = "read")]
    fn total(&self) -> Result<Total, Refusal> {
        Ok(Total { total: self.total })
    }
}

fn main() {
    let mut counter = Counter { total: 40 };
    let request = Request::Add { by: 2 };
    assert!(request.changes_state());
    assert_eq!(Request::TYPES, ["add", "read"]);
    assert_eq!(counter.apply(&request), Ok(Reply::Added(Added { total: 42 })));
}
