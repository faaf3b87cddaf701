use connect_runtime::ConcurrentMap;
use connect_runtime::map::SyncMap;

#[derive(ConcurrentMap)]
#[map(shards = 8u8)]
struct Typed(SyncMap<String, u32>);

fn main() {
    let typed = Typed::new();
    typed.store("a".into(), 1);
}
