//! The `connect` element against real remotes: the Go v0.5.0 suite ported,
//! the Go defects we fix, and the rest of the semantics in DESIGN.md.
//!
//! On the served path too: connect served over gRPC, called by tonic
//! callers, before remotes that behave like grpc-go.

use connect_runtime::proto::connection::{Connection, Mechanism};
use connect_runtime::proto::connectioncontext::ConnectionContext;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{
    ClientChain, ClientUrl, Connect, ConnectStats, Context, DialOptions, Element, GrpcClient,
    Hooks, Monitor, Next, Passthrough, ServerChain, ServerHandle,
};
use connect_tests::caller::tonic_caller;
use connect_tests::elements::{
    Capture, Count, Edit, FailAfterDeadline, Gate, InjectError, Ledger, Op, Panic, SetPath,
    ledger_chain,
};
use connect_tests::golike::GoLike;
use connect_tests::harness::{
    Front, PATIENCE, assert_no_leaks, at, connect_chain, connect_via, grpc_only,
    grpc_only_counting_dials, settle,
};
use connect_tests::raw::{After, ENHANCE_YOUR_CALM, GoAwayRelay, NO_ERROR};
use connect_tests::remote::{BlackHole, start_at, start_tcp, start_unix};
use connect_tests::{connection, request};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use url::Url;

fn mechanism(kind: &str) -> Mechanism {
    Mechanism {
        cls: "LOCAL".into(),
        r#type: kind.into(),
        ..Default::default()
    }
}

fn edit(key: &'static str, value: &'static str, kind: &str) -> Edit {
    Edit {
        key,
        value,
        mechanism: Some(mechanism(kind)),
    }
}

/// A remote that records what reaches it and answers with
/// `edit(key, value, kind)` applied.
async fn editing_remote(
    key: &'static str,
    value: &'static str,
    kind: &str,
) -> (Capture, ServerHandle) {
    let seen = Capture::new();
    let server = start_tcp(
        ServerChain::builder()
            .with(seen.clone())
            .with(edit(key, value, kind))
            .build(),
    )
    .await;
    (seen, server)
}

/// Go's `TestConnectServer_Request`: A, then the same id to B, then close.
#[tokio::test]
async fn request_moves_a_connection_between_remotes_and_closes_it() {
    let next = Capture::new();
    let client_side = Capture::new();
    let connect = connect_via(client_side.clone());
    let chain = ServerChain::builder()
        .with(connect.clone())
        .with(next.clone())
        .build();

    let (remote_a, a) = editing_remote("a", "A", "KERNEL").await;
    let (remote_b, b) = editing_remote("b", "B", "MEMIF").await;

    let mut original = request("id");
    {
        let conn = original.connection.as_mut().unwrap();
        conn.network_service = "network-service".into();
        conn.mechanism = Some(Box::new(mechanism("VFIO")));
        let mut context = ConnectionContext::default();
        context.extra_context.insert("not".into(), "empty".into());
        conn.context = Some(Box::new(context));
    }

    // A.
    let conn = chain.request(at(a.url()), original.clone()).await.unwrap();
    assert_eq!(client_side.request(), Some(original.clone()));
    assert_eq!(remote_a.request(), Some(original.clone()));
    let mut expected = original.clone();
    {
        let c = expected.connection.as_mut().unwrap();
        c.mechanism = Some(Box::new(mechanism("KERNEL")));
        c.context
            .as_mut()
            .unwrap()
            .extra_context
            .insert("a".into(), "A".into());
    }
    assert_eq!(next.request(), Some(expected.clone()));
    assert_eq!(Some(Box::new(conn.clone())), expected.connection);
    assert_eq!(connect.stats().clients.len(), 1);

    // The same id to B.
    let mut moved = original.clone();
    moved.connection = Some(Box::new(conn));
    let conn = chain.request(at(b.url()), moved.clone()).await.unwrap();
    assert_eq!(client_side.request(), Some(moved.clone()));
    assert_eq!(remote_a.request(), None, "A got the close");
    assert_eq!(remote_b.request(), Some(moved.clone()));
    let mut expected = moved.clone();
    {
        let c = expected.connection.as_mut().unwrap();
        c.mechanism = Some(Box::new(mechanism("MEMIF")));
        c.context
            .as_mut()
            .unwrap()
            .extra_context
            .insert("b".into(), "B".into());
    }
    assert_eq!(next.request(), Some(expected.clone()));
    assert_eq!(Some(Box::new(conn.clone())), expected.connection);
    let stats = connect.stats();
    assert_eq!(stats.records, 1);
    assert_eq!(stats.clients.len(), 1, "A's client is gone: {stats:?}");
    assert_eq!(stats.clients[0].url, b.url().as_str());

    // Close.
    chain.close(Context::new(), conn).await.unwrap();
    assert_eq!(client_side.request(), None);
    assert_eq!(remote_b.request(), None);
    assert_eq!(next.request(), None);
    assert_no_leaks(&connect, &[&a, &b]).await;
}

