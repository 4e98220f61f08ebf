use rollback_node::{protocol, Refusal};

pub struct Counter {
    total: u64,
}

#[protocol]
impl Counter {
    #[transition]
    fn add(&self, by: u64) -> Result<(), Refusal> {
        let _ = by;
        Ok(())
    }
}

fn main() {}
