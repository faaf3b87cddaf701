use connect_runtime::Element;

// The derive alone is not enough: the element's logic is its `impl Hooks`.
#[derive(Element)]
struct Hookless;

fn main() {}
