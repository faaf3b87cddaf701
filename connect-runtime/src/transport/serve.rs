//! Serving a server chain over gRPC on a `tcp://` or `unix://` URL, on
//! tonic's server: the gRPC health service, TLS and mutual TLS, limits,
//! tower layers, connection accounting and graceful shutdown.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};
use tower::{Layer, Service};
use tracing::Instrument;
use url::Url;

use super::options::Keepalive;
use super::service::{Arrived, ChainService};
use super::socket::{Expect, Io, Stream, Unanswered};
use super::target::{Target, UrlError};
use super::tls::{Credential, Rotation, ServerTls};
use crate::chain::ServerChain;
use crate::deadline::deadline_after;
use crate::elements::DEFAULT_EXPIRY_MARGIN;

/// How long a graceful shutdown waits for open connections to finish their
/// calls before closing them anyway.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);

/// Concurrent calls (HTTP/2 streams) allowed per connection by default;
/// callers queue beyond it.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;

/// How long a new connection has by default to finish its TLS handshake and
/// send HTTP/2's connection preface and its SETTINGS before it is closed.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once by default, handshakes included; more wait
/// in the listen backlog until one closes.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The server's HTTP/2 keepalive by default: a PING every minute, and a
/// connection whose peer leaves one unanswered for 20 s is closed.
pub const DEFAULT_SERVER_KEEPALIVE: Keepalive = Keepalive {
    interval: Duration::from_secs(60),
    timeout: Duration::from_secs(20),
    while_idle: true,
};

/// Serves `chain` on `url` until `shutdown` is cancelled; see [`Serve`] for
/// the options.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::{Passthrough, ServerChain, serve};
/// use tokio_util::sync::CancellationToken;
///
/// let chain = ServerChain::builder().with(Passthrough).build();
/// let shutdown = CancellationToken::new();
/// let server = serve(&"tcp://127.0.0.1:0".parse()?, chain, shutdown.clone()).await?;
/// assert_ne!(server.url().port(), Some(0)); // the port actually bound
///
/// shutdown.cancel();
/// server.stopped().await;
/// # Ok(()) }
/// ```
pub async fn serve(
    url: &Url,
    chain: ServerChain,
    shutdown: CancellationToken,
) -> Result<ServerHandle, ServeError> {
    Serve::new(chain).shutdown_on(shutdown).bind(url).await
}

/// Builder for a gRPC server running a server chain, on tonic's server.
///
/// The server registers `networkservice.NetworkService` (the chain) and
/// `grpc.health.v1.Health` (overall status `""` and
/// `networkservice.NetworkService`, both `SERVING` until shutdown begins),
/// plus any service added with [`Serve::add_service`]. Its defaults are
/// bounded against hostile peers: [`DEFAULT_MAX_CONNECTIONS`] connections
/// at once, [`DEFAULT_MAX_CONCURRENT_STREAMS`] calls per connection,
/// [`DEFAULT_HANDSHAKE_TIMEOUT`] for TLS, the HTTP/2 preface and SETTINGS
/// (whatever bytes a connection sends, it is closed if it has not sent
/// those by then), [`DEFAULT_SERVER_KEEPALIVE`].
///
/// With a [rotating](ServerTls::rotating) certificate (a SPIFFE identity's),
/// the connections accepted under one are drained once it rotates: a
/// graceful GOAWAY, then a close [`Serve::expiry_margin`] before it expires
/// for any a long call still holds open.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use connect_runtime::{Passthrough, Serve, ServerChain};
///
/// let server = Serve::new(ServerChain::builder().with(Passthrough).build())
///     .max_concurrent_streams(Some(256))
///     .max_connection_age(Duration::from_secs(600))
///     .layer(tower::limit::ConcurrencyLimitLayer::new(64))
///     .bind(&"tcp://127.0.0.1:0".parse()?)
///     .await?;
/// server.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Serve<L = Identity> {
    server: Server<L>,
    routes: Routes,
    shutdown: CancellationToken,
    grace: Duration,
    handshake_timeout: Duration,
    max_connections: Option<usize>,
    tls: Option<ServerTls>,
    expiry_margin: Duration,
    health: HealthReporter,
}

