//! W3C trace context in gRPC metadata, through the global propagator.

use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct Incoming<'a>(&'a MetadataMap);

impl Extractor for Incoming<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct Outgoing<'a>(&'a mut MetadataMap);

impl Injector for Outgoing<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A propagator's keys and values are ASCII; one that is not is
        // dropped rather than sent malformed.
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Makes `span` continue the trace the caller's `metadata` carries, if any.
/// Free when `span` is disabled (no subscriber wants it).
pub(crate) fn adopt_caller_trace(span: &Span, metadata: &MetadataMap) {
    if span.is_disabled() {
        return;
    }
    let parent = global::get_text_map_propagator(|p| p.extract(&Incoming(metadata)));
    if parent.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer: nothing to continue.
        let _ = span.set_parent(parent);
    }
}

/// Adds the current span's trace context to an outgoing call's `metadata`.
/// Free when there is no current span.
pub(crate) fn inject_current_trace(metadata: &mut MetadataMap) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    if context.span().span_context().is_valid() {
        global::get_text_map_propagator(|p| p.inject_context(&context, &mut Outgoing(metadata)));
    }
}
