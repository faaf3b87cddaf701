// Raw identifiers name spans and maps without their `r#`, and generic
// parameters named like a hook's own parameters do not clash with the
// derive's.

#![allow(non_upper_case_globals)]

use std::sync::{Arc, Mutex};

use connect_runtime::map::SyncMap;
use connect_runtime::prelude::*;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Element)]
struct r#Tag;

impl Hooks for r#Tag {}

#[derive(ConcurrentMap)]
struct r#Routes(SyncMap<String, u32>);

#[derive(Element)]
struct Limited<const ctx: usize, const next: usize>;

impl<const ctx: usize, const next: usize> Hooks for Limited<ctx, next> {}

/// Notes the name of every span made.
struct Names(Arc<Mutex<Vec<&'static str>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Names {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.lock().unwrap().push(attrs.metadata().name());
    }
}

fn main() {
    let names = Arc::default();
    let subscriber = tracing_subscriber::registry().with(Names(Arc::clone(&names)));
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let chain = ServerChain::builder().with(r#Tag).with(Limited::<1, 2>).build();
            let request = NetworkServiceRequest::default();
            chain.request(Context::new(), request).await.unwrap();
        });
    });
    assert_eq!(*names.lock().unwrap(), ["Tag", "Limited"]);
    assert_eq!(format!("{:?}", r#Routes::new()), "Routes { len: 0 }");
}
