//! Dialing a remote NSM server: a bounded dial that returns once the remote
//! has answered HTTP/2, over TCP or a unix socket, plain or TLS; and the
//! channel tonic's clients call through.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use std::{fmt, io};

use bytes::Bytes;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tracing::Instrument;
use url::Url;

use super::error::{DialError, error_chain, source_of};
use super::first_bytes::{Expect, Unanswered};
use super::io::Io;
use super::options::DialOptions;
use super::replay::{Outgoing, Ready, whole};
use super::reply::{broke, checked};
use super::socket::{Stream, connect_tcp, connect_unix};
use super::target::{self, IntoUrl, Target, UrlError, UrlProblem};
use crate::deadline::deadline_after;
use crate::grpc_timeout;
use crate::outcome::not_sent;
use crate::sync::lock;
use crate::telemetry::DialOutcome;

/// A dialed channel to a remote, which tonic's clients call through. Cheap
/// to clone; clones share one HTTP/2 connection at a time.
///
/// As grpc-go's channel does, it outlives its connections:
/// - When a connection ends, however it ends (a GOAWAY of any code, from
///   connection-age limits, graceful restarts, proxies, or grpc-go's
///   `too_many_pings`; a reset after a GOAWAY; a remote that restarted or
///   a network that failed), calls in flight on it finish or fail there,
///   and the next call dials one new connection, within the dial timeout,
///   for every clone. A call the old connection never sent, or that the
///   remote refused unprocessed (past a GOAWAY's last stream), goes on the
///   new one, with the time it has left as its `grpc-timeout`.
/// - When that new dial fails, the channel has ended for good: calls fail
///   with `Unavailable` and [`ClientConn::ended`] resolves. It never dials
///   again by itself.
/// - Keepalive is grpc-go's: PINGs at least 10 s apart, the interval
///   doubled each time the remote ends a connection with
///   `ENHANCE_YOUR_CALM` (its answer to pings it finds too frequent).
/// - Replies are checked before tonic reads them, and answered as grpc-go's
///   clients answer them: one that is not gRPC (by its `content-type`) is
///   `Unknown` with HTTP 200, else mapped from its HTTP status (a proxy's
///   503 is `Unavailable`); one whose status details are not base64
///   `Internal`, naming the problem; one cut by its connection's end
///   `Unavailable`.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::{DialOptions, dial};
/// use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
///
/// let conn = dial("tcp://127.0.0.1:5002", &DialOptions::new()).await?;
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
    live: Mutex<(SendRequest<Outgoing>, u64)>,
    /// Held while a new connection is dialed, so that a crowd shares one.
    redialing: tokio::sync::Mutex<()>,
    /// How the channel ended for good, once it has.
    ending: Arc<Ending>,
    dials: AtomicU64,
    /// What the connections' tasks tell the channel.
    heard: Arc<Heard>,
}

/// What a channel hears from its connections' tasks.
#[derive(Default)]
struct Heard {
    /// How many times the remote asked for fewer keepalive PINGs.
    calmed: AtomicU32,
    /// How many of its connections have ended.
    ended: watch::Sender<u64>,
}

impl ClientConn {
    /// The URL this channel was dialed to.
    pub fn url(&self) -> &Url {
        &self.shared.url
    }

    /// Connections this channel has made: the first, and one more each time
    /// a call found the last one ended.
    pub fn dials(&self) -> u64 {
        self.shared.dials.load(Ordering::Relaxed)
    }

    /// How many of its connections have ended (by a GOAWAY, a reset, a
    /// restart of the remote); the channel goes on past each.
    pub fn ended_connections(&self) -> u64 {
        *self.shared.heard.ended.borrow()
    }

    /// Waits until `count` of its connections have ended. For tests that
    /// must know the channel has seen a connection end before their next
    /// call.
    #[cfg(feature = "test-util")]
    pub async fn connections_ended(&self, count: u64) {
        let mut ended = self.shared.heard.ended.subscribe();
        let _ = ended.wait_for(|ended| *ended >= count).await;
    }

