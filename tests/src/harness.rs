//! Building `connect` the way the tests need it, and the leak checks every
//! test ends with.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use connect_runtime::chain::{Client, Joins};
use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{
    ClientChain, ClientConn, Connect, ConnectBuilder, Context, DialOptions, GrpcClient, Monitor,
    ServerHandle,
};
use tonic::Status;

/// How long to wait for an event before calling the test hung. Generous:
/// the events come in milliseconds; this only turns a bug into a failure
/// instead of a stalled suite.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Awaits `event`, failing the test if it does not happen within [`PATIENCE`].
pub async fn settle<F: Future>(what: &str, event: F) -> F::Output {
    tokio::time::timeout(PATIENCE, event)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Dial options for a test's own dials to a remote it started: a dial
/// timeout of seconds, not Go's 100 ms, as a loaded CI machine may need.
pub fn patient() -> DialOptions {
    DialOptions::new().timeout(PATIENCE)
}

/// Dials `url` with [`patient`] options: a test's own channel to a remote it
/// started.
pub async fn dial_patiently(url: &url::Url) -> ClientConn {
    connect_runtime::dial(url, &patient())
        .await
        .unwrap_or_else(|err| panic!("dialing {url}: {err}"))
}

/// `connect` whose client chain is `element → Monitor → GrpcClient`, with a
/// one-second dial timeout (loopback under a loaded CI machine).
pub fn connect_via(element: impl Joins<Client> + Clone) -> Connect {
    Connect::builder(move |ctx: &Context, conn| {
        ClientChain::builder()
            .with(element.clone())
            .with(Monitor::new(ctx, conn.clone()))
            .with(GrpcClient::new(conn))
            .build()
    })
    .dial_timeout(Duration::from_secs(1))
    .build()
}

/// Options for a `connect` whose client chain is just [`GrpcClient`], for
/// tests that need nothing between it and the remote.
pub fn grpc_only() -> ConnectBuilder {
    Connect::builder(|_: &Context, conn| ClientChain::builder().with(GrpcClient::new(conn)).build())
}

/// [`grpc_only`], and the number of clients it has dialed (the factory
/// runs once per dial).
pub fn grpc_only_counting_dials() -> (ConnectBuilder, Arc<AtomicUsize>) {
    counting_dials(|_: &Context, conn| ClientChain::builder().with(GrpcClient::new(conn)).build())
}

/// Options for a `connect` whose clients `factory` builds, and the number
/// of clients it has dialed.
pub fn counting_dials(
    factory: impl Fn(&Context, ClientConn) -> ClientChain + Send + Sync + 'static,
) -> (ConnectBuilder, Arc<AtomicUsize>) {
    let dials = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&dials);
    let builder = Connect::builder(move |ctx: &Context, conn| {
        counted.fetch_add(1, Ordering::SeqCst);
        factory(ctx, conn)
    });
    (builder, dials)
}

/// The end of every test: `connect` holds no clients, records or calls, and
/// every remote has seen its TCP connections close.
pub async fn assert_no_leaks(connect: &Connect, remotes: &[&ServerHandle]) {
    settle("connect to go idle", connect.idle()).await;
    let stats = connect.stats();
    assert!(stats.is_idle(), "connect still holds {stats:?}");
    for remote in remotes {
        let seen = settle(
            "the remote to see its connections close",
            remote.wait_connections(|c| c.open == 0),
        )
        .await;
        assert_eq!(seen.open, 0, "{} still has connections", remote.url());
    }
}

/// A context whose client URL is `url`, for calling `connect` in-process.
pub fn at(url: &url::Url) -> Context {
    Context::new().with_client_url(url.clone())
}

/// A server chain of just `connect`.
pub fn connect_chain(connect: &Connect) -> connect_runtime::ServerChain {
    connect_runtime::ServerChain::builder()
        .with(connect.clone())
        .build()
}

/// `connect` served over gRPC in front of one remote, and a tonic caller of
/// it (its `caller`): the served path in one value.
pub struct Front {
    _served: ServerHandle,
    pub caller: NetworkServiceClient<tonic::transport::Channel>,
}

impl Front {
    /// `clienturl(remote) → connect`, served on a free loopback port.
    pub async fn new(connect: &Connect, remote: &url::Url) -> Self {
        let served = crate::remote::start_tcp(
            connect_runtime::ServerChain::builder()
                .with(connect_runtime::ClientUrl::new(remote.clone()))
                .with(connect.clone())
                .build(),
        )
        .await;
        let caller = crate::caller::tonic_caller(served.url()).await;
        Self {
            _served: served,
            caller,
        }
    }

    /// A new connection `id`.
    pub async fn request(&self, id: &str) -> Result<Connection, Status> {
        let mut caller = self.caller.clone();
        caller
            .request(crate::request(id))
            .await
            .map(tonic::Response::into_inner)
    }

    /// A refresh of `conn`.
    pub async fn refresh(&self, conn: &Connection) -> Result<Connection, Status> {
        let mut refresh = crate::request(&conn.id);
        refresh.connection = Some(Box::new(conn.clone()));
        let mut caller = self.caller.clone();
        caller
            .request(refresh)
            .await
            .map(tonic::Response::into_inner)
    }

    /// A close of `conn`.
    pub async fn close(&self, conn: Connection) -> Result<(), Status> {
        let mut caller = self.caller.clone();
        caller.close(conn).await.map(drop)
    }
}
