//! OpenTelemetry: W3C trace context across hops, and connect's metrics.
//!
//! connect-runtime records through the OpenTelemetry *API* only. A program
//! chooses the exporters (OTLP, Prometheus) by installing an SDK's
//! providers; without one, recording is a no-op and nothing is sent.
//!
//! - **Traces.** A served call's span continues the caller's trace, read
//!   from its `traceparent`/`tracestate` metadata by the global text map
//!   propagator; every client call carries the current span's context the
//!   same way. Spans become OpenTelemetry spans through
//!   `tracing-opentelemetry`'s layer.
//! - **Metrics.** [`Connect`](crate::Connect) and [`Serve`](crate::Serve)
//!   record on the meter given to their builders (the global
//!   [`METER_NAME`] meter by default). The names, as Prometheus sees them:
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `connect_clients` | gauge | |
//! | `connect_retired_clients` | gauge | |
//! | `connect_connections` | gauge | |
//! | `connect_dials_total` | counter | `outcome` |
//! | `connect_dial_duration_seconds` | histogram | |
//! | `connect_requests_total` | counter | `kind`, `code` |
//! | `connect_request_duration_seconds` | histogram | `kind` |
//! | `connect_closes_total` | counter | `origin`, `code` |
//! | `connect_goaway_redials_total` | counter | |
//! | `serve_connections` | gauge | `state` |
//! | `serve_connections_refused_total` | counter | `reason` |
//! | `serve_handshake_failures_total` | counter | |
//!
//! Several `Connect`s (or `Serve`s) in one process need a meter each, of
//! its own name (`provider.meter("connect-to-nsmgr")`): Prometheus then
//! tells them apart by `otel_scope_name`. On one meter, each reports its
//! gauges as the same series, and whichever reports last stands for all.
//!
//! A program turns tracing across hops on by installing a propagator and
//! `tracing-opentelemetry`'s layer (with an exporter on the provider, such
//! as `opentelemetry-otlp`'s, to send the spans somewhere):
//!
//! ```
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::propagation::TraceContextPropagator;
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//! use tracing_subscriber::layer::SubscriberExt as _;
//!
//! opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
//! let provider = SdkTracerProvider::builder().build();
//! let subscriber = tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("my-hop")));
//! let _traced = tracing::subscriber::set_default(subscriber);
//! ```

mod metrics;
mod propagation;

pub use metrics::METER_NAME;
pub(crate) use metrics::{CallKind, Census, CloseOrigin, ConnectMetrics, DialMetrics, DialOutcome};
pub(crate) use propagation::{adopt_caller_trace, inject_current_trace};
