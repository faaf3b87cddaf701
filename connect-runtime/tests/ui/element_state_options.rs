use std::sync::Arc;

use connect_runtime::{Element, Hooks, PerConnection};

// On a field, `#[element(...)]` takes `state` alone, once, with no value;
// every mistake is reported in one compile.
#[derive(Element)]
struct Mixed {
    #[element(state = true)]
    valued: Arc<PerConnection<u8>>,
    #[element(state, state)]
    twice: Arc<PerConnection<u8>>,
    #[element(server)]
    role: u8,
    #[element(stat)]
    misspelt: u8,
    #[element]
    bare: u8,
}

impl Hooks for Mixed {}

// Only a struct's fields hold state.
#[derive(Element)]
enum Either {
    Left(#[element(state)] PerConnection<u8>),
}

impl Hooks for Either {}

fn main() {}
