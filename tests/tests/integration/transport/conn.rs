//! The channel tonic's clients call through (`ClientConn`): what goes
//! out, and how it outlives its connections: GOAWAYs of any code, resets,
//! hang-ups and restarts, calls sent again with the time they have left,
//! keepalive.

use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{
    ClientChain, Context, DialOptions, GrpcClient, Keepalive, Passthrough, Serve, ServerChain,
    ServerHandle, dial,
};
use connect_tests::elements::{Capture, Gate, Ledger, Op, Park, ledger_chain};
use connect_tests::golike::{Behaviour, GoLike};
use connect_tests::harness::{Front, PATIENCE, assert_no_leaks, grpc_only, settle};
use connect_tests::raw::{After, ENHANCE_YOUR_CALM, GoAwayRelay, NO_ERROR, Refuser};
use connect_tests::relay::Relay;
use connect_tests::remote::{start_at, start_tcp};
use connect_tests::request;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;

/// A unary call's request carries the headers a grpc-go client sends, and
/// no `content-length`, which grpc-go never sends.
#[tokio::test]
async fn a_call_goes_out_with_grpc_gos_headers_and_no_content_length() {
    use connect_runtime::Serve;
    use tower::util::MapRequestLayer;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let recording = Arc::clone(&seen);
    let server = Serve::new(ServerChain::builder().with(Capture::new()).build())
        .layer(MapRequestLayer::new(
            move |call: http::Request<tonic::body::Body>| {
                recording.lock().unwrap().push(call.headers().clone());
                call
            },
        ))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    let mut client = NetworkServiceClient::new(conn);
    let reply = client
        .request(request("headers"))
        .await
        .unwrap()
        .into_inner();
    client.close(reply).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "request and close");
    for headers in seen {
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["te"], "trailers");
        assert!(
            headers.get("content-length").is_none(),
            "a gRPC request carries no content-length: {headers:?}"
        );
    }
    server.shutdown().await;
}

/// A call cut by its connection breaking fails `Unavailable`, as in
/// grpc-go, however the connection's task and the call's are scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_server_cuts_calls_in_flight() {
    let park = Park::new();
    let server = start_tcp(ServerChain::builder().with(park.clone()).build()).await;
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    let call = tokio::spawn(async move {
        NetworkServiceClient::new(conn)
            .request(request("doomed"))
            .await
    });
    park.arrived().await;

    server.kill().await;

    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