impl Serve {
    /// A server for `chain`.
    pub fn new(chain: ServerChain) -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let routes =
            Routes::new(health_service).add_service(ChainService::new(chain).into_server());
        let keepalive = DEFAULT_SERVER_KEEPALIVE;
        let server = Server::builder()
            .max_concurrent_streams(DEFAULT_MAX_CONCURRENT_STREAMS)
            .http2_keepalive_interval(Some(keepalive.interval))
            .http2_keepalive_timeout(Some(keepalive.timeout));
        Self {
            server,
            routes,
            shutdown: CancellationToken::new(),
            grace: DEFAULT_GRACE_PERIOD,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: Some(DEFAULT_MAX_CONNECTIONS),
            tls: None,
            expiry_margin: DEFAULT_EXPIRY_MARGIN,
            health,
        }
    }
}

impl<L> Serve<L> {
    /// Begins a graceful shutdown when `token` is cancelled.
    pub fn shutdown_on(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// How long a graceful shutdown waits for calls in flight.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Limits concurrent calls per connection (HTTP/2 streams); `None` for
    /// no limit.
    pub fn max_concurrent_streams(mut self, max: Option<u32>) -> Self {
        self.server = self.server.max_concurrent_streams(max);
        self
    }

    /// The server's HTTP/2 keepalive; `None` to send no PINGs. A server
    /// PINGs idle connections too: `while_idle` is not used here. Durations
    /// too large for the clock saturate.
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        let keepalive = keepalive.map(Keepalive::as_server);
        self.server = self
            .server
            .http2_keepalive_interval(keepalive.map(|k| k.interval))
            .http2_keepalive_timeout(keepalive.map(|k| k.timeout));
        self
    }

    /// How long a new connection has to finish its TLS handshake and send
    /// HTTP/2's connection preface and its SETTINGS; it is closed otherwise,
    /// whatever it sent.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How many connections are served at once, handshakes included; `None`
    /// for no limit. At the limit the server stops accepting: new
    /// connections wait in the listen backlog until one closes.
    pub fn max_connections(mut self, max: Option<usize>) -> Self {
        self.max_connections = max;
        self
    }

