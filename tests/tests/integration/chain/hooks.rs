//! Each derived element's call runs in a span named after it, which records
//! the status of a call that fails: on a chain run directly, and on one
//! served to a real tonic caller.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use connect_runtime::prelude::*;
use connect_runtime::{dial, serve};
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

/// Fails every request with `NotFound`, naming the connection.
#[derive(Element)]
#[element(name = "refuser")]
struct Refuse;

impl Hooks for Refuse {
    async fn request(
        &self,
        _ctx: Context,
        request: NetworkServiceRequest,
        _next: Next<'_>,
    ) -> Result<Connection, Status> {
        let id = request.connection.map(|c| c.id).unwrap_or_default();
        Err(Status::not_found(format!("no route for {id}")))
    }
}

/// Passes everything on; its span sees the failure below it too.
#[derive(Element)]
struct Outer;

impl Hooks for Outer {}

/// A span's fields by name, as recorded so far.
type Fields = HashMap<String, String>;

/// Every span's name and fields, in the order they were made.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(&'static str, Fields)>>>);

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

/// A span's index in `Spans`, kept in its extensions.
struct Index(usize);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: LayerContext<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Visitor(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push((attrs.metadata().name(), fields));
        let span = cx.span(id).expect("a new span exists");
        span.extensions_mut().insert(Index(spans.len() - 1));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, cx: LayerContext<'_, S>) {
        let span = cx.span(id).expect("a recorded span exists");
        let Some(Index(index)) = span.extensions().get::<Index>().map(|i| Index(i.0)) else {
            return;
        };
        values.record(&mut Visitor(&mut self.0.lock().unwrap()[index].1));
    }
}

impl Spans {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let filter = tracing_subscriber::filter::LevelFilter::from_level(Level::DEBUG);
        let subscriber = Registry::default().with(self.clone().with_filter(filter));
        tracing::subscriber::set_default(subscriber)
    }

    fn named(&self, name: &str) -> Vec<Fields> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, fields)| fields.clone())
            .collect()
    }
}

fn request(id: &str) -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Box::new(Connection {
            id: id.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_call_records_its_status_in_every_span_it_passed() {
    let spans = Spans::default();
    let _guard = spans.install();
    let chain = ServerChain::builder().with(Outer).with(Refuse).build();

    let err = chain
        .request(Context::new(), request("c-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    chain
        .close(Context::new(), Connection::default())
        .await
        .expect("close passes on");

    let refused = spans.named("refuser");
    assert_eq!(refused.len(), 2, "{refused:?}");
    let (request_span, close_span) = (&refused[0], &refused[1]);
    assert_eq!(request_span["role"], "server");
    assert_eq!(request_span["connection_id"], "c-1");
    assert_eq!(request_span["code"], "NotFound");
    assert_eq!(request_span["error_message"], "no route for c-1");
    assert!(
        !close_span.contains_key("code"),
        "a call that succeeded records no status: {close_span:?}"
    );
    let outer = spans.named("Outer");
    assert_eq!(outer[0]["code"], "NotFound", "{outer:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_served_call_that_fails_records_its_status_on_both_sides() {
    let spans = Spans::default();
    let _guard = spans.install();
    let stop = CancellationToken::new();
    let endpoint = ServerChain::builder().with(Refuse).build();
    let server = serve("tcp://127.0.0.1:0", endpoint, stop.clone())
        .await
        .expect("serves");
    let conn = dial(server.url(), &DialOptions::new())
        .await
        .expect("dials");
    let client: ClientChain = ClientChain::builder()
        .with(Outer)
        .with(GrpcClient::new(conn))
        .build();

    let err = client
        .request(Context::new(), request("c-2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "no route for c-2");

    let served = spans.named("refuser");
    assert_eq!(served.len(), 1, "{served:?}");
    assert_eq!(served[0]["role"], "server");
    assert_eq!(served[0]["code"], "NotFound");
    let calling = spans.named("Outer");
    assert_eq!(calling[0]["role"], "client");
    assert_eq!(calling[0]["code"], "NotFound");
    assert_eq!(calling[0]["error_message"], "no route for c-2");
    stop.cancel();
    server.stopped().await;
}
