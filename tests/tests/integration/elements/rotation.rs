//! Client reuse across SVID rotations: a caller drives a served passthrough
//! (clienturl → connect) whose dials present SPIFFE SVIDs from the test
//! Workload API, to a remote that checks every call's client certificate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use connect_runtime::spiffe::{Authorize, SpiffeIdentity};
use connect_runtime::{
    ClientChain, ClientStats, ClientUrl, Connect, ConnectStats, Context, DialOptions, GrpcClient,
    Serve, ServerChain, ServerHandle, dial,
};
use connect_tests::elements::{Gate, Ledger, Op};
use connect_tests::workload_api::{Authority, WorkloadApi, client_certificates};
use connect_tests::{connection, request};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// What the remote saw of its callers' certificates.
#[derive(Default)]
struct Seen {
    /// Serial numbers of the client certificates presented, call by call.
    serials: Mutex<Vec<String>>,
    /// Calls whose connection's client certificate had expired.
    expired: AtomicU64,
}

/// A layer that records, for every call, its connection's client
/// certificate, and counts the calls made under an expired one (which a
/// remote checking expiry would refuse).
fn certificate_check(
    seen: Arc<Seen>,
) -> tower::util::MapRequestLayer<
    impl Fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> + Clone,
> {
    client_certificates(move |leaf| {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp() as u64);
        if not_after <= SystemTime::now() {
            seen.expired.fetch_add(1, Ordering::Relaxed);
        }
        seen.serials
            .lock()
            .unwrap()
            .push(cert.raw_serial_as_string());
    })
}

/// The three processes' parts, in one: the remote (its SVID never
/// rotates), the passthrough's connect with its rotating identity, served
/// plaintext, and a caller dialed to it.
struct Topology {
    domain: Arc<Authority>,
    remote_api: WorkloadApi,
    remote: ServerHandle,
    /// In the remote's chain: holds a call on demand.
    gate: Gate,
    seen: Arc<Seen>,
    api: WorkloadApi,
    identity: SpiffeIdentity,
    connect: Connect,
    /// In the passthrough's chain after connect: what reached the rest of
    /// the chain, and a call held there on demand.
    after: Ledger,
    after_gate: Gate,
    passthrough: ServerHandle,
    caller: ClientChain,
}

impl Topology {
    /// The passthrough's SVIDs are valid for `lifetime`, the remote's for
    /// five minutes; both close connections `margin` before an SVID expires.
    async fn start(lifetime: Duration, margin: Duration) -> Self {
        Self::start_with(Duration::from_secs(300), lifetime, margin).await
    }

    async fn start_with(remote_lifetime: Duration, lifetime: Duration, margin: Duration) -> Self {
        let domain = Arc::new(Authority::new("example.org"));
        let remote_api = WorkloadApi::start(Arc::clone(&domain), "/nse", remote_lifetime).await;
        let remote_identity = SpiffeIdentity::from_endpoint(remote_api.endpoint())
            .await
            .unwrap();
        let seen = Arc::new(Seen::default());
        let gate = Gate::new();
        let remote = Serve::new(ServerChain::builder().with(gate.clone()).build())
            .tls(
                remote_identity
                    .server_tls(Authorize::SameTrustDomain)
                    .unwrap(),
            )
            .expiry_margin(margin)
            .layer(certificate_check(Arc::clone(&seen)))
            .bind("tcp://127.0.0.1:0")
            .await
            .unwrap();

        let api = WorkloadApi::start(Arc::clone(&domain), "/passthrough", lifetime).await;
        let identity = SpiffeIdentity::from_endpoint(api.endpoint()).await.unwrap();
        let tls = identity.client_tls(Authorize::SameTrustDomain).unwrap();
        let connect = Connect::builder(|_: &Context, conn| {
            ClientChain::builder().with(GrpcClient::new(conn)).build()
        })
        .dial_options(DialOptions::new().timeout(Duration::from_secs(5)).tls(tls))
        .expiry_margin(margin)
        .cleanup_timeout(Duration::from_secs(1))
        .build();
        let (after, after_gate) = (Ledger::new(), Gate::new());
        let passthrough = Serve::new(
            ServerChain::builder()
                .with(ClientUrl::new(remote.url().clone()))
                .with(connect.clone())
                .with(after.clone())
                .with(after_gate.clone())
                .build(),
        )
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
        let conn = connect_tests::harness::dial_patiently(passthrough.url()).await;
        let caller = ClientChain::builder().with(GrpcClient::new(conn)).build();
        Self {
            domain,
            remote_api,
            remote,
            gate,
            seen,
            api,
            identity,
            connect,
            after,
            after_gate,
            passthrough,
            caller,
        }
    }

