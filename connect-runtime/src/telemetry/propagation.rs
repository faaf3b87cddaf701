//! W3C trace context in gRPC metadata, through the global propagator.

use opentelemetry::global;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tonic::metadata::MetadataMap;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Makes `span` continue the trace the caller's `metadata` carries, if any.
/// Free when `span` is disabled (no subscriber wants it).
pub(crate) fn adopt_caller_trace(span: &Span, metadata: &MetadataMap) {
    if span.is_disabled() {
        return;
    }
    let parent =
        global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(metadata.as_ref())));
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
        global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut HeaderInjector(metadata.as_mut()))
        });
    }
}