/// Go's `TestConnectServer_RequestParallel`: 1000 connections at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_parallel_shares_one_client_and_one_tcp_connection() {
    const CONNECTIONS: usize = 1000;
    let next = Count::new();
    let client_side = Count::new();
    let remote = Count::new();
    let connect = connect_via(client_side.clone());
    let chain = ServerChain::builder()
        .with(connect.clone())
        .with(next.clone())
        .build();
    let server = start_tcp(ServerChain::builder().with(remote.clone()).build()).await;

    // Each phase ends at a barrier the test also waits on; the next phase
    // starts at a second barrier the test passes only after checking.
    let barrier = || Arc::new(tokio::sync::Barrier::new(CONNECTIONS + 1));
    let (requested, refresh) = (barrier(), barrier());
    let (refreshed, close) = (barrier(), barrier());
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|k| {
            let (chain, url) = (chain.clone(), server.url().clone());
            let phases = [&requested, &refresh, &refreshed, &close].map(Arc::clone);
            tokio::spawn(async move {
                let [requested, refresh, refreshed, close] = phases;
                let mut req = request(&k.to_string());
                let conn = chain.request(at(&url), req.clone()).await.unwrap();
                requested.wait().await;
                refresh.wait().await;
                req.connection = Some(Box::new(conn));
                let conn = chain.request(at(&url), req).await.unwrap();
                refreshed.wait().await;
                close.wait().await;
                chain.close(Context::new(), conn).await.unwrap();
            })
        })
        .collect();

    settle("every first request", requested.wait()).await;
    for count in [&next, &client_side, &remote] {
        assert_eq!(count.requests(), CONNECTIONS);
    }
    let stats = connect.stats();
    assert_eq!(stats.records, CONNECTIONS);
    assert_eq!(stats.clients.len(), 1);
    assert_eq!(
        stats.clients[0].refs, CONNECTIONS,
        "one reference per connection"
    );
    refresh.wait().await;

    settle("every refresh", refreshed.wait()).await;
    for count in [&next, &client_side, &remote] {
        assert_eq!(count.requests(), 2 * CONNECTIONS);
    }
    assert_eq!(
        connect.stats().clients[0].refs,
        CONNECTIONS,
        "refreshes add none"
    );
    close.wait().await;

    for task in tasks {
        settle("a connection's close", task).await.unwrap();
    }
    for count in [&next, &client_side, &remote] {
        assert_eq!(count.closes(), CONNECTIONS);
    }
    assert_eq!(
        server.connections().accepted,
        1,
        "one TCP connection to the remote"
    );
    assert_no_leaks(&connect, &[&server]).await;
}

/// Go's `TestConnectServer_RequestFail`: the client chain fails.
#[tokio::test]
async fn a_failing_client_chain_leaves_nothing() {
    let connect = Connect::builder(|_: &Context, _conn| {
        ClientChain::builder()
            .with(InjectError::always(Code::Internal))
            .build()
    })
    .dial_timeout(Duration::from_secs(1))
    .build();
    let server = start_tcp(ServerChain::builder().with(Passthrough).build()).await;

    let err = connect_chain(&connect)
        .request(at(server.url()), request("id"))
        .await
        .unwrap_err();

    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().contains("connection id"), "{err:?}");
    assert!(err.message().contains("injected request error"), "{err:?}");
    assert_no_leaks(&connect, &[&server]).await;
}

/// Go's `TestConnectServer_RequestNextServerError`: the client side is closed.
#[tokio::test]
async fn when_next_fails_the_client_side_is_closed() {
    let client_side = Capture::new();
    let connect = connect_via(client_side.clone());
    let chain = ServerChain::builder()
        .with(connect.clone())
        .with(InjectError::always(Code::FailedPrecondition))
        .build();
    let (remote, server) = editing_remote("a", "A", "KERNEL").await;

    let err = chain
        .request(at(server.url()), request("id"))
        .await
        .unwrap_err();

    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        client_side.request(),
        None,
        "the close went through the client chain"
    );
    assert_eq!(remote.request(), None, "and reached the remote");
    assert_no_leaks(&connect, &[&server]).await;
}

/// Go's `TestConnectServer_RemoteRestarted`, with its monitor: the remote
/// stops (health `NOT_SERVING`, then gone) and its client closes; a refresh
/// while it is gone fails `Unavailable` within the dial timeout and keeps
/// the record; the first refresh once it is back goes through a new client.
#[tokio::test]
async fn a_restarted_remote_is_reconnected() {
    let connect = connect_via(Passthrough);
    let chain = connect_chain(&connect);
    let remote = Count::new();
    let server = start_tcp(ServerChain::builder().with(remote.clone()).build()).await;
    let url = server.url().clone();

    let conn = chain.request(at(&url), request("id")).await.unwrap();

    // Stop the remote. Its health turns NOT_SERVING, the monitor cancels
    // the client, the client's connection closes, and the shutdown ends.
    settle("the remote to shut down", server.shutdown()).await;
    settle(
        "the client to be dropped",
        connect.wait_for(|stats| stats.clients.is_empty()),
    )
    .await;

    let mut refresh = request("id");
    refresh.connection = Some(Box::new(conn));
    let err = chain.request(at(&url), refresh.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        connect.stats().records,
        1,
        "the record stays for the next try"
    );

    // Restart on the same port: the next refresh dials afresh and goes on.
    let restarted = start_at(&url, ServerChain::builder().with(remote.clone()).build()).await;
    let conn = chain.request(at(&url), refresh).await.unwrap();
    assert_eq!(remote.requests(), 2);
    let stats = connect.stats();
    assert_eq!((stats.records, stats.clients.len()), (1, 1), "{stats:?}");
    assert_eq!(stats.clients[0].refs, 1, "{stats:?}");

    chain.close(Context::new(), conn).await.unwrap();
    assert_eq!(remote.closes(), 1);
    assert_no_leaks(&connect, &[&restarted]).await;
}

