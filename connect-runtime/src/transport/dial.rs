//! Dialing a remote NSM server: a bounded dial that returns once the remote
//! has answered HTTP/2, over TCP or a unix socket, plain or TLS; and the
//! channel tonic's clients call through.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use std::{fmt, io};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::errors::{InvalidMetadataKey, InvalidMetadataValue};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tracing::Instrument;
use url::Url;

use super::replay::OutBody;
use super::socket::{Io, Unanswered, connect_tcp, connect_unix};
use super::target::{Target, UrlError};
use super::tls::{ClientTls, TlsError};
use crate::context::deadline_after;
use crate::map::lock;
use crate::outcome::not_sent;

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
    timeout: Duration,
    tls: Option<ClientTls>,
    keepalive: Option<Keepalive>,
    metadata: HeaderMap,
    close_on: Option<CancellationToken>,
    on_end: Option<CancellationToken>,
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

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The URL is not one connect can dial.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The TLS options cannot dial this target (no name to verify, say).
    #[error("cannot dial {url}: {source}")]
    Tls {
        /// Where the dial was going.
        url: String,
        /// What is wrong.
        #[source]
        source: TlsError,
    },
    /// No answer from the remote within the dial timeout.
    #[error("dialing {url}: no answer from the remote within {timeout:?}")]
    Timeout {
        /// Where the dial was going.
        url: String,
        /// The dial timeout.
        timeout: Duration,
    },
    /// Connecting failed: refused, no such socket, the TLS handshake, the
    /// connection closed before the remote answered.
    #[error("dialing {url}: {source}")]
    Connect {
        /// Where the dial was going.
        url: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The HTTP/2 handshake failed.
    #[error("dialing {url}: HTTP/2 handshake: {source}")]
    Handshake {
        /// Where the dial was going.
        url: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The remote answered, but not with HTTP/2.
    #[error("dialing {url}: the remote does not speak HTTP/2")]
    NotHttp2 {
        /// Where the dial was going.
        url: String,
    },
}

impl From<DialError> for Status {
    fn from(err: DialError) -> Self {
        match err {
            DialError::Url(err) => err.into(),
            err @ DialError::Tls { .. } => Status::invalid_argument(error_chain(&err)),
            err => Status::unavailable(error_chain(&err)),
        }
    }
}

/// Renders an error and its causes, `outer: inner: innermost`, skipping a
/// cause the text already ends with.
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A dialed channel to a remote, which tonic's clients call through, adding
/// the dial options' metadata to every call. Cheap to clone; clones share
/// one HTTP/2 connection at a time.
///
/// - When the remote ends the connection with a graceful GOAWAY
///   (connection-age limits, a graceful restart, a proxy recycling
///   connections), calls in flight finish on it and the next call dials one
///   new connection, within the dial timeout, for every clone. A call the
///   old connection never sent goes on the new one; one the remote refused
///   unprocessed (above the GOAWAY's last stream) fails with `Unavailable`.
/// - When the connection breaks instead (the remote died, the network
///   failed, keepalive went unanswered), or that new dial fails, the channel
///   has ended for good: calls fail with `Unavailable` and
///   [`ClientConn::ended`] resolves. It never retries by itself.
/// - Replies are checked before tonic reads them: one that is not gRPC (by
///   its `content-type`), or whose status details are not base64, is an
///   `Internal` error naming the problem.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::{DialOptions, dial};
/// use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
///
/// let conn = dial(&"tcp://127.0.0.1:5002".parse()?, &DialOptions::new()).await?;
/// let mut client = NetworkServiceClient::new(conn);
/// # let _ = &mut client;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientConn {
    shared: Arc<Shared>,
}

struct Shared {
    url: Arc<Url>,
    target: Target,
    options: DialOptions,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The connection calls go over now, and how many came before it.
    live: Mutex<(SendRequest<OutBody>, u64)>,
    /// Held while a new connection is dialed, so that a crowd shares one.
    redialing: tokio::sync::Mutex<()>,
    /// How the channel ended for good, once it has.
    ending: Arc<Ending>,
    dials: AtomicU64,
}

impl ClientConn {
    /// The URL this channel was dialed to.
    pub fn url(&self) -> &Url {
        &self.shared.url
    }

    /// Connections this channel has made: the first, and one more each time
    /// a call found the last one ended by the remote's GOAWAY.
    pub fn dials(&self) -> u64 {
        self.shared.dials.load(Ordering::Relaxed)
    }

    /// Resolves once the channel has ended for good; every call fails with
    /// `Unavailable` after that.
    ///
    /// ```no_run
    /// # async fn demo(conn: connect_runtime::ClientConn) {
    /// conn.ended().await;
    /// tracing::info!(url = %conn.url(), "the remote went away; dial again");
    /// # }
    /// ```
    pub async fn ended(&self) {
        self.shared.ending.token.cancelled().await;
    }
}