    /// Resolves once the channel has ended for good (a new connection could
    /// not be made); every call fails with `Unavailable` after that.
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
            .field("ended_connections", &self.ended_connections())
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
        // Read here rather than in the future: the head is then kept once
        // in it, not also as it came, and the box stays in glibc's thread
        // cache (see BENCHMARKS.md).
        let (head, body) = request.into_parts();
        let (body, again) = match Ready::read(body) {
            Ok(Ready::Whole(bytes)) => (
                whole(bytes.clone()),
                Some(Again {
                    head: resendable(&head),
                    body: bytes,
                    sent_at: Instant::now(),
                }),
            ),
            Ok(Ready::Streaming(body)) => (Outgoing::Streaming(body), None),
            Err(status) => return Box::pin(std::future::ready(Err(status.into()))),
        };
        let request = http::Request::from_parts(head, body);
        Box::pin(Arc::clone(&self.shared).send(request, again))
    }
}

/// Dials `url`, returning once the remote has answered: the TCP or unix
/// connection is up, TLS (if asked for) is done, and the remote has sent
/// its HTTP/2 SETTINGS, all within the options' timeout. A listener that
/// accepts but never speaks HTTP/2 fails with [`DialError::Timeout`].
///
/// # Errors
///
/// [`DialError::Url`] for a URL that is not `tcp://host:port` or
/// `unix:///path`; [`DialError::Tls`] when the TLS options cannot dial it
/// (no name to verify); [`DialError::Connect`] when the socket, TLS or the
/// HTTP/2 handshake fails (refused, unreachable, a certificate not
/// trusted); [`DialError::Timeout`] when the remote has not answered in
/// time; [`DialError::NotHttp2`] when what answers is not HTTP/2.
///
/// # Panics
///
/// Outside a tokio runtime (the connection's task is spawned on it).
///
/// # Cancel safety
///
/// Dropping the future closes whatever it had opened; nothing is left
/// behind.
pub async fn dial(url: impl IntoUrl, options: &DialOptions) -> Result<ClientConn, DialError> {
    let (url, target) = target::checked(url)?;
    let url = &url;
    let scheme = match options.tls {
        Some(_) => http::uri::Scheme::HTTPS,
        None => http::uri::Scheme::HTTP,
    };
    // `localhost` on a unix socket, as grpc-go sends: h2 refuses a
    // %-encoded path.
    let authority = target
        .authority()
        .parse()
        .map_err(|_| UrlError::new(url, UrlProblem::Authority(target.authority())))?;
    let url = Arc::new(url.clone());
    let ending = Arc::new(Ending {
        token: CancellationToken::new(),
        why: OnceLock::new(),
        on_end: options.on_end.clone(),
    });
    let heard = Arc::new(Heard::default());
    let send = connect(&url, &target, options, &heard).await?;
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
        heard,
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

/// One connection to `target`: socket, TLS, the HTTP/2 handshake and the
/// remote's SETTINGS, all within the dial timeout, so that nothing is sent
/// to a remote that has not answered. When the connection ends later, it
/// ends alone: the channel's next call dials another.
async fn connect(
    url: &Arc<Url>,
    target: &Target,
    options: &DialOptions,
    heard: &Arc<Heard>,
) -> Result<SendRequest<Outgoing>, DialError> {
    let deadline = deadline_after(options.timeout);
    let timeout = options.timeout;
    let failed = |source| DialError::Connect {
        url: url.to_string(),
        source,
    };
    let dialing = async {
        let revision = || options.tls.as_ref().and_then(|t| t.rotation().revision());
        let switch = revision();
        let mut stream = open(url, target, options).await;
        // A handshake that met the switch to a new certificate failed
        // closed; once more with the new one.
        let switched = revision() != switch;
        if stream.is_err() && switched {
            stream = open(url, target, options).await;
        }
        let stream = stream?;
        let mut io = Io::new(stream).gather_writes();
        let answered = io.first_bytes_by(deadline, Expect::ServerSettings);
        if let Some(token) = &options.close_on {
            io = io.close_on(token.clone());
        }
        let mut builder = Builder::new(Boxing);
        builder.timer(TokioTimer::new());
        if let Some(keepalive) = options.keepalive {
            let keepalive = keepalive.as_client(heard.calmed.load(Ordering::Relaxed));
            builder
                .keep_alive_interval(keepalive.interval)
                .keep_alive_timeout(keepalive.timeout)
                .keep_alive_while_idle(keepalive.while_idle);
        }
        let handshake = builder.handshake(TokioIo::new(io)).await;
        let (send, connection) = handshake.map_err(|err| failed(io::Error::other(err)))?;
        let (ended, why_ended) = oneshot::channel();
        let heard = Arc::clone(heard);
        let on_connection_end = options.on_connection_end.clone();
        // A root of its own, following the dial: as a child, the connection
        // would hold the dial's span, and the call that dialed, open (and
        // unexported) for as long as it lives.
        let connection_span = tracing::debug_span!(parent: None, "connection", url = %url);
        connection_span.follows_from(tracing::Span::current());
        tokio::spawn(
            async move {
                // hyper ends a connection's task with `Ok` when it closed
                // cleanly (a GOAWAY without an error code among the ways),
                // and with an error otherwise. Either way the channel goes
                // on: its next call dials again.
                let outcome = connection.await;
                heard.ended.send_modify(|ended| *ended += 1);
                if let Some(hook) = &on_connection_end {
                    (hook.0)();
                }
                match outcome {
                    Ok(()) => tracing::debug!("the connection ended"),
                    Err(err) => {
                        if asks_for_fewer_pings(&err) {
                            let times = heard.calmed.fetch_add(1, Ordering::Relaxed) + 1;
                            tracing::info!(times, "the remote ended the connection with ENHANCE_YOUR_CALM; keepalive PINGs go at half the rate");
                        }
                        tracing::debug!(error = %error_chain(&err), "the connection ended");
                        let _ = ended.send(error_chain(&err));
                    }
                }
            }
            .instrument(connection_span),
        );
        match answered.await {
            Ok(Ok(())) => Ok(send),
            Ok(Err(why)) => Err(why.dial_error(url, timeout)),
            // The connection's task has ended: it says why (a TLS alert, say).
            Err(_) => {
                let why = why_ended.await;
                let why = why.unwrap_or_else(|_| "closed before answering".to_owned());
                Err(failed(io::Error::new(io::ErrorKind::UnexpectedEof, why)))
            }
        }
    };
    let span = tracing::debug_span!("dial", url = %url, timeout = ?options.timeout);
    let started = std::time::Instant::now();
    let within = tokio::time::timeout_at(deadline, dialing.instrument(span));
    let dialed = within.await.unwrap_or_else(|_| {
        Err(DialError::Timeout {
            url: url.to_string(),
            timeout,
        })
    });
    if let Some(metrics) = &options.metrics {
        let outcome = match &dialed {
            Ok(_) => DialOutcome::Ok,
            Err(DialError::Timeout { .. }) => DialOutcome::Timeout,
            Err(DialError::NotHttp2 { .. }) => DialOutcome::NotHttp2,
            Err(DialError::Connect { .. }) => DialOutcome::Failed,
            Err(_) => DialOutcome::Invalid,
        };
        metrics.dialed(outcome, started.elapsed());
    }
    dialed
}

/// Whether a connection ended with the remote's GOAWAY `ENHANCE_YOUR_CALM`:
/// what grpc-go sends a client whose PINGs come more often than its policy
/// allows (with `too_many_pings`, which h2 does not show).
fn asks_for_fewer_pings(err: &hyper::Error) -> bool {
    source_of::<h2::Error>(err).is_some_and(|h2| {
        h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
    })
}

/// A socket to `target`, with TLS if the options ask for it.
async fn open(url: &Url, target: &Target, options: &DialOptions) -> Result<Stream, DialError> {
    let failed = |source| DialError::Connect {
        url: url.to_string(),
        source,
    };
    let socket = || async {
        match target {
            Target::Tcp { host, port } => connect_tcp(host, *port).await,
            Target::Unix { path } => connect_unix(path).await,
        }
        .map_err(failed)
    };
    let Some(tls) = &options.tls else {
        return socket().await;
    };
    let host = match target {
        Target::Tcp { host, .. } => host.as_str(),
        Target::Unix { .. } => "localhost",
    };
    let name = tls.name_for(host).map_err(|source| DialError::Tls {
        url: url.to_string(),
        source,
    })?;
    let stream = socket().await?;
    tls.rotation().settled().await;
    let verified_as = name.to_str().into_owned();
    let handshake = |stream| async {
        tls.connector()
            .connect(name.clone(), stream)
            .await
            .map_err(|err| failed(super::tls::explain_handshake(err, &verified_as)))
    };
    let mut stream = handshake(stream).await?;
    if let Err(why) = tls.check_resumed(stream.get_ref().1, &name) {
        tracing::debug!(why, "a resumed session's server no longer passes: in full");
        stream = handshake(socket().await?).await?;
    }
    Ok(Box::new(stream))
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

    /// Whether it has ended: an atomic load, where the token's own check
    /// takes a lock on every call.
    fn has_ended(&self) -> bool {
        self.why.get().is_some()
    }

    /// Why calls fail now.
    fn status(&self, url: &Url) -> Status {
        let why = self.why.get().cloned();
        why.unwrap_or_else(|| Status::unavailable(format!("the connection to {url} has ended")))
    }
}

// `send` is a `fn` returning an `async move` block: an `async fn` keeps its
// arguments twice in its future.
#[allow(clippy::manual_async_fn)]
impl Shared {
    /// Sends a call over the live connection, dialing a new one if the
    /// remote ended it. A call the old connection never sent, or that the
    /// remote refused unprocessed as it went away, goes once more on a new
    /// connection: `again` is what it sends then, if it can.
    fn send(
        self: Arc<Self>,
        request: http::Request<Outgoing>,
        again: Option<Again>,
    ) -> impl Future<Output = Result<http::Response<Body>, TransportError>> + Send + 'static {
        // Boxed until hyper takes it: in the block, its room would be kept
        // for the whole call.
        let request = Box::new(request);
        async move {
            let (mut send, generation) = self.connection(None).await?;
            let (unsent, err) = match send.try_send_request(*request).await {
                Ok(response) => return Ok(checked(&self.url, response)?),
                Err(mut err) => (err.take_message(), err.into_error()),
            };
            let Some(request) = unsent_or_refused(unsent, &err, again.as_ref()) else {
                return Err(self.failed(err));
            };
            // Boxed: rare, and every call would carry its space.
            Box::pin(self.resend(generation, request, again)).await
        }
    }

    /// Sends `request` again, on a connection newer than `generation`, with
    /// the time it has left since it was first sent as its `grpc-timeout`
    /// (grpc-go counts each attempt's from the call's deadline too). A
    /// connection may end before it sends anything, again: a few tries.
    async fn resend(
        &self,
        mut generation: u64,
        mut request: http::Request<Outgoing>,
        again: Option<Again>,
    ) -> Result<http::Response<Body>, TransportError> {
        let mut tries = 1;
        loop {
            let (mut send, current) = self.connection(Some(generation)).await?;
            generation = current;
            if let Some(again) = &again {
                time_left(&mut request, again.sent_at)?;
            }
            let (unsent, err) = match send.try_send_request(request).await {
                Ok(response) => return Ok(checked(&self.url, response)?),
                Err(mut err) => (err.take_message(), err.into_error()),
            };
            request = match unsent_or_refused(unsent, &err, again.as_ref()) {
                Some(request) if tries < MAX_RESENDS => request,
                _ => return Err(self.failed(err)),
            };
            tries += 1;
        }
    }

    /// The live connection, unless it has ended or is `stale`; else a new
    /// one.
    async fn connection(&self, stale: Option<u64>) -> Result<(SendRequest<Outgoing>, u64), Status> {
        match self.live(stale) {
            Some(live) => Ok(live),
            // Boxed: a dial's future is large, and every call would carry it.
            None => Box::pin(self.redial(stale)).await,
        }
    }

    /// A new connection, dialed once for every caller that finds the live
    /// one ended or `stale`.
    async fn redial(&self, stale: Option<u64>) -> Result<(SendRequest<Outgoing>, u64), Status> {
        let _dialing = self.redialing.lock().await;
        if let Some(live) = self.live(stale) {
            return Ok(live);
        }
        if self.ending.has_ended() {
            return Err(not_sent(self.ending.status(&self.url)));
        }
        match connect(&self.url, &self.target, &self.options, &self.heard).await {
            Ok(send) => {
                let dials = self.dials.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(url = %self.url, dials, "dialed again");
                if let Some(metrics) = &self.options.metrics {
                    metrics.redialed();
                }
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

    fn live(&self, stale: Option<u64>) -> Option<(SendRequest<Outgoing>, u64)> {
        let live = lock(&self.live);
        let usable = !self.ending.has_ended() && !live.0.is_closed() && Some(live.1) != stale;
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
        if self.ending.has_ended() {
            return Box::new(self.ending.status(url));
        }
        if refused(&err) {
            let why = format!("{url} is going away (HTTP/2 GOAWAY) and refused the call: {err}");
            return Box::new(Status::unavailable(why));
        }
        if err.is_canceled() || broke(&err) {
            let why = format!("the connection to {url} has ended: {}", error_chain(&err));
            return Box::new(Status::unavailable(why));
        }
        Box::new(err)
    }
}

/// What a whole call needs to be sent again: its head and body, and when it
/// was first sent.
struct Again {
    head: http::request::Parts,
    body: Bytes,
    sent_at: Instant,
}

/// How many times a call that never reached a remote is sent again.
const MAX_RESENDS: u32 = 3;

/// The call to send again after `err`: the one hyper gave back unsent, or,
/// if the remote refused it unprocessed or hyper dropped it unsent, a copy
/// of a whole one. `None` if it may have been processed, or cannot be
/// sent again.
fn unsent_or_refused(
    unsent: Option<http::Request<Outgoing>>,
    err: &hyper::Error,
    again: Option<&Again>,
) -> Option<http::Request<Outgoing>> {
    match (unsent, again) {
        (Some(unsent), _) => Some(unsent),
        (None, Some(again)) if refused(err) || dropped_unsent(err) => Some(
            http::Request::from_parts(resendable(&again.head), whole(again.body.clone())),
        ),
        _ => None,
    }
}

/// Rewrites `request`'s `grpc-timeout` to what is left of it since
/// `sent_at`; `DeadlineExceeded`, sending nothing, if nothing is.
fn time_left(request: &mut http::Request<Outgoing>, sent_at: Instant) -> Result<(), Status> {
    let headers = request.headers_mut();
    let Some(timeout) = headers
        .get(grpc_timeout::HEADER)
        .and_then(|value| grpc_timeout::parse(value.as_bytes()))
    else {
        return Ok(());
    };
    let left = timeout.saturating_sub(sent_at.elapsed());
    if left.is_zero() {
        let late = "the call's deadline passed before it could be sent again";
        return Err(not_sent(Status::deadline_exceeded(late)));
    }
    headers.insert(grpc_timeout::HEADER, grpc_timeout::format(left));
    Ok(())
}

/// The head of a call to send again: as sent, but without its extensions,
/// which are for the layers above (hyper reads none of a unary call's), and
/// cost three allocations a call to copy.
fn resendable(head: &http::request::Parts) -> http::request::Parts {
    let mut again = http::Request::new(());
    *again.method_mut() = head.method.clone();
    *again.uri_mut() = head.uri.clone();
    *again.version_mut() = head.version;
    *again.headers_mut() = head.headers.clone();
    again.into_parts().0
}

/// A whole call hyper dropped unsent as its connection ended, while it
/// waited for a stream the remote's limit had not yet freed: for a whole
/// body, which cannot fail, the only user error hyper gives.
fn dropped_unsent(err: &hyper::Error) -> bool {
    err.is_user()
}

/// A call the remote refused as it went away: past its GOAWAY's last
/// stream (or cut when it closed after one), or REFUSED_STREAM.
fn refused(err: &hyper::Error) -> bool {
    source_of::<h2::Error>(err).is_some_and(|h2| {
        (h2.is_go_away() && h2.is_remote()) || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
    })
}
