//! How to dial a remote: [`DialOptions`] and [`Keepalive`].

use std::time::Duration;

use opentelemetry::metrics::Meter;
use tokio_util::sync::CancellationToken;

use super::tls::{ClientTls, Credential};
use crate::deadline::{FAR, saturated};
use crate::telemetry::DialMetrics;

/// The dial timeout when none is given: 100 ms, as in Go's connect v0.5.0.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_millis(100);

/// How to dial a remote. Metadata for every call (a token, say) is a
/// tonic interceptor's job: see [`GrpcClient`](crate::GrpcClient).
///
/// ```
/// use std::time::Duration;
/// use connect_runtime::{DialOptions, Keepalive};
///
/// let options = DialOptions::new()
///     .timeout(Duration::from_millis(250))
///     .keepalive(Keepalive::new(Duration::from_secs(10), Duration::from_secs(5)));
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct DialOptions {
    pub(super) timeout: Duration,
    pub(super) tls: Option<ClientTls>,
    pub(super) keepalive: Option<Keepalive>,
    pub(super) close_on: Option<CancellationToken>,
    pub(super) on_end: Option<CancellationToken>,
    pub(super) on_connection_end: Option<Hook>,
    pub(super) metrics: Option<DialMetrics>,
}

/// Something to call when an event happens.
#[derive(Clone)]
pub(crate) struct Hook(pub(crate) std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// The shortest keepalive interval a client uses, as in grpc-go: a
/// shorter one is raised to it.
pub const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// HTTP/2 keepalive: a PING every `interval`; the connection is dropped if
/// no answer comes within `timeout`.
///
/// A dialed channel uses it as grpc-go's clients do: the interval is at
/// least [`MIN_KEEPALIVE_INTERVAL`], and doubles each time a remote ends a
/// connection with `ENHANCE_YOUR_CALM` (grpc-go's `too_many_pings`).
/// Durations too large for the clock saturate on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between PINGs.
    pub interval: Duration,
    /// How long to wait for a PING's answer.
    pub timeout: Duration,
    /// Whether to PING while no call is in flight.
    pub while_idle: bool,
}

impl Keepalive {
    /// Keepalive that PINGs only while calls are in flight.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        let while_idle = false;
        Self {
            interval,
            timeout,
            while_idle,
        }
    }
}

impl Keepalive {
    /// What a client's connection uses after the remote has asked for fewer
    /// PINGs `calmed` times.
    pub(crate) fn as_client(self, calmed: u32) -> Self {
        let doubled = 2u32
            .checked_pow(calmed)
            .and_then(|factor| {
                self.interval
                    .max(MIN_KEEPALIVE_INTERVAL)
                    .checked_mul(factor)
            })
            .unwrap_or(FAR);
        Self {
            interval: saturated(doubled),
            timeout: saturated(self.timeout),
            while_idle: self.while_idle,
        }
    }

    /// What a server uses: durations saturated.
    pub(crate) fn as_server(self) -> Self {
        Self {
            interval: saturated(self.interval),
            timeout: saturated(self.timeout),
            while_idle: self.while_idle,
        }
    }
}

impl Default for DialOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_DIAL_TIMEOUT,
            tls: None,
            keepalive: None,
            close_on: None,
            on_end: None,
            on_connection_end: None,
            metrics: None,
        }
    }
}

impl DialOptions {
    /// Plaintext HTTP/2, [`DEFAULT_DIAL_TIMEOUT`], no keepalive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bounds the whole dial: connect, TLS, and the remote's first HTTP/2
    /// answer. A bound too large for the clock saturates.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Dials with TLS.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// What the TLS certificate dials present now, if it rotates.
    pub(crate) fn credential(&self) -> Option<&tokio::sync::watch::Receiver<Credential>> {
        self.tls.as_ref().and_then(ClientTls::credential)
    }

    /// Enables HTTP/2 keepalive.
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = Some(keepalive);
        self
    }

    /// Records each dial (first ones and redials) on `meter`:
    /// `connect_dials_total{outcome}`, `connect_dial_duration_seconds` and
    /// `connect_goaway_redials_total` (see [`telemetry`](crate::telemetry)).
    /// [`Connect`](crate::Connect) sets its own meter here unless one is set.
    ///
    /// ```
    /// use connect_runtime::DialOptions;
    /// use opentelemetry::metrics::MeterProvider as _;
    ///
    /// let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    /// let options = DialOptions::new().meter(provider.meter("dials"));
    /// # let _ = options;
    /// ```
    pub fn meter(mut self, meter: Meter) -> Self {
        self.metrics = Some(DialMetrics::new(&meter));
        self
    }

    /// Whether a meter was set.
    pub(crate) fn has_meter(&self) -> bool {
        self.metrics.is_some()
    }

    /// Closes the channel's connection when `token` is cancelled, whoever
    /// still holds the channel: calls in flight fail, and it never dials
    /// again. `connect` dials its clients this way, so that cancelling a
    /// client closes its connection at once.
    pub fn close_on(mut self, token: CancellationToken) -> Self {
        self.close_on = Some(token);
        self
    }

    /// Cancels `token` when the channel ends for good ([`ClientConn::ended`]).
    pub(crate) fn on_end(mut self, token: CancellationToken) -> Self {
        self.on_end = Some(token);
        self
    }

    /// Calls `hook` each time one of the channel's connections ends.
    pub(crate) fn on_connection_end(mut self, hook: Hook) -> Self {
        self.on_connection_end = Some(hook);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_keepalive_is_clamped_doubled_and_saturated() {
        let secs = Duration::from_secs;
        let tiny = Keepalive::new(Duration::ZERO, secs(1));
        assert_eq!(tiny.as_client(0).interval, MIN_KEEPALIVE_INTERVAL);
        assert_eq!(tiny.as_client(1).interval, secs(20));
        assert_eq!(tiny.as_client(3).interval, secs(80));
        let huge = Keepalive::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.as_client(0).interval, FAR);
        assert_eq!(huge.as_client(0).timeout, FAR);
        assert_eq!(huge.as_client(40).interval, FAR);
        assert_eq!(tiny.as_client(u32::MAX).interval, FAR);
        assert_eq!(huge.as_server().interval, FAR);
        let plain = Keepalive::new(secs(60), secs(20));
        assert_eq!(plain.as_server(), plain);
    }
}
