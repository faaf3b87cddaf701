//! The tests' SPIFFE Workload API server, driven by the `spiffe` crate's
//! client and X.509 source: what SPIRE's agent serves, as that crate reads
//! it, rotations included.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use connect_runtime::spiffe::{Authorize, SpiffeIdentity, TlsStatus};
use connect_runtime::{
    ClientChain, Context, DialOptions, GrpcClient, Serve, ServerChain, ServerHandle, dial,
};
use connect_tests::request;
use connect_tests::workload_api::{Authority, Svid, WorkloadApi};
use spiffe::{WorkloadApiClient, X509Source};

const WORKLOAD: &str = "/ns/default/sa/connect";

fn serial(der: &[u8]) -> u64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    u64::try_from(cert.serial.clone()).unwrap()
}

#[tokio::test]
async fn a_spiffe_client_fetches_the_svid_and_its_bundle() {
    let api = WorkloadApi::start(
        Arc::new(Authority::new("example.org")),
        WORKLOAD,
        Duration::from_secs(30),
    )
    .await;
    let client = WorkloadApiClient::connect_to(api.endpoint()).await.unwrap();

    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/ns/default/sa/connect"
    );
    let leaf = svid.leaf().as_bytes();
    assert_eq!(leaf, api.current().cert_der.as_slice());
    assert_eq!(serial(leaf), 1);

    let bundles = client.fetch_x509_bundles().await.unwrap();
    let domain = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = bundles.get(&domain).expect("the trust domain's bundle");
    assert_eq!(
        bundle.authorities()[0].as_bytes(),
        api.authority().bundle_der().as_slice()
    );
}

#[tokio::test]
async fn an_x509_source_follows_every_rotation() {
    let api = WorkloadApi::start(
        Arc::new(Authority::new("example.org")),
        WORKLOAD,
        Duration::from_secs(30),
    )
    .await;
    let source = X509Source::builder()
        .endpoint(api.endpoint())
        .build()
        .await
        .unwrap();
    assert_eq!(serial(source.svid().unwrap().leaf().as_bytes()), 1);

    let mut updates = source.updated();
    for expected in 2..=4 {
        // Read before rotating: the update may arrive at once.
        let seen = updates.last();
        let rotated = api.rotate();
        assert_eq!(rotated.serial, expected);
        let updated = updates.wait_for(|n| *n > seen);
        connect_tests::harness::settle("the source to see the rotation", updated)
            .await
            .unwrap();
        let svid = source.svid().unwrap();
        assert_eq!(svid.leaf().as_bytes(), rotated.cert_der.as_slice());
        assert_eq!(serial(svid.leaf().as_bytes()), expected);
    }
    source.shutdown().await;
}

#[tokio::test]
async fn a_call_without_the_security_header_is_refused() {
    use connect_tests::generated::workload::X509svidRequest;
    use connect_tests::generated::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

    let api = WorkloadApi::start(
        Arc::new(Authority::new("example.org")),
        WORKLOAD,
        Duration::from_secs(30),
    )
    .await;
    let url = api.endpoint().parse().unwrap();
    let channel = connect_tests::harness::dial_patiently(&url).await;
    let err = SpiffeWorkloadApiClient::new(channel)
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("security header"), "{err:?}");
}

/// A server's and a client's Workload API in one trust domain, with SVIDs
/// living 30 s (keep the APIs: they serve the rotations), and the
/// identities they give.
async fn two_workloads() -> ((WorkloadApi, SpiffeIdentity), (WorkloadApi, SpiffeIdentity)) {
    let domain = Arc::new(Authority::new("example.org"));
    let lifetime = Duration::from_secs(30);
    let mut workloads = Vec::new();
    for path in ["/nse", "/passthrough"] {
        let api = WorkloadApi::start(Arc::clone(&domain), path, lifetime).await;
        let identity = SpiffeIdentity::from_endpoint(api.endpoint()).await.unwrap();
        workloads.push((api, identity));
    }
    let client = workloads.pop().unwrap();
    (workloads.pop().unwrap(), client)
}

