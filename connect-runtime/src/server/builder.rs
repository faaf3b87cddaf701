//! [`Serve`], the builder of a server for a chain on tonic's server, and
//! [`serve`], its short form: the gRPC health service, TLS and mutual TLS,
//! limits, tower layers.

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::metrics::Meter;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};
use tower::{Layer, Service};
use tracing::Instrument;
use url::Url;

use super::accept::{AcceptLoop, Start};
use super::handle::{ConnectionStats, ServerHandle};
use super::listener::{Listener, SocketFile, bind_unix};
use super::service::{ChainServer, ChainService};
use super::services::Services;
use crate::chain::ServerChain;
use crate::transport::Keepalive;
use crate::transport::tls::{DEFAULT_EXPIRY_MARGIN, ServerTls};
use crate::transport::{IntoUrl, Target, UrlError, checked};

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
/// # Errors
///
/// As [`Serve::bind`].
///
/// # Panics
///
/// Outside a tokio runtime (the server's task is spawned on it).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::{Passthrough, ServerChain, serve};
/// use connect_runtime::CancellationToken;
///
/// let chain = ServerChain::builder().with(Passthrough).build();
/// let shutdown = CancellationToken::new();
/// let server = serve("tcp://127.0.0.1:0", chain, shutdown.clone()).await?;
/// assert_ne!(server.url().port(), Some(0)); // the port actually bound
///
/// shutdown.cancel();
/// server.stopped().await;
/// # Ok(()) }
/// ```
pub async fn serve(
    url: impl IntoUrl,
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
///     .bind("tcp://127.0.0.1:0")
///     .await?;
/// server.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Serve<L = Identity> {
    server: Server<L>,
    chain: ChainServer,
    routes: Routes,
    shutdown: CancellationToken,
    grace: Duration,
    handshake_timeout: Duration,
    max_connections: Option<usize>,
    tls: Option<ServerTls>,
    expiry_margin: Duration,
    health: HealthReporter,
    meter: Option<Meter>,
}

impl Serve {
    /// A server for `chain`.
    pub fn new(chain: ServerChain) -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let routes = Routes::new(health_service);
        let keepalive = DEFAULT_SERVER_KEEPALIVE;
        let server = Server::builder()
            .max_concurrent_streams(DEFAULT_MAX_CONCURRENT_STREAMS)
            .http2_keepalive_interval(Some(keepalive.interval))
            .http2_keepalive_timeout(Some(keepalive.timeout));
        Self {
            server,
            chain: ChainService::new(chain).into_server(),
            routes,
            shutdown: CancellationToken::new(),
            grace: DEFAULT_GRACE_PERIOD,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: Some(DEFAULT_MAX_CONNECTIONS),
            tls: None,
            expiry_margin: DEFAULT_EXPIRY_MARGIN,
            health,
            meter: None,
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

    /// Records `serve_connections`, `serve_connections_refused_total` and
    /// `serve_handshake_failures_total` on `meter` (by default the global
    /// provider's [`METER_NAME`](crate::telemetry::METER_NAME) meter, which
    /// records nothing until a program installs a provider). They are read
    /// from [`ServerHandle::connections`](crate::ServerHandle::connections)
    /// when a reader collects. Give each server of a process a meter of its
    /// own name: on a shared one their gauges overwrite each other.
    ///
    /// ```
    /// use connect_runtime::{Serve, ServerChain};
    /// use opentelemetry::metrics::MeterProvider as _;
    ///
    /// let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    /// let serve = Serve::new(ServerChain::default()).meter(provider.meter("connect"));
    /// # let _ = serve;
    /// ```
    pub fn meter(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
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
            chain: self.chain,
            routes: self.routes,
            shutdown: self.shutdown,
            grace: self.grace,
            handshake_timeout: self.handshake_timeout,
            max_connections: self.max_connections,
            tls: self.tls,
            expiry_margin: self.expiry_margin,
            health: self.health,
            meter: self.meter,
        }
    }

    /// Binds `url` and starts serving. Port 0 picks a free port; the handle's
    /// [`url`](ServerHandle::url) is the address actually bound. A stale unix
    /// socket file (nobody listening) is replaced; a live one is an error.
    ///
    /// # Errors
    ///
    /// [`ServeError::Url`] for a URL that is not `tcp://host:port` or
    /// `unix:///path`; [`ServeError::Bind`] when the address cannot be
    /// listened on (in use, a missing directory, no permission, a live
    /// server's socket file).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the server's task is spawned on it).
    ///
    /// # Cancel safety
    ///
    /// The server starts only when the future completes; dropped before,
    /// it leaves nothing listening (a unix socket file it created stays until
    /// replaced as stale).
    pub async fn bind<ResBody>(self, url: impl IntoUrl) -> Result<ServerHandle, ServeError>
    where
        L: Layer<Services> + Clone + Send + Sync + 'static,
        L::Service: Service<http::Request<Body>, Response = http::Response<ResBody>>
            + Clone
            + Send
            + 'static,
        <L::Service as Service<http::Request<Body>>>::Future: Send + 'static,
        <L::Service as Service<http::Request<Body>>>::Error: Into<tower::BoxError> + Send,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<tower::BoxError>,
    {
        let (url, target) = checked(url)?;
        let url = &url;
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
        let meter = self
            .meter
            .clone()
            .unwrap_or_else(|| opentelemetry::global::meter(crate::telemetry::METER_NAME));
        let read = stats_rx.clone();
        // A stopped server's sender is gone: it reports nothing more.
        super::metrics::serve_metrics(&meter, move || {
            read.has_changed().ok().map(|_| *read.borrow())
        });
        let hard_stop = CancellationToken::new();
        let credential = self.tls.as_ref().and_then(|t| t.credential().cloned());
        let server = self.server;
        let services = Services::new(self.chain, self.routes);
        let start: Start = Box::new(move |connections| {
            let incoming = UnboundedReceiverStream::new(connections).map(Ok::<_, Infallible>);
            // A shutdown signal that never fires still makes tonic drain
            // gracefully once the incoming connections end.
            Box::pin(server.clone().serve_with_incoming_shutdown(
                services.clone(),
                incoming,
                std::future::pending(),
            ))
        });
        let accepting = AcceptLoop::new(
            start,
            self.tls.as_ref(),
            self.handshake_timeout,
            self.max_connections,
            self.expiry_margin,
            hard_stop.clone(),
            stats_tx,
        );
        let task = tokio::spawn(
            accepting
                .run(
                    listener,
                    credential,
                    self.shutdown.clone(),
                    self.grace,
                    self.health.clone(),
                )
                .instrument(tracing::info_span!("serve", url = %bound)),
        );
        let security = self.tls.as_ref().map_or("plaintext", |tls| tls.security());
        tracing::info!(url = %bound, security, "serving");
        Ok(ServerHandle::new(
            bound,
            self.shutdown,
            hard_stop,
            task,
            stats_rx,
            self.health,
            socket_file,
        ))
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
#[non_exhaustive]
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