/// A hard restart (the remote dies without a GOAWAY and comes back, empty)
/// costs nothing but a new connection: the first refresh after it is back
/// goes over a new connection of the same client, and so does the close.
#[tokio::test]
async fn the_first_refresh_after_a_hard_restart_goes_through() {
    let connect = grpc_only().build();
    let chain = connect_chain(&connect);
    let remote = Count::new();
    let server = start_tcp(ServerChain::builder().with(remote.clone()).build()).await;
    let url = server.url().clone();
    let conn = chain.request(at(&url), request("id")).await.unwrap();

    server.kill().await;
    let restarted = start_at(&url, ServerChain::builder().with(remote.clone()).build()).await;
    let mut refresh = request("id");
    refresh.connection = Some(Box::new(conn));
    let conn = chain.request(at(&url), refresh).await.unwrap();
    assert_eq!(remote.requests(), 2);
    let stats = connect.stats();
    assert_eq!(stats.clients.len(), 1, "{stats:?}");
    assert_eq!(stats.clients[0].dials, 2, "one new connection: {stats:?}");

    chain.close(Context::new(), conn).await.unwrap();
    assert_eq!(remote.closes(), 1);
    assert_no_leaks(&connect, &[&restarted]).await;
}

/// Connections bound to a client that closed because its remote could not
/// be reached keep their records. While the remote is down their refreshes
/// fail `Unavailable`; once it is back, a burst of them moves to one new
/// client (one dial), and their closes reach it.
#[tokio::test]
async fn connections_of_a_closed_client_move_together_to_one_new_client() {
    const CONNECTIONS: usize = 8;
    let (connect, dials) = grpc_only_counting_dials();
    let connect = connect.dial_timeout(Duration::from_secs(1)).build();
    let chain = connect_chain(&connect);
    let remote = Count::new();
    let server = start_tcp(ServerChain::builder().with(remote.clone()).build()).await;
    let url = server.url().clone();
    let mut conns = Vec::new();
    for k in 0..CONNECTIONS {
        conns.push(
            chain
                .request(at(&url), request(&format!("c{k}")))
                .await
                .unwrap(),
        );
    }
    assert_eq!(dials.load(Ordering::SeqCst), 1);

    // Down: the next call's new connection fails, which closes the client.
    server.kill().await;
    let mut refresh = request("c0");
    refresh.connection = Some(Box::new(conns[0].clone()));
    let err = chain.request(at(&url), refresh).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    settle(
        "the closed client to leave",
        connect.wait_for(|stats| stats.clients.is_empty()),
    )
    .await;
    assert_eq!(connect.stats().records, CONNECTIONS);

    // Back: every connection refreshes at once, over one new dial.
    let restarted = start_at(&url, ServerChain::builder().with(remote.clone()).build()).await;
    let refreshes = conns.iter().map(|conn| {
        let mut refresh = request(&conn.id);
        refresh.connection = Some(Box::new(conn.clone()));
        chain.request(at(&url), refresh)
    });
    let refreshed: Vec<_> = futures_util::future::join_all(refreshes).await;
    for result in &refreshed {
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(dials.load(Ordering::SeqCst), 2, "one dial for the burst");
    let stats = connect.stats();
    assert_eq!(stats.clients.len(), 1, "{stats:?}");
    assert_eq!(stats.clients[0].refs, CONNECTIONS, "{stats:?}");

    for conn in refreshed {
        chain.close(Context::new(), conn.unwrap()).await.unwrap();
    }
    assert_eq!(remote.closes(), CONNECTIONS);
    assert_no_leaks(&connect, &[&restarted]).await;
}

/// The close of a connection whose client has closed goes through the URL's
/// current client to the remote, and always on through the chain.
#[tokio::test]
async fn a_close_after_its_client_closed_reaches_the_remote() {
    let connect = grpc_only().dial_timeout(Duration::from_secs(1)).build();
    let chain = connect_chain(&connect);
    let remote = Count::new();
    let server = start_tcp(ServerChain::builder().with(remote.clone()).build()).await;
    let url = server.url().clone();
    let kept = chain.request(at(&url), request("kept")).await.unwrap();
    let probe = chain.request(at(&url), request("probe")).await.unwrap();

    server.kill().await;
    let mut refresh = request("probe");
    refresh.connection = Some(Box::new(probe.clone()));
    chain.request(at(&url), refresh).await.unwrap_err();
    settle(
        "the closed client to leave",
        connect.wait_for(|stats| stats.clients.is_empty()),
    )
    .await;

    let restarted = start_at(&url, ServerChain::builder().with(remote.clone()).build()).await;
    chain.close(Context::new(), kept).await.unwrap();
    chain.close(Context::new(), probe).await.unwrap();
    assert_eq!(remote.closes(), 2);
    assert_no_leaks(&connect, &[&restarted]).await;
}

/// Go's `TestConnectServer_DialTimeout`.
#[tokio::test]
async fn a_remote_that_never_answers_fails_within_the_dial_timeout() {
    let connect = grpc_only().dial_timeout(Duration::from_millis(100)).build();
    let hole = BlackHole::start().await;

    let caller = at(hole.url()).with_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let err = connect_chain(&connect)
        .request(caller, request("id"))
        .await
        .unwrap_err();

    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(hole.url().as_str()), "{err:?}");
    assert!(err.message().contains("no answer"), "{err:?}");
    assert_no_leaks(&connect, &[]).await;
}