/// A channel whose connection ended dials again on its next call, as
/// grpc-go's does: to a remote restarted on the same address the call goes
/// through; to one still gone it fails `Unavailable`, and the channel ends
/// for good, saying why.
#[tokio::test]
async fn a_channel_dials_again_after_its_connection_ended_and_ends_if_it_cannot() {
    let server = start_tcp(ServerChain::default()).await;
    let url = server.url().clone();
    let conn = connect_tests::harness::dial_patiently(&url).await;
    let mut client = NetworkServiceClient::new(conn.clone());
    client.request(request("before")).await.unwrap();

    server.kill().await;
    let restarted = start_at(&url, ServerChain::default()).await;
    client.request(request("after a restart")).await.unwrap();
    assert_eq!(conn.dials(), 2, "{conn:?}");

    restarted.kill().await;
    let err = client.request(request("gone")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("a new one failed"), "{err:?}");
    settle("the channel to end", conn.ended()).await;
    // Ended for good: even with the remote back, it does not dial again.
    let back = start_at(&url, ServerChain::default()).await;
    let err = client.request(request("ended")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(conn.dials(), 2, "{conn:?}");
    back.shutdown().await;
}

/// A remote that hangs up without a GOAWAY (a plain FIN; over TLS, no
/// `close_notify` either) ends that connection, plain or TLS alike: the
/// next call goes over a new one.
#[tokio::test]
async fn a_remote_hanging_up_without_a_goaway_costs_one_new_connection_plain_or_tls() {
    use connect_runtime::Serve;
    use connect_runtime::tls::{ClientTls, Identity, ServerTls};
    use connect_tests::pki::Pki;

    let pki = Pki::new("test CA");
    let issued = pki.issue(&["localhost"]);
    let identity = Identity::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
    let chain = || ServerChain::builder().with(Passthrough).build();
    let tls = ClientTls::new(pki.ca_pem())
        .unwrap()
        .server_name("localhost")
        .unwrap();
    let plain = start_tcp(chain()).await;
    let secure = Serve::new(chain())
        .tls(ServerTls::new(identity).unwrap())
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let cases = [
        ("plaintext", &plain, connect_tests::harness::patient()),
        ("TLS", &secure, connect_tests::harness::patient().tls(tls)),
    ];
    for (case, server, options) in cases {
        let relay = Relay::start(server.url()).await;
        let conn = dial(&relay.url, &options).await.unwrap();
        let mut client = NetworkServiceClient::new(conn.clone());
        client.request(request("before")).await.unwrap();

        relay.hang_up();
        settle("the channel to see it end", conn.connections_ended(1)).await;
        let reply = client.request(request("after")).await;
        assert!(reply.is_ok(), "{case}: {reply:?}");
        assert_eq!(conn.dials(), 2, "{case}: {conn:?}");
    }
    plain.shutdown().await;
    secure.shutdown().await;
}

/// A GOAWAY with an error code (grpc-go's `ENHANCE_YOUR_CALM`,
/// `too_many_pings`, then a close) and a reset after a graceful GOAWAY
/// each end that connection only: the channel's next call goes over one
/// new connection and it does not end.
#[tokio::test]
async fn a_goaway_of_any_code_or_a_reset_after_one_ends_that_connection_only() {
    let remote = start_tcp(ServerChain::builder().with(Passthrough).build()).await;
    let cases = [
        (ENHANCE_YOUR_CALM, "too_many_pings", After::Close),
        (ENHANCE_YOUR_CALM, "too_many_pings", After::Reset),
        (NO_ERROR, "graceful", After::Reset),
    ];
    for (code, debug, after) in cases {
        let relay = GoAwayRelay::start(remote.url()).await;
        let conn = dial(relay.url(), &DialOptions::new().timeout(PATIENCE))
            .await
            .unwrap();
        let mut client = NetworkServiceClient::new(conn.clone());
        client.request(request("before")).await.unwrap();

        relay.go_away(code, debug, after);
        settle("the channel to see it end", conn.connections_ended(1)).await;
        let reply = client.request(request("after")).await;
        assert!(reply.is_ok(), "{code} {after:?}: {reply:?}");
        assert_eq!(conn.dials(), 2, "{code} {after:?}: {conn:?}");
        assert_eq!(relay.accepted(), 2, "{code} {after:?}");
        let ended = tokio::time::timeout(Duration::ZERO, conn.ended()).await;
        assert!(ended.is_err(), "{code} {after:?}: the channel ended");
    }
    remote.shutdown().await;
}

/// A call in flight when the remote recycles its connection finishes on
/// it; calls made meanwhile go through; one new connection serves them all.
#[tokio::test]
async fn a_call_in_flight_across_a_goaway_finishes() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = GoLike::tcp(ledger_chain(&ledger, &gate)).await;
    let connect = grpc_only().dial_timeout(Duration::from_secs(1)).build();
    let front = Front::new(&connect, remote.url()).await;
    let first = front.request("first").await.unwrap();

    gate.arm(Op::Request);
    let mut caller = front.caller.clone();
    let held = tokio::spawn(async move { caller.request(request("held")).await });
    settle("the call to be held", gate.holding()).await;
    remote.recycle();
    let during = front.request("during").await.unwrap();
    gate.release();
    let held = held.await.unwrap().unwrap().into_inner();
    remote.wait_connections(|c| c.open == 1).await;
    let after = front.refresh(&first).await.unwrap();

    assert_eq!(remote.connections().accepted, 2, "one new connection");
    assert_eq!(connect.stats().records, 3);
    for conn in [after, during, held] {
        front.close(conn).await.unwrap();
    }
    assert_eq!(ledger.overlaps(), 0);
    assert!(ledger.open().is_empty());
    assert_no_leaks(&connect, &[]).await;
}

