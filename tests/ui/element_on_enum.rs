use connect_runtime::{Element, hooks};

#[derive(Element)]
#[element(server)]
enum Choice {
    Left,
    Right,
}

#[hooks]
impl Choice {}

fn main() {}