    /// Sends each connection a graceful GOAWAY once it is `age` old (as
    /// grpc-go's `MaxConnectionAge`); clients finish their calls and dial
    /// again.
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        self.server = self.server.max_connection_age(age);
        self
    }

    /// Serves TLS (mutual TLS if the configuration asks for client
    /// certificates).
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// With a [rotating](ServerTls::rotating) certificate: how long before
    /// a rotated-out certificate expires the connections still open under
    /// it are closed (by default [`DEFAULT_EXPIRY_MARGIN`]).
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.expiry_margin = margin;
        self
    }

    /// Serves another gRPC service beside the chain (a `MonitorConnection`
    /// service, say).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(service);
        self
    }

    /// Wraps every service in a tower layer (tonic's `Server::layer`): the
    /// first layer added is the outermost.
    pub fn layer<N>(self, layer: N) -> Serve<Stack<N, L>> {
        Serve {
            server: self.server.layer(layer),
            routes: self.routes,
            shutdown: self.shutdown,
            grace: self.grace,
            handshake_timeout: self.handshake_timeout,
            max_connections: self.max_connections,
            tls: self.tls,
            expiry_margin: self.expiry_margin,
            health: self.health,
        }
    }

    /// Binds `url` and starts serving. Port 0 picks a free port; the handle's
    /// [`url`](ServerHandle::url) is the address actually bound. A stale unix
    /// socket file (nobody listening) is replaced; a live one is an error.
    pub async fn bind<ResBody>(self, url: &Url) -> Result<ServerHandle, ServeError>
    where
        L: Layer<Arrived<Routes>> + Clone + Send + Sync + 'static,
        L::Service: Service<http::Request<Body>, Response = http::Response<ResBody>>
            + Clone
            + Send
            + 'static,
        <L::Service as Service<http::Request<Body>>>::Future: Send + 'static,
        <L::Service as Service<http::Request<Body>>>::Error: Into<tower::BoxError> + Send,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<tower::BoxError>,
    {
        let target = Target::from_url(url)?;
        let bind_error = |source: io::Error| ServeError::Bind {
            url: url.to_string(),
            source,
        };
        let (listener, bound, socket_file) = match &target {
            Target::Tcp { host, port } => {
                let listener = TcpListener::bind((host.as_str(), *port))
                    .await
                    .map_err(bind_error)?;
                let addr = listener.local_addr().map_err(bind_error)?;
                let bound = Url::parse(&format!("tcp://{addr}"))
                    .expect("a socket address forms a valid tcp URL");
                (Listener::Tcp(listener), bound, None)
            }
            Target::Unix { path } => {
                let listener = bind_unix(path).await.map_err(bind_error)?;
                let file = SocketFile::new(path).map_err(bind_error)?;
                (
                    Listener::Unix(listener, file.clone()),
                    url.clone(),
                    Some(file),
                )
            }
        };
        self.health
            .set_service_status(crate::proto::NETWORK_SERVICE, ServingStatus::Serving)
            .await;
        let (stats_tx, stats_rx) = watch::channel(ConnectionStats::default());
        let hard_stop = CancellationToken::new();
        let credential = self.tls.as_ref().and_then(|t| t.credential().cloned());
        // Innermost, so that it runs as tonic's server starts its own timer.
        let mut server = self.server.layer(ChainService::arrival_layer());
        let routes = self.routes;
        let start: Start = Box::new(move |connections| {
            let incoming = UnboundedReceiverStream::new(connections).map(Ok::<_, Infallible>);
            // A shutdown signal that never fires still makes tonic drain
            // gracefully once the incoming connections end.
            let router = server.add_routes(routes.clone());
            Box::pin(router.serve_with_incoming_shutdown(incoming, std::future::pending()))
        });
        let tls = self.tls.as_ref();
        let serving = Serving {
            start,
            tls: tls.map(|tls| (tls.acceptor(), tls.rotation().clone())),
            handshake_timeout: self.handshake_timeout,
            slots: self
                .max_connections
                .map(|max| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))),
            expiry_margin: self.expiry_margin,
            hard_stop: hard_stop.clone(),
            stats: stats_tx,
            generations: JoinSet::new(),
            handshakes: JoinSet::new(),
        };
        let task = tokio::spawn(
            serving
                .run(
                    listener,
                    credential,
                    self.shutdown.clone(),
                    self.grace,
                    self.health.clone(),
                )
                .instrument(tracing::info_span!("serve", url = %bound)),
        );
        tracing::info!(url = %bound, "serving");
        Ok(ServerHandle {
            url: bound,
            shutdown: self.shutdown,
            hard_stop,
            task: Some(task),
            stats: stats_rx,
            health: self.health,
            socket_file,
        })
    }
}

impl<L> std::fmt::Debug for Serve<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("grace", &self.grace)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The URL is not one connect can listen on.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// Binding failed (port in use, missing directory, permissions, ...).
    #[error("cannot listen on {url}: {source}")]
    Bind {
        /// Where the server was to listen.
        url: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Counts of the transport connections a server has accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Connections accepted since the server started.
    pub accepted: u64,
    /// Connections open now.
    pub open: usize,
    /// The most connections open at once since the server started.
    pub peak_open: usize,
    /// Connections whose TLS handshake failed: no client certificate where
    /// one is required, an untrusted one, a peer that is not TLS.
    pub refused: u64,
    /// Connections closed because they had not finished TLS and sent the
    /// HTTP/2 preface and SETTINGS within the handshake timeout.
    pub timed_out: u64,
    /// Connections closed because their first bytes were not HTTP/2's.
    pub not_http2: u64,
    /// How many times the server stopped accepting because it served
    /// `max_connections` already (new ones waited in the listen backlog).
    pub at_limit: u64,
    /// Connections open under a server certificate that has since rotated:
    /// sent a graceful GOAWAY, they finish their calls and close, at the
    /// latest the expiry margin before that certificate expires.
    pub retired: usize,
}

