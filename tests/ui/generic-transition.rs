use rollback_node::{protocol, Refusal};

pub struct Counter {
    total: u64,
}

#[derive(Debug, Clone, PartialEq, rollback_node::Reply)]
pub struct Added {
    total: u64,
}

#[protocol]
impl Counter {
    #[transition]
    fn add<T: Into<u64>>(&self, by: u64) -> Result<Added, Refusal> {
        let _ = by;
        Ok(Added { total: self.total })
    }
}
fn main() {}