async fn updated(identity: &SpiffeIdentity, serial_now: u64) {
    let mut updates = identity.source().updated();
    while serial(identity.source().svid().unwrap().leaf().as_bytes()) != serial_now {
        updates.changed().await.unwrap();
    }
}

/// Waits until a TLS configuration has applied its source's latest SVID
/// (until then its handshakes fail closed).
async fn applied(status: &mut TlsStatus) {
    while !status.current().available {
        status.changed().await.unwrap();
    }
}

/// A dial and a server with SVIDs of one trust domain authenticate each
/// other; after each rotation a new connection is made with the new SVIDs.
#[tokio::test]
async fn dial_and_serve_use_the_current_svids_across_rotations() {
    let ((server_api, server_identity), (client_api, client_identity)) = two_workloads().await;
    assert_eq!(
        client_identity.spiffe_id().unwrap().to_string(),
        "spiffe://example.org/passthrough"
    );

    let seen = Arc::new(Mutex::new(Vec::new()));
    let (server, options, mut server_status, mut client_status) =
        mutual_tls(&server_identity, &client_identity, &seen).await;

    for round in 1..=3u64 {
        let conn = dial(server.url(), &options).await.unwrap();
        let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
        let reply = client
            .request(Context::new(), request("svid"))
            .await
            .unwrap();
        client.close(Context::new(), reply).await.unwrap();
        // Request and close, each round under that round's SVID.
        let expected: Vec<u64> = (1..=round).flat_map(|r| [r, r]).collect();
        let serials: Vec<u64> = seen.lock().unwrap().iter().map(|(_, s)| *s).collect();
        assert_eq!(serials, expected);
        let (client_next, server_next) = (client_api.rotate(), server_api.rotate());
        updated(&client_identity, client_next.serial).await;
        updated(&server_identity, server_next.serial).await;
        applied(&mut client_status).await;
        applied(&mut server_status).await;
    }
    server.shutdown().await;
}

/// A server of `server`'s SVIDs that notes in `seen` what it saw of each
/// call (see `resumptions`), and how `client` dials it; with the status of
/// each side's configuration.
async fn mutual_tls(
    server: &SpiffeIdentity,
    client: &SpiffeIdentity,
    seen: &Arc<Mutex<Vec<(bool, u64)>>>,
) -> (ServerHandle, DialOptions, TlsStatus, TlsStatus) {
    let (server_tls, server_status) = server
        .server_tls_with_status(Authorize::SameTrustDomain)
        .unwrap();
    let handle = Serve::new(ServerChain::default())
        .tls(server_tls)
        .layer(resumptions(Arc::clone(seen)))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let (tls, client_status) = client
        .client_tls_with_status(Authorize::SameTrustDomain)
        .unwrap();
    let options = DialOptions::new().timeout(Duration::from_secs(5)).tls(tls);
    (handle, options, server_status, client_status)
}

/// One call on a connection of its own, dialed with `options`; what the
/// server saw of it (see `resumptions`).
async fn call_seen(
    url: &url::Url,
    options: &DialOptions,
    seen: &Mutex<Vec<(bool, u64)>>,
) -> Result<(bool, u64), connect_runtime::DialError> {
    let conn = dial(url, options).await?;
    let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
    client.request(Context::new(), request("r")).await.unwrap();
    Ok(*seen.lock().unwrap().last().unwrap())
}

/// Rotates `api`'s SVID and waits until a configuration of `identity`
/// with `status` presents the new one.
async fn rotate(api: &WorkloadApi, identity: &SpiffeIdentity, status: &mut TlsStatus) {
    let rotated = api.rotate();
    updated(identity, rotated.serial).await;
    applied(status).await;
}

/// The server's record of what it saw of each call's connection: whether
/// its handshake resumed a session, and the client's leaf serial.
fn resumptions(
    seen: Arc<Mutex<Vec<(bool, u64)>>>,
) -> tower::util::MapRequestLayer<
    impl Fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> + Clone,
