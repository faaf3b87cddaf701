//! The health `Monitor` (`elements::monitor`): when it closes a client, when
//! it stays passive, and how it watches again after a connection ends.

use connect_runtime::{ChainService, Context, Passthrough, ServerChain};
use connect_tests::elements::{Count, Gate, Ledger, ledger_chain};
use connect_tests::golike::{Behaviour, GoLike};
use connect_tests::harness::{Front, assert_no_leaks, at, connect_chain, connect_via, settle};
use connect_tests::remote::start_tcp;
use connect_tests::request;
use std::time::Duration;
use url::Url;

/// Answers every `grpc.health.v1.Health/Watch` with `PERMISSION_DENIED`, as
/// a remote authorising each call might; the rest goes on.
#[derive(Clone)]
struct DenyWatch<S>(S);

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for DenyWatch<S>
where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() == "/grpc.health.v1.Health/Watch" {
            let denied = tonic::Status::permission_denied("no watching here").into_http();
            return Box::pin(std::future::ready(Ok(denied)));
        }
        Box::pin(self.0.call(request))
    }
}

/// What the monitor logs, message by message, on this thread (a
/// current-thread test runtime runs the monitor's task here too).
fn monitor_log() -> (
    tracing::subscriber::DefaultGuard,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tracing_subscriber::layer::SubscriberExt;

    struct Messages(tokio::sync::mpsc::UnboundedSender<String>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Messages {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            if event.metadata().target() == "connect_runtime::elements::monitor" {
                let mut message = Message(String::new());
                event.record(&mut message);
                let _ = self.0.send(message.0);
            }
        }
    }

    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let subscriber = tracing_subscriber::registry().with(Messages(sender));
    (tracing::subscriber::set_default(subscriber), receiver)
}

/// A remote that answers but will not let its health be watched (here
/// `PERMISSION_DENIED`) is reachable, not dead: the monitor stays passive
/// and the client goes on serving its connections.
#[tokio::test]
async fn a_remote_refusing_the_health_watch_keeps_its_client() {
    let (_logging, mut log) = monitor_log();
    let connect = connect_via(Passthrough);
    let chain = connect_chain(&connect);
    let server = connect_runtime::Serve::new(ServerChain::default())
        .layer(tower::layer::layer_fn(DenyWatch))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();

    let first = chain
        .request(at(server.url()), request("m-1"))
        .await
        .unwrap();
    let decided = settle("the monitor's decision", log.recv()).await.unwrap();
    assert!(decided.contains("not monitoring"), "{decided}");

    let mut refresh = request("m-1");
    refresh.connection = Some(Box::new(first));
    let conn = chain.request(at(server.url()), refresh).await.unwrap();
    assert_eq!(server.connections().accepted, 1, "the same client");
    chain.close(Context::new(), conn).await.unwrap();
    assert_no_leaks(&connect, &[&server]).await;
}

/// A health service that has no verdict on the overall health: its watch
/// says `SERVICE_UNKNOWN`, as grpc-go's does for a service it does not
/// track, and then nothing.
struct Undecided;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Undecided {
    async fn check(
        &self,
        _: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        Err(tonic::Status::not_found("no overall health"))
    }

    type WatchStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<
                    Item = Result<tonic_health::pb::HealthCheckResponse, tonic::Status>,
                > + Send,
        >,
    >;

