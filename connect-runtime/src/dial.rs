//! Dialing a remote NSM server: a bounded dial that returns only once the
//! remote has answered, over TCP or a unix socket, with TLS, HTTP/2
//! keepalive and per-call metadata as options.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tracing::Instrument;
use url::Url;

use crate::executor::BoxingExecutor;
use crate::http2::Http2;
use crate::socket::{Stream, connect_tcp, connect_unix};
use crate::target::{Target, UrlError};

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
/// ```
#[derive(Clone, Debug)]
pub struct DialOptions {
    timeout: Duration,
    tls: Option<ClientTlsConfig>,
    keepalive: Option<Keepalive>,
    metadata: MetadataMap,
    close_on: Option<CancellationToken>,
    /// Cancelled when a plaintext connection ends, for whatever reason.
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
        Self {
            interval,
            timeout,
            while_idle: false,
        }
    }
}

impl Default for DialOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_DIAL_TIMEOUT,
            tls: None,
            keepalive: None,
            metadata: MetadataMap::new(),
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

    /// Bounds the whole dial: TCP or unix connect, TLS, and the remote's
    /// first HTTP/2 answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The dial timeout.
    pub fn dial_timeout(&self) -> Duration {
        self.timeout
    }

    /// Dials with TLS (rustls), verifying the server as `config` says.
    pub fn tls(mut self, config: ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Enables HTTP/2 keepalive.
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = Some(keepalive);
        self
    }

    /// Adds `key: value` to the metadata of every call made over the dialed
    /// channel.
    pub fn metadata(mut self, key: &'static str, value: &str) -> Result<Self, Status> {
        let value = value.parse().map_err(|_| {
            Status::invalid_argument(format!("metadata value for `{key}` is not valid ASCII"))
        })?;
        self.metadata.insert(key, value);
        Ok(self)
    }

    /// Closes the dialed connection when `token` is cancelled, whoever still
    /// holds the channel: calls in flight fail, and the channel never
    /// reconnects. `connect` dials its clients this way, so that cancelling a
    /// client closes its TCP or unix connection at once.
    pub fn close_on(mut self, token: CancellationToken) -> Self {
        self.close_on = Some(token);
        self
    }

    /// Cancels `token` when a plaintext connection ends (the remote closed
    /// it, it broke, or `close_on` closed it): it is never re-established.
    pub(crate) fn on_end(mut self, token: CancellationToken) -> Self {
        self.on_end = Some(token);
        self
    }

    /// hyper's HTTP/2 client settings: its defaults (as tonic's channel
    /// uses them), and the keepalive asked for.
    fn http2(&self) -> http2::Builder<BoxingExecutor> {
        let mut builder = http2::Builder::new(BoxingExecutor);
        builder.timer(TokioTimer::new());
        if let Some(keepalive) = self.keepalive {
            builder
                .keep_alive_interval(keepalive.interval)
                .keep_alive_timeout(keepalive.timeout)
                .keep_alive_while_idle(keepalive.while_idle);
        }
        builder
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn bearer_token(self, token: &str) -> Result<Self, Status> {
        self.metadata("authorization", &format!("Bearer {token}"))
    }

    /// tonic's endpoint for a TLS dial (plaintext dials use hyper's
    /// connection directly, see [`DialOptions::http2`]).
    fn tls_endpoint(&self, target: &Target, tls: &ClientTlsConfig) -> Result<Endpoint, DialError> {
        let config_error = |err: tonic::transport::Error| DialError::Config {
            url: target.to_string(),
            reason: error_chain(&err),
        };
        let mut endpoint = Endpoint::from_shared(format!("https://{}", target.authority()))
            .map_err(config_error)?
            // Bounds reconnects tonic makes on its own after a connection
            // drops; the first connect is bounded by `dial` as a whole.
            .connect_timeout(self.timeout)
            .tls_config(tls.clone())
            .map_err(config_error)?;
        if let Some(keepalive) = self.keepalive {
            endpoint = endpoint
                .http2_keep_alive_interval(keepalive.interval)
                .keep_alive_timeout(keepalive.timeout)
                .keep_alive_while_idle(keepalive.while_idle);
        }
        Ok(endpoint)
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The URL is not one connect can dial.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The dial options do not fit this target (a bad TLS configuration, say).
    #[error("cannot dial {url}: {reason}")]
    Config {
        /// Where the dial was going.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No answer from the remote within the dial timeout.
    #[error("dialing {url}: no answer from the remote within {timeout:?}")]
    Timeout {
        /// Where the dial was going.
        url: String,
        /// The dial timeout.
        timeout: Duration,
    },
    /// Connecting failed (refused, no such socket, TLS handshake, ...).
    #[error("dialing {url}: {reason}")]
    Connect {
        /// Where the dial was going.
        url: String,
        /// The error and its causes.
        reason: String,
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
            err @ DialError::Config { .. } => Status::invalid_argument(err.to_string()),
            err => Status::unavailable(err.to_string()),
        }
    }
}

/// A dialed, ready channel to a remote, which adds the dial options'
/// metadata to every call. Cheap to clone; all clones share one HTTP/2
/// connection, which closes when the last clone is dropped.
///
/// Over plaintext (TCP or a unix socket) it is one HTTP/2 connection driven
/// by hyper directly: a call goes from the caller's task to hyper's, with
/// no queueing task between while few calls are in flight, and through one
/// task that feeds hyper in batches when many are. That connection is not
/// re-established when it drops: calls then fail with `Unavailable`, and the
/// remedy is a new dial (`connect` does that by itself: a client whose
/// connection ended is closed, and the next request dials afresh). With TLS
/// it is tonic's channel, which owns the TLS setup and reconnects on its own.
///
/// Use it wherever tonic wants a transport:
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::{DialOptions, dial};
/// use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
///
/// let url = "tcp://127.0.0.1:5002".parse()?;
/// let conn = dial(&url, &DialOptions::new()).await?;
/// let mut client = NetworkServiceClient::new(conn);
/// # let _ = &mut client;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientConn {
    transport: Transport,
    headers: Option<Arc<http::HeaderMap>>,
    url: Arc<Url>,
    /// Cancelled when a plaintext connection ends; none under TLS.
    ended: Option<CancellationToken>,
    /// Room for `GrpcClient`'s unary calls (see [`UNARY_CALLS_IN_FLIGHT`]).
    pub(crate) unary_slots: Arc<Semaphore>,
}

