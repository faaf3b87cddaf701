use connect_runtime::{Element, Hooks};

#[derive(Element)]
#[element(server, server, name = "a", name = "b")]
struct Repeated;

impl Hooks for Repeated {}

fn main() {}