    async fn watch(
        &self,
        _: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        use tokio_stream::StreamExt;
        use tonic_health::pb::health_check_response::ServingStatus;

        let unknown = tonic_health::pb::HealthCheckResponse {
            status: ServingStatus::ServiceUnknown as i32,
        };
        let stream = tokio_stream::once(Ok(unknown)).chain(tokio_stream::pending());
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// `SERVICE_UNKNOWN` is no verdict: the monitor goes on watching and the
/// client goes on serving (only `NOT_SERVING` or an unreachable remote
/// closes it).
#[tokio::test]
async fn a_remote_without_an_overall_health_keeps_its_client() {
    let (_logging, mut log) = monitor_log();
    let connect = connect_via(Passthrough);
    let chain = connect_chain(&connect);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: Url = format!("tcp://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let remote = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(tonic_health::pb::health_server::HealthServer::new(
                Undecided,
            ))
            .add_service(ChainService::new(ServerChain::default()).into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );

    let first = chain.request(at(&url), request("u-1")).await.unwrap();
    let heard = settle("the monitor to hear the remote", log.recv())
        .await
        .unwrap();
    assert!(heard.contains("no verdict"), "{heard}");

    let mut refresh = request("u-1");
    refresh.connection = Some(Box::new(first));
    let conn = chain.request(at(&url), refresh).await.unwrap();
    chain.close(Context::new(), conn).await.unwrap();
    settle(
        "the client to close with its last connection",
        connect.idle(),
    )
    .await;
    stop.cancel();
    remote.await.unwrap().unwrap();
}

/// A remote reporting `NOT_SERVING` has its client closed; once it serves
/// again, the connection's refresh goes through a new client.
#[tokio::test]
async fn the_monitor_cancels_the_client_when_the_remote_stops_serving() {
    let connect = connect_via(Passthrough);
    let chain = connect_chain(&connect);
    let remote = Count::new();
    let server = start_tcp(ServerChain::builder().with(remote.clone()).build()).await;
    let conn = chain
        .request(at(server.url()), request("id"))
        .await
        .unwrap();

    server
        .health()
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    settle(
        "the client's connection to close",
        server.wait_connections(|c| c.open == 0),
    )
    .await;
    settle(
        "the client to go",
        connect.wait_for(|stats| stats.clients.is_empty()),
    )
    .await;
    assert_eq!(
        connect.stats().records,
        1,
        "the connection keeps its record"
    );

    server
        .health()
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let mut refresh = request("id");
    refresh.connection = Some(Box::new(conn));
    let conn = chain.request(at(server.url()), refresh).await.unwrap();
    assert_eq!(remote.requests(), 2);
    assert_eq!(
        server.connections().accepted,
        2,
        "a new client, a new connection"
    );
    chain.close(Context::new(), conn).await.unwrap();
    assert_no_leaks(&connect, &[&server]).await;
}

#[tokio::test]
async fn the_monitor_stays_passive_when_the_remote_has_no_health_service() {
    // A remote on tonic's own server, with the chain but no health service.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
    let remote = Count::new();
    let service = ChainService::new(ServerChain::builder().with(remote.clone()).build());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let (_logging, mut log) = monitor_log();
    let connect = connect_via(Passthrough);
    let chain = connect_chain(&connect);
    let mut req = request("id");
    let conn = chain.request(at(&url), req.clone()).await.unwrap();
    req.connection = Some(Box::new(conn));
    let decided = settle("the monitor's decision", log.recv()).await.unwrap();
    assert!(decided.contains("not monitoring"), "{decided}");
    for _ in 0..4 {
        let conn = chain.request(at(&url), req.clone()).await.unwrap();
        req.connection = Some(Box::new(conn));
    }
    assert_eq!(remote.requests(), 5);
    assert_eq!(
        connect.stats().clients.len(),
        1,
        "the client was not cancelled"
    );

    chain
        .close(Context::new(), *req.connection.unwrap())
        .await
        .unwrap();
    assert_no_leaks(&connect, &[]).await;
    server.abort();
}

/// A health watch cut by a recycle before the remote said anything (a
/// remote slow to answer its watches) is watched again, over a new
/// connection: the remote is alive, and its client stays.
#[tokio::test]
async fn a_watch_cut_in_silence_by_a_goaway_is_watched_again() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let behaviour = Behaviour {
        grace: Some(Duration::from_millis(50)),
        silent_health: true,
        ..Behaviour::default()
    };
    let remote = GoLike::tcp_behaving(ledger_chain(&ledger, &gate), behaviour).await;
    let connect = connect_via(Passthrough);
    let front = Front::new(&connect, remote.url()).await;
    let conn = front.request("w").await.unwrap();
    remote.wait_watches(1).await;

    remote.recycle();
    remote.wait_watches(2).await;
    let seen = remote.wait_connections(|c| c.open == 1).await;
    assert_eq!(
        seen.accepted, 2,
        "the watch came back over one new connection"
    );
    let stats = connect.stats();
    assert!(
        matches!(stats.clients.as_slice(), [client] if client.dials == 2 && client.refs == 1),
        "{stats:?}"
    );

    let conn = front.refresh(&conn).await.unwrap();
    front.close(conn).await.unwrap();
    assert_eq!(remote.connections().accepted, 2);
    assert!(ledger.open().is_empty());
    assert_no_leaks(&connect, &[]).await;
}

/// The health monitor watches again on the new connection when the remote
/// recycles the old one (here cutting the watch after a grace period), and
/// does not close the client.
#[tokio::test]
async fn the_monitor_watches_again_after_a_goaway() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let behaviour = Behaviour {
        connection_age: None,
        grace: Some(Duration::from_millis(50)),
        ..Behaviour::default()
    };
    let remote = GoLike::tcp_behaving(ledger_chain(&ledger, &gate), behaviour).await;
    let connect = connect_via(Passthrough);
    let front = Front::new(&connect, remote.url()).await;
    let conn = front.request("w").await.unwrap();

    remote.recycle();
    // The old connection closes (its watch cut), the monitor watches again
    // over a new one.
    remote
        .wait_connections(|c| c.accepted == 2 && c.open == 1)
        .await;
    let stats = connect.stats();
    assert_eq!(
        stats.clients.len(),
        1,
        "the client was not closed: {stats:?}"
    );
    let conn = front.refresh(&conn).await.unwrap();
    assert_eq!(remote.connections().accepted, 2);

    front.close(conn).await.unwrap();
    assert_no_leaks(&connect, &[]).await;
    remote.wait_connections(|c| c.open == 0).await;
}