    /// Opens `count` connections through the caller; returns their ids.
    async fn open(&self, count: usize) -> Vec<String> {
        let ids: Vec<String> = (0..count).map(|i| format!("conn-{i}")).collect();
        for id in &ids {
            self.caller
                .request(Context::new(), request(id))
                .await
                .unwrap();
        }
        ids
    }

    /// Opens `id`, rotates the passthrough's SVID and waits until the
    /// client `id` uses is retired; returns the first SVID's serial and
    /// the new one's.
    async fn open_and_rotate(&self, id: &str) -> (String, String) {
        self.caller
            .request(Context::new(), request(id))
            .await
            .unwrap();
        let first = self.current().serial.unwrap();
        let serial = self.rotate_for(Duration::from_secs(60));
        let waited = self
            .connect
            .wait_for(|stats| stats.clients.iter().any(|c| c.retired));
        soon("connect's clients to settle", waited).await;
        (first, serial)
    }

    /// Rotates the passthrough's SVID to one valid for `lifetime`; returns
    /// its serial.
    fn rotate_for(&self, lifetime: Duration) -> String {
        self.api.rotate_for(lifetime).serial_text()
    }

    /// The current client's stats; panics unless there is exactly one,
    /// not retired.
    fn current(&self) -> ClientStats {
        let stats = self.connect.stats();
        let current: Vec<_> = stats.clients.iter().filter(|c| !c.retired).collect();
        assert_eq!(current.len(), 1, "{stats:?}");
        current[0].clone()
    }

    async fn shutdown(self) {
        self.passthrough.shutdown().await;
        self.connect.shutdown();
        self.remote.shutdown().await;
        drop(self.domain);
    }
}

/// Whether `stats` shows exactly one client, current, dialed with
/// `serial` and used by `refs` connections.
fn only_current(stats: &ConnectStats, serial: &str, refs: usize) -> bool {
    matches!(
        stats.clients.as_slice(),
        [client] if !client.retired && client.serial.as_deref() == Some(serial) && client.refs == refs
    )
}

/// `event`, or a failure naming `what` after 30 s rather than a hang.
async fn soon<T>(what: &str, event: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(30), event).await {
        Ok(happened) => happened,
        Err(_) => panic!("{what}: not within 30 s"),
    }
}

/// Refreshes `ids` through the caller, round after round, until `stop`;
/// every failure is kept.
async fn traffic(
    caller: ClientChain,
    ids: Vec<String>,
    stop: CancellationToken,
) -> (u64, Vec<tonic::Status>) {
    let (mut calls, mut failures) = (0, Vec::new());
    while !stop.is_cancelled() {
        for id in &ids {
            match caller.request(Context::new(), request(id)).await {
                Ok(_) => calls += 1,
                Err(status) => failures.push(status),
            }
        }
    }
    (calls, failures)
}

