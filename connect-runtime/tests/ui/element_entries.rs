use connect_runtime::{Element, Hooks};

// `entries` names a method of the element counting what it keeps per
// connection.
#[derive(Element)]
#[element(entries = 3)]
struct NotAString;

impl Hooks for NotAString {}

#[derive(Element)]
#[element(entries = "two words")]
struct NotAName;

impl Hooks for NotAName {}

#[derive(Element)]
#[element(entries = "held")]
struct NoSuchMethod;

impl Hooks for NoSuchMethod {}

fn main() {}
