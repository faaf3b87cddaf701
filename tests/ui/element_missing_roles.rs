use connect_runtime::{Element, ServerChain, hooks};

#[derive(Element)]
struct Roleless;

#[hooks]
impl Roleless {}

fn main() {
    // No follow-on error here: the fallback keeps the element usable.
    let _chain = ServerChain::builder().with(Roleless).build();
}
