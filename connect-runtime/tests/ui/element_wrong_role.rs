use connect_runtime::{ClientChain, Element, Hooks, ServerChain};

#[derive(Element)]
#[element(server)]
struct ServerOnly;

impl Hooks for ServerOnly {}

#[derive(Element)]
#[element(client)]
struct ClientOnly;

impl Hooks for ClientOnly {}

fn main() {
    let _ = ClientChain::builder().with(ServerOnly).build();
    let _ = ServerChain::builder().with(ClientOnly).build();
}
