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
    fn add(&mut self, by: u64) -> Result<Added, Refusal> {
        self.total += by;
        Ok(Added { total: self.total })
    }

    #[transition]
    fn increment(&mut self) -> Result<Added, Refusal> {
        self.total += 1;
        Ok(Added { total: self.total })
    }
}
fn main() {}
