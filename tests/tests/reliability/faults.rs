//! Faults: remotes that die, fail, hang or never answer, and a connect
//! server stopped with calls in flight. Every test ends with the leak check.

use std::time::{Duration, Instant};

use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{
    ClientChain, ClientUrl, Connect, Context, GrpcClient, Monitor, ServerChain, serve,
};
use connect_tests::elements::{Count, Faults, Gate, Ledger, Op};
use connect_tests::harness::{assert_no_leaks, grpc_only, settle};
use connect_tests::remote::{BlackHole, start_tcp};
use connect_tests::{connection, request};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use url::Url;

fn connect() -> Connect {
    Connect::builder(|ctx: &Context, conn| {
        ClientChain::builder()
            .with(Monitor::new(ctx, conn.clone()))
            .with(GrpcClient::new(conn))
            .build()
    })
    .dial_timeout(Duration::from_secs(1))
    .cleanup_timeout(Duration::from_secs(2))
    .build()
}

fn at(url: &Url) -> Context {
    Context::new().with_client_url(url.clone())
}

#[tokio::test]
async fn a_remote_killed_mid_request() {
    let connect = connect();
    let chain = ServerChain::builder().with(connect.clone()).build();
    let (count, gate) = (Count::new(), Gate::new());
    let server = start_tcp(
        ServerChain::builder()
            .with(count.clone())
            .with(gate.clone())
            .build(),
    )
    .await;
    let url = server.url().clone();

    gate.arm(Op::Request);
    let call = tokio::spawn({
        let (chain, ctx) = (chain.clone(), at(&url));
        async move { chain.request(ctx, request("doomed")).await }
    });
    settle("the request to reach the remote", gate.holding()).await;
    server.kill().await;

    let err = settle("the request", call).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("request of connection doomed"),
        "{err:?}"
    );
    assert_eq!(count.requests(), 1);
    assert_no_leaks(&connect, &[]).await;
}

#[tokio::test]
async fn a_remote_that_fails_requests_closes_or_both() {
    for (fail_request, fail_close) in [(true, false), (false, true), (true, true)] {
        let connect = connect();
        let chain = ServerChain::builder().with(connect.clone()).build();
        let (ledger, faults) = (Ledger::new(), Faults::new());
        let server = start_tcp(
            ServerChain::builder()
                .with(ledger.clone())
                .with(faults.clone())
                .build(),
        )
        .await;
        faults.set(fail_request, fail_close);

        let requested = chain.request(at(server.url()), request("f")).await;
        if fail_request {
            let err = requested.unwrap_err();
            assert_eq!(err.code(), Code::Unavailable);
            assert_eq!(
                err.message(),
                format!(
                    "connect: request of connection f via {}: injected request fault",
                    server.url()
                )
            );
            assert!(ledger.open().is_empty());
        } else {
            let conn = requested.unwrap();
            let err = chain.close(Context::new(), conn).await.unwrap_err();
            assert_eq!(err.code(), Code::Unavailable);
            assert_eq!(
                err.message(),
                format!(
                    "connect: close of connection f via {}: injected close fault",
                    server.url()
                )
            );
            // The remote refused the close, so it still holds the
            // connection; connect has let go of it all the same.
            assert_eq!(ledger.open(), ["f"]);
        }
        assert_no_leaks(&connect, &[&server]).await;
    }
}

#[tokio::test]
async fn a_remote_that_hangs_gets_the_callers_deadline_and_a_cleanup() {
    let connect = connect();
    let chain = ServerChain::builder().with(connect.clone()).build();
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let server = start_tcp(
        ServerChain::builder()
            .with(ledger.clone())
            .with(gate.clone())
            .build(),
    )
    .await;
    gate.arm(Op::Request); // held, and never released

    let started = Instant::now();
    let ctx = at(server.url()).with_timeout(Duration::from_millis(300));
    let err = chain.request(ctx, request("hung")).await.unwrap_err();

    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The remote may have acted on it: connect closed it there, in the
    // background, with a deadline of its own.
    assert_no_leaks(&connect, &[&server]).await;
    assert_eq!(ledger.closes(), 1, "closed at the remote");
    assert!(ledger.open().is_empty());
}

#[tokio::test]
async fn a_black_hole_is_bounded_by_the_callers_deadline_too() {
    let connect = grpc_only()
        .dial_timeout(Duration::from_secs(10))
        // The cleanup (finishing the abandoned call, which a black hole never
        // answers) is bounded by this.
        .cleanup_timeout(Duration::from_millis(500))
        .build();
    let chain = ServerChain::builder().with(connect.clone()).build();
    let hole = BlackHole::start().await;

    let started = Instant::now();
    let ctx = at(hole.url()).with_timeout(Duration::from_millis(300));
    let err = chain.request(ctx, request("void")).await.unwrap_err();

    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_no_leaks(&connect, &[]).await;
}

/// The passthrough (clienturl → connect) as a gRPC server, and the element
/// inside it.
async fn passthrough(
    remote: &Url,
    stop: &CancellationToken,
) -> (Connect, connect_runtime::ServerHandle) {
    let connect = connect();
    let chain = ServerChain::builder()
        .with(ClientUrl::new(remote.clone()))
        .with(connect.clone())
        .build();
    let server = serve("tcp://127.0.0.1:0", chain, stop.clone())
        .await
        .unwrap();
    (connect, server)
}

#[tokio::test]
async fn a_graceful_shutdown_lets_calls_in_flight_finish() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = start_tcp(
        ServerChain::builder()
            .with(ledger.clone())
            .with(gate.clone())
            .build(),
    )
    .await;
    let stop = CancellationToken::new();
    let (connect, server) = passthrough(remote.url(), &stop).await;
    let conn = connect_tests::harness::dial_patiently(server.url()).await;

    gate.arm(Op::Request);
    let call = tokio::spawn({
        let mut client = NetworkServiceClient::new(conn.clone());
        async move { client.request(request("late")).await }
    });
    settle("the call to reach the remote", gate.holding()).await;
    stop.cancel();
    gate.release();

    let reply = settle("the call in flight", call).await.unwrap().unwrap();
    assert_eq!(reply.into_inner().id, "late");
    drop(conn);
    settle("the passthrough to stop", server.stopped()).await;

    // Its clients close with it; the connection it still records fails to
    // close at the remote (the client is gone) but is forgotten.
    connect.shutdown();
    let chain = ServerChain::builder().with(connect.clone()).build();
    let err = chain
        .close(Context::new(), connection("late"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_no_leaks(&connect, &[&remote]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_stop_with_calls_in_flight_leaves_nothing() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = start_tcp(
        ServerChain::builder()
            .with(ledger.clone())
            .with(gate.clone())
            .build(),
    )
    .await;
    let stop = CancellationToken::new();
    let (connect, server) = passthrough(remote.url(), &stop).await;
    let conn = connect_tests::harness::dial_patiently(server.url()).await;

    gate.arm(Op::Request);
    let call = tokio::spawn({
        let mut client = NetworkServiceClient::new(conn);
        async move { client.request(request("cut")).await }
    });
    settle("the call to reach the remote", gate.holding()).await;
    server.kill().await;

    let err = settle("the cut call", call).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // The handler was dropped mid-call: connect closed at the remote what
    // the call may have created, and let go of its client.
    assert_no_leaks(&connect, &[&remote]).await;
    assert_eq!(ledger.closes(), 1, "closed at the remote");
    assert!(ledger.open().is_empty());
}
