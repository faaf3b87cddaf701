use connect_runtime::{Element, Hooks};

#[derive(Element)]
#[element(crate = 5)]
struct NotAString;

impl Hooks for NotAString {}

#[derive(Element)]
#[element(crate = "not a path")]
struct NotAPath;

impl Hooks for NotAPath {}

// The override is what the generated code names.
#[derive(Element)]
#[element(crate = "no_such_runtime")]
struct Missing;

impl Hooks for Missing {}

fn main() {}