impl fmt::Debug for ClientConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConn")
            .field("url", &self.shared.url.as_str())
            .field("dials", &self.dials())
            .field("ended", &self.shared.ending.token.is_cancelled())
            .finish()
    }
}

/// The error of a call on a [`ClientConn`]: a [`Status`], or hyper's error
/// for tonic to map.
pub type TransportError = Box<dyn StdError + Send + Sync>;

/// The future of a call on a [`ClientConn`].
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, TransportError>> + Send>>;

impl tower_service::Service<http::Request<Body>> for ClientConn {
    type Response = http::Response<Body>;
    type Error = TransportError;
    type Future = ResponseFuture;

    /// Always ready: each call finds (or makes) its connection.
    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // tonic's clients send a path only; HTTP/2 needs the origin too.
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(self.shared.scheme.clone());
        parts.authority = Some(self.shared.authority.clone());
        match http::Uri::from_parts(parts) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(err) => return Box::pin(std::future::ready(Err(err.into()))),
        }
        for (name, value) in &self.shared.options.metadata {
            request.headers_mut().append(name.clone(), value.clone());
        }
        Box::pin(Arc::clone(&self.shared).send(request))
    }
}

/// Dials `url`, returning once the remote has answered: the TCP or unix
/// connection is up, TLS (if asked for) is done, and the remote has sent
/// its HTTP/2 SETTINGS, all within the options' timeout. A listener that
/// accepts but never speaks HTTP/2 fails with [`DialError::Timeout`].
pub async fn dial(url: &Url, options: &DialOptions) -> Result<ClientConn, DialError> {
    let target = Target::from_url(url)?;
    let scheme = match options.tls {
        Some(_) => http::uri::Scheme::HTTPS,
        None => http::uri::Scheme::HTTP,
    };
    // `localhost` on a unix socket, as grpc-go sends: h2 refuses a
    // %-encoded path.
    let authority = target.authority().parse().map_err(|err| UrlError {
        url: url.to_string(),
        reason: format!("`{}` is not an HTTP authority: {err}", target.authority()),
    })?;
    let url = Arc::new(url.clone());
    let ending = Arc::new(Ending {
        token: CancellationToken::new(),
        why: OnceLock::new(),
        on_end: options.on_end.clone(),
    });
    let (send, answered) = connect(&url, &target, options, &ending).await?;
    match answered.await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Err(why.dial_error(&url, options.timeout)),
        Err(_) => {
            let closed = io::Error::new(io::ErrorKind::UnexpectedEof, "closed before answering");
            let url = url.to_string();
            return Err(DialError::Connect {
                url,
                source: closed,
            });
        }
    }
    let shared = Shared {
        url,
        target,
        options: options.clone(),
        scheme,
        authority,
        live: Mutex::new((send, 0)),
        redialing: tokio::sync::Mutex::new(()),
        ending,
        dials: AtomicU64::new(1),
    };
    Ok(ClientConn {
        shared: Arc::new(shared),
    })
}

impl Unanswered {
    /// The dial's error for a remote whose first bytes failed so.
    fn dial_error(self, url: &Url, timeout: Duration) -> DialError {
        let url = url.to_string();
        match self {
            Unanswered::Silent => DialError::Timeout { url, timeout },
            Unanswered::NotHttp2 => DialError::NotHttp2 { url },
        }
    }
}

/// One connection to `target`: socket, TLS and the HTTP/2 handshake within
/// the dial timeout; the remote's SETTINGS by then too, or the connection
/// fails (the receiver says how). If it later breaks (rather than being
/// ended by a GOAWAY), the channel ends with it.
async fn connect(
    url: &Arc<Url>,
    target: &Target,
    options: &DialOptions,
    ending: &Arc<Ending>,
) -> Result<
    (
        SendRequest<OutBody>,
        oneshot::Receiver<Result<(), Unanswered>>,
    ),
    DialError,
