//! An NSM remote that behaves like a grpc-go server, for the served-path
//! tests: handlers keep running after their caller cancels, connections
//! can be recycled with a graceful GOAWAY on demand or on an age timer (as
//! grpc-go's `MaxConnectionAge` does), and the process can be killed or
//! restarted on the same address. A test fixture, on hyper's HTTP/2 server
//! and tonic's routes.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use connect_runtime::{ChainService, ConnectionStats, ServerChain};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthReporter;
use url::Url;

use crate::harness::settle;

/// How a [`GoLike`] remote behaves.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Send each connection a graceful GOAWAY this long after it opened.
    pub connection_age: Option<Duration>,
    /// Close a recycled connection this long after its GOAWAY, calls or not
    /// (grpc-go's `MaxConnectionAgeGrace`); without it, it drains.
    pub grace: Option<Duration>,
    /// Calls (HTTP/2 streams) each connection serves at once (grpc-go's
    /// `MaxConcurrentStreams`); hyper's default without it.
    pub max_concurrent_streams: Option<u32>,
    /// Health watches are accepted and never answered (a remote slow to
    /// say how it is); `Check` answers `SERVING`.
    pub silent_health: bool,
}

/// The health service of a remote with [`Behaviour::silent_health`]: it
/// counts the watches it has taken.
#[derive(Clone)]
struct SilentHealth(Arc<watch::Sender<usize>>);

type Watching =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Health for SilentHealth {
    async fn check(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let status = tonic_health::pb::health_check_response::ServingStatus::Serving;
        Ok(tonic::Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream = Watching;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Watching>, tonic::Status> {
        self.0.send_modify(|watches| *watches += 1);
        Ok(tonic::Response::new(Box::pin(tokio_stream::pending())))
    }
}

/// A grpc-go-like remote serving an NSM chain and gRPC health.
pub struct GoLike {
    url: Url,
    malformed: Arc<AtomicBool>,
    unix: Option<PathBuf>,
    health: HealthReporter,
    stats: watch::Receiver<ConnectionStats>,
    /// Health watches taken, with [`Behaviour::silent_health`].
    watches: watch::Receiver<usize>,
    recycle: watch::Sender<u64>,
    stop: CancellationToken,
    kill: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

impl Listener {
    async fn accept(&self) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            Listener::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            Listener::Unix(listener) => Box::new(listener.accept().await?.0),
        })
    }
}

impl GoLike {
    /// Serves `chain` at `url` (`tcp://127.0.0.1:0` picks a port; a unix
    /// socket path must not exist).
    pub async fn start(url: &Url, chain: ServerChain, behaviour: Behaviour) -> Self {
        let (listener, url, unix) = match url.scheme() {
            "unix" => {
                let path = PathBuf::from(url.path());
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path).expect("binding the unix socket");
                (Listener::Unix(listener), url.clone(), Some(path))
            }
            _ => {
                let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
                let listener = TcpListener::bind(&addr).await.expect("binding the port");
                let bound = format!("tcp://{}", listener.local_addr().unwrap());
                (Listener::Tcp(listener), Url::parse(&bound).unwrap(), None)
            }
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(
                connect_runtime::proto::NETWORK_SERVICE,
                ServingStatus::Serving,
            )
            .await;
        let (silent_watches, watches) = watch::channel(0);
        let routes = match behaviour.silent_health {
            true => Routes::new(HealthServer::new(SilentHealth(Arc::new(silent_watches)))),
            false => Routes::new(health_service),
        };
        let routes = routes
            .add_service(ChainService::new(chain).into_server())
            .prepare();
        let (stats_tx, stats) = watch::channel(ConnectionStats::default());
        let (recycle, recycled) = watch::channel(0u64);
        let (stop, kill) = (CancellationToken::new(), CancellationToken::new());
        let malformed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(accept(
            listener,
            Detached {
                routes,
                malformed: Arc::clone(&malformed),
            },
            behaviour,
            stats_tx,
            recycled,
            stop.clone(),
            kill.clone(),
        ));
        Self {
            url,
            malformed,
            unix,
            health,
            stats,
            watches,
            recycle,
            stop,
            kill,
            task: Some(task),
        }
    }

    /// A plain remote on a free loopback port.
    pub async fn tcp(chain: ServerChain) -> Self {
        Self::tcp_behaving(chain, Behaviour::default()).await
    }