/// At most this many `GrpcClient` calls are in flight on one connection;
/// more wait their turn, in order. In a burst (a thousand connections
/// requested at once through one fresh client) sending everything at once
/// makes the client hold every call's HTTP/2 stream, tasks and buffers at
/// the same time. The window bounds that; since the hand-off (see
/// BENCHMARKS.md, fifth round) it costs a burst neither time nor CPU that
/// this machine can resolve, and one connection needs far fewer calls in
/// flight to keep a remote busy. tonic clients built on a [`ClientConn`]
/// are not limited.
///
/// ```
/// // A burst of a thousand calls on one connection goes out in four waves.
/// assert_eq!(1000_usize.div_ceil(connect_runtime::UNARY_CALLS_IN_FLIGHT), 4);
/// ```
pub const UNARY_CALLS_IN_FLIGHT: usize = 256;

#[derive(Clone)]
enum Transport {
    /// Plaintext: hyper's HTTP/2 client connection.
    Http2(Http2),
    /// TLS: tonic's channel.
    Tonic(Channel),
}

impl ClientConn {
    /// The URL this channel was dialed to.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Calls in flight on a plaintext connection.
    #[cfg(test)]
    pub(crate) fn calls_in_flight(&self) -> usize {
        match &self.transport {
            Transport::Http2(http2) => http2.in_flight(),
            Transport::Tonic(_) => 0,
        }
    }

    /// Resolves once the connection has ended, after which every call fails
    /// with `Unavailable`. A TLS channel reconnects by itself, and for it
    /// this never resolves.
    ///
    /// ```no_run
    /// # async fn demo(conn: connect_runtime::ClientConn) {
    /// conn.ended().await;
    /// tracing::info!(url = %conn.url(), "the remote went away; dial again");
    /// # }
    /// ```
    pub async fn ended(&self) {
        match &self.ended {
            Some(ended) => ended.cancelled().await,
            None => std::future::pending().await,
        }
    }
}

