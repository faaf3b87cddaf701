//! Serving a chain (`server`): round trips over TCP and unix sockets, socket
//! files, the caller's deadline, health, the handle, connection counts,
//! stream limits, tower layers.

use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{
    ChainService, ClientChain, Context, GrpcClient, Passthrough, ServeError, ServerChain, serve,
};
use connect_tests::elements::{Capture, Edit, Park};
use connect_tests::harness::settle;
use connect_tests::remote::{start_tcp, start_unix, unix_url};
use connect_tests::{connection, request};
use std::time::Duration;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use url::Url;

fn edit() -> Edit {
    Edit {
        key: "remote",
        value: "yes",
        mechanism: None,
    }
}

/// A chain that keeps what it was sent and marks what it answers.
fn capturing(capture: &Capture) -> ServerChain {
    ServerChain::builder()
        .with(capture.clone())
        .with(edit())
        .build()
}

async fn round_trip(server: &connect_runtime::ServerHandle, capture: &Capture) {
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    let client = ClientChain::builder().with(GrpcClient::new(conn)).build();

    let reply = client.request(Context::new(), request("rt")).await.unwrap();
    assert_eq!(reply.id, "rt");
    assert_eq!(reply.context.unwrap().extra_context["remote"], "yes");
    assert_eq!(
        capture.request().unwrap().connection.unwrap().id,
        "rt",
        "the remote saw the request"
    );

    client
        .close(Context::new(), connection("rt"))
        .await
        .unwrap();
    assert!(capture.request().is_none(), "the remote saw the close");
    assert_eq!(server.connections().accepted, 1);
}

#[tokio::test]
async fn request_and_close_round_trip_over_tcp() {
    let capture = Capture::new();
    let server = start_tcp(capturing(&capture)).await;
    assert_eq!(server.url().scheme(), "tcp");
    assert_ne!(server.url().port(), Some(0));
    round_trip(&server, &capture).await;
}

