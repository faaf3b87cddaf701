//! Serving a server chain over gRPC on a `tcp://` or `unix://` URL, with the
//! gRPC health service, connection accounting and graceful shutdown.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::Instrument;
use url::Url;

use crate::chain::ServerChain;
use crate::executor::BoxingExecutor;
use crate::service::ChainService;
use crate::socket::Stream;
use crate::target::{Target, UrlError};

/// How long a graceful shutdown waits for open connections to finish their
/// calls before closing them anyway.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);

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

/// Builder for a gRPC server running a server chain.
///
/// The server registers `networkservice.NetworkService` (the chain) and
/// `grpc.health.v1.Health` (overall status `""` and
/// `networkservice.NetworkService`, both `SERVING` until shutdown begins),
/// plus any service added with [`Serve::add_service`].
pub struct Serve {
    routes: Routes,
    shutdown: CancellationToken,
    grace: Duration,
    max_concurrent_streams: Option<u32>,
    health: HealthReporter,
}

impl Serve {
    /// A server for `chain`.
    pub fn new(chain: ServerChain) -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let routes =
            Routes::new(health_service).add_service(ChainService::new(chain).into_server());
        Self {
            routes,
            shutdown: CancellationToken::new(),
            grace: DEFAULT_GRACE_PERIOD,
            max_concurrent_streams: None,
            health,
        }
    }

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

    /// Limits concurrent calls per connection (HTTP/2 streams). Unlimited by
    /// default, as in grpc-go.
    pub fn max_concurrent_streams(mut self, max: Option<u32>) -> Self {
        self.max_concurrent_streams = max;
        self
    }

    /// Serves another gRPC service beside the chain (a `MonitorConnection`
    /// service, say).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower_service::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(service);
        self
    }

    /// Binds `url` and starts serving. Port 0 picks a free port; the handle's
    /// [`url`](ServerHandle::url) is the address actually bound. A stale unix
    /// socket file (nobody listening) is replaced; a live one is an error.
    pub async fn bind(self, url: &Url) -> Result<ServerHandle, ServeError> {
        let target = Target::from_url(url)?;
        let bind_error = |source: io::Error| ServeError::Bind {
            url: url.to_string(),
            source,
        };
        let (listener, bound) = match &target {
            Target::Tcp { host, port } => {
                let listener = TcpListener::bind((host.as_str(), *port))
                    .await
                    .map_err(bind_error)?;
                let addr = listener.local_addr().map_err(bind_error)?;
                let bound = Url::parse(&format!("tcp://{addr}"))
                    .expect("a socket address forms a valid tcp URL");
                (Listener::Tcp(listener), bound)
            }
            Target::Unix { path } => {
                let listener = bind_unix(path).await.map_err(bind_error)?;
                let file = SocketFile {
                    path: path.clone(),
                    inode: std::fs::metadata(path).map_err(bind_error)?.ino(),
                };
                (Listener::Unix { listener, file }, url.clone())
            }
        };

        let socket_file = match &listener {
            Listener::Unix { file, .. } => Some(file.clone()),
            Listener::Tcp(_) => None,
        };
        self.health
            .set_service_status(crate::proto::NETWORK_SERVICE, ServingStatus::Serving)
            .await;
        let (stats_tx, stats_rx) = watch::channel(ConnectionStats::default());
        let hard_stop = CancellationToken::new();
        let mut http2 = hyper::server::conn::http2::Builder::new(BoxingExecutor);
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams);
        let accept = AcceptLoop {
            listener,
            routes: self.routes.prepare(),
            http2,
            shutdown: self.shutdown.clone(),
            hard_stop: hard_stop.clone(),
            grace: self.grace,
            stats: stats_tx,
            health: self.health.clone(),
        };
        let span = tracing::info_span!("serve", url = %bound);
        let task = tokio::spawn(accept.run().instrument(span));
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
        source: io::Error,
    },
}

/// Counts of the transport connections a server has accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Connections accepted since the server started.
    pub accepted: u64,
    /// Connections open now.
    pub open: usize,
    /// The most connections open at once since the server started.
    pub peak_open: usize,
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
    /// flight are cut off. For simulating a crashed remote.
    pub async fn kill(mut self) {
        self.hard_stop.cancel();
        self.join().await;
    }

    /// Waits for the server to stop (after its shutdown token is cancelled).
    pub async fn stopped(mut self) {
        self.join().await;
    }

    async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            self.hard_stop.cancel();
            // The accept loop owns every connection task; aborting it drops
            // them all.
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

enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        file: SocketFile,
    },
}

/// The socket file a unix listener created.
#[derive(Clone)]
struct SocketFile {
    path: PathBuf,
    inode: u64,
}

impl SocketFile {
    /// Removes the file, unless a newer server has already replaced it.
    fn remove(&self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Listener {
    async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            Listener::Unix { listener, .. } => Ok(Stream::Unix(listener.accept().await?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { file, .. } = self {
            file.remove();
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
            if UnixStream::connect(path).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another server is listening on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        result => result,
    }
}

struct AcceptLoop {
    listener: Listener,
    routes: Routes,
    http2: hyper::server::conn::http2::Builder<BoxingExecutor>,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    grace: Duration,
    stats: watch::Sender<ConnectionStats>,
    health: HealthReporter,
}

/// Counts a connection open for as long as it lives, even if its task is
/// aborted.
struct OpenConnection(watch::Sender<ConnectionStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.send_modify(|s| s.open -= 1);
    }
}

impl AcceptLoop {
    async fn run(self) {
        let AcceptLoop {
            listener,
            routes,
            http2,
            shutdown,
            hard_stop,
            grace,
            stats,
            health,
        } = self;
        let mut connections = JoinSet::new();
        let drain = CancellationToken::new();
        loop {
            tokio::select! {
                biased;
                () = hard_stop.cancelled() => break,
                () = shutdown.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok(stream) => {
                        stats.send_modify(|s| {
                            s.accepted += 1;
                            s.open += 1;
                            s.peak_open = s.peak_open.max(s.open);
                        });
                        let open = OpenConnection(stats.clone());
                        let conn = http2.serve_connection(
                            TokioIo::new(stream),
                            TowerToHyperService::new(routes.clone()),
                        );
                        let drain = drain.clone();
                        connections.spawn(
                            async move {
                                let _open = open;
                                tokio::pin!(conn);
                                tokio::select! {
                                    result = conn.as_mut() => log_end(result),
                                    () = drain.cancelled() => {
                                        conn.as_mut().graceful_shutdown();
                                        log_end(conn.await);
                                    }
                                }
                            }
                            .in_current_span(),
                        );
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: back off
                        // rather than spin, and keep serving.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
        drop(listener);
        if hard_stop.is_cancelled() {
            tracing::info!("stopped");
            return; // dropping `connections` aborts every connection
        }
        // Tell health watchers first, so clients let go before GOAWAY.
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(crate::proto::NETWORK_SERVICE, ServingStatus::NotServing)
            .await;
        drain.cancel();
        let drained = async { while connections.join_next().await.is_some() {} };
        tokio::select! {
            () = drained => tracing::info!("shut down"),
            () = tokio::time::sleep(grace) => tracing::warn!(
                remaining = connections.len(),
                "grace period over; closing connections"
            ),
            () = hard_stop.cancelled() => {}
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended");
    }
}
