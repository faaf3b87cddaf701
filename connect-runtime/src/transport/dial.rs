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

use bytes::Bytes;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tracing::Instrument;
use url::Url;

use super::error::{DialError, error_chain, source_of};
use super::options::DialOptions;
use super::replay::{Outgoing, Ready, whole};
use super::reply::{broke, checked};
use super::socket::{Io, Stream, Unanswered, connect_tcp, connect_unix};
use super::target::{Target, UrlError, UrlProblem};
use crate::chain::deadline_after;
use crate::map::lock;
use crate::outcome::not_sent;

/// A dialed channel to a remote, which tonic's clients call through. Cheap
/// to clone; clones share one HTTP/2 connection at a time.
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
    live: Mutex<(SendRequest<Outgoing>, u64)>,
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
        // Read here rather than in the future: the head is then kept once
        // in it, not also as it came, and the box stays in glibc's thread
        // cache (see BENCHMARKS.md).
        let (head, body) = request.into_parts();
        let (body, again) = match Ready::read(body) {
            Ok(Ready::Whole(bytes)) => (whole(bytes.clone()), Some((resendable(&head), bytes))),
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
pub async fn dial(url: &Url, options: &DialOptions) -> Result<ClientConn, DialError> {
    let target = Target::from_url(url)?;
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
    let (send, answered) = connect(&url, &target, options, &ending).await?;
    match answered.await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Err(why.dial_error(&url, options.timeout)),
        Err(_) => {
            // The connection's task has said why by now (a TLS alert, say).
            let why = ending.why.get().map(|why| why.message().to_owned());
            let why = why.unwrap_or_else(|| "closed before answering".to_owned());
            let closed = io::Error::new(io::ErrorKind::UnexpectedEof, why);
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

/// How a new connection's first bytes went.
type Answered = oneshot::Receiver<Result<(), Unanswered>>;

/// One connection to `target`: socket, TLS and the HTTP/2 handshake within
/// the dial timeout; the remote's SETTINGS by then too, or the connection
/// fails (the receiver says how). If it later breaks (rather than being
/// ended by a GOAWAY), the channel ends with it.
async fn connect(
    url: &Arc<Url>,
    target: &Target,
    options: &DialOptions,
    ending: &Arc<Ending>,
) -> Result<(SendRequest<Outgoing>, Answered), DialError> {
    let deadline = deadline_after(options.timeout);
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
        let (send, connection) = handshake.map_err(|err| failed(io::Error::other(err)))?;
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

/// A socket to `target`, with TLS if the options ask for it.
async fn open(url: &Url, target: &Target, options: &DialOptions) -> Result<Stream, DialError> {
    let failed = |source| DialError::Connect {
        url: url.to_string(),
        source,
    };
    let stream = match target {
        Target::Tcp { host, port } => connect_tcp(host, *port).await,
        Target::Unix { path } => connect_unix(path).await,
    }
    .map_err(failed)?;
    let Some(tls) = &options.tls else {
        return Ok(stream);
    };
    let host = match target {
        Target::Tcp { host, .. } => host.as_str(),
        Target::Unix { .. } => "localhost",
    };
    let name = tls.name_for(host).map_err(|source| DialError::Tls {
        url: url.to_string(),
        source,
    })?;
    tls.rotation().settled().await;
    let stream = tls
        .connector()
        .connect(name, stream)
        .await
        .map_err(failed)?;
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
        again: Option<(http::request::Parts, Bytes)>,
    ) -> impl Future<Output = Result<http::Response<Body>, TransportError>> + Send + 'static {
        async move {
            let (mut send, generation) = self.connection(None).await?;
            let (unsent, err) = match send.try_send_request(request).await {
                Ok(response) => return Ok(checked(&self.url, response)?),
                Err(mut err) => (err.take_message(), err.into_error()),
            };
            let request = match (unsent, again) {
                (Some(unsent), _) => unsent,
                (None, Some((head, bytes))) if refused(&err) || dropped_unsent(&err) => {
                    http::Request::from_parts(head, whole(bytes))
                }
                _ => return Err(self.failed(err)),
            };
            // Boxed: rare, and every call would carry its space.
            Box::pin(self.resend(generation, request)).await
        }
    }

    /// Sends `request` again, on a connection newer than `generation`.
    async fn resend(
        &self,
        generation: u64,
        request: http::Request<Outgoing>,
    ) -> Result<http::Response<Body>, TransportError> {
        let (mut send, _) = self.connection(Some(generation)).await?;
        match send.try_send_request(request).await {
            Ok(response) => Ok(checked(&self.url, response)?),
            Err(err) => Err(self.failed(err.into_error())),
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
            let why = format!("the connection to {url} has ended: {err}");
            return Box::new(Status::unavailable(why));
        }
        Box::new(err)
    }
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