impl fmt::Debug for ClientConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConn")
            .field("url", &self.url.as_str())
            .field("metadata", &self.headers.as_ref().map_or(0, |h| h.len()))
            .finish()
    }
}

/// The error of a call on a [`ClientConn`]: hyper's or tonic's, boxed.
pub type TransportError = Box<dyn StdError + Send + Sync>;

/// The future of a call on a [`ClientConn`].
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, TransportError>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for ClientConn {
    type Response = http::Response<tonic::body::Body>;
    type Error = TransportError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.transport {
            Transport::Http2(http2) => http2.poll_ready(cx).map(Ok),
            Transport::Tonic(channel) => {
                tower_service::Service::poll_ready(channel, cx).map_err(Into::into)
            }
        }
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(headers) = &self.headers {
            for (name, value) in headers.iter() {
                request.headers_mut().append(name.clone(), value.clone());
            }
        }
        match &mut self.transport {
            Transport::Http2(http2) => http2.call(request),
            Transport::Tonic(channel) => {
                let response = tower_service::Service::call(channel, request);
                Box::pin(async move { response.await.map_err(Into::into) })
            }
        }
    }
}

/// Dials `url`, returning once the remote has answered: the TCP or unix
/// connection is up (and TLS, if asked for, is done) and the remote has sent
/// its HTTP/2 preface. The whole dial is bounded by the options' timeout,
/// for both schemes.
///
/// A listener that accepts connections but never speaks HTTP/2 fails the
/// dial with [`DialError::Timeout`] once the timeout passes.
pub async fn dial(url: &Url, options: &DialOptions) -> Result<ClientConn, DialError> {
    let (conn, readiness) = open(url, options).await?;
    readiness.wait().await?;
    Ok(conn)
}

/// The first half of [`dial`]: connects (within the dial timeout) and
/// returns the channel before the remote's first answer has arrived, with
/// the [`Readiness`] that reports it. Calls may be sent at once; they are
/// answered only after the preface anyway, so a caller that closes the
/// channel when [`Readiness::wait`] fails saves the wait without giving up
/// the bound on a remote that never answers.
pub(crate) async fn open(
    url: &Url,
    options: &DialOptions,
) -> Result<(ClientConn, Readiness), DialError> {
    let target = Target::from_url(url)?;
    let span = tracing::debug_span!("dial", url = %url, timeout = ?options.timeout);
    async move {
        let deadline = tokio::time::Instant::now() + options.timeout;
        let answered = Arc::new(Answered::new(if options.tls.is_some() {
            // The TLS handshake reads the server's bytes before HTTP/2 does.
            Expect::AnyBytes
        } else {
            Expect::Http2Settings
        }));
        let connector = Connector {
            target: Arc::new(target.clone()),
            answered: Arc::clone(&answered),
            close_on: options.close_on.clone(),
        };
        let readiness = Readiness {
            answered,
            deadline,
            url: url.to_string(),
            timeout: options.timeout,
        };
        let url_arc = Arc::new(url.clone());
        let (transport, ended) = if let Some(tls) = &options.tls {
            let endpoint = options.tls_endpoint(&target, tls)?;
            let channel = readiness
                .connect_within(endpoint.connect_with_connector(connector))
                .await?;
            (Transport::Tonic(channel), None)
        } else {
            let authority = target
                .authority()
                .parse()
                .map_err(|err| DialError::Config {
                    url: url.to_string(),
                    reason: format!("{} is not an HTTP authority: {err}", target.authority()),
                })?;
            let handshake = async {
                let io = connector.connect().await?;
                options
                    .http2()
                    .handshake(io)
                    .await
                    .map_err(io::Error::other)
            };
            let (send, connection) = readiness.connect_within(handshake).await?;
            let ended = CancellationToken::new();
            let (watched, on_end) = (ended.clone(), options.on_end.clone());
            tokio::spawn(
                async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(error = %error_chain(&err), "the connection ended");
                    }
                    watched.cancel();
                    if let Some(on_end) = on_end {
                        on_end.cancel();
                    }
                }
                .in_current_span(),
            );
            let http2 = Http2::new(send, authority, Arc::clone(&url_arc));
            (Transport::Http2(http2), Some(ended))
        };
        tracing::debug!("connected");
        let headers = (!options.metadata.is_empty())
            .then(|| Arc::new(options.metadata.clone().into_headers()));
        let conn = ClientConn {
            transport,
            headers,
            url: url_arc,
            ended,
            unary_slots: Arc::new(Semaphore::new(UNARY_CALLS_IN_FLIGHT)),
        };
        Ok((conn, readiness))
    }
    .instrument(span)
    .await
}