> {
    tower::util::MapRequestLayer::new(move |call: http::Request<tonic::body::Body>| {
        let peer = call.extensions().get::<connect_runtime::Peer>().unwrap();
        let leaf = &peer.certificates().expect("a client certificate")[0];
        seen.lock().unwrap().push((peer.resumed(), serial(leaf)));
        call
    })
}

/// With SPIFFE identities a redial resumes its TLS session, but never one
/// made under an earlier SVID, on either side: after the client's rotation
/// it presents the new SVID in full (its sessions were dropped), and after
/// the server's the server resumes none of the sessions it had made.
#[tokio::test]
async fn spiffe_redials_resume_but_never_across_a_rotation() {
    let ((server_api, server_identity), (client_api, client_identity)) = two_workloads().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (server, options, mut server_status, mut client_status) =
        mutual_tls(&server_identity, &client_identity, &seen).await;
    let call = || call_seen(server.url(), &options, &seen);
    assert_eq!(
        call().await.unwrap(),
        (false, 1),
        "the first dial: a full handshake"
    );
    assert_eq!(call().await.unwrap(), (true, 1), "a redial resumes");
    assert_eq!(call().await.unwrap(), (true, 1), "and the next");

    rotate(&client_api, &client_identity, &mut client_status).await;
    assert_eq!(
        call().await.unwrap(),
        (false, 2),
        "after the client's rotation: the new SVID, in full"
    );
    assert_eq!(call().await.unwrap(), (true, 2), "then resumed under it");

    rotate(&server_api, &server_identity, &mut server_status).await;
    assert_eq!(
        call().await.unwrap(),
        (false, 2),
        "after the server's rotation: no session of its old SVID resumes"
    );
    assert_eq!(
        call().await.unwrap(),
        (true, 2),
        "then resumed under the new one"
    );
    server.shutdown().await;
}

/// Waits until `svid` has expired.
async fn expired(svid: &Svid) {
    let left = svid.not_after().duration_since(SystemTime::now());
    tokio::time::sleep(left.unwrap_or_default() + Duration::from_millis(1100)).await;
}

/// Rotates `api`'s SVID once its current one has expired, and waits until
/// `status` presents the new one.
async fn renewed_after_expiry(api: &WorkloadApi, source: &X509Source, status: &mut TlsStatus) {
    expired(&api.current()).await;
    let next = api.rotate_for(Duration::from_secs(60));
    let mut updates = source.updated();
    // (Until then the source has no SVID to give: its one has expired.)
    while source
        .svid()
        .ok()
        .map(|svid| serial(svid.leaf().as_bytes()))
        != Some(next.serial)
    {
        updates.changed().await.unwrap();
    }
    applied(status).await;
}

/// A SPIFFE server refuses a resumed session whose client SVID has expired
/// since the handshake that made it (rustls does not verify a resumed
/// client again). The client here keeps its sessions across its own
/// rotation, as a plain rustls client with a session cache does.
#[tokio::test]
async fn a_spiffe_server_refuses_a_resumed_session_of_an_expired_client_svid() {
    let domain = Arc::new(Authority::new("example.org"));
    let server_api = WorkloadApi::start(Arc::clone(&domain), "/nse", Duration::from_secs(60)).await;
    let server_identity = SpiffeIdentity::from_endpoint(server_api.endpoint())
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = Serve::new(ServerChain::default())
        .tls(
            server_identity
                .server_tls(Authorize::SameTrustDomain)
                .unwrap(),
        )
        .layer(resumptions(Arc::clone(&seen)))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let client_api = WorkloadApi::start(domain, "/short", Duration::from_secs(2)).await;
    let source = X509Source::builder()
        .endpoint(client_api.endpoint())
        .build()
        .await
        .unwrap();
    let (mut config, mut status) = spiffe_rustls::mtls_client(source.clone())
        .build_with_status()
        .unwrap();
    applied(&mut status).await;
    config.resumption = rustls::client::Resumption::in_memory_sessions(8);
    let tls = connect_runtime::tls::ClientTls::from_rustls(config);
    let options = DialOptions::new().timeout(Duration::from_secs(5)).tls(tls);
    let call = || call_seen(server.url(), &options, &seen);
    assert_eq!(call().await.unwrap(), (false, 1));
    assert_eq!(call().await.unwrap(), (true, 1), "resumed while valid");

    renewed_after_expiry(&client_api, &source, &mut status).await;
    let refused_before = server.connections().refused;
    call()
        .await
        .expect_err("a resumed session of an expired SVID is refused");
    assert_eq!(server.connections().refused, refused_before + 1);
    assert_eq!(seen.lock().unwrap().len(), 2, "no call was served");
    server.shutdown().await;
}