> {
    let deadline = deadline_after(options.timeout);
    let failed = |source| DialError::Connect {
        url: url.to_string(),
        source,
    };
    let dialing = async {
        let mut stream = match target {
            Target::Tcp { host, port } => connect_tcp(host, *port).await,
            Target::Unix { path } => connect_unix(path).await,
        }
        .map_err(failed)?;
        if let Some(tls) = &options.tls {
            let host = match target {
                Target::Tcp { host, .. } => host.as_str(),
                Target::Unix { .. } => "localhost",
            };
            let name = tls.name_for(host);
            let name = name.map_err(|source| DialError::Tls {
                url: url.to_string(),
                source,
            })?;
            stream = Box::new(
                tls.connector()
                    .connect(name, stream)
                    .await
                    .map_err(failed)?,
            );
        }
        let mut io = Io::new(stream);
        let answered = io.first_bytes_by(deadline, true);
        if let Some(token) = &options.close_on {
            io = io.close_on(token.clone());
        }
        let mut builder = Builder::new(Boxing);
        builder.timer(TokioTimer::new());
        if let Some(keepalive) = options.keepalive {
            builder
                .keep_alive_interval(keepalive.interval)
                .keep_alive_timeout(keepalive.timeout)
                .keep_alive_while_idle(keepalive.while_idle);
        }
        let handshake = builder.handshake(TokioIo::new(io)).await;
        let (send, connection) = handshake.map_err(|source| DialError::Handshake {
            url: url.to_string(),
            source,
        })?;
        let (ending, url, timeout) = (Arc::clone(ending), Arc::clone(url), options.timeout);
        tokio::spawn(
            async move {
                // hyper ends a connection's task with `Ok` when the remote
                // sent a graceful GOAWAY (calls in flight go on), and with an
                // error when it broke or closed without one.
                match connection.await {
                    Ok(()) => tracing::debug!("the remote is ending the connection (GOAWAY)"),
                    Err(err) => {
                        tracing::debug!(error = %error_chain(&err), "the connection broke");
                        let why = match Unanswered::of(&err) {
                            Some(why) => why.dial_error(&url, timeout).into(),
                            None => Status::unavailable(format!(
                                "the connection to {url} has ended: {}",
                                error_chain(&err)
                            )),
                        };
                        ending.end(why);
                    }
                }
            }
            .in_current_span(),
        );
        Ok((send, answered))
    };
    let span = tracing::debug_span!("dial", url = %url, timeout = ?options.timeout);
    let within = tokio::time::timeout_at(deadline, dialing.instrument(span));
    let timeout = options.timeout;
    within.await.unwrap_or_else(|_| {
        Err(DialError::Timeout {
            url: url.to_string(),
            timeout,
        })
    })
}

/// Spawns hyper's per-connection and per-stream tasks boxed: a future
/// moved into `tokio::spawn` by value is copied through several frames, and
/// hyper's are large (see BENCHMARKS.md).
#[derive(Clone, Copy)]
struct Boxing;

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Boxing {
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future) as Pin<Box<dyn Future<Output = ()> + Send>>);
    }
}

/// How a channel ended for good: the status every later call fails with.
struct Ending {
    token: CancellationToken,
    why: OnceLock<Status>,
    on_end: Option<CancellationToken>,
}

impl Ending {
    fn end(&self, why: Status) {
        let _ = self.why.set(why);
        self.token.cancel();
        self.on_end.as_ref().inspect(|t| t.cancel());
    }

    /// Why calls fail now.
    fn status(&self, url: &Url) -> Status {
        let why = self.why.get().cloned();
        why.unwrap_or_else(|| Status::unavailable(format!("the connection to {url} has ended")))
    }
}

