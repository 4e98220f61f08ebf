use rollback_node::{protocol, Refusal};

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

#[protocol]
impl Counter {
    #[transition(lane = Lane::Counting)]
    fn add(&self, by: u64) -> Result<Added, Refusal> {
        Ok(Added { total: self.total + by })
    }
}

fn main() {}