/// A SPIFFE client does not take a resumed session whose server SVID has
/// expired since (rustls does not verify a resumed server again): it drops
/// its sessions and handshakes in full, meeting the server's new SVID. The
/// server here keeps its sessions across its own rotation, as a plain
/// rustls server does.
#[tokio::test]
async fn a_spiffe_client_refuses_a_resumed_session_of_an_expired_server_svid() {
    let domain = Arc::new(Authority::new("example.org"));
    let server_api =
        WorkloadApi::start(Arc::clone(&domain), "/short", Duration::from_secs(2)).await;
    let source = X509Source::builder()
        .endpoint(server_api.endpoint())
        .build()
        .await
        .unwrap();
    let (mut config, mut status) = spiffe_rustls::mtls_server(source.clone())
        .build_with_status()
        .unwrap();
    applied(&mut status).await;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(8);
    config.send_tls13_tickets = 2;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = Serve::new(ServerChain::default())
        .tls(connect_runtime::tls::ServerTls::from_rustls(config))
        .layer(resumptions(Arc::clone(&seen)))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let client_api = WorkloadApi::start(domain, "/passthrough", Duration::from_secs(60)).await;
    let client_identity = SpiffeIdentity::from_endpoint(client_api.endpoint())
        .await
        .unwrap();
    let tls = client_identity
        .client_tls(Authorize::SameTrustDomain)
        .unwrap();
    let options = DialOptions::new().timeout(Duration::from_secs(5)).tls(tls);
    let call = || call_seen(server.url(), &options, &seen);
    assert_eq!(call().await.unwrap(), (false, 1));
    assert_eq!(call().await.unwrap(), (true, 1), "resumed while valid");

    renewed_after_expiry(&server_api, &source, &mut status).await;
    assert_eq!(
        call().await.unwrap(),
        (false, 1),
        "the session of the expired server SVID is not taken: a full handshake"
    );
    assert_eq!(
        call().await.unwrap(),
        (true, 1),
        "then resumed with the new one"
    );
    server.shutdown().await;
}

/// A workload of `other.org` that trusts `home`'s bundle and accepts
/// servers of its trust domain: its Workload API (keep it) and how it dials.
async fn stranger(home: &Authority) -> (WorkloadApi, DialOptions) {
    let other = Arc::new(Authority::new("other.org"));
    let lifetime = Duration::from_secs(30);
    let api = WorkloadApi::federated(other, "/intruder", lifetime, &[home]).await;
    let identity = SpiffeIdentity::from_endpoint(api.endpoint()).await.unwrap();
    let domain = home.trust_domain().to_owned();
    let accept = Authorize::predicate(move |id| id.trust_domain().to_string() == domain);
    let tls = identity.client_tls(accept).unwrap();
    let options = DialOptions::new().timeout(Duration::from_secs(5)).tls(tls);
    (api, options)
}