impl Shared {
    /// Sends a call over the live connection, dialing a new one if the
    /// remote ended it. A call the old connection never sent, or that the
    /// remote refused unprocessed as it went away, goes once more on a new
    /// connection.
    async fn send(
        self: Arc<Self>,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, TransportError> {
        let (head, body) = request.into_parts();
        let body = OutBody::new(body);
        let again = body.again().map(|again| (head.clone(), again));
        let (mut send, generation) = self.connection(None).await?;
        let (unsent, err) = match send
            .try_send_request(http::Request::from_parts(head, body))
            .await
        {
            Ok(response) => return Ok(self.checked(response)?),
            Err(mut err) => (err.take_message(), err.into_error()),
        };
        let request = match (unsent, again) {
            (Some(unsent), _) => unsent,
            (None, Some((head, body))) if refused(&err) => http::Request::from_parts(head, body),
            _ => return Err(self.failed(err)),
        };
        let (mut send, _) = self.connection(Some(generation)).await?;
        match send.try_send_request(request).await {
            Ok(response) => Ok(self.checked(response)?),
            Err(err) => Err(self.failed(err.into_error())),
        }
    }

    /// The live connection, unless it has ended or is `stale`; else a new
    /// one, dialed once for every caller that finds it so.
    async fn connection(&self, stale: Option<u64>) -> Result<(SendRequest<OutBody>, u64), Status> {
        if let Some(live) = self.live(stale) {
            return Ok(live);
        }
        let _dialing = self.redialing.lock().await;
        if let Some(live) = self.live(stale) {
            return Ok(live);
        }
        if self.ending.token.is_cancelled() {
            return Err(not_sent(self.ending.status(&self.url)));
        }
        match connect(&self.url, &self.target, &self.options, &self.ending).await {
            Ok((send, _)) => {
                let dials = self.dials.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(url = %self.url, dials, "dialed again after a GOAWAY");
                let mut live = lock(&self.live);
                *live = (send, live.1 + 1);
                Ok(live.clone())
            }
            Err(err) => {
                tracing::info!(url = %self.url, error = %error_chain(&err), "the channel has ended");
                let why = format!("the connection to {} ended and a new one failed", self.url);
                self.ending
                    .end(Status::unavailable(format!("{why}: {}", error_chain(&err))));
                Err(not_sent(self.ending.status(&self.url)))
            }
        }
    }

    fn live(&self, stale: Option<u64>) -> Option<(SendRequest<OutBody>, u64)> {
        let live = lock(&self.live);
        let usable =
            !self.ending.token.is_cancelled() && !live.0.is_closed() && Some(live.1) != stale;
        usable.then(|| live.clone())
    }

    /// A call that failed in hyper: refused by a remote going away, or cut
    /// by the connection's end, it is `Unavailable`; the rest is tonic's to
    /// map.
    fn failed(&self, err: hyper::Error) -> TransportError {
        let url = &self.url;
        // A remote that never answered acted on nothing.
        if Unanswered::of(&err).is_some() {
            return Box::new(not_sent(self.ending.status(url)));
        }
        if self.ending.token.is_cancelled() {
            return Box::new(self.ending.status(url));
        }
        if refused(&err) {
            let why = format!("{url} is going away (HTTP/2 GOAWAY) and refused the call: {err}");
            return Box::new(Status::unavailable(why));
        }
        if err.is_canceled() || err.is_closed() {
            let why = format!("the connection to {url} has ended: {err}");
            return Box::new(Status::unavailable(why));
        }
        Box::new(err)
    }

    /// A reply tonic can read safely: gRPC by its content type, with status
    /// details that are base64 (tonic panics on others).
    fn checked(&self, response: http::Response<Incoming>) -> Result<http::Response<Body>, Status> {
        let (mut head, body) = response.into_parts();
        let content_type = head.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
        let grpc = content_type.is_some_and(|t| t.starts_with(b"application/grpc"));
        if head.status == http::StatusCode::OK && !grpc && !head.headers.contains_key(GRPC_STATUS) {
            let content_type = String::from_utf8_lossy(content_type.unwrap_or(b"none"));
            let why = format!(
                "{} answered with content-type {content_type}, not gRPC",
                self.url
            );
            return Err(Status::internal(why));
        }
        sanitize_status(&mut head.headers);
        Ok(http::Response::from_parts(
            head,
            Body::new(Checked { body }),
        ))
    }
}

const GRPC_STATUS: &str = "grpc-status";
const GRPC_STATUS_DETAILS: &str = "grpc-status-details-bin";

/// Replaces a status whose details are not base64 by `Internal` saying so.
fn sanitize_status(headers: &mut HeaderMap) {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let Some(details) = headers.get(GRPC_STATUS_DETAILS) else {
        return;
    };
    // How tonic decodes: the standard alphabet, padding optional.
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    if GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(details)
        .is_ok()
    {
        return;
    }
    let code = headers
        .get(GRPC_STATUS)
        .map_or("none".into(), |c| String::from_utf8_lossy(c.as_bytes()));
    let message = format!(
        "the remote's status (grpc-status {code}) has malformed grpc-status-details-bin: not base64"
    );
    headers.remove(GRPC_STATUS_DETAILS);
    headers.insert(GRPC_STATUS, HeaderValue::from_static("13"));
    let message = HeaderValue::from_str(&message).expect("an ASCII message");
    headers.insert("grpc-message", message);
}

/// A call the remote refused as it went away: past its GOAWAY's last
/// stream (or cut when it closed after one), or REFUSED_STREAM.
fn refused(err: &hyper::Error) -> bool {
    source_of::<h2::Error>(err).is_some_and(|h2| {
        (h2.is_go_away() && h2.is_remote()) || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
    })
}

fn source_of<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut source = Some(err);
    while let Some(cause) = source {
        if let Some(found) = cause.downcast_ref::<E>() {
            return Some(found);
        }
        source = cause.source();
    }
    None
}

pin_project_lite::pin_project! {
    /// A reply body whose trailers are checked as the headers were.
    struct Checked {
        #[pin]
        body: Incoming,
    }
}

impl HttpBody for Checked {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project()
            .body
            .poll_frame(cx)
            .map_ok(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    sanitize_status(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