/// A running server. Dropping it stops the server at once, closing every
/// connection; [`ServerHandle::shutdown`] stops it gracefully.
pub struct ServerHandle {
    url: Url,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    stats: watch::Receiver<ConnectionStats>,
    health: HealthReporter,
    socket_file: Option<SocketFile>,
}

impl ServerHandle {
    /// The URL the server listens on, with the port actually bound.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Connection counts now.
    pub fn connections(&self) -> ConnectionStats {
        *self.stats.borrow()
    }

    /// Waits until the connection counts satisfy `condition`, and returns
    /// them. Returns the last counts if the server stops first.
    pub async fn wait_connections(
        &self,
        condition: impl FnMut(&ConnectionStats) -> bool,
    ) -> ConnectionStats {
        let mut stats = self.stats.clone();
        let result = stats.wait_for(condition).await.map(|s| *s);
        result.unwrap_or_else(|_| *self.stats.borrow())
    }

    /// The health reporter, to mark services (not) serving.
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// Stops accepting, marks health `NOT_SERVING`, lets calls in flight
    /// finish (up to the grace period) and returns once every connection is
    /// closed.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        self.join().await;
    }

    /// Stops at once: the listener and every connection are closed, calls in
    /// flight are cut off. For simulating a crashed remote in tests (feature
    /// `test-util`); dropping the handle does the same without waiting.
    #[cfg(feature = "test-util")]
    pub async fn kill(mut self) {
        self.hard_stop.cancel();
        self.join().await;
    }

    /// Waits for the server to stop (after its shutdown token is cancelled).
    pub async fn stopped(mut self) {
        self.join().await;
    }

    async fn join(&mut self) {
        // Taken only once finished: a wait given up on leaves the task for
        // `Drop` to stop.
        if let Some(task) = &mut self.task {
            let _ = task.await;
            self.task = None;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            // Every connection fails its next read or write, and ends.
            self.hard_stop.cancel();
            task.abort();
        }
        // The aborted task drops its listener later; the socket file goes now.
        if let Some(file) = &self.socket_file {
            file.remove();
        }
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("url", &self.url.as_str())
            .field("connections", &self.connections())
            .finish()
    }
}

/// The socket file a unix listener created; its clones (the listener's and
/// the handle's) remove it once between them.
#[derive(Clone)]
struct SocketFile {
    path: PathBuf,
    inode: u64,
    removed: Arc<AtomicBool>,
}

impl SocketFile {
    fn new(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            inode: std::fs::metadata(path)?.ino(),
            removed: Arc::default(),
        })
    }

    /// Removes the file, unless it was removed already or a newer server
    /// has replaced it. (Once removed, the inode number may be reused for
    /// a newer server's file.)
    fn remove(&self) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a unix socket, replacing a stale socket file nobody listens on.
async fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("directory {} does not exist", dir.display()),
        ));
    }
    match UnixListener::bind(path) {
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
            let meta = std::fs::symlink_metadata(path)?;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            // Stale only if refused: a full backlog or no permission to
            // connect says nothing of whether someone listens.
            let in_use = |why: String| io::Error::new(io::ErrorKind::AddrInUse, why);
            match UnixStream::connect(path).await {
                Ok(_) => {
                    let why = format!("another server is listening on {}", path.display());
                    return Err(in_use(why));
                }
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(err) => {
                    let why = format!("{} is in use (connecting to it: {err})", path.display());
                    return Err(in_use(why));
                }
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        result => result,
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

impl Listener {
    fn poll_accept(
        &self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<io::Result<(Stream, Option<SocketAddr>)>> {
        match self {
            Listener::Tcp(listener) => listener.poll_accept(cx).map(|accepted| {
                let (stream, addr) = accepted?;
                stream.set_nodelay(true)?;
                Ok((Box::new(stream) as Stream, Some(addr)))
            }),
            Listener::Unix(listener, _) => listener
                .poll_accept(cx)
                .map_ok(|(stream, _)| (Box::new(stream) as Stream, None)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, file) = self {
            file.remove();
        }
    }
}

/// Who is on the other end of a served connection: in every request's
/// extensions (`request.extensions().get::<Peer>()`).
#[derive(Clone, Debug)]
pub struct Peer {
    addr: Option<SocketAddr>,
    certificates: Option<Arc<[CertificateDer<'static>]>>,
}

impl Peer {
    /// The peer's address, for TCP.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The certificate chain the peer presented over TLS, leaf first.
    pub fn certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.certificates.as_deref()
    }
}

/// What a served connection keeps while it lives.
pub(crate) struct Served {
    peer: Peer,
    _open: OpenConnection,
}

impl Connected for Io<Served> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.extra.peer.clone()
    }
}

/// Counts a connection open for as long as it lives, and holds its slot
/// under the connection limit.
struct OpenConnection {
    stats: watch::Sender<ConnectionStats>,
    counts: Arc<GenerationCounts>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.send_modify(|s| {
            s.open -= 1;
            self.counts.open.fetch_sub(1, Ordering::Relaxed);
            if self.counts.retired.is_cancelled() {
                s.retired -= 1;
            }
        });
    }
}

/// A server at work: it accepts connections, counts them, handshakes them
/// (concurrently, each within the handshake timeout) and hands each to the
/// generation of the server certificate it was accepted under.
struct Serving {
    /// Starts a tonic server for the connections the receiver yields.
    start: Start,
    /// The TLS acceptor, and how its certificate rotates.
    tls: Option<(tokio_rustls::TlsAcceptor, Rotation)>,
    handshake_timeout: Duration,
    /// One permit per connection served, if their number is limited.
    slots: Option<Arc<Semaphore>>,
    expiry_margin: Duration,
    hard_stop: CancellationToken,
    stats: watch::Sender<ConnectionStats>,
    generations: JoinSet<()>,
    handshakes: JoinSet<io::Result<()>>,
}

/// What [`Serve::bind`] gives its serving task: tonic's server for a
/// stream of connections, draining gracefully once the stream ends.
type Start = Box<dyn FnMut(mpsc::UnboundedReceiver<Io<Served>>) -> ServerFuture + Send>;
type ServerFuture = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

impl Serving {
    async fn run(
        mut self,
        listener: Listener,
        mut credential: Option<watch::Receiver<Credential>>,
        shutdown: CancellationToken,
        grace: Duration,
        health: HealthReporter,
    ) {
        let first = credential.as_mut().map(|c| c.borrow_and_update().clone());
        let mut current = self.generation(first);
        // The slot the next connection takes, when their number is limited.
        let mut slot: Option<OwnedSemaphorePermit> = None;
        let mut warned: Option<tokio::time::Instant> = None;
        loop {
            let limited = self.slots.clone();
            if slot.is_none()
                && let Some(slots) = &limited
            {
                match Arc::clone(slots).try_acquire_owned() {
                    Ok(permit) => slot = Some(permit),
                    Err(_) => {
                        // Said once a minute at most: a flood hits it often.
                        if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                            tracing::warn!(
                                "at the connection limit; new connections wait until one closes"
                            );
                            warned = Some(tokio::time::Instant::now());
                        }
                        self.stats.send_modify(|s| s.at_limit += 1);
                    }
                }
            }
            let waiting = slot.is_none() && limited.is_some();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.hard_stop.cancelled() => return,
                Some(joined) = self.handshakes.join_next() => {
                    if let Some(err) = joined.map_or_else(|e| Some(e.into()), Result::err) {
                        tracing::debug!(error = %err, "TLS handshake failed");
                        self.stats.send_modify(|s| match err.kind() {
                            io::ErrorKind::TimedOut => s.timed_out += 1,
                            _ => s.refused += 1,
                        });
                    }
                }
                rotated = rotation(&mut credential) => match rotated {
                    Some(next) if current.serial.as_ref() != Some(&next.serial) => {
                        tracing::info!(serial = %next.serial, "server certificate rotated; draining older connections");
                        current.retire(&self.stats);
                        current = self.generation(Some(next));
                        // Reap the servers that have finished draining.
                        while self.generations.try_join_next().is_some() {}
                    }
                    Some(_) => {}
                    None => credential = None,
                },
                permit = async { limited.expect("waiting only when limited").acquire_owned().await }, if waiting => {
                    slot = permit.ok();
                }
                accepted = std::future::poll_fn(|cx| listener.poll_accept(cx)), if !waiting => match accepted {
                    Ok((stream, addr)) => self.accepted(stream, addr, &current, slot.take()),
                    Err(err) => {
                        // Out of file descriptors, say: a pause, not a spin.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
        drop(listener);
        // Health watchers hear first, so that clients let go before GOAWAY.
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(crate::proto::NETWORK_SERVICE, ServingStatus::NotServing)
            .await;
        self.handshakes.abort_all();
        drop(current);
        let (mut generations, stop) = (self.generations, self.hard_stop);
        let drained = async { while generations.join_next().await.is_some() {} };
        tokio::select! {
            () = drained => tracing::info!("shut down"),
            () = tokio::time::sleep(grace) => {
                tracing::warn!("grace period over; closing connections");
                stop.cancel();
                while generations.join_next().await.is_some() {}
            }
            () = stop.cancelled() => tracing::info!("stopped"),
        }
    }

    /// Starts a tonic server for the connections accepted under
    /// `credential`. Once retired and left by every handshake started under
    /// it, it sends its connections a graceful GOAWAY; those still open
    /// `expiry_margin` before `credential` expires are closed.
    fn generation(&mut self, credential: Option<Credential>) -> Generation {
        let (sender, receiver) = mpsc::unbounded_channel();
        let generation = Generation {
            serial: credential.as_ref().map(|c| c.serial.clone()),
            connections: sender,
            close: self.hard_stop.child_token(),
            counts: Arc::default(),
        };
        let serving = (self.start)(receiver);
        let close = generation.close.clone();
        let retired = generation.counts.retired.clone();
        let closing_at = credential.map(|c| c.not_after.checked_sub(self.expiry_margin));
        let expiring = async move {
            let Some(at) = closing_at else {
                return std::future::pending().await;
            };
            retired.cancelled().await;
            let left = at.and_then(|at| at.duration_since(SystemTime::now()).ok());
            tokio::time::sleep(left.unwrap_or_default()).await;
        };
        self.generations.spawn(async move {
            tokio::pin!(serving);
            let outcome = tokio::select! {
                outcome = &mut serving => outcome,
                () = expiring => {
                    tracing::info!("closing connections before their certificate expires");
                    close.cancel();
                    serving.await
                }
            };
            if let Err(err) = outcome {
                tracing::warn!(error = %err, "serving failed");
            }
        });
        generation
    }

    fn accepted(
        &mut self,
        stream: Stream,
        addr: Option<SocketAddr>,
        generation: &Generation,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        let counts = Arc::clone(&generation.counts);
        self.stats.send_modify(|s| {
            s.accepted += 1;
            s.open += 1;
            s.peak_open = s.peak_open.max(s.open);
            counts.open.fetch_add(1, Ordering::Relaxed);
            if counts.retired.is_cancelled() {
                s.retired += 1;
            }
        });
        let open = OpenConnection {
            stats: self.stats.clone(),
            counts,
            _slot: slot,
        };
        // One deadline for TLS, the preface and SETTINGS together.
        let deadline = deadline_after(self.handshake_timeout);
        let close = generation.close.clone();
        let stats = self.stats.clone();
        let served = move |stream, certificates| {
            let mut io = Io::new(stream).close_on(close);
            let answered = io.first_bytes_by(deadline, Expect::ClientPreface);
            tokio::spawn(count_unanswered(answered, stats));
            let peer = Peer { addr, certificates };
            io.with(Served { peer, _open: open })
        };
        let Some((acceptor, rotation)) = self.tls.clone() else {
            let _ = generation.connections.send(served(stream, None));
            return;
        };
        // Holding the generation keeps its server accepting until the
        // handshake is done, even if it is retired meanwhile.
        let generation = generation.clone();
        self.handshakes.spawn(async move {
            let handshake = async {
                rotation.settled().await;
                acceptor.accept(stream).await
            };
            let handshake = tokio::time::timeout_at(deadline, handshake).await;
            let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out");
            let tls_stream = handshake.map_err(|_| timed_out())??;
            let chain = tls_stream.get_ref().1.peer_certificates();
            let certificates =
                chain.map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
            let _ = generation
                .connections
                .send(served(Box::new(tls_stream), certificates));
            Ok(())
        });
    }
}

/// Counts a served connection closed for its first bytes: too slow, or
/// not HTTP/2.
async fn count_unanswered(
    answered: oneshot::Receiver<Result<(), Unanswered>>,
    stats: watch::Sender<ConnectionStats>,
) {
    if let Ok(Err(why)) = answered.await {
        tracing::debug!(
            ?why,
            "closing a connection that did not begin HTTP/2 in time"
        );
        stats.send_modify(|s| match why {
            Unanswered::Silent => s.timed_out += 1,
            Unanswered::NotHttp2 => s.not_http2 += 1,
        });
    }
}

/// The next credential of a rotating server certificate; `None` once it
/// can no longer change, and never if it does not rotate.
async fn rotation(credential: &mut Option<watch::Receiver<Credential>>) -> Option<Credential> {
    match credential {
        Some(credential) => match credential.changed().await {
            Ok(()) => Some(credential.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

/// The connections served under one server certificate (all of them, if
/// it does not rotate), by one tonic server.
#[derive(Clone)]
struct Generation {
    /// The certificate's serial, if it rotates.
    serial: Option<String>,
    connections: mpsc::UnboundedSender<Io<Served>>,
    /// Closes every one of its connections.
    close: CancellationToken,
    counts: Arc<GenerationCounts>,
}

impl Generation {
    /// Marks it retired: its server drains once the last handshake started
    /// under it is done, as it holds the last other sender.
    fn retire(self, stats: &watch::Sender<ConnectionStats>) {
        stats.send_modify(|s| {
            self.counts.retired.cancel();
            s.retired += self.counts.open.load(Ordering::Relaxed);
        });
    }
}

/// A generation's open connections, and whether its certificate has
/// rotated: both changed only inside `send_modify` on the server's stats,
/// so in step with them.
#[derive(Default)]
struct GenerationCounts {
    open: AtomicUsize,
    retired: CancellationToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty directory of this test's own, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let pid = std::process::id();
            let dir = std::env::temp_dir().join(format!("connect-serve-{pid}-{name}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn a_socket_file_is_removed_once_even_if_its_inode_number_comes_back() {
        let dir = Scratch::new("once");
        let path = dir.0.join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let file = SocketFile::new(&path).unwrap();
        let handles = file.clone();
        file.remove();
        drop(listener);
        assert!(!path.exists());

        let _newer = UnixListener::bind(&path).unwrap();
        // As a filesystem that reuses inode numbers may give it.
        let inode = std::fs::metadata(&path).unwrap().ino();
        SocketFile { inode, ..handles }.remove();
        assert!(path.exists(), "the newer server's file stays");
    }

    #[tokio::test]
    async fn a_socket_whose_backlog_is_full_is_not_taken_for_stale() {
        let dir = Scratch::new("backlog");
        let path = dir.0.join("s.sock");
        let socket =
            socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&socket2::SockAddr::unix(&path).unwrap())
            .unwrap();
        socket.listen(0).unwrap();
        // Never accepted: connections queue until the backlog is full.
        let mut queued = Vec::new();
        let full = loop {
            match UnixStream::connect(&path).await {
                Ok(stream) if queued.len() < 1024 => queued.push(stream),
                Ok(_) => panic!("the backlog never filled"),
                Err(err) => break err,
            }
        };
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock, "{full}");

        let inode = std::fs::metadata(&path).unwrap().ino();
        let err = bind_unix(&path).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("is in use"), "{err}");
        let now = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(now, inode, "the file is still the listener's");
        drop(queued);
    }
}
