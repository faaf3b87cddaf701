//! The served side's instruments, read from a server's
//! [`ConnectionStats`] when a reader collects.

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use super::handle::ConnectionStats;

/// Registers a server's instruments on `meter`, read from `stats` (which
/// answers `None` once the server has stopped) when a reader collects:
/// `serve_connections{state}`, `serve_connections_refused_total{reason}`
/// and `serve_handshake_failures_total`.
pub(crate) fn serve_metrics(
    meter: &Meter,
    stats: impl Fn() -> Option<ConnectionStats> + Send + Sync + 'static,
) {
    let stats = Arc::new(stats);
    let read = Arc::clone(&stats);
    meter
        .u64_observable_gauge("serve_connections")
        .with_description("Transport connections open, by state: open (serving) or retired (draining after a rotation)")
        .with_callback(move |observer| {
            if let Some(s) = read() {
                let retired = s.retired as u64;
                observer.observe((s.open as u64).saturating_sub(retired), &[KeyValue::new("state", "open")]);
                observer.observe(retired, &[KeyValue::new("state", "retired")]);
            }
        })
        .build();
    let read = Arc::clone(&stats);
    meter
        .u64_observable_counter("serve_connections_refused")
        .with_description("Connections closed before serving a call, by reason")
        .with_callback(move |observer| {
            if let Some(s) = read() {
                let other_tls = s.refused.saturating_sub(
                    s.plaintext + s.no_client_certificate + s.untrusted_certificate,
                );
                for (reason, count) in [
                    ("plaintext", s.plaintext),
                    ("no_client_certificate", s.no_client_certificate),
                    ("untrusted_certificate", s.untrusted_certificate),
                    ("tls_handshake", other_tls),
                    ("handshake_timeout", s.timed_out),
                    ("not_http2", s.not_http2),
                ] {
                    observer.observe(count, &[KeyValue::new("reason", reason)]);
                }
            }
        })
        .build();
    meter
        .u64_observable_counter("serve_handshake_failures")
        .with_description("Connections whose TLS handshake failed")
        .with_callback(move |observer| {
            if let Some(s) = stats() {
                observer.observe(s.refused, &[]);
            }
        })
        .build();
}
