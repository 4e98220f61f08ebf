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
    fn add(&self, msg_id: u64) -> Result<Added, Refusal> {
        let _ = msg_id;
        Ok(Added { total: self.total })
    }
}
fn main() {}