/// The dial timeout set on the builder holds whether it was set before or
/// after the dial options, whose own timeout it overrides.
#[tokio::test]
async fn the_builders_dial_timeout_holds_whatever_the_order() {
    let hole = BlackHole::start().await;
    let patient = DialOptions::new().timeout(Duration::from_secs(30));
    let before = grpc_only()
        .dial_timeout(Duration::from_millis(100))
        .dial_options(patient.clone())
        .build();
    let after = grpc_only()
        .dial_options(patient)
        .dial_timeout(Duration::from_millis(100))
        .build();
    for connect in [before, after] {
        let err = connect_chain(&connect)
            .request(at(hole.url()), request("id"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("within 100ms"), "{err:?}");
        assert_no_leaks(&connect, &[]).await;
    }
}

/// More new connections at once than hyper opens streams before the remote's
/// SETTINGS arrive (100): the calls beyond that wait in hyper for the
/// SETTINGS, and all of them get through on the one dial.
#[tokio::test]
async fn a_burst_larger_than_the_pre_settings_stream_limit_gets_through_on_one_dial() {
    let (connect, dials) = grpc_only_counting_dials();
    let connect = connect.dial_timeout(Duration::from_secs(5)).build();
    let chain = connect_chain(&connect);
    let remote = start_tcp(ServerChain::default()).await;

    let calls = (0..300).map(|k| {
        let (chain, url) = (chain.clone(), remote.url().clone());
        tokio::spawn(async move {
            chain
                .request(at(&url), request(&format!("burst-{k}")))
                .await
        })
    });
    let mut replies = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        replies.push(call.await.unwrap().unwrap());
    }

    assert_eq!(dials.load(Ordering::SeqCst), 1);
    assert_eq!(remote.connections().accepted, 1);
    for reply in replies {
        chain.close(Context::new(), reply).await.unwrap();
    }
    assert_no_leaks(&connect, &[&remote]).await;
}

/// The same burst to a remote that never answers: the calls waiting for its
/// SETTINGS fail with the dial's error, within the dial timeout, like the
/// hundred sent ahead of them.
#[tokio::test]
async fn a_burst_to_a_remote_that_never_answers_fails_within_the_dial_timeout() {
    let connect = grpc_only().dial_timeout(Duration::from_millis(100)).build();
    let chain = connect_chain(&connect);
    let hole = BlackHole::start().await;

    let started = Instant::now();
    let calls: Vec<_> = (0..150)
        .map(|k| {
            let (chain, url) = (chain.clone(), hole.url().clone());
            let caller = at(&url).with_timeout(Duration::from_secs(5));
            tokio::spawn(async move { chain.request(caller, request(&format!("void-{k}"))).await })
        })
        .collect();
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("no answer"), "{err:?}");
    }

    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(hole.accepted(), 1);
    assert_no_leaks(&connect, &[]).await;
}

/// Go's `TestConnect_CancelDuringRequest`: one caller gives up mid-request.
#[tokio::test]
async fn a_caller_cancelling_mid_request_does_not_disturb_the_client() {
    let factory_calls = Arc::new(AtomicUsize::new(0));
    let calls = Arc::clone(&factory_calls);
    let connect = Connect::builder(move |ctx: &Context, conn| {
        calls.fetch_add(1, Ordering::SeqCst);
        ClientChain::builder()
            .with(Monitor::new(ctx, conn.clone()))
            .with(GrpcClient::new(conn))
            .build()
    })
    .dial_timeout(Duration::from_secs(1))
    .build();
    let chain = connect_chain(&connect);
    let gate = Gate::new();
    let remote = Count::new();
    let server = start_tcp(
        ServerChain::builder()
            .with(remote.clone())
            .with(gate.clone())
            .build(),
    )
    .await;
    let url = server.url().clone();

    let first = chain.request(at(&url), request("first")).await.unwrap();
    assert_eq!(factory_calls.load(Ordering::SeqCst), 1);

    // The second caller cancels while the remote is handling its request.
    gate.arm(Op::Request);
    let token = tokio_util::sync::CancellationToken::new();
    let caller = at(&url).with_cancellation_token(token.clone());
    let cancelled = tokio::spawn({
        let chain = chain.clone();
        async move { chain.request(caller, request("parked")).await }
    });
    settle("the request to reach the remote", gate.holding()).await;
    token.cancel();
    let err = settle("the cancelled request", cancelled)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::Cancelled, "{err:?}");

    // Everyone else carries on, on the same client.
    let mut refresh = request("first");
    refresh.connection = Some(Box::new(first));
    let first = chain.request(at(&url), refresh).await.unwrap();
    let third = chain.request(at(&url), request("third")).await.unwrap();
    assert_eq!(factory_calls.load(Ordering::SeqCst), 1, "no new client");

    chain.close(Context::new(), first).await.unwrap();
    chain.close(Context::new(), third).await.unwrap();
    assert_no_leaks(&connect, &[&server]).await;
    // The cancelled connection was closed at the remote as well.
    assert_eq!(remote.closes(), 3);
}

/// Go defect (a): a URL change whose new request fails leaked the new
/// client's reference and kept a stale record.
#[tokio::test]
async fn a_url_change_whose_request_fails_leaves_nothing() {
    let connect = connect_via(Passthrough);
    let chain = connect_chain(&connect);
    let remote_a = Count::new();
    let a = start_tcp(ServerChain::builder().with(remote_a.clone()).build()).await;
    let b = start_tcp(
        ServerChain::builder()
            .with(InjectError {
                on_request: Some(Code::ResourceExhausted),
                on_close: None,
            })
            .build(),
    )
    .await;

    let conn = chain.request(at(a.url()), request("id")).await.unwrap();
    let mut moved = request("id");
    moved.connection = Some(Box::new(conn));
    let err = chain.request(at(b.url()), moved).await.unwrap_err();

    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(remote_a.closes(), 1, "A got the close");
    let stats = connect.stats();
    assert_eq!(stats.records, 0, "no stale record: {stats:?}");
    assert_no_leaks(&connect, &[&a, &b]).await;
}

