use connect_runtime::{Element, Hooks};

// Both roles are the default; naming both says nothing.
#[derive(Element)]
#[element(server, client)]
struct Redundant;

impl Hooks for Redundant {}

fn main() {}
