//! Serving chains and dialing them over loopback TCP and unix sockets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{
    ChainService, ClientChain, Context, DialError, DialOptions, GrpcClient, Passthrough,
    ServeError, ServerChain, dial, serve,
};
use connect_tests::elements::{Capture, Edit, Park};
use connect_tests::harness::settle;
use connect_tests::remote::{BlackHole, ScratchDir, start_at, start_tcp, start_unix, unix_url};
use connect_tests::{connection, request};
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
    let server = start_tcp(
        ServerChain::builder()
            .with(capture.clone())
            .with(edit())
            .build(),
    )
    .await;
    assert_eq!(server.url().scheme(), "tcp");
    assert_ne!(server.url().port(), Some(0));
    round_trip(&server, &capture).await;
}

#[tokio::test]
async fn request_and_close_round_trip_over_a_unix_socket() {
    let dir = ScratchDir::new();
    let capture = Capture::new();
    let server = start_unix(
        &dir,
        "remote.sock",
        ServerChain::builder()
            .with(capture.clone())
            .with(edit())
            .build(),
    )
    .await;
    round_trip(&server, &capture).await;
    server.kill().await;
    assert!(
        !dir.path().join("remote.sock").exists(),
        "the server removes its socket file"
    );
}

#[tokio::test]
async fn a_stale_unix_socket_is_replaced_and_a_live_one_is_not() {
    let dir = ScratchDir::new();
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
async fn a_listener_that_never_speaks_http2_fails_the_dial_within_its_timeout() {
    let hole = BlackHole::start().await;
    let caller = Context::new().with_timeout(Duration::from_secs(5));
    let options = DialOptions::new().timeout(Duration::from_millis(100));

    let started = Instant::now();
    let err = caller
        .run(async { Ok(dial(hole.url(), &options).await) })
        .await
        .expect("the dial ends before the caller's deadline")
        .unwrap_err();
    let elapsed = started.elapsed();

    assert!(matches!(err, DialError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains(hole.url().as_str()), "{err}");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        elapsed < Duration::from_millis(2500),
        "dial took {elapsed:?}"
    );
    assert_eq!(hole.accepted(), 1, "TCP connected; HTTP/2 never answered");
}

#[tokio::test]
async fn a_server_that_is_not_http2_is_reported_as_such() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut socket, _) = listener.accept().await.unwrap();
        socket
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        std::future::pending::<()>().await;
    });

    let err = dial(&url, &DialOptions::new().timeout(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::NotHttp2 { .. }), "{err:?}");
    assert!(err.to_string().contains("does not speak HTTP/2"), "{err}");
}