/// Whether a freshly opened channel's remote has answered (see [`open`]).
#[derive(Clone)]
pub(crate) struct Readiness {
    answered: Arc<Answered>,
    deadline: tokio::time::Instant,
    url: String,
    timeout: Duration,
}

impl Readiness {
    /// The remote has sent its first bytes, and they were HTTP/2.
    pub(crate) fn is_ready(&self) -> bool {
        self.answered.state.load(Ordering::Acquire) == ANSWERED
    }

    /// Waits for the remote's answer, up to the dial deadline.
    pub(crate) async fn wait(&self) -> Result<(), DialError> {
        match tokio::time::timeout_at(self.deadline, self.answered.wait()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(DialError::NotHttp2 {
                url: self.url.clone(),
            }),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Runs the connecting part of a dial (socket, TLS, HTTP/2 handshake)
    /// within the dial deadline.
    async fn connect_within<T, E: StdError + 'static>(
        &self,
        connecting: impl Future<Output = Result<T, E>>,
    ) -> Result<T, DialError> {
        tokio::time::timeout_at(self.deadline, connecting)
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|err| DialError::Connect {
                url: self.url.clone(),
                reason: error_chain(&err),
            })
    }

    fn timed_out(&self) -> DialError {
        DialError::Timeout {
            url: self.url.clone(),
            timeout: self.timeout,
        }
    }
}

/// Renders an error and its causes, `outer: inner: innermost`.
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

/// What the first bytes from the remote must look like.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// A cleartext HTTP/2 server opens with a SETTINGS frame.
    Http2Settings,
    /// Under TLS anything the server sends proves it is there.
    AnyBytes,
}

/// Set by the socket when the remote's first bytes arrive.
struct Answered {
    expect: Expect,
    state: AtomicU8,
    notify: Notify,
}

const WAITING: u8 = 0;
const ANSWERED: u8 = 1;
const NOT_HTTP2: u8 = 2;

/// An HTTP/2 frame header's type octet sits after the 24-bit length.
const FRAME_TYPE_OFFSET: usize = 3;
const FRAME_TYPE_SETTINGS: u8 = 0x4;

impl Answered {
    fn new(expect: Expect) -> Self {
        Self {
            expect,
            state: AtomicU8::new(WAITING),
            notify: Notify::new(),
        }
    }

    fn observe(&self, first_bytes: &[u8]) {
        if self.state.load(Ordering::Relaxed) != WAITING {
            return;
        }
        let verdict = match (self.expect, first_bytes.get(FRAME_TYPE_OFFSET)) {
            (Expect::Http2Settings, Some(&kind)) if kind != FRAME_TYPE_SETTINGS => NOT_HTTP2,
            _ => ANSWERED,
        };
        if self
            .state
            .compare_exchange(WAITING, verdict, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            // Every waiter: several calls may race their first answer.
            self.notify.notify_waiters();
        }
    }

    /// Waits for the first bytes; `false` if they were not HTTP/2.
    async fn wait(&self) -> bool {
        loop {
            // Registered before the state is read, so a notification between
            // the two cannot be missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.state.load(Ordering::Acquire) {
                WAITING => notified.await,
                state => return state == ANSWERED,
            }
        }
    }
}