/// Traffic flows through three rotations: after each, one dial serves the
/// whole burst, every connection moves to the new client on its next
/// refresh, the retired client closes with its last connection (long
/// before its SVID expires), no call fails, and the remote never sees an
/// expired certificate.
#[tokio::test]
async fn clients_are_retired_and_connections_move_across_rotations() {
    const CONNECTIONS: usize = 6;
    let topology = Topology::start(Duration::from_secs(60), Duration::from_secs(5)).await;
    let ids = topology.open(CONNECTIONS).await;
    let first = topology.identity.credential().unwrap();
    let current = topology.current();
    assert_eq!(current.refs, CONNECTIONS);
    assert_eq!(current.serial.as_deref(), Some(first.serial.as_str()));
    assert_eq!(current.expires, Some(first.not_after));
    assert_eq!(topology.remote.connections().accepted, 1);

    let stop = CancellationToken::new();
    let flowing = tokio::spawn(traffic(topology.caller.clone(), ids.clone(), stop.clone()));
    for rotation in 1..=3u64 {
        let serial = topology.rotate_for(Duration::from_secs(60));
        // Every connection has moved; the retired client has gone.
        let waited = topology
            .connect
            .wait_for(|stats| only_current(stats, &serial, CONNECTIONS));
        soon("connect's clients to settle", waited).await;
        let stats = topology.connect.stats();
        assert_eq!(stats.records, CONNECTIONS, "{stats:?}");
        // One dial per rotation, and the retired one's connection closed.
        let remote = topology.remote.wait_connections(|s| s.open == 1);
        let remote = soon("the retired connection to close", remote).await;
        assert_eq!(remote.accepted, 1 + rotation, "{remote:?}");
    }
    stop.cancel();
    let (calls, failures) = flowing.await.unwrap();
    assert!(failures.is_empty(), "calls failed: {failures:?}");
    assert!(calls > 0);
    assert_eq!(topology.seen.expired.load(Ordering::Relaxed), 0);
    let serials: Vec<String> = topology.seen.serials.lock().unwrap().clone();
    let mut distinct = serials.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "one run of calls per SVID: {distinct:?}");

    for id in &ids {
        let conn = topology
            .caller
            .request(Context::new(), request(id))
            .await
            .unwrap();
        topology.caller.close(Context::new(), conn).await.unwrap();
    }
    soon("connect to go idle", topology.connect.idle()).await;
    topology.shutdown().await;
}

/// A retired client that a connection still uses closes before its SVID
/// expires; that connection's next refresh moves it to the current client,
/// and nothing is lost.
#[tokio::test]
async fn a_retired_client_closes_before_its_svid_expires() {
    // Room for the steps before the retired client's close, on a loaded
    // machine: it closes about four seconds after the SVID is issued.
    let lifetime = Duration::from_secs(6);
    let margin = Duration::from_secs(2);
    let topology = Topology::start(lifetime, margin).await;
    topology
        .caller
        .request(Context::new(), request("idle"))
        .await
        .unwrap();
    let first = topology.current();
    let expires = first.expires.expect("a rotating credential's expiry");

    // The next SVID outlives the first one.
    let serial = topology.rotate_for(Duration::from_secs(60));
    let waited = topology
        .connect
        .wait_for(|stats| stats.clients.iter().any(|c| c.retired));
    soon("connect's clients to settle", waited).await;
    // A new connection goes to a fresh client; the idle one keeps the
    // retired client open.
    topology
        .caller
        .request(Context::new(), request("busy"))
        .await
        .unwrap();
    let stats = topology.connect.stats();
    let retired: Vec<_> = stats.clients.iter().filter(|c| c.retired).collect();
    assert_eq!(retired.len(), 1, "{stats:?}");
    assert_eq!((retired[0].refs, &retired[0].serial), (1, &first.serial));
    assert_eq!(topology.current().serial.as_deref(), Some(serial.as_str()));
    assert_eq!(topology.current().refs, 1);
    assert_eq!(topology.remote.connections().open, 2);

    // The retired client's TCP connection closes before its SVID expires.
    let closed = topology.remote.wait_connections(|s| s.open == 1);
    soon("the retired client's connection to close", closed).await;
    assert!(SystemTime::now() < expires, "closed after its SVID expired");

    // The idle connection moves on its next refresh, on the current client.
    topology
        .caller
        .request(Context::new(), request("idle"))
        .await
        .unwrap();
    let waited = topology
        .connect
        .wait_for(|stats| only_current(stats, &serial, 2));
    soon("connect's clients to settle", waited).await;
    assert_eq!(topology.connect.stats().records, 2);
    assert_eq!(topology.remote.connections().accepted, 2);
    assert_eq!(topology.seen.expired.load(Ordering::Relaxed), 0);
    topology.shutdown().await;
}

