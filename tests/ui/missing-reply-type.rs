use rollback_node::{protocol, Refusal};

pub struct Counter {
    total: u64,
}

#[protocol]
impl Counter {
    #[transition]
    fn add(&mut self, by: u64) -> Result<(), Refusal> {
        self.total += by;
        Ok(())
    }
}

fn main() {}
