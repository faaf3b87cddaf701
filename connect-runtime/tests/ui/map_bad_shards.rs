use connect_runtime::ConcurrentMap;
use connect_runtime::map::SyncMap;

#[derive(ConcurrentMap)]
#[map(shards = 3, buckets = 8)]
struct Odd(SyncMap<String, u32>);

fn main() {
    // Only the attribute is wrong: the map is still generated, so these
    // calls add no errors of their own.
    let odd = Odd::new();
    odd.store("a".into(), 1);
    assert_eq!(odd.load("a"), Some(1));
}