/// Opens the socket for tonic; one per (re)connect of a channel.
#[derive(Clone)]
struct Connector {
    target: Arc<Target>,
    answered: Arc<Answered>,
    close_on: Option<CancellationToken>,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Socket>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Socket>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await })
    }
}

impl Connector {
    async fn connect(&self) -> io::Result<TokioIo<Socket>> {
        if self.close_on.as_ref().is_some_and(|t| t.is_cancelled()) {
            return Err(closed());
        }
        let stream =
            match &*self.target {
                Target::Tcp { host, port } => Stream::Tcp(connect_tcp(host, *port).await?),
                Target::Unix { path } => Stream::Unix(connect_unix(path).await.map_err(|err| {
                    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
                })?),
            };
        Ok(TokioIo::new(Socket::new(
            stream,
            Some(Arc::clone(&self.answered)),
            self.close_on.clone().map(Closer::watch),
        )))
    }
}

/// A dialed socket that reports the remote's first bytes to the dialer,
/// fails every operation once its close token is cancelled, and sends the
/// HTTP/2 preface in one write with the SETTINGS frame after it.
pub(crate) struct Socket {
    stream: Stream,
    answered: Option<Arc<Answered>>,
    closer: Option<Closer>,
    preface: Preface,
}

/// Where a socket is with the HTTP/2 preface.
#[derive(Clone, Copy)]
enum Preface {
    /// Nothing has been written yet.
    Unwritten,
    /// The preface was held back; this much of it is left to write.
    Held(&'static [u8]),
    /// Past the first write: every write goes straight out.
    Written,
}

/// The client connection preface (RFC 9113, section 3.4).
///
/// h2 writes it on its own, then the SETTINGS frame at the connection's
/// first poll; sent as it comes, that is two segments, two wakeups of the
/// remote and two trips through the loopback path on every dial. Held back
/// and written in front of the SETTINGS, it is one.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the channel was closed")
}

/// Closes a socket when a token is cancelled.
///
/// Checking is an atomic load on every read and write, and a waker
/// registration only when the socket has to wait; the token itself is
/// watched by a small task, which ends with the token or the socket.
struct Closer {
    signal: Arc<CloseSignal>,
    /// Dropped with the socket, ending the watching task.
    _socket_gone: oneshot::Sender<()>,
}

#[derive(Default)]
struct CloseSignal {
    closed: AtomicBool,
    waker: AtomicWaker,
}

impl Closer {
    fn watch(token: CancellationToken) -> Self {
        let signal = Arc::new(CloseSignal::default());
        let (socket_gone, gone) = oneshot::channel::<()>();
        let watched = Arc::clone(&signal);
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {
                    watched.closed.store(true, Ordering::Release);
                    watched.waker.wake();
                }
                _ = gone => {}
            }
        });
        Self {
            signal,
            _socket_gone: socket_gone,
        }
    }
}

impl Socket {
    fn new(stream: Stream, answered: Option<Arc<Answered>>, closer: Option<Closer>) -> Self {
        Self {
            stream,
            answered,
            closer,
            preface: Preface::Unwritten,
        }
    }

