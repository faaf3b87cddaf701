// The derives work through a renamed runtime (`crate = "..."`), a type
// alias for a map's storage, and on an enum element.

use ::connect_runtime as rt;
use rt::map::SyncMap as Storage;

type Routes = Storage<String, u32>;

#[derive(rt::ConcurrentMap)]
#[map(crate = "rt", shards = 2)]
struct Named(Routes);

#[derive(rt::Element)]
#[element(crate = "rt", client)]
enum Either {
    Left,
    Right,
}

impl rt::Hooks for Either {}

fn main() {
    let named = Named::new();
    named.store("a".into(), 1);
    assert_eq!(named.load("a"), Some(1));
    assert_eq!(format!("{named:?}"), "Named { len: 1 }");
    let chain = rt::ClientChain::builder()
        .with(Either::Left)
        .with(Either::Right)
        .build();
    assert_eq!(chain.len(), 2);
}
