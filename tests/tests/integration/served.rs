//! The served path as deployed: `connect` served over gRPC, called by tonic
//! callers, in front of real remotes. One test (or more) per promise the Go
//! original keeps that this project once broke.

use std::sync::mpsc;
use std::time::Duration;

use connect_runtime::{ClientUrl, ConnectStats, ServerChain};
use connect_tests::caller::tonic_caller;
use connect_tests::harness::{PATIENCE, grpc_only};
use connect_tests::remote::start_tcp;
use connect_tests::request;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// How `connect` is told to shut down.
#[derive(Clone, Copy, Debug)]
enum ShutDown {
    Method,
    Token,
}

/// A request after shutdown is answered at once with `Unavailable`, and
/// leaves nothing behind, on a current-thread runtime too (where a request
/// that spins would hang the whole server). Run on a thread of its own so
/// that a hang fails the test instead of stalling the suite.
#[test]
fn a_request_after_shutdown_is_refused_at_once() {
    for how in [ShutDown::Method, ShutDown::Token] {
        let (done, outcome) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let result = runtime.block_on(async {
                let remote = start_tcp(ServerChain::default()).await;
                let token = CancellationToken::new();
                let connect = grpc_only()
                    .dial_timeout(Duration::from_secs(1))
                    .shutdown_on(token.clone())
                    .build();
                let served = start_tcp(
                    ServerChain::builder()
                        .with(ClientUrl::new(remote.url().clone()))
                        .with(connect.clone())
                        .build(),
                )
                .await;
                let mut caller = tonic_caller(served.url()).await;
                match how {
                    ShutDown::Method => connect.shutdown(),
                    ShutDown::Token => token.cancel(),
                }
                let status = caller.request(request("late")).await.unwrap_err();
                let stats: ConnectStats = connect.stats();
                (
                    status.code(),
                    status.message().to_owned(),
                    stats,
                    remote.connections().accepted,
                )
            });
            let _ = done.send(result);
        });
        let (code, message, stats, accepted) = outcome
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("{how:?}: a request after shutdown hung"));
        assert_eq!(code, Code::Unavailable, "{how:?}: {message}");
        assert!(
            message.contains("connect is shut down"),
            "{how:?}: {message}"
        );
        assert!(stats.is_idle(), "{how:?}: {stats:?}");
        assert_eq!(accepted, 0, "{how:?}: nothing was dialed");
    }
}
