use std::collections::HashMap;

use connect_runtime::ConcurrentMap;

#[derive(ConcurrentMap)]
struct Plain(HashMap<String, u32>);

fn main() {}
