use connect_runtime::{Element, Hooks};

#[derive(Element)]
#[element]
#[element = "server"]
#[element(server client)]
struct Malformed;

impl Hooks for Malformed {}

fn main() {}