/// A unary call's trailers, which gRPC lets a caller send after its
/// message, join its metadata as tonic's unary handler joins them.
#[tokio::test]
async fn a_callers_trailers_reach_the_chain_as_metadata() {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use prost::Message;

    let capture = Capture::new();
    let server = start_tcp(capturing(&capture)).await;
    let addr = format!(
        "{}:{}",
        server.url().host_str().unwrap(),
        server.url().port().unwrap()
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);

    let mut trailers = http::HeaderMap::new();
    trailers.insert("authorization", "Bearer late".parse().unwrap());
    let frames = vec![
        Ok::<_, std::convert::Infallible>(Frame::data(connect_tests::raw::framed(
            &request("trailers").encode_to_vec(),
        ))),
        Ok(Frame::trailers(trailers)),
    ];
    let call = http::Request::post(format!(
        "http://{}/networkservice.NetworkService/Request",
        server.url().host_str().unwrap()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(StreamBody::new(tokio_stream::iter(frames)))
    .unwrap();
    let response = sender.send_request(call).await.unwrap();
    let body = response.into_body().collect().await.unwrap();
    let status = body.trailers().and_then(|t| t.get("grpc-status")).cloned();

    assert_eq!(status.as_ref().map(|s| s.as_bytes()), Some(&b"0"[..]));
    assert_eq!(capture.seen().authorization.as_deref(), Some("Bearer late"));
    assert_eq!(
        capture.request().unwrap().connection.unwrap().id,
        "trailers"
    );
}

#[tokio::test]
async fn request_and_close_round_trip_over_a_unix_socket() {
    let dir = TempDir::new().unwrap();
    let capture = Capture::new();
    let server = start_unix(dir.path(), "remote.sock", capturing(&capture)).await;
    round_trip(&server, &capture).await;
    server.kill().await;
    assert!(
        !dir.path().join("remote.sock").exists(),
        "the server removes its socket file"
    );
}

#[tokio::test]
async fn a_stale_unix_socket_is_replaced_and_a_live_one_is_not() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("stale.sock");
    // A socket file nobody listens on, as a crashed server leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let live = serve(
        &unix_url(&path),
        ServerChain::default(),
        CancellationToken::new(),
    )
    .await
    .expect("a stale socket is replaced");

    let err = serve(
        &unix_url(&path),
        ServerChain::default(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ServeError::Bind { .. }));
    assert!(
        err.to_string().contains("another server is listening"),
        "{err}"
    );

    // The first server is unharmed.
    let conn = connect_tests::harness::dial_patiently(live.url()).await;
    NetworkServiceClient::new(conn)
        .request(request("still-here"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_callers_deadline_reaches_the_remote_and_ends_its_call() {
    let capture = Capture::new();
    let park = Park::new();
    let server = start_tcp(
        ServerChain::builder()
            .with(capture.clone())
            .with(park.clone())
            .build(),
    )
    .await;
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    let client = ClientChain::builder().with(GrpcClient::new(conn)).build();

    let ctx = Context::new().with_timeout(Duration::from_millis(300));
    let err = client.request(ctx, request("slow")).await.unwrap_err();

    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let remaining = capture.seen().remaining.expect("the remote got a deadline");
    assert!(remaining <= Duration::from_millis(300), "{remaining:?}");
    // The remote's own handling was cancelled when the deadline passed.
    park.abandoned().await;
    assert_eq!(park.abandoned_calls(), 1);
}

/// tonic's own server answers a `grpc-timeout` that runs out with
/// `Cancelled`; the caller, whose deadline it was, sees `DeadlineExceeded`,
/// as grpc-go's clients report it. A `Cancelled` before the deadline stays.
#[tokio::test]
async fn a_remote_cancelling_at_the_deadline_is_a_deadline_exceeded() {
    use connect_runtime::proto::connection::Connection;
    use connect_runtime::proto::networkservice::NetworkServiceRequest;
    use connect_runtime::proto::networkservice::network_service_server::{
        NetworkService, NetworkServiceServer,
    };

    /// Never answers a request; cancels every close at once.
    struct Stalling;

    #[tonic::async_trait]
    impl NetworkService for Stalling {
        async fn request(
            &self,
            _: tonic::Request<NetworkServiceRequest>,
        ) -> Result<tonic::Response<Connection>, tonic::Status> {
            std::future::pending().await
        }

        async fn close(
            &self,
            _: tonic::Request<Connection>,
        ) -> Result<tonic::Response<()>, tonic::Status> {
            Err(tonic::Status::cancelled("cancelled by the remote"))
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: Url = format!("tcp://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let stop = CancellationToken::new();
    let serving = tonic::transport::Server::builder()
        .add_service(NetworkServiceServer::new(Stalling))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
    let server = tokio::spawn(serving);

    let conn = connect_tests::harness::dial_patiently(&url).await;
    let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
    let ctx = Context::new().with_timeout(Duration::from_millis(200));
    let err = client.request(ctx, request("stalled")).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("Timeout expired"), "{err:?}");

    let ctx = Context::new().with_timeout(Duration::from_secs(30));
    let err = client.close(ctx, connection("early")).await.unwrap_err();
    assert_eq!(err.code(), Code::Cancelled, "{err:?}");

    stop.cancel();
    server.await.unwrap().unwrap();
}

/// tonic's server keeps a timer of its own for each call's `grpc-timeout`,
/// answering `Cancelled` when it fires; the chain's deadline fires first,
/// so that a caller out of time always hears `DeadlineExceeded`.
#[tokio::test]
async fn a_served_call_out_of_time_is_always_deadline_exceeded() {
    const CALLS: usize = 300;
    let park = Park::new();
    let server = start_tcp(ServerChain::builder().with(park.clone()).build()).await;
    // A caller without a timer of its own (tonic's channel has one, and
    // answers itself): what it hears is the server's answer.
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    let client = NetworkServiceClient::new(conn);
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..CALLS {
        let mut client = client.clone();
        calls.spawn(async move {
            let mut call = tonic::Request::new(request(&format!("late-{n}")));
            call.metadata_mut()
                .insert("grpc-timeout", "20m".parse().unwrap());
            client.request(call).await.unwrap_err()
        });
    }
    let mut other = Vec::new();
    while let Some(status) = calls.join_next().await {
        let status = status.unwrap();
        if status.code() != Code::DeadlineExceeded {
            other.push(status);
        }
    }
    assert!(
        other.is_empty(),
        "{} of {CALLS} calls ended otherwise, as {:?}",
        other.len(),
        other[0]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_service_enforces_the_incoming_grpc_timeout() {
    use connect_runtime::proto::networkservice::network_service_server::NetworkService;

    // In-process, so that no client-side timer can be what answers.
    let park = Park::new();
    let service = ChainService::new(ServerChain::builder().with(park.clone()).build());
    let mut grpc = tonic::Request::new(request("slow"));
    grpc.metadata_mut()
        .insert("grpc-timeout", "100m".parse().unwrap());

    let err = service.request(grpc).await.unwrap_err();

    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    park.abandoned().await;
    assert_eq!(park.abandoned_calls(), 1);

    let mut grpc = tonic::Request::new(request("bad"));
    grpc.metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    let err = service.request(grpc).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "as grpc-go answers it");
    assert!(err.message().contains("grpc-timeout"), "{err:?}");
}

#[tokio::test]
async fn health_is_served_and_turns_not_serving_on_shutdown() {
    let shutdown = CancellationToken::new();
    let server = serve(
        "tcp://127.0.0.1:0",
        ServerChain::builder().with(Passthrough).build(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    let mut health = HealthClient::new(conn);

    for service in ["", "networkservice.NetworkService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    shutdown.cancel();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(watch);
    drop(health);
    server.stopped().await;
}

/// Dropping a server's handle detaches the server, as dropping a tokio
/// `JoinHandle` detaches its task: giving up on waiting for it (a timeout, a
/// lost `select!`) leaves it serving, and its shutdown token still stops
/// it; `abort` stops it at once.
#[tokio::test]
async fn a_dropped_handle_detaches_the_server_and_abort_stops_it() {
    let token = CancellationToken::new();
    let chain = || ServerChain::builder().with(Passthrough).build();
    let server = serve("tcp://127.0.0.1:0", chain(), token.clone())
        .await
        .unwrap();
    let url = server.url().clone();
    let conn = connect_tests::harness::dial_patiently(&url).await;
    let mut client = NetworkServiceClient::new(conn.clone());
    client.request(request("a")).await.unwrap();

    // Polled once, then given up on.
    let mut stopped = Box::pin(server.stopped());
    let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(stopped.as_mut().poll(cx)));
    assert!(polled.await.is_pending());
    drop(stopped);
    client.request(request("still served")).await.unwrap();

    // The token stops it: its connection closes, and nothing listens.
    token.cancel();
    settle("the connection to end", conn.connections_ended(1)).await;
    let err = client.request(request("stopped")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    settle("the channel to end", conn.ended()).await;

    // `abort` stops another at once, cutting its connections.
    let server = serve("tcp://127.0.0.1:0", chain(), CancellationToken::new())
        .await
        .unwrap();
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    NetworkServiceClient::new(conn.clone())
        .request(request("b"))
        .await
        .unwrap();
    server.abort();
    settle(
        "the aborted server's connection to end",
        conn.connections_ended(1),
    )
    .await;
}

#[tokio::test]
async fn the_server_counts_connections_and_sees_them_close() {
    let server = start_tcp(ServerChain::default()).await;
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    NetworkServiceClient::new(conn.clone())
        .request(request("a"))
        .await
        .unwrap();
    let stats = server.connections();
    assert_eq!((stats.accepted, stats.open), (1, 1));

    drop(conn);
    let closed = server.wait_connections(|s| s.open == 0);
    let stats = settle("the connection to close", closed).await;
    assert_eq!(stats.accepted, 1);
    server.shutdown().await;
}

/// A per-call token from a tonic interceptor and a call-counting tower
/// layer, on the client (around the dialed channel) and on the server
/// (`Serve::layer`), which checks the token.
#[tokio::test]
async fn interceptors_and_layers_wrap_both_sides() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use connect_runtime::Serve;
    use tonic::service::interceptor::InterceptorLayer;
    use tower::ServiceBuilder;
    use tower::util::MapRequestLayer;

    let counting = |counter: &Arc<AtomicUsize>| {
        let counter = Arc::clone(counter);
        MapRequestLayer::new(move |call: http::Request<tonic::body::Body>| {
            counter.fetch_add(1, Ordering::SeqCst);
            call
        })
    };
    let (served_calls, sent_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let capture = Capture::new();
    let server = Serve::new(ServerChain::builder().with(capture.clone()).build())
        .layer(counting(&served_calls))
        .layer(InterceptorLayer::new(|call: tonic::Request<()>| match call
            .metadata()
            .get("authorization")
        {
            Some(token) if token == "Bearer per-call" => Ok(call),
            _ => Err(tonic::Status::unauthenticated("no token")),
        }))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();

    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    // Without the token the server's interceptor refuses the call.
    let bare = ClientChain::builder()
        .with(GrpcClient::new(conn.clone()))
        .build();
    let err = bare
        .request(Context::new(), request("bare"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let channel = ServiceBuilder::new()
        .layer(counting(&sent_calls))
        .layer(InterceptorLayer::new(|mut call: tonic::Request<()>| {
            call.metadata_mut()
                .insert("authorization", "Bearer per-call".parse().unwrap());
            Ok(call)
        }))
        .service(conn);
    let client = ClientChain::builder()
        .with(GrpcClient::new(channel))
        .build();
    let reply = client
        .request(Context::new(), request("wrapped"))
        .await
        .unwrap();
    client.close(Context::new(), reply).await.unwrap();

    assert_eq!(
        sent_calls.load(Ordering::SeqCst),
        2,
        "request and close, counted as sent"
    );
    assert_eq!(
        served_calls.load(Ordering::SeqCst),
        3,
        "and as served, with the refused one"
    );
    assert!(
        capture.seen().authorization.is_some(),
        "the chain saw the token"
    );
    server.shutdown().await;
}

/// A service whose name only starts like the chain's: it answers every
/// call `NOT_FOUND`, so a call that reaches it is told apart from one the
/// chain's server turned away as `UNIMPLEMENTED`.
#[derive(Clone)]
struct Lookalike;

impl tonic::server::NamedService for Lookalike {
    const NAME: &'static str = "networkservice.NetworkServiceV2";
}

impl tower::Service<http::Request<tonic::body::Body>> for Lookalike {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        std::future::ready(Ok(tonic::Status::not_found("the lookalike").into_http()))
    }
}

/// The chain's calls skip tonic's router (`Services`); every other call
/// still goes through it: an added service whose name only starts like the
/// chain's answers for itself, health answers, a service nobody serves is
/// `UNIMPLEMENTED`, none of them reaches the chain, and a `Serve::layer`
/// sees every call either way.
#[tokio::test]
async fn calls_beside_the_chains_go_through_tonics_router() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use connect_runtime::Serve;
    use connect_runtime::proto::connection::Connection;
    use connect_runtime::proto::networkservice::NetworkServiceRequest;
    use tonic_prost::ProstCodec;
    use tower::util::MapRequestLayer;

    let layered = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&layered);
    let capture = Capture::new();
    let server = Serve::new(ServerChain::builder().with(capture.clone()).build())
        .add_service(Lookalike)
        .layer(MapRequestLayer::new(
            move |call: http::Request<tonic::body::Body>| {
                counter.fetch_add(1, Ordering::SeqCst);
                call
            },
        ))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let conn = connect_tests::harness::dial_patiently(server.url()).await;

    let mut grpc = tonic::client::Grpc::new(conn.clone());
    for (path, answered) in [
        ("/networkservice.NetworkServiceV2/Request", Code::NotFound),
        ("/networkservice.NetworkServic/Request", Code::Unimplemented),
        ("/nobody.Serves/This", Code::Unimplemented),
    ] {
        grpc.ready().await.unwrap();
        let err = grpc
            .unary(
                tonic::Request::new(request("elsewhere")),
                http::uri::PathAndQuery::from_static(path),
                ProstCodec::<NetworkServiceRequest, Connection>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), answered, "{path}: {err:?}");
        assert!(capture.request().is_none(), "{path} reached the chain");
    }

    let status = HealthClient::new(conn.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
    let reply = client
        .request(Context::new(), request("chain"))
        .await
        .unwrap();
    assert_eq!(capture.request().unwrap().connection.unwrap().id, "chain");
    client.close(Context::new(), reply).await.unwrap();

    assert_eq!(
        layered.load(Ordering::SeqCst),
        6,
        "three calls beside the chain, a health check, a request and a close"
    );
    server.shutdown().await;
}

/// `max_concurrent_streams` bounds the calls one connection has at the
/// server at once: the next call waits (here past its deadline) instead of
/// reaching the chain.
#[tokio::test]
async fn the_stream_limit_holds_calls_beyond_it() {
    use connect_runtime::Serve;
    use connect_tests::elements::{Count, Gate, Op};

    let (count, gate) = (Count::new(), Gate::new());
    let server = Serve::new(
        ServerChain::builder()
            .with(count.clone())
            .with(gate.clone())
            .build(),
    )
    .max_concurrent_streams(Some(1))
    .bind("tcp://127.0.0.1:0")
    .await
    .unwrap();
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
    gate.arm(Op::Request);
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.request(Context::new(), request("held")).await }
    });
    settle("the first call to be held", gate.holding()).await;

    let waiting = Context::new().with_timeout(Duration::from_millis(200));
    let err = client
        .request(waiting, request("second"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(
        count.requests(),
        1,
        "the second call never reached the chain"
    );

    gate.release();
    held.await.unwrap().unwrap();
    server.shutdown().await;
}
