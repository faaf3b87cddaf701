//! How to dial a remote: [`DialOptions`] and [`Keepalive`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::tls::{ClientTls, Credential};

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
/// assert_eq!(options.dial_timeout(), Duration::from_millis(250));
/// ```
#[derive(Clone, Debug)]
pub struct DialOptions {
    pub(super) timeout: Duration,
    pub(super) tls: Option<ClientTls>,
    pub(super) keepalive: Option<Keepalive>,
    pub(super) close_on: Option<CancellationToken>,
    pub(super) on_end: Option<CancellationToken>,
}

/// HTTP/2 keepalive: a PING every `interval`; the connection is dropped if
/// no answer comes within `timeout`.
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

impl Default for DialOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_DIAL_TIMEOUT,
            tls: None,
            keepalive: None,
            close_on: None,
            on_end: None,
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

    /// The dial timeout.
    pub fn dial_timeout(&self) -> Duration {
        self.timeout
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
}
