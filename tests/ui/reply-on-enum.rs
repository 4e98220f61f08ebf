use rollback_node::Reply;

#[derive(Debug, Clone, PartialEq, Reply)]
pub enum Added {
    Total(u64),
}

fn main() {}
