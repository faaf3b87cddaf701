use connect_runtime::{Element, Hooks};

#[derive(Element)]
#[element(server = true, client(yes))]
struct Valued;

impl Hooks for Valued {}

fn main() {}