/// A workload of another trust domain (which trusts this one's bundle) is
/// refused by a server that accepts its own trust domain only.
#[tokio::test]
async fn a_peer_from_another_trust_domain_is_refused() {
    let home = Arc::new(Authority::new("example.org"));
    let lifetime = Duration::from_secs(30);
    let server_api = WorkloadApi::start(Arc::clone(&home), "/nse", lifetime).await;
    let server_identity = SpiffeIdentity::from_endpoint(server_api.endpoint())
        .await
        .unwrap();
    let (_stranger_api, options) = stranger(&home).await;

    let server = Serve::new(ServerChain::default())
        .tls(
            server_identity
                .server_tls(Authorize::SameTrustDomain)
                .unwrap(),
        )
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let refused = match dial(server.url(), &options).await {
        Err(err) => tonic::Status::from(err),
        Ok(conn) => {
            let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
            client
                .request(Context::new(), request("intruder"))
                .await
                .expect_err("a peer from another trust domain was served")
        }
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // The server's TLS alert, as the dial saw it.
    assert!(refused.message().contains("alert"), "{refused:?}");
    let refusal = server.wait_connections(|s| s.refused == 1);
    let stats = connect_tests::harness::settle("the refusal to be counted", refusal).await;
    assert_eq!((stats.refused, stats.open), (1, 0));
    server.shutdown().await;
}

/// The program with `--spiffe`: a caller → passthrough → endpoint, each a
/// workload with its own SVIDs from the test Workload API. First one
/// connection per round with the caller's SVID rotated between rounds; then
/// one connection throughout while the passthrough's SVID rotates: its
/// connect retires its client each time and the connections move, and its
/// listener drains the caller's TCP connection, which the caller's channel
/// dials again. A workload of another trust domain is refused by the
/// passthrough.
#[tokio::test]
async fn the_program_forwards_with_spiffe_identities() {
    use connect_tests::program::Program;

    let domain = Arc::new(Authority::new("example.org"));
    let lifetime = Duration::from_secs(30);
    let endpoint_api = WorkloadApi::start(Arc::clone(&domain), "/nse", lifetime).await;
    let passthrough_api = WorkloadApi::start(Arc::clone(&domain), "/passthrough", lifetime).await;
    let caller_api = WorkloadApi::start(Arc::clone(&domain), "/caller", lifetime).await;

    let endpoint = Program::start_with_env(
        &["--endpoint", "--listen", "tcp://127.0.0.1:0", "--spiffe"],
        &[("SPIFFE_ENDPOINT_SOCKET", endpoint_api.endpoint())],
    )
    .await;
    let passthrough = Program::start_with_env(
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--connect-to",
            endpoint.url().as_str(),
            "--dial-timeout",
            "5s",
            "--spiffe",
        ],
        &[("SPIFFE_ENDPOINT_SOCKET", passthrough_api.endpoint())],
    )
    .await;

    let caller = SpiffeIdentity::from_endpoint(caller_api.endpoint())
        .await
        .unwrap();
    let (tls, mut status) = caller
        .client_tls_with_status(Authorize::SameTrustDomain)
        .unwrap();
    let options = DialOptions::new().timeout(Duration::from_secs(5)).tls(tls);
    for round in 1..=3 {
        let conn = dial(passthrough.url(), &options).await.unwrap();
        let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
        let id = format!("round-{round}");
        let reply = client.request(Context::new(), request(&id)).await.unwrap();
        assert_eq!(reply.id, id);
        client.close(Context::new(), reply).await.unwrap();

        updated(&caller, caller_api.rotate().serial).await;
        applied(&mut status).await;
    }

    let conn = dial(passthrough.url(), &options).await.unwrap();
    let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
    let kept = client
        .request(Context::new(), request("kept"))
        .await
        .unwrap();
    for round in 1..=3 {
        passthrough_api.rotate();
        let refreshed = client
            .request(Context::new(), request("kept"))
            .await
            .unwrap();
        assert_eq!(refreshed.id, kept.id);
        let id = format!("after-rotation-{round}");
        let reply = client.request(Context::new(), request(&id)).await.unwrap();
        client.close(Context::new(), reply).await.unwrap();
    }
    client.close(Context::new(), kept).await.unwrap();

    let (_stranger_api, options) = stranger(&domain).await;
    let err = dial(passthrough.url(), &options).await.unwrap_err();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    passthrough.terminate();
    endpoint.terminate();
    assert!(passthrough.exited().await.success());
    assert!(endpoint.exited().await.success());
}