#[tokio::test]
async fn dialing_a_missing_unix_socket_names_the_path() {
    let dir = ScratchDir::new();
    let path = dir.path().join("nobody.sock");
    let err = dial(&unix_url(&path), &DialOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
}

#[tokio::test]
async fn bad_urls_give_clear_errors() {
    for bad in [
        "http://127.0.0.1:1",
        "tcp://127.0.0.1",
        "unix://host/x.sock",
        "tcp://u:p@h:1",
    ] {
        let url = Url::parse(bad).unwrap();
        let err = dial(&url, &DialOptions::new()).await.unwrap_err();
        assert!(matches!(err, DialError::Url(_)), "{bad}: {err:?}");
        assert!(err.to_string().contains(bad), "{bad}: {err}");
        assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);

        let err = serve(&url, ServerChain::default(), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ServeError::Url(_)), "{bad}: {err:?}");
    }

    let err = serve(
        &Url::parse("unix:///definitely/not/here/x.sock").unwrap(),
        ServerChain::default(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("directory /definitely/not/here does not exist"),
        "{err}"
    );

    let taken = start_tcp(ServerChain::default()).await;
    let err = serve(
        taken.url(),
        ServerChain::default(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[tokio::test]
async fn health_is_served_and_turns_not_serving_on_shutdown() {
    let shutdown = CancellationToken::new();
    let server = serve(
        &"tcp://127.0.0.1:0".parse().unwrap(),
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

/// Giving up on waiting for a server (a timeout, a lost `select!`) drops
/// its handle, and that stops it: its connections close.
#[tokio::test]
async fn a_server_whose_wait_is_given_up_on_stops() {
    let server = serve(
        &"tcp://127.0.0.1:0".parse().unwrap(),
        ServerChain::builder().with(Passthrough).build(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    NetworkServiceClient::new(conn.clone())
        .request(request("a"))
        .await
        .unwrap();

    // Polled once, then given up on.
    let mut stopped = Box::pin(server.stopped());
    let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(stopped.as_mut().poll(cx)));
    assert!(polled.await.is_pending());
    drop(stopped);

    // Its connection was closed, and nothing listens any more: the call
    // that finds it so (the first, or the one after a call that met the
    // close) cannot make a new one, and the channel ends.
    let mut client = NetworkServiceClient::new(conn.clone());
    for id in ["b", "c"] {
        let err = client.request(request(id)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    settle("the channel to end", conn.ended()).await;
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

#[tokio::test]
async fn dialing_with_tls_verifies_the_server_and_carries_calls() {
    use connect_runtime::Serve;
    use connect_runtime::tls::{ClientTls, Identity, ServerTls};
    use connect_tests::pki::Pki;

    let pki = Pki::new("test CA");
    let issued = pki.issue(&["localhost"]);
    let identity = Identity::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
    let capture = Capture::new();
    let server = Serve::new(ServerChain::builder().with(capture.clone()).build())
        .tls(ServerTls::new(identity).unwrap())
        .bind(&"tcp://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    let trusted = ClientTls::new(pki.ca_pem())
        .unwrap()
        .server_name("localhost")
        .unwrap();
    let options = DialOptions::new()
        .timeout(Duration::from_secs(5))
        .tls(trusted);
    let conn = dial(server.url(), &options).await.unwrap();
    let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
    let reply = client
        .request(Context::new(), request("tls"))
        .await
        .unwrap();
    assert_eq!(reply.id, "tls");
    assert!(capture.request().is_some());

    // A server whose certificate another CA signed is refused.
    let other = Pki::new("another CA");
    let untrusted = DialOptions::new().timeout(Duration::from_secs(5)).tls(
        ClientTls::new(other.ca_pem())
            .unwrap()
            .server_name("localhost")
            .unwrap(),
    );
    let err = dial(server.url(), &untrusted).await.unwrap_err();
    assert!(matches!(err, DialError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");
    server.shutdown().await;
}

/// A TCP relay to a server that can stop passing bytes (both ways) without
/// closing anything, or hang up on its callers with a plain FIN: no GOAWAY,
/// no TLS `close_notify`, as a proxy or a peer's kernel does.
struct Relay {
    url: Url,
    frozen: Arc<AtomicBool>,
    /// Cancelled to hang up on the connections open now.
    hang_up: Arc<Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: &Url) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
        let backend = format!("{}:{}", to.host_str().unwrap(), to.port().unwrap());
        let frozen = Arc::new(AtomicBool::new(false));
        let hang_up = Arc::new(Mutex::new(CancellationToken::new()));
        let (gate, hanging_up) = (Arc::clone(&frozen), Arc::clone(&hang_up));
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let outbound = tokio::net::TcpStream::connect(&backend).await.unwrap();
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                let hang_up = hanging_up.lock().unwrap().clone();
                let up = pump(in_read, out_write, Arc::clone(&gate), hang_up.clone());
                let down = pump(out_read, in_write, Arc::clone(&gate), hang_up.clone());
                tokio::spawn(up);
                tokio::spawn(async move {
                    tokio::select! {
                        () = down => {}
                        () = hang_up.cancelled() => {}
                    }
                });
            }
        });
        Self {
            url,
            frozen,
            hang_up,
            task,
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Sends a FIN to every caller connected now, and from then on drops
    /// what they send (reading it, so that closing sends no reset).
    fn hang_up(&self) {
        let mut token = self.hang_up.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }
}

/// Copies `from` to `to` until `from` ends (then `to` gets a FIN); while
/// frozen or hung up, reads and drops what arrives.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
    hang_up: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) || hang_up.is_cancelled() {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
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
        .bind(&"tcp://127.0.0.1:0".parse().unwrap())
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

/// A configuration given as it is cannot be rebuilt with a client CA or a
/// client identity: asking fails, rather than serving without the client
/// verification asked for.
#[test]
fn a_rustls_configuration_given_as_it_is_refuses_settings_that_rebuild_it() {
    use std::sync::Arc;

    use connect_runtime::tls::{ClientTls, Identity, ServerTls, TlsError};
    use connect_tests::pki::Pki;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let pki = Pki::new("test CA");
    let issued = pki.issue(&["localhost"]);
    let identity = || Identity::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<_> = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();

    let refused = ServerTls::from_rustls(server).client_ca(pki.ca_pem());
    assert!(
        matches!(refused, Err(TlsError::FromRustls(_))),
        "client_ca on a given configuration must fail"
    );
    let refused = ClientTls::from_rustls(client).identity(identity());
    let Err(err) = refused else {
        panic!("identity on a given configuration must fail");
    };
    assert!(err.to_string().contains("from_rustls"), "{err}");

    // Built here, both take them.
    let tls = ServerTls::new(identity()).unwrap();
    assert!(tls.client_ca(pki.ca_pem()).is_ok());
    let tls = ClientTls::new(pki.ca_pem()).unwrap();
    assert!(tls.identity(identity()).is_ok());
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_signed_by_the_ca() {
    use connect_runtime::Serve;
    use connect_runtime::tls::{ClientTls, Identity, ServerTls};
    use connect_tests::pki::Pki;

    let (pki, stranger) = (Pki::new("test CA"), Pki::new("another CA"));
    let server_id = pki.issue(&["localhost"]);
    let tls = ServerTls::new(Identity::from_pem(&server_id.cert_pem, &server_id.key_pem).unwrap())
        .unwrap()
        .client_ca(pki.ca_pem())
        .unwrap();
    let server = Serve::new(ServerChain::builder().with(Passthrough).build())
        .tls(tls)
        .bind(&"tcp://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = |issued: Option<connect_tests::pki::Issued>| {
        let mut tls = ClientTls::new(pki.ca_pem())
            .unwrap()
            .server_name("localhost")
            .unwrap();
        if let Some(issued) = issued {
            let identity = Identity::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
            tls = tls.identity(identity).unwrap();
        }
        DialOptions::new().timeout(Duration::from_secs(5)).tls(tls)
    };

    // A certified client gets through.
    let conn = dial(server.url(), &client(Some(pki.issue(&["client"]))))
        .await
        .unwrap();
    let reply = NetworkServiceClient::new(conn)
        .request(request("mtls"))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().id, "mtls");

    // No certificate, or one another CA signed: refused in the handshake
    // (under TLS 1.3 the client may learn it at its first read).
    for (n, who) in [None, Some(stranger.issue(&["client"]))]
        .into_iter()
        .enumerate()
    {
        // The dial fails, or (the refusal arriving after the client's
        // handshake ended) its first call does.
        if let Ok(conn) = dial(server.url(), &client(who)).await {
            let call = NetworkServiceClient::new(conn).request(request("x")).await;
            assert!(call.is_err(), "an uncertified client was served");
        }
        let seen = settle(
            "the server to count the refusal",
            server.wait_connections(|c| c.refused == n as u64 + 1),
        )
        .await;
        assert_eq!(seen.accepted, n as u64 + 2);
    }
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
        .bind(&"tcp://127.0.0.1:0".parse().unwrap())
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
        .bind(&"tcp://127.0.0.1:0".parse().unwrap())
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

/// A connection that sends nothing is closed once the handshake timeout
/// passes, plain or TLS; its slot is not held forever.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    use connect_runtime::Serve;
    use connect_runtime::tls::{Identity, ServerTls};
    use connect_tests::pki::Pki;
    use tokio::io::AsyncReadExt;

    let pki = Pki::new("test CA");
    let issued = pki.issue(&["localhost"]);
    let tls =
        ServerTls::new(Identity::from_pem(&issued.cert_pem, &issued.key_pem).unwrap()).unwrap();
    for tls in [None, Some(tls)] {
        let mut serve =
            Serve::new(ServerChain::default()).handshake_timeout(Duration::from_millis(200));
        if let Some(tls) = tls.clone() {
            serve = serve.tls(tls);
        }
        let server = serve
            .bind(&"tcp://127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = format!(
            "{}:{}",
            server.url().host_str().unwrap(),
            server.url().port().unwrap()
        );
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        // The server closes it: the read ends (with EOF, or a reset).
        let _ = settle(
            "the server to close the silent connection",
            silent.read_to_end(&mut rest),
        )
        .await;
        let seen = settle(
            "the server to count it closed",
            server.wait_connections(|c| c.open == 0),
        )
        .await;
        assert_eq!(seen.accepted, 1);
        assert_eq!((seen.timed_out, seen.refused), (1, 0), "{seen:?}");
        server.shutdown().await;
    }
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
    .bind(&"tcp://127.0.0.1:0".parse().unwrap())
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
