use connect_runtime::{Element, hooks};

#[derive(Element)]
#[element(server, proxy)]
struct Forward;

#[hooks]
impl Forward {}

fn main() {}