/// The remote's SVID rotates three times while traffic flows: each time
/// the remote drains the connection accepted under the old one (a graceful
/// GOAWAY), the passthrough's client dials once more, and no call fails.
#[tokio::test]
async fn served_connections_drain_when_the_server_svid_rotates() {
    const CONNECTIONS: usize = 4;
    let topology = Topology::start(Duration::from_secs(300), Duration::from_secs(5)).await;
    let ids = topology.open(CONNECTIONS).await;
    assert_eq!(topology.remote.connections().accepted, 1);

    let stop = CancellationToken::new();
    let flowing = tokio::spawn(traffic(topology.caller.clone(), ids.clone(), stop.clone()));
    let dialed = topology.connect.stats().clients[0].dials;
    for rotation in 1..=3u64 {
        topology.remote_api.rotate_for(Duration::from_secs(300));
        let remote = topology
            .remote
            .wait_connections(|s| s.accepted == 1 + rotation && s.open == 1 && s.retired == 0);
        let remote = soon("one new connection, the drained one closed", remote).await;
        assert_eq!(remote.refused, 0, "{remote:?}");
    }
    stop.cancel();
    let (calls, failures) = flowing.await.unwrap();
    assert!(failures.is_empty(), "calls failed: {failures:?}");
    assert!(calls > 0);
    // The same client, not retired (its own SVID never rotated), redialed
    // once per rotation; every connection still uses it.
    let serial = topology.identity.credential().unwrap().serial;
    let stats = topology.connect.stats();
    assert!(only_current(&stats, &serial, CONNECTIONS), "{stats:?}");
    assert_eq!(stats.clients[0].dials, dialed + 3, "{stats:?}");
    assert_eq!(stats.records, CONNECTIONS);
    topology.shutdown().await;
}

