use connect_runtime::ConcurrentMap;
use connect_runtime::map::RefCountMap;

#[derive(ConcurrentMap)]
#[map(shards = "8", kind = "refcount", crate = 1)]
struct Counted(RefCountMap<String, u32>);

fn main() {}