    /// The first writes: holds the preface back if it is exactly the first
    /// write (under TLS the first write is a ClientHello, and nothing is
    /// held), and writes the next bytes behind it, reporting only the
    /// caller's bytes as written.
    #[cold]
    fn poll_write_early(
        &mut self,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Preface::Unwritten = self.preface {
            if let [only] = bufs
                && **only == *PREFACE
            {
                self.preface = Preface::Held(PREFACE);
                return Poll::Ready(Ok(PREFACE.len()));
            }
            self.preface = Preface::Written;
        }
        while let Preface::Held(held) = self.preface {
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(io::IoSlice::new(held));
            slices.extend_from_slice(bufs);
            let written =
                ready!(self.guard(cx, |stream, cx| stream.poll_write_vectored(cx, &slices)))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if written < held.len() {
                self.preface = Preface::Held(&held[written..]);
                continue;
            }
            self.preface = Preface::Written;
            if written > held.len() {
                return Poll::Ready(Ok(written - held.len()));
            }
        }
        // Nothing of `bufs` has gone out yet: a write of their own.
        self.guard(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    /// Writes what is left of a held preface, for a flush or shutdown.
    #[cold]
    fn poll_write_held(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        while let Preface::Held(held) = self.preface {
            let written = ready!(self.guard(cx, |stream, cx| stream.poll_write(cx, held)))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.preface = if written < held.len() {
                Preface::Held(&held[written..])
            } else {
                Preface::Written
            };
        }
        Poll::Ready(Ok(()))
    }

    /// Runs one I/O operation unless the socket has been closed, arranging
    /// to be woken if it is closed while the operation waits.
    fn guard<T>(
        &mut self,
        cx: &mut TaskContext<'_>,
        operation: impl FnOnce(Pin<&mut Stream>, &mut TaskContext<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let signal = self.closer.as_ref().map(|c| &*c.signal);
        if signal.is_some_and(|s| s.closed.load(Ordering::Acquire)) {
            return Poll::Ready(Err(closed()));
        }
        let polled = operation(Pin::new(&mut self.stream), cx);
        if polled.is_pending()
            && let Some(signal) = signal
        {
            signal.waker.register(cx.waker());
            if signal.closed.load(Ordering::Acquire) {
                return Poll::Ready(Err(closed()));
            }
        }
        polled
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.guard(cx, |stream, cx| stream.poll_read(cx, buf));
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
            && let Some(answered) = self.answered.take()
        {
            answered.observe(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !matches!(self.preface, Preface::Written) {
            return self.poll_write_early(cx, &[io::IoSlice::new(data)]);
        }
        self.guard(cx, |stream, cx| stream.poll_write(cx, data))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !matches!(self.preface, Preface::Written) {
            return self.poll_write_early(cx, bufs);
        }
        self.guard(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        if let Preface::Held(_) = self.preface {
            ready!(self.poll_write_held(cx))?;
        }
        self.guard(cx, |stream, cx| stream.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        if let Preface::Held(_) = self.preface {
            ready!(self.poll_write_held(cx))?;
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

    fn pair() -> (Socket, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (Socket::new(Stream::Unix(ours), None, None), theirs)
    }

    fn nothing_to_read(peer: &UnixStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(peer.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    async fn read_exactly(peer: &mut UnixStream, len: usize) -> Vec<u8> {
        let mut got = vec![0; len];
        peer.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn the_preface_goes_out_with_the_next_write() {
        for vectored in [false, true] {
            let (mut socket, mut peer) = pair();
            assert_eq!(socket.write(PREFACE).await.unwrap(), PREFACE.len());
            assert!(nothing_to_read(&peer), "the preface alone was sent");
            let written = if vectored {
                let halves = [
                    io::IoSlice::new(&SETTINGS[..4]),
                    io::IoSlice::new(&SETTINGS[4..]),
                ];
                socket.write_vectored(&halves).await.unwrap()
            } else {
                socket.write(SETTINGS).await.unwrap()
            };
            assert_eq!(written, SETTINGS.len(), "only the caller's bytes count");
            let got = read_exactly(&mut peer, PREFACE.len() + SETTINGS.len()).await;
            assert_eq!(got, [PREFACE, SETTINGS].concat());
        }
    }

    #[tokio::test]
    async fn a_held_preface_goes_out_on_flush_and_shutdown() {
        let (mut socket, mut peer) = pair();
        socket.write_all(PREFACE).await.unwrap();
        socket.flush().await.unwrap();
        assert_eq!(read_exactly(&mut peer, PREFACE.len()).await, PREFACE);

        let (mut socket, mut peer) = pair();
        socket.write_all(PREFACE).await.unwrap();
        socket.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, PREFACE);
    }

    #[tokio::test]
    async fn other_first_writes_and_later_prefaces_go_out_at_once() {
        let (mut socket, mut peer) = pair();
        let hello = b"\x16\x03\x01 a ClientHello";
        socket.write_all(hello).await.unwrap();
        assert_eq!(read_exactly(&mut peer, hello.len()).await, hello);
        socket.write_all(PREFACE).await.unwrap();
        assert_eq!(read_exactly(&mut peer, PREFACE.len()).await, PREFACE);
    }
}
