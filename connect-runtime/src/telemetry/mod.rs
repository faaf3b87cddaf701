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
//! ```
//! use connect_runtime::{ClientChain, Connect, GrpcClient};
//! use opentelemetry::metrics::MeterProvider as _;
//! use opentelemetry_sdk::metrics::SdkMeterProvider;
//!
//! let provider = SdkMeterProvider::builder().build();
//! let connect = Connect::builder(|_ctx, conn| {
//!     ClientChain::builder().with(GrpcClient::new(conn)).build()
//! })
//! .meter(provider.meter(connect_runtime::telemetry::METER_NAME))
//! .build();
//! # let _ = connect;
//! ```

mod metrics;
mod propagation;

pub use metrics::METER_NAME;
pub(crate) use metrics::{
    CallKind, Census, CloseOrigin, ConnectMetrics, DialMetrics, DialOutcome, Recorded,
};
pub(crate) use propagation::{adopt_caller_trace, inject_current_trace};
