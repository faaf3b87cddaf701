use connect_runtime::{Element, Hooks};

// The derive reads only the type's own `#[element(...)]`: one on a variant
// or a field would be ignored, so it is an error.
#[derive(Element)]
enum Either {
    #[element(server)]
    Left,
    Right(#[element(name = "right")] u8),
}

impl Hooks for Either {}

#[derive(Element)]
struct Wrapped {
    #[element(client)]
    inner: u8,
}

impl Hooks for Wrapped {}

fn main() {}
