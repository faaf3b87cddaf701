use connect_runtime::ConcurrentMap;
use connect_runtime::map::SyncMap;

// `#[map(...)]` on the field would be ignored: an error, and the map is
// still generated.
#[derive(ConcurrentMap)]
struct Clients(#[map(shards = 4)] SyncMap<String, u32>);

fn main() {
    let clients = Clients::new();
    clients.store("a".into(), 1);
}