/// A topology whose remote's SVID lives 6 s (drained connections close 2 s
/// before it expires), a TLS channel of the test's own to that remote, and
/// a health watch on it that has had its first message: a long call
/// holding its connection.
async fn a_remote_watched() -> (
    Topology,
    connect_runtime::ClientConn,
    tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) {
    let topology = Topology::start_with(
        Duration::from_secs(6),
        Duration::from_secs(300),
        Duration::from_secs(2),
    )
    .await;
    let options = DialOptions::new().tls(
        topology
            .identity
            .client_tls(Authorize::SameTrustDomain)
            .unwrap(),
    );
    let conn = dial(topology.remote.url(), &options).await.unwrap();
    let mut watching = HealthClient::new(conn.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    watching
        .message()
        .await
        .unwrap()
        .expect("the current status");
    (topology, conn, watching)
}

/// A connection that a long call keeps open after the server's SVID
/// rotated is closed before that SVID expires, cutting the call; the
/// channel's other calls, on a new connection since the GOAWAY, go on.
#[tokio::test]
async fn a_drained_connection_closes_before_the_server_svid_expires() {
    let (topology, conn, mut watching) = a_remote_watched().await;
    let expires = topology.remote_api.current().not_after();

    topology.remote_api.rotate_for(Duration::from_secs(300));
    let remote = topology.remote.wait_connections(|s| s.retired == 1);
    let remote = soon("the watch's connection retired", remote).await;
    assert_eq!(remote.open, 1, "{remote:?}");
    // Calls on the same channel move to a new connection once the GOAWAY
    // is in.
    let mut health = HealthClient::new(conn.clone());
    let moved = async {
        while conn.dials() < 2 {
            health.check(HealthCheckRequest::default()).await.unwrap();
        }
    };
    soon("calls on a new connection", moved).await;
    // The watch keeps its connection open until the margin before expiry.
    let cut = soon("the watch cut", watching.message())
        .await
        .expect_err("a cut call");
    assert!(SystemTime::now() < expires, "closed after its SVID expired");
    assert_eq!(cut.code(), tonic::Code::Unavailable, "{cut:?}");
    let remote = topology.remote.wait_connections(|s| s.open == 1);
    let remote = soon("the drained connection to close", remote).await;
    assert_eq!(remote.retired, 0, "{remote:?}");

    // The cut ended only the watch: the channel goes on, on its new
    // connection.
    health.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!((conn.dials(), remote.accepted), (2, 2), "{conn:?}");
    topology.shutdown().await;
}

/// A TLS connection drained by a GOAWAY while a long call holds it, then
/// closed by the remote without another call in between, ends only that
/// connection: the channel's next call dials a new one.
#[tokio::test]
async fn a_drained_connection_closed_while_idle_leaves_the_channel_usable() {
    let (topology, conn, mut watching) = a_remote_watched().await;

    topology.remote_api.rotate_for(Duration::from_secs(300));
    let remote = topology.remote.wait_connections(|s| s.retired == 1);
    soon("the watch's connection retired", remote).await;
    let cut = soon("the watch cut", watching.message())
        .await
        .expect_err("a cut call");
    assert_eq!(cut.code(), tonic::Code::Unavailable, "{cut:?}");
    let remote = topology.remote.wait_connections(|s| s.open == 0);
    soon("the drained connection to close", remote).await;

    HealthClient::new(conn.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("a call on a new connection");
    let remote = topology.remote.connections();
    assert_eq!((conn.dials(), remote.accepted), (2, 2), "{conn:?}");
    topology.shutdown().await;
}

/// A refresh cut off while it moves its connection to the current client
/// (the caller gives up while the remote holds the refresh) leaves the
/// connection on the retired client with exact references; the next
/// refresh moves it.
#[tokio::test]
async fn a_move_cut_off_midway_leaves_references_exact() {
    let topology = Topology::start(Duration::from_secs(60), Duration::from_secs(5)).await;
    let (first, serial) = topology.open_and_rotate("moving").await;

    topology.gate.arm(Op::Request);
    let caller = topology.caller.clone();
    let refresh =
        tokio::spawn(async move { caller.request(Context::new(), request("moving")).await });
    topology.gate.holding().await;
    // The move has dialed the current client and holds a reference to it.
    let stats = topology.connect.stats();
    assert_eq!(stats.clients.len(), 2, "{stats:?}");
    refresh.abort();
    // connect finishes the abandoned move on its own, within its cleanup
    // timeout, which cuts it off at the remote.
    topology.gate.cut_off().await;

    // The connection stays on the retired client; the current one, unused,
    // closes.
    let waited = topology.connect.wait_for(|stats| {
        matches!(stats.clients.as_slice(),
                [client] if client.retired && client.refs == 1
                    && client.serial.as_deref() == Some(first.as_str()))
    });
    soon("connect's clients to settle", waited).await;
    assert_eq!(topology.connect.stats().records, 1);

    let moved = topology
        .caller
        .request(Context::new(), request("moving"))
        .await
        .unwrap();
    let waited = topology
        .connect
        .wait_for(|stats| only_current(stats, &serial, 1));
    soon("connect's clients to settle", waited).await;
    assert_eq!(topology.connect.stats().records, 1);
    topology.caller.close(Context::new(), moved).await.unwrap();
    soon("connect to go idle", topology.connect.idle()).await;
    assert_eq!(topology.gate.abandoned(), 1);
    topology.shutdown().await;
}

/// A refresh that moves its connection to the current client keeps the
/// connection's turn until the rest of the chain has it: a close for the
/// same id waits, and never overtakes it there.
#[tokio::test]
async fn a_close_waits_for_a_move_to_reach_the_rest_of_the_chain() {
    let topology = Topology::start(Duration::from_secs(60), Duration::from_secs(5)).await;
    topology.open_and_rotate("moving").await;

    topology.after_gate.arm(Op::Request);
    let caller = topology.caller.clone();
    let refresh =
        tokio::spawn(async move { caller.request(Context::new(), request("moving")).await });
    soon(
        "the move to reach the rest of the chain",
        topology.after_gate.holding(),
    )
    .await;
    let caller = topology.caller.clone();
    let close =
        tokio::spawn(async move { caller.close(Context::new(), connection("moving")).await });
    let queued = topology.connect.wait_for(|stats| stats.waiting == 1);
    let overtook = topology.after.until(|ledger| ledger.closes() > 0);
    tokio::select! {
        () = soon("the close to queue behind the move", queued) => {}
        () = overtook => panic!("the close reached the chain while the move was held there"),
    }
    assert_eq!(topology.after.closes(), 0);

    topology.after_gate.release();
    refresh.await.unwrap().unwrap();
    close.await.unwrap().unwrap();
    assert_eq!(topology.after.overlaps(), 0);
    assert!(topology.after.open().is_empty());
    let stats = topology.connect.stats();
    assert_eq!(stats.records, 0, "{stats:?}");
    soon("connect to go idle", topology.connect.idle()).await;
    assert!(topology.connect.stats().clients.is_empty());
    topology.shutdown().await;
}

/// A request polled outside any runtime fails (it cannot dial there), and
/// leaves connect able to follow its credential's rotations once called in
/// one.
#[test]
fn a_request_outside_a_runtime_leaves_rotation_following_intact() {
    use connect_runtime::tls::{ClientTls, Credential, Identity, ServerTls};
    use connect_tests::pki::Pki;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pki = Pki::new("test CA");
    let issued = pki.issue(&["localhost"]);
    let identity = Identity::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
    let remote = runtime.block_on(async {
        Serve::new(ServerChain::default())
            .tls(ServerTls::new(identity).unwrap())
            .bind("tcp://127.0.0.1:0")
            .await
            .unwrap()
    });
    let credential = |serial: &str| Credential {
        serial: serial.into(),
        not_after: SystemTime::now() + Duration::from_secs(3600),
    };
    let (rotate, rotating) = tokio::sync::watch::channel(credential("01"));
    let tls = ClientTls::new(pki.ca_pem())
        .unwrap()
        .server_name("localhost")
        .unwrap()
        .rotating(rotating);
    let options = DialOptions::new().timeout(Duration::from_secs(5)).tls(tls);
    let connect = connect_tests::harness::grpc_only()
        .dial_options(options)
        .build();
    let chain = ServerChain::builder().with(connect.clone()).build();
    let url = Arc::new(remote.url().clone());
    let at = || Context::new().with_client_url(Arc::clone(&url));

    let outside = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut call = std::pin::pin!(chain.request(at(), request("outside")));
        let waker = std::task::Waker::noop();
        call.as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }));
    assert!(outside.is_err(), "a request outside a runtime cannot dial");

    runtime.block_on(async {
        let inside = chain.request(at(), request("inside")).await.unwrap();
        rotate.send(credential("02")).unwrap();
        let retired = connect.wait_for(|stats| {
            matches!(stats.clients.as_slice(),
                [client] if client.retired && client.serial.as_deref() == Some("01"))
        });
        soon("the client dialed under 01 to be retired", retired).await;
        chain.close(Context::new(), inside).await.unwrap();
        soon("connect to go idle", connect.idle()).await;
        remote.shutdown().await;
    });
}
