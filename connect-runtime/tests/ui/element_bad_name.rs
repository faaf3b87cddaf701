use connect_runtime::{Element, Hooks};

#[derive(Element)]
#[element(name = 5)]
struct NumberName;

impl Hooks for NumberName {}

#[derive(Element)]
#[element(name = "")]
struct EmptyName;

impl Hooks for EmptyName {}

fn main() {}