/// Go defect (b): when `next` failed, the caller saw the close's error.
#[tokio::test]
async fn when_next_fails_its_error_wins_over_the_close_error() {
    let connect = connect_via(Passthrough);
    let chain = ServerChain::builder()
        .with(connect.clone())
        .with(InjectError::always(Code::PermissionDenied))
        .build();
    let server = start_tcp(
        ServerChain::builder()
            .with(InjectError {
                on_request: None,
                on_close: Some(Code::Aborted),
            })
            .build(),
    )
    .await;

    let err = chain
        .request(at(server.url()), request("id"))
        .await
        .unwrap_err();

    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(err.message(), "injected request error");
    assert_no_leaks(&connect, &[&server]).await;
}

/// Go defect (c): the close after a failure ran on the request's (expired)
/// context, so it never reached the remote.
#[tokio::test]
async fn the_close_after_a_failure_has_a_deadline_of_its_own() {
    let connect = connect_via(Passthrough);
    let chain = ServerChain::builder()
        .with(connect.clone())
        .with(FailAfterDeadline)
        .build();
    let remote = Count::new();
    let server = start_tcp(ServerChain::builder().with(remote.clone()).build()).await;

    let caller = at(server.url()).with_timeout(Duration::from_secs(1));
    let err = chain.request(caller, request("id")).await.unwrap_err();

    assert_eq!(err.code(), Code::DeadlineExceeded);
    // The caller has its answer at its deadline; the close follows, in
    // the background, before connect is idle.
    assert_no_leaks(&connect, &[&server]).await;
    assert_eq!(remote.requests(), 1);
    assert_eq!(
        remote.closes(),
        1,
        "the close reached the remote after the deadline"
    );
}

#[tokio::test]
async fn closing_an_unknown_id_still_calls_next_and_says_so() {
    let connect = connect_via(Passthrough);
    let next = Count::new();
    let chain = ServerChain::builder()
        .with(connect.clone())
        .with(next.clone())
        .build();

    let err = chain
        .close(Context::new(), connection("ghost"))
        .await
        .unwrap_err();

    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message()
            .contains("no client found for connection ghost"),
        "{err:?}"
    );
    assert_eq!(next.closes(), 1);
    assert_no_leaks(&connect, &[]).await;
}

#[tokio::test]
async fn when_both_closes_fail_both_errors_are_reported() {
    let connect = connect_via(Passthrough);
    let next = Count::new();
    let chain = ServerChain::builder()
        .with(connect.clone())
        .with(next.clone())
        .with(InjectError {
            on_request: None,
            on_close: Some(Code::PermissionDenied),
        })
        .build();
    let server = start_tcp(
        ServerChain::builder()
            .with(InjectError {
                on_request: None,
                on_close: Some(Code::Aborted),
            })
            .build(),
    )
    .await;

    let conn = chain
        .request(at(server.url()), request("id"))
        .await
        .unwrap();
    let err = chain.close(Context::new(), conn).await.unwrap_err();

    assert_eq!(err.code(), Code::PermissionDenied, "next's code: {err:?}");
    assert!(err.message().contains("injected close error"), "{err:?}");
    assert!(err.message().contains("close of connection id"), "{err:?}");
    assert_eq!(next.closes(), 1);
    assert_no_leaks(&connect, &[&server]).await;
}

#[tokio::test]
async fn a_refresh_reuses_the_client_and_adds_no_reference() {
    let connect = connect_via(Passthrough);
    let chain = connect_chain(&connect);
    let remote = Count::new();
    let server = start_tcp(ServerChain::builder().with(remote.clone()).build()).await;

    let mut req = request("id");
    let conn = chain.request(at(server.url()), req.clone()).await.unwrap();
    req.connection = Some(Box::new(conn));
    for _ in 0..3 {
        let conn = chain.request(at(server.url()), req.clone()).await.unwrap();
        req.connection = Some(Box::new(conn));
        assert_eq!(connect.stats().clients[0].refs, 1);
    }
    assert_eq!(remote.requests(), 4);
    assert_eq!(server.connections().accepted, 1);

    chain
        .close(Context::new(), *req.connection.unwrap())
        .await
        .unwrap();
    assert_no_leaks(&connect, &[&server]).await;
}

#[tokio::test]
async fn unix_socket_remotes_and_a_move_from_tcp_to_unix() {
    let dir = TempDir::new().unwrap();
    let connect = connect_via(Passthrough);
    let chain = connect_chain(&connect);
    let tcp_remote = Count::new();
    let tcp = start_tcp(ServerChain::builder().with(tcp_remote.clone()).build()).await;
    let unix_remote = Count::new();
    let unix = start_unix(
        dir.path(),
        "remote.sock",
        ServerChain::builder().with(unix_remote.clone()).build(),
    )
    .await;

    let on_unix = chain.request(at(unix.url()), request("u")).await.unwrap();
    let conn = chain.request(at(tcp.url()), request("t")).await.unwrap();
    let mut moved = request("t");
    moved.connection = Some(Box::new(conn));
    let moved = chain.request(at(unix.url()), moved).await.unwrap();

    assert_eq!(tcp_remote.closes(), 1, "left the TCP remote");
    assert_eq!(unix_remote.requests(), 2);
    let stats = connect.stats();
    assert_eq!(stats.clients.len(), 1);
    assert_eq!(stats.clients[0].refs, 2);

    chain.close(Context::new(), on_unix).await.unwrap();
    chain.close(Context::new(), moved).await.unwrap();
    assert_eq!(unix_remote.closes(), 2);
    assert_no_leaks(&connect, &[&tcp, &unix]).await;
}

