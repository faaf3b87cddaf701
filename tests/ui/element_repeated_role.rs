use connect_runtime::{Element, hooks};

#[derive(Element)]
#[element(client, server, client)]
struct Twice;

#[hooks]
impl Twice {}

fn main() {}
