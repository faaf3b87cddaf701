use connect_runtime::ConcurrentMap;
use connect_runtime::map::SyncMap;

#[derive(ConcurrentMap)]
struct Named {
    inner: SyncMap<String, u32>,
}

#[derive(ConcurrentMap)]
enum NotAStruct {
    Empty,
}

fn main() {}