#[tokio::test]
async fn shutting_down_connect_closes_every_client() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let connect = grpc_only().shutdown_on(shutdown.clone()).build();
    let chain = connect_chain(&connect);
    let a = start_tcp(ServerChain::default()).await;
    let b = start_tcp(ServerChain::default()).await;
    let on_a = chain.request(at(a.url()), request("1")).await.unwrap();
    let on_b = chain.request(at(b.url()), request("2")).await.unwrap();
    assert_eq!(a.connections().open + b.connections().open, 2);

    shutdown.cancel();
    for remote in [&a, &b] {
        settle(
            "the remote to see its connection close",
            remote.wait_connections(|c| c.open == 0),
        )
        .await;
    }
    settle(
        "the clients to go",
        connect.wait_for(|stats| stats.clients.is_empty()),
    )
    .await;

    // The connections are still known, and close as far as they can.
    assert_eq!(connect.stats().records, 2);
    for conn in [on_a, on_b] {
        let err = chain.close(Context::new(), conn).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    assert_no_leaks(&connect, &[&a, &b]).await;
}

#[tokio::test]
async fn dropping_connect_closes_every_client() {
    let connect = connect_via(Passthrough);
    let chain = connect_chain(&connect);
    let server = start_tcp(ServerChain::default()).await;
    chain.request(at(server.url()), request("1")).await.unwrap();
    chain.request(at(server.url()), request("2")).await.unwrap();
    assert_eq!(server.connections().open, 1);

    drop(chain);
    drop(connect);

    settle(
        "the remote to see the connection close",
        server.wait_connections(|c| c.open == 0),
    )
    .await;
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_dialed() {
    let connect = connect_via(Passthrough);
    let next = Count::new();
    let chain = ServerChain::builder()
        .with(connect.clone())
        .with(next.clone())
        .build();
    let url: Url = "tcp://127.0.0.1:9".parse().unwrap();

    let no_url = chain
        .request(Context::new(), request("id"))
        .await
        .unwrap_err();
    assert_eq!(no_url.code(), Code::InvalidArgument);
    assert!(
        no_url.message().contains("no client URL for connection id"),
        "{no_url:?}"
    );

    let bad_scheme = chain
        .request(at(&"http://127.0.0.1:9".parse().unwrap()), request("id"))
        .await
        .unwrap_err();
    assert_eq!(bad_scheme.code(), Code::InvalidArgument);
    assert!(
        bad_scheme.message().contains("unsupported scheme `http`"),
        "{bad_scheme:?}"
    );

    let no_connection = chain
        .request(at(&url), NetworkServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(no_connection.code(), Code::InvalidArgument);

    let empty_id = chain.request(at(&url), request("")).await.unwrap_err();
    assert_eq!(empty_id.code(), Code::InvalidArgument);
    assert!(empty_id.message().contains("empty id"), "{empty_id:?}");

    assert_eq!(next.requests(), 0, "next is not called");
    assert_no_leaks(&connect, &[]).await;
}

#[tokio::test]
async fn a_panicking_factory_is_an_error_not_a_crash() {
    let connect =
        Connect::builder(|_: &Context, _conn| -> ClientChain { panic!("factory exploded") })
            .dial_timeout(Duration::from_secs(1))
            .build();
    let chain = connect_chain(&connect);
    let server = start_tcp(ServerChain::default()).await;

    for id in ["1", "2"] {
        let err = chain
            .request(at(server.url()), request(id))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal);
        assert!(err.message().contains("factory exploded"), "{err:?}");
    }
    assert_no_leaks(&connect, &[&server]).await;
}

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

/// A client-chain element that panics on a request, or on the cleanup
/// close after the rest of the chain failed, leaks no reference, record,
/// turn or connection.
#[tokio::test]
async fn a_panicking_element_leaks_nothing() {
    for op in [Op::Request, Op::Close] {
        let (ledger, gate) = (Ledger::new(), Gate::new());
        let remote = GoLike::tcp(ledger_chain(&ledger, &gate)).await;
        let panic = Panic::new();
        let element = panic.clone();
        let connect = Connect::builder(move |_: &Context, conn| {
            ClientChain::builder()
                .with(element.clone())
                .with(GrpcClient::new(conn))
                .build()
        })
        .dial_timeout(Duration::from_secs(1))
        .build();
        // The rest of the server chain fails, so that connect closes.
        let served = start_tcp(
            ServerChain::builder()
                .with(ClientUrl::new(remote.url().clone()))
                .with(connect.clone())
                .with(InjectError {
                    on_request: (op == Op::Close).then_some(Code::Aborted),
                    on_close: None,
                })
                .build(),
        )
        .await;
        let mut caller = tonic_caller(served.url()).await;

        panic.arm(op);
        let status = caller.request(request("p")).await.unwrap_err();
        assert_ne!(status.code(), Code::Ok, "{op:?}");
        assert_no_leaks(&connect, &[]).await;
        remote.wait_connections(|c| c.open == 0).await;
        assert_eq!(ledger.overlaps(), 0);
    }
}

/// A graceful GOAWAY (a remote recycling its connections) is not a dead
/// remote: records and references stay, and the next calls go over one new
/// connection, counted as the client's second dial.
#[tokio::test]
async fn a_graceful_goaway_keeps_records_and_goes_over_one_new_connection() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = GoLike::tcp(ledger_chain(&ledger, &gate)).await;
    let (builder, factory_runs) = grpc_only_counting_dials();
    let connect = builder.dial_timeout(Duration::from_secs(1)).build();
    let front = Front::new(&connect, remote.url()).await;
    let a = front.request("a").await.unwrap();
    let b = front.request("b").await.unwrap();

    remote.recycle();
    remote.wait_connections(|c| c.open == 0).await;

    let (a, b) = (
        front.refresh(&a).await.unwrap(),
        front.refresh(&b).await.unwrap(),
    );
    let stats = connect.stats();
    assert_eq!(stats.records, 2, "{stats:?}");
    assert_eq!(
        (stats.clients[0].refs, stats.clients[0].dials),
        (2, 2),
        "{stats:?}"
    );
    assert_eq!(factory_runs.load(Ordering::SeqCst), 1, "the same client");
    assert_eq!(remote.connections().accepted, 2);

    front.close(a).await.unwrap();
    front.close(b).await.unwrap();
    assert!(ledger.open().is_empty());
    assert_no_leaks(&connect, &[]).await;
    remote.wait_connections(|c| c.open == 0).await;
}

