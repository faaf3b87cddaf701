//! The peers production has, on both sides of the transport: callers that
//! stall their handshake or flood the listener, remotes that end
//! connections with a GOAWAY of any error code (grpc-go's `too_many_pings`)
//! or reset them after a graceful one, that restart hard, that go silent
//! after a GOAWAY; and the values a cleanup close must keep.

use std::time::Duration;

use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{
    ClientChain, ClientUrl, Connect, Context, DialOptions, Element, GrpcClient, Hooks, Keepalive,
    Next, Passthrough, Serve, ServerChain, dial,
};
use connect_tests::caller::tonic_caller;
use connect_tests::elements::{Capture, Gate, InjectError, Ledger, Op};
use connect_tests::golike::GoLike;
use connect_tests::harness::{PATIENCE, assert_no_leaks, grpc_only, settle};
use connect_tests::raw::{After, ENHANCE_YOUR_CALM, GoAwayRelay, NO_ERROR, Refuser};
use connect_tests::remote::start_tcp;
use connect_tests::request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Status};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connections that stop partway through their handshake, whatever they
/// sent (one byte, most of the preface, all of it, part of their SETTINGS),
/// are all closed by the handshake timeout and counted, while real calls go
/// on meanwhile.
#[tokio::test]
async fn stalled_handshakes_are_closed_whatever_they_sent() {
    const STALLED: usize = 100;
    let server = Serve::new(ServerChain::builder().with(Passthrough).build())
        .handshake_timeout(Duration::from_millis(500))
        .bind(&"tcp://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = format!(
        "{}:{}",
        server.url().host_str().unwrap(),
        server.url().port().unwrap()
    );
    let mut with_settings = PREFACE.to_vec();
    with_settings.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3]); // 2 of 6 bytes
    let sends: [&[u8]; 4] = [b"P", &PREFACE[..23], PREFACE, &with_settings];
    let mut stalled = Vec::new();
    for k in 0..STALLED {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(sends[k % sends.len()]).await.unwrap();
        stalled.push(stream);
    }
    // Real calls, meanwhile, over a connection that did its handshake.
    let mut caller = tonic_caller(server.url()).await;
    for k in 0..10 {
        caller.request(request(&format!("real-{k}"))).await.unwrap();
    }
    for mut stream in stalled {
        let mut rest = Vec::new();
        // The server closes it: the read ends (with EOF, or a reset).
        let _ = settle(
            "a stalled connection to be closed",
            stream.read_to_end(&mut rest),
        )
        .await;
    }
    let seen = settle(
        "the server to count them",
        server.wait_connections(|c| c.open == 1),
    )
    .await;
    assert_eq!(seen.timed_out, STALLED as u64, "{seen:?}");
    assert_eq!((seen.refused, seen.not_http2), (0, 0), "{seen:?}");
    caller.request(request("after")).await.unwrap();
    server.shutdown().await;
}

/// A connection whose first bytes are not HTTP/2's is closed at once and
/// counted.
#[tokio::test]
async fn a_caller_that_is_not_http2_is_closed_at_once() {
    let server = start_tcp(ServerChain::default()).await;
    let addr = format!(
        "{}:{}",
        server.url().host_str().unwrap(),
        server.url().port().unwrap()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = settle("the server to close it", stream.read_to_end(&mut rest)).await;
    let seen = settle("it to be counted", server.wait_connections(|c| c.open == 0)).await;
    assert_eq!((seen.not_http2, seen.timed_out), (1, 0), "{seen:?}");
    server.shutdown().await;
}

/// At the connection limit the server stops accepting: a new connection
/// waits in the listen backlog, never accepted and left hanging, and is
/// served once an open one closes.
#[tokio::test]
async fn at_the_connection_limit_new_connections_wait_until_one_closes() {
    let server = Serve::new(ServerChain::builder().with(Passthrough).build())
        .max_connections(Some(2))
        .bind(&"tcp://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let options = DialOptions::new().timeout(PATIENCE);
    let first = dial(server.url(), &options).await.unwrap();
    let second = dial(server.url(), &options).await.unwrap();
    let url = server.url().clone();
    let third =
        tokio::spawn(async move { dial(&url, &DialOptions::new().timeout(PATIENCE)).await });
    let limited = settle(
        "the server to stop at the limit",
        server.wait_connections(|c| c.at_limit > 0),
    )
    .await;
    assert_eq!((limited.accepted, limited.open), (2, 2), "{limited:?}");
    assert!(!third.is_finished(), "the third was served past the limit");

    drop(first);
    let third = settle("the third connection", third)
        .await
        .unwrap()
        .unwrap();
    NetworkServiceClient::new(third.clone())
        .request(request("third"))
        .await
        .unwrap();
    NetworkServiceClient::new(second)
        .request(request("second"))
        .await
        .unwrap();
    let seen = server.connections();
    assert_eq!(
        (seen.accepted, seen.open, seen.peak_open),
        (3, 2, 2),
        "{seen:?}"
    );
    drop(third);
    server.shutdown().await;
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
        .bind(&"tcp://127.0.0.1:0".parse().unwrap())
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
