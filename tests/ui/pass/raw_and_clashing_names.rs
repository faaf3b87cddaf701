// Raw identifiers name spans and maps without their `r#`, and a generic
// parameter named like the derive's own parameters does not clash.

#![allow(non_upper_case_globals)]

use connect_runtime::map::SyncMap;
use connect_runtime::{ConcurrentMap, Element, Hooks};

#[derive(Element)]
struct r#Tag;

impl Hooks for r#Tag {}

#[derive(ConcurrentMap)]
struct r#Routes(SyncMap<String, u32>);

#[derive(Element)]
struct Limited<const role: usize, const connection_id: usize>;

impl<const role: usize, const connection_id: usize> Hooks for Limited<role, connection_id> {}

fn main() {
    // A subscriber that takes every span, so that spans keep their names.
    let subscriber = tracing_subscriber::registry();
    tracing::subscriber::with_default(subscriber, || {
        let span = Element::span(&r#Tag, "server", "c1");
        assert_eq!(span.metadata().map(|m| m.name()), Some("Tag"));
        let span = Element::span(&Limited::<1, 2>, "client", "c2");
        assert_eq!(span.metadata().map(|m| m.name()), Some("Limited"));
    });
    assert_eq!(format!("{:?}", r#Routes::new()), "Routes { len: 0 }");
}