/// The closes connect makes on its own behalf (a connection moving to
/// another remote, a call abandoned before its reply) carry the connection
/// as last known: with its path and mechanism, not just its id, and as the
/// latest refresh returned it.
#[tokio::test]
async fn closes_on_connects_own_behalf_carry_the_connection_as_last_known() {
    let seen_at_a = Capture::new();
    let kernel = Mechanism {
        r#type: "KERNEL".into(),
        ..Default::default()
    };
    let a = start_tcp(
        ServerChain::builder()
            .with(seen_at_a.clone())
            .with(SetPath("remote-a"))
            .with(Edit {
                key: "at",
                value: "a",
                mechanism: Some(kernel.clone()),
            })
            .build(),
    )
    .await;
    let b = start_tcp(ServerChain::default()).await;
    let connect = grpc_only().dial_timeout(Duration::from_secs(1)).build();
    let chain = ServerChain::builder().with(connect.clone()).build();
    let at = |url: &Url| Context::new().with_client_url(url.clone());

    let first = chain.request(at(a.url()), request("c")).await.unwrap();
    // A refresh that changes the connection replaces the record.
    let mut again = first.clone();
    again.labels.insert("generation".into(), "2".into());
    let refresh = NetworkServiceRequest {
        connection: Some(Box::new(again)),
        ..Default::default()
    };
    let on_a = chain.request(at(a.url()), refresh).await.unwrap();
    assert_ne!(on_a, first);
    // The move asks B for a bare connection; A must get what it returned.
    let moved = chain.request(at(b.url()), request("c")).await.unwrap();
    let closed = seen_at_a.seen().closed.expect("A saw a close");
    assert_eq!(
        closed, on_a,
        "A's close carried the connection as A returned it"
    );
    assert_eq!(closed.mechanism, Some(Box::new(kernel)));
    assert_eq!(closed.path.unwrap().path_segments[0].name, "remote-a");

    chain.close(Context::new(), moved).await.unwrap();
    assert_no_leaks(&connect, &[&a, &b]).await;
}

/// Durations too large for the clock saturate instead of panicking: a
/// caller's timeout, connect's cleanup timeout and dial timeout.
#[tokio::test]
async fn huge_durations_saturate() {
    let ctx = Context::new().with_timeout(Duration::MAX);
    assert!(ctx.remaining().unwrap() > Duration::from_secs(86_400 * 365));
    let remote = start_tcp(ServerChain::default()).await;
    let connect = grpc_only()
        .dial_timeout(Duration::MAX)
        .cleanup_timeout(Duration::MAX)
        .build();
    let chain = ServerChain::builder()
        .with(connect.clone())
        .with(InjectError {
            on_request: Some(Code::Aborted),
            on_close: None,
        })
        .build();
    let ctx = ctx.with_client_url(remote.url().clone());
    let status = chain.request(ctx, request("big")).await.unwrap_err();
    // A server's bounds saturate too.
    let patient = connect_runtime::Serve::new(ServerChain::default())
        .handshake_timeout(Duration::MAX)
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let conn = connect_runtime::dial(patient.url(), &connect_runtime::DialOptions::new())
        .await
        .unwrap();
    NetworkServiceClient::new(conn)
        .request(request("patient"))
        .await
        .unwrap();
    patient.shutdown().await;
    assert_eq!(
        status.code(),
        Code::Aborted,
        "next's error, after the cleanup close"
    );
    assert_no_leaks(&connect, &[&remote]).await;
}

/// A call whose deadline passed before anything was sent sends nothing:
/// no request, and no cleanup Close either.
#[tokio::test]
async fn a_call_whose_deadline_passed_before_sending_sends_no_close() {
    let count = Count::new();
    let remote = start_tcp(ServerChain::builder().with(count.clone()).build()).await;
    let connect = grpc_only().dial_timeout(Duration::from_secs(1)).build();
    let chain = ServerChain::builder().with(connect.clone()).build();
    let at = || Context::new().with_client_url(remote.url().clone());
    let kept = chain.request(at(), request("kept")).await.unwrap();

    let late = at().with_timeout(Duration::ZERO);
    let status = chain.request(late, request("late")).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    settle("connect to settle", connect.settled()).await;
    assert_eq!(
        (count.requests(), count.closes()),
        (1, 0),
        "nothing more was sent"
    );

    chain.close(Context::new(), kept).await.unwrap();
    assert_no_leaks(&connect, &[&remote]).await;
}

