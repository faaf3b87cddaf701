//! How to dial a remote: [`DialOptions`], [`Keepalive`], and the error for
//! metadata that cannot be sent.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio_util::sync::CancellationToken;
use tonic::metadata::errors::{InvalidMetadataKey, InvalidMetadataValue};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

use super::tls::ClientTls;

/// The dial timeout when none is given: 100 ms, as in Go's connect v0.5.0.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_millis(100);

/// How to dial a remote.
///
/// ```
/// use std::time::Duration;
/// use connect_runtime::{DialOptions, Keepalive};
///
/// let options = DialOptions::new()
///     .timeout(Duration::from_millis(250))
///     .keepalive(Keepalive::new(Duration::from_secs(10), Duration::from_secs(5)))
///     .bearer_token("s3cret")
///     .unwrap();
/// assert_eq!(options.dial_timeout(), Duration::from_millis(250));
/// assert!(DialOptions::new().metadata("Bad Key", "v").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct DialOptions {
    pub(super) timeout: Duration,
    pub(super) tls: Option<ClientTls>,
    pub(super) keepalive: Option<Keepalive>,
    pub(super) metadata: HeaderMap,
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

/// A metadata entry [`DialOptions::metadata`] cannot send.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Not a valid ASCII metadata key (lowercase, no spaces, not `-bin`).
    #[error("`{key}` is not a valid ASCII metadata key")]
    Key {
        /// The key given.
        key: String,
        /// Why.
        #[source]
        source: InvalidMetadataKey,
    },
    /// Not a valid metadata value (a control character, say).
    #[error("the value for metadata key `{key}` is not a valid header value")]
    Value {
        /// The key it was for.
        key: String,
        /// Why.
        #[source]
        source: InvalidMetadataValue,
    },
}

impl Default for DialOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_DIAL_TIMEOUT,
            tls: None,
            keepalive: None,
            metadata: HeaderMap::new(),
            close_on: None,
            on_end: None,
        }
    }
}

impl DialOptions {
    /// Plaintext HTTP/2, [`DEFAULT_DIAL_TIMEOUT`], no keepalive, no metadata.
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

    /// Enables HTTP/2 keepalive.
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = Some(keepalive);
        self
    }

    /// Adds `key: value` to the metadata of every call over the channel.
    pub fn metadata(mut self, key: &str, value: &str) -> Result<Self, MetadataError> {
        let name = AsciiMetadataKey::from_bytes(key.as_bytes());
        let name = name.map_err(|source| MetadataError::Key {
            key: key.into(),
            source,
        })?;
        let value = AsciiMetadataValue::try_from(value);
        let value = value.map_err(|source| MetadataError::Value {
            key: key.into(),
            source,
        })?;
        let name = http::HeaderName::from_bytes(name.as_str().as_bytes());
        let value = HeaderValue::from_bytes(value.as_encoded_bytes());
        self.metadata.insert(
            name.expect("a metadata key is a header name"),
            value.expect("a metadata value is a header value"),
        );
        Ok(self)
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn bearer_token(self, token: &str) -> Result<Self, MetadataError> {
        self.metadata("authorization", &format!("Bearer {token}"))
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