/// A call waiting for a stream (the remote's limit reached) when the remote
/// recycles its connection was never sent: it goes on the new connection,
/// as grpc-go's clients send it.
#[tokio::test]
async fn a_call_waiting_for_a_stream_across_a_goaway_goes_on_the_new_connection() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let behaviour = Behaviour {
        max_concurrent_streams: Some(1),
        ..Behaviour::default()
    };
    let remote = GoLike::tcp_behaving(ledger_chain(&ledger, &gate), behaviour).await;
    let conn = connect_tests::harness::dial_patiently(remote.url()).await;
    let client = NetworkServiceClient::new(conn.clone());

    gate.arm(Op::Request);
    let mut caller = client.clone();
    let held = tokio::spawn(async move { caller.request(request("held")).await });
    settle("the call to be held", gate.holding()).await;
    let mut caller = client.clone();
    let waiting = tokio::spawn(async move { caller.request(request("waiting")).await });
    // Nothing outside hyper marks the call queued behind the limit: these
    // turns of the single-threaded runtime let hyper's connection task take
    // it there before the GOAWAY. (Without the resend of such calls, this
    // test failed every run.)
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    remote.recycle();
    let waiting = settle("the waiting call", waiting).await.unwrap();
    let waiting = waiting.expect("a call the old connection never sent goes on a new one");
    gate.release();
    held.await.unwrap().unwrap();

    assert_eq!(waiting.get_ref().id, "waiting");
    assert_eq!((conn.dials(), remote.connections().accepted), (2, 2));
    assert_eq!(ledger.overlaps(), 0);
    assert_eq!(ledger.open(), ["held", "waiting"]);
}

