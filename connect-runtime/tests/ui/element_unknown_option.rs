use connect_runtime::{Element, Hooks};

// Every unknown option is reported, not only the first.
#[derive(Element)]
#[element(serve, nmae = "typo")]
struct Misspelt;

impl Hooks for Misspelt {}

fn main() {}
