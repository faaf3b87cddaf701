use connect_runtime::Element;

#[derive(Element)]
#[element(server)]
struct Hookless;

fn main() {}