/// A call the remote refuses as it goes away (past its GOAWAY's last
/// stream) is `Unavailable`, not `Internal`; connect leaks nothing.
#[tokio::test]
async fn a_call_refused_by_a_goaway_is_unavailable() {
    let refuser = Refuser::start().await;
    let conn = connect_tests::harness::dial_patiently(refuser.url()).await;
    let err = NetworkServiceClient::new(conn)
        .request(request("r"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("GOAWAY"), "{err:?}");

    let connect = grpc_only().dial_timeout(Duration::from_secs(1)).build();
    let front = Front::new(&connect, refuser.url()).await;
    let status = front.request("r").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_no_leaks(&connect, &[]).await;
}

/// A capturing remote behind a [`Refuser`] that turns away its first
/// connection (at its first call, or at once if `draining`) and relays the
/// later ones; and a channel dialed to the refuser. Held whole for the
/// test: dropping it stops the remote and the refuser.
struct Restarting {
    capture: Capture,
    conn: connect_runtime::ClientConn,
    _remote: ServerHandle,
    _front: Refuser,
}

async fn restarting(draining: bool) -> Restarting {
    let capture = Capture::new();
    let remote = start_tcp(ServerChain::builder().with(capture.clone()).build()).await;
    let front = match draining {
        true => Refuser::draining_then(remote.url()).await,
        false => Refuser::once_then(remote.url()).await,
    };
    let conn = connect_tests::harness::dial_patiently(front.url()).await;
    Restarting {
        capture,
        conn,
        _remote: remote,
        _front: front,
    }
}

/// A call the remote refused as it went away (nothing processed) goes once
/// more on a new connection, as grpc-go's clients send it: the same call,
/// with its metadata and its deadline.
#[tokio::test]
async fn a_call_refused_by_a_goaway_goes_again_with_its_metadata() {
    let Restarting { capture, conn, .. } = &restarting(false).await;
    let with_token = InterceptedService::new(conn.clone(), |mut call: tonic::Request<()>| {
        let token = MetadataValue::from_static("Bearer t0ken");
        call.metadata_mut().insert("authorization", token);
        Ok(call)
    });
    let mut call = tonic::Request::new(request("again"));
    call.set_timeout(Duration::from_secs(60));
    let reply = NetworkServiceClient::new(with_token)
        .request(call)
        .await
        .unwrap()
        .into_inner();

    assert_eq!(reply.id, "again");
    assert_eq!(conn.dials(), 2, "one new connection after the GOAWAY");
    let seen = capture.seen();
    assert_eq!(seen.authorization.as_deref(), Some("Bearer t0ken"));
    let left = seen.remaining.expect("the deadline went with the call");
    assert!(
        left > Duration::ZERO && left <= Duration::from_secs(60),
        "{left:?}"
    );
}

/// A call made while the connection drains after a GOAWAY (received before
/// the call, the connection not yet closed) goes over a new connection.
#[tokio::test]
async fn a_call_on_a_draining_connection_goes_over_a_new_one() {
    let Restarting { capture, conn, .. } = &restarting(true).await;
    let mut client = NetworkServiceClient::new(conn.clone());
    for id in ["first", "second"] {
        let reply = client.request(request(id)).await.unwrap().into_inner();
        assert_eq!(reply.id, id);
    }
    assert_eq!(conn.dials(), 2, "one new connection after the GOAWAY");
    assert_eq!(capture.request().unwrap().connection.unwrap().id, "second");
}

/// A call sent again after a GOAWAY carries what is left of its deadline,
/// not the whole of it again: the remote's handler cannot outlive the
/// caller's own limit.
#[tokio::test]
async fn a_call_sent_again_carries_the_time_it_has_left() {
    const DELAY: Duration = Duration::from_millis(400);
    let capture = Capture::new();
    let remote = start_tcp(ServerChain::builder().with(capture.clone()).build()).await;
    let refuser = Refuser::once_after_then(DELAY, remote.url()).await;
    let conn = dial(refuser.url(), &DialOptions::new().timeout(PATIENCE))
        .await
        .unwrap();
    let mut call = tonic::Request::new(request("late"));
    call.set_timeout(Duration::from_secs(60));
    NetworkServiceClient::new(conn.clone())
        .request(call)
        .await
        .unwrap();
    assert_eq!(conn.dials(), 2);
    let left = capture.seen().remaining.expect("a deadline went with it");
    assert!(left <= Duration::from_secs(60) - DELAY, "{left:?}");
    remote.shutdown().await;
}

/// A new connection after a GOAWAY sends nothing before the remote has
/// answered with its SETTINGS: to a remote that never does, the call fails
/// `Unavailable` having sent nothing there, and the channel ends.
#[tokio::test]
async fn a_new_connection_sends_nothing_before_the_remotes_settings() {
    let refuser = Refuser::once_then_silent().await;
    let options = DialOptions::new().timeout(Duration::from_millis(300));
    let conn = dial(refuser.url(), &options).await.unwrap();
    let err = NetworkServiceClient::new(conn.clone())
        .request(request("nowhere"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    settle("the channel to end", conn.ended()).await;
    assert_eq!(refuser.calls_after_the_first_connection(), 0);
}

#[tokio::test]
async fn keepalive_notices_a_peer_that_stopped_answering() {
    use connect_runtime::Keepalive;

    let server = start_tcp(ServerChain::builder().with(Passthrough).build()).await;
    let relay = Relay::start(server.url()).await;
    // The shortest interval a client PINGs at (grpc-go's: 10 s), and a
    // timeout a loaded machine's scheduling cannot reach before the freeze,
    // far inside the call's deadline after it.
    let keepalive = Keepalive {
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        while_idle: true,
    };
    let options = DialOptions::new()
        .timeout(Duration::from_secs(2))
        .keepalive(keepalive);
    let conn = dial(&relay.url, &options).await.unwrap();
    let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
    client
        .request(Context::new(), request("alive"))
        .await
        .unwrap();

    relay.freeze();
    // Without keepalive this call would hang until its own 60 s deadline;
    // with it the connection is declared dead once a PING (10 s apart at
    // the least, whatever was asked) goes unanswered.
    let ctx = Context::new().with_timeout(Duration::from_secs(60));
    let err = client.request(ctx, request("frozen")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("has ended"), "{err:?}");
}

/// Keepalive durations too large for the clock saturate, on both sides:
/// nothing panics, and calls go through.
#[tokio::test]
async fn keepalive_durations_too_large_for_the_clock_saturate() {
    let forever = Keepalive {
        interval: Duration::MAX,
        timeout: Duration::MAX,
        while_idle: true,
    };
    let server = Serve::new(ServerChain::builder().with(Passthrough).build())
        .keepalive(Some(forever))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let options = DialOptions::new().timeout(PATIENCE).keepalive(forever);
    let conn = dial(server.url(), &options).await.unwrap();
    NetworkServiceClient::new(conn)
        .request(request("forever"))
        .await
        .unwrap();
    server.shutdown().await;
}