/// The same on the served path, as the issue saw it: five connections
/// through a served connect to an endpoint that sends `ENHANCE_YOUR_CALM`
/// (or resets after a graceful GOAWAY); every refresh and every close
/// reaches the endpoint over a new connection.
#[tokio::test]
async fn refreshes_and_closes_go_on_after_an_endpoint_ends_connections_rudely() {
    for (code, after) in [(ENHANCE_YOUR_CALM, After::Close), (NO_ERROR, After::Reset)] {
        let ledger = Ledger::new();
        let endpoint = GoLike::tcp(ServerChain::builder().with(ledger.clone()).build()).await;
        let relay = GoAwayRelay::start(endpoint.url()).await;
        let connect = grpc_only().dial_timeout(Duration::from_secs(5)).build();
        let served = start_tcp(
            ServerChain::builder()
                .with(ClientUrl::new(relay.url().clone()))
                .with(connect.clone())
                .build(),
        )
        .await;
        let mut caller = tonic_caller(served.url()).await;
        let mut conns = Vec::new();
        for k in 0..5 {
            let reply = caller.request(request(&format!("c{k}"))).await.unwrap();
            conns.push(reply.into_inner());
        }

        relay.go_away(code, "too_many_pings", after);
        let ended = connect.wait_for(|s| s.clients.iter().any(|c| c.ended_connections == 1));
        settle("connect's client to see its connection end", ended).await;
        for conn in &mut conns {
            let mut refresh = request(&conn.id);
            refresh.connection = Some(Box::new(conn.clone()));
            let reply = caller.request(refresh).await;
            let reply = reply.unwrap_or_else(|s| panic!("{code} {after:?}: {s:?}"));
            *conn = reply.into_inner();
        }
        for conn in conns {
            caller.close(conn).await.unwrap();
        }
        assert!(ledger.open().is_empty(), "{:?}", ledger.open());
        assert_eq!(ledger.closes(), 5);
        assert_eq!(relay.accepted(), 2, "one new connection");
        served.shutdown().await;
        assert_no_leaks(&connect, &[]).await;
        endpoint.stop().await;
    }
}

/// A caller's credential, as a value in its context.
#[derive(Clone, Debug, PartialEq)]
struct Token(&'static str);

/// A client element that refuses a call whose context lacks the caller's
/// [`Token`], as an element that needs one for the remote would.
#[derive(Clone, Default, Element)]
#[element(client)]
struct NeedsToken;

impl Hooks for NeedsToken {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        match ctx.value::<Token>() {
            Some(_) => next.request(ctx, request).await,
            None => Err(Status::unauthenticated("no token in the context")),
        }
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        match ctx.value::<Token>() {
            Some(_) => next.close(ctx, connection).await,
            None => Err(Status::unauthenticated("no token in the context")),
        }
    }
}

/// Sets the caller's [`Token`] in the context, as an authenticating
/// element in front of connect would.
#[derive(Clone, Default, Element)]
#[element(server)]
struct SetToken;

impl Hooks for SetToken {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        next.request(ctx.with_value(Token("t0ken")), request).await
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        next.close(ctx.with_value(Token("t0ken")), connection).await
    }
}

/// The closes connect sends on its own behalf keep the values of the call
/// that caused them (Go's `postpone.ContextWithValues`), without its
/// deadline or cancellation: after the rest of the chain failed, after a
/// move, and after the caller went away.
#[tokio::test]
async fn cleanup_closes_keep_the_callers_context_values() {
    let ledger = Ledger::new();
    let gate = Gate::new();
    let remote = start_tcp(
        ServerChain::builder()
            .with(ledger.clone())
            .with(gate.clone())
            .build(),
    )
    .await;
    let other = start_tcp(ServerChain::default()).await;
    let connect = Connect::builder(|_: &Context, conn| {
        ClientChain::builder()
            .with(NeedsToken)
            .with(GrpcClient::new(conn))
            .build()
    })
    .dial_timeout(Duration::from_secs(5))
    .build();
    let with = |url: &url::Url| {
        ServerChain::builder()
            .with(SetToken)
            .with(ClientUrl::new(url.clone()))
    };

    // The rest of the chain fails: the undo's close reaches the remote.
    let failing = with(remote.url())
        .with(connect.clone())
        .with(InjectError {
            on_request: Some(Code::Aborted),
            on_close: None,
        })
        .build();
    let err = failing
        .request(Context::new(), request("undone"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    settle("the undo's close", ledger.until(|l| l.closes() == 1)).await;

    // A move: the close at the old remote.
    let chain = with(remote.url()).with(connect.clone()).build();
    let moved = chain
        .request(Context::new(), request("moving"))
        .await
        .unwrap();
    let elsewhere = with(other.url()).with(connect.clone()).build();
    let mut again = request("moving");
    again.connection = Some(Box::new(moved));
    let moved = elsewhere.request(Context::new(), again).await.unwrap();
    settle("the move's close", ledger.until(|l| l.closes() == 2)).await;

    // A caller gone mid-request: the close after its call finishes.
    gate.arm(Op::Request);
    let abandoned = tokio::spawn({
        let chain = chain.clone();
        async move { chain.request(Context::new(), request("abandoned")).await }
    });
    settle("the request to be held", gate.holding()).await;
    abandoned.abort();
    gate.release();
    // Had a close lacked the token, the client chain would have refused to
    // send it: the ledger would be left with an open connection.
    let all_closed = ledger.until(|l| l.closes() == 3 && l.open().is_empty());
    settle("the abandoned call's close", all_closed).await;
    elsewhere.close(Context::new(), moved).await.unwrap();
    assert_no_leaks(&connect, &[&remote, &other]).await;
}
