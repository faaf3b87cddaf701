use connect_runtime::{Element, Hooks};

// `#[element(state)]` marks per-connection state, which the chain releases:
// a plain counter is not.
#[derive(Element)]
struct Counter {
    #[element(state)]
    count: u32,
}

impl Hooks for Counter {}

fn main() {}