    /// A remote on a free loopback port that behaves as `behaviour` says.
    pub async fn tcp_behaving(chain: ServerChain, behaviour: Behaviour) -> Self {
        Self::start(&"tcp://127.0.0.1:0".parse().unwrap(), chain, behaviour).await
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// Waits (within the harness's patience) until it has taken `count`
    /// health watches, with [`Behaviour::silent_health`].
    pub async fn wait_watches(&self, count: usize) {
        let mut watches = self.watches.clone();
        let waited = settle(
            "the remote's health watches",
            watches.wait_for(|&n| n >= count),
        );
        waited.await.expect("the counts outlive the remote");
    }

    pub fn connections(&self) -> ConnectionStats {
        *self.stats.borrow()
    }

    /// Waits (within the harness's patience) until the counts satisfy
    /// `condition`.
    pub async fn wait_connections(
        &self,
        condition: impl FnMut(&ConnectionStats) -> bool,
    ) -> ConnectionStats {
        let mut stats = self.stats.clone();
        let waited = settle("the remote's connections", stats.wait_for(condition)).await;
        *waited.expect("the remote's counts outlive it")
    }

    /// While on, answers every Request with a status whose details are not
    /// base64 (`grpc-status-details-bin`), without running the chain.
    pub fn set_malformed(&self, on: bool) {
        self.malformed.store(on, Ordering::SeqCst);
    }

    /// Sends every open connection a graceful GOAWAY: calls in flight
    /// finish, then it closes. New connections are served as usual.
    pub fn recycle(&self) {
        self.recycle.send_modify(|n| *n += 1);
    }

    /// Gracefully stops: health NOT_SERVING, no new connections, GOAWAY on
    /// every connection, then waits for them to close.
    pub async fn stop(mut self) {
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = settle("the remote to stop", task).await;
        }
    }

    /// Dies at once, as a killed process does: every connection closes
    /// without a GOAWAY.
    pub async fn kill(mut self) {
        self.kill.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for GoLike {
    fn drop(&mut self) {
        self.kill.cancel();
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some(path) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Counts a connection open while it lives.
struct Open(watch::Sender<ConnectionStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|s| s.open -= 1);
    }
}

async fn accept(
    listener: Listener,
    routes: Detached,
    behaviour: Behaviour,
    stats: watch::Sender<ConnectionStats>,
    recycled: watch::Receiver<u64>,
    stop: CancellationToken,
    kill: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = kill.cancelled() => return,
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(_) => continue,
            },
        };
        // Subscribed to recycling before it is counted: a recycle that
        // sees the connection in the counts reaches it.
        let (mut recycled, stop, kill) = (recycled.clone(), stop.clone(), kill.clone());
        recycled.mark_unchanged();
        stats.send_modify(|s| {
            s.accepted += 1;
            s.open += 1;
            s.peak_open = s.peak_open.max(s.open);
        });
        let open = Open(stats.clone());
        let (routes, behaviour) = (routes.clone(), behaviour.clone());
        connections.spawn(async move {
            let _open = open;
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            if let Some(max) = behaviour.max_concurrent_streams {
                builder.max_concurrent_streams(max);
            }
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(routes));
            tokio::pin!(conn);
            let aged = async {
                match behaviour.connection_age {
                    Some(age) => tokio::time::sleep(age).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = conn.as_mut() => return,
                () = kill.cancelled() => return,
                () = aged => {}
                _ = recycled.changed() => {}
                () = stop.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let grace = async {
                match behaviour.grace {
                    Some(grace) => tokio::time::sleep(grace).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                () = kill.cancelled() => {}
                () = grace => {}
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = async { while connections.join_next().await.is_some() {} } => {}
        () = kill.cancelled() => {}
    }
}

/// Runs each call in a task of its own, so that it goes on after its
/// caller cancels (hyper drops the call's future on RST_STREAM; grpc-go
/// handlers keep running); or, while malformed, answers Requests with a
/// broken status.
#[derive(Clone)]
struct Detached {
    routes: Routes,
    malformed: Arc<AtomicBool>,
}

impl tower_service::Service<http::Request<hyper::body::Incoming>> for Detached {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        tower_service::Service::<http::Request<Body>>::poll_ready(&mut self.routes, cx)
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        if self.malformed.load(Ordering::SeqCst) && request.uri().path().ends_with("/Request") {
            let broken = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "13")
                .header("grpc-status-details-bin", "%%% not base64 %%%")
                .body(Body::empty())
                .unwrap();
            return Box::pin(std::future::ready(Ok(broken)));
        }
        let call = tower_service::Service::call(&mut self.routes, request.map(Body::new));
        let handler = tokio::spawn(call);
        Box::pin(async move { handler.await.expect("a handler panicked") })
    }
}

impl std::fmt::Debug for GoLike {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoLike")
            .field("url", &self.url.as_str())
            .field("connections", &self.connections())
            .finish()
    }
}
