use rollback_node::Reply;

#[derive(Debug, Clone, PartialEq, Reply)]
pub struct Added {
    total: u64,
    in_reply_to: u64,
}

fn main() {}
