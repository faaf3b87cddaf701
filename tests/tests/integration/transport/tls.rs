//! TLS on both sides (`transport::tls`): dials verify servers, servers
//! require client certificates when given a CA.

use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::tls::{ClientTls, Credential, Identity, ServerTls};
use connect_runtime::{
    ClientChain, Context, DialError, DialOptions, GrpcClient, Passthrough, ServerChain, dial,
};
use connect_runtime::{Peer, Serve, ServerHandle};
use connect_tests::elements::Capture;
use connect_tests::harness::settle;
use connect_tests::pki::{Issued, Pki};
use connect_tests::request;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

#[tokio::test]
async fn dialing_with_tls_verifies_the_server_and_carries_calls() {
    let pki = Pki::new("test CA");
    let issued = pki.issue(&["localhost"]);
    let identity = Identity::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
    let capture = Capture::new();
    let server = Serve::new(ServerChain::builder().with(capture.clone()).build())
        .tls(ServerTls::new(identity).unwrap())
        .bind("tcp://127.0.0.1:0")
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
    assert!(
        err.to_string()
            .contains("the remote's certificate is not signed by the CA given to dial it"),
        "{err}"
    );
    // One that does not name what was dialed, with what it needs.
    let misnamed = DialOptions::new().timeout(Duration::from_secs(5)).tls(
        ClientTls::new(pki.ca_pem())
            .unwrap()
            .server_name("nsmgr.example")
            .unwrap(),
    );
    let err = dial(server.url(), &misnamed).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "the remote's certificate does not name `nsmgr.example`: it needs subjectAltName DNS:nsmgr.example"
        ),
        "{err}"
    );
    server.shutdown().await;
}

/// A configuration given as it is cannot be rebuilt with a client CA or a
/// client identity: asking fails, rather than serving without the client
/// verification asked for.
#[test]
fn a_rustls_configuration_given_as_it_is_refuses_settings_that_rebuild_it() {
    use connect_runtime::tls::TlsError;
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
    let (pki, stranger) = (Pki::new("test CA"), Pki::new("another CA"));
    let server_id = pki.issue(&["localhost"]);
    let tls = ServerTls::new(Identity::from_pem(&server_id.cert_pem, &server_id.key_pem).unwrap())
        .unwrap();
    assert_eq!(tls.security(), "TLS, any client");
    let tls = tls.client_ca(pki.ca_pem()).unwrap();
    // What the server says it serves, when it starts.
    assert_eq!(
        tls.security(),
        "mutual TLS, clients certified by CA test CA"
    );
    let server = Serve::new(ServerChain::builder().with(Passthrough).build())
        .tls(tls)
        .bind("tcp://127.0.0.1:0")
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
    // A caller speaking plaintext to the TLS port.
    let plaintext = dial(
        server.url(),
        &DialOptions::new().timeout(Duration::from_secs(5)),
    )
    .await;
    if let Ok(conn) = plaintext {
        assert!(
            NetworkServiceClient::new(conn)
                .request(request("x"))
                .await
                .is_err()
        );
    }
    // Each refusal is counted by its cause (and logged at warn with it).
    let seen = settle(
        "the server to count the plaintext caller",
        server.wait_connections(|c| c.refused == 3),
    )
    .await;
    assert_eq!(
        (
            seen.no_client_certificate,
            seen.untrusted_certificate,
            seen.plaintext
        ),
        (1, 1, 1),
        "{seen:?}"
    );
    server.shutdown().await;
}

/// What a server saw of each call's connection: whether its handshake
/// resumed a session, and how many certificates the client presented.
type Seen = Arc<Mutex<Vec<(bool, usize)>>>;

/// A server layer that records what it sees of each call (see [`Seen`]).
fn resumptions(
    seen: Seen,
) -> tower::util::MapRequestLayer<
    impl Fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> + Clone,
> {
    tower::util::MapRequestLayer::new(move |call: http::Request<tonic::body::Body>| {
        let peer = call.extensions().get::<Peer>().unwrap();
        let chain = peer.certificates().map_or(0, <[_]>::len);
        seen.lock().unwrap().push((peer.resumed(), chain));
        call
    })
}

/// A server of `tls` that records what it sees of each call in `seen`.
async fn serving(tls: ServerTls, seen: &Seen) -> ServerHandle {
    Serve::new(ServerChain::builder().with(Passthrough).build())
        .tls(tls)
        .layer(resumptions(Arc::clone(seen)))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap()
}

/// One call on a connection of its own: what the server saw of it.
async fn call_seen(
    url: &url::Url,
    options: &DialOptions,
    seen: &Seen,
) -> Result<(bool, usize), DialError> {
    let conn = dial(url, options).await?;
    let reply = NetworkServiceClient::new(conn)
        .request(request("again"))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().id, "again");
    Ok(*seen.lock().unwrap().last().unwrap())
}

fn identity(issued: &Issued) -> Identity {
    Identity::from_pem(&issued.cert_pem, &issued.key_pem).unwrap()
}

/// A server of `localhost` that requires clients certified by `pki`.
fn mutual_server(pki: &Pki) -> ServerTls {
    ServerTls::new(identity(&pki.issue(&["localhost"])))
        .unwrap()
        .client_ca(pki.ca_pem())
        .unwrap()
}

/// A client that verifies `localhost` against `pki` and presents `issued`.
fn mutual_client(pki: &Pki, issued: &Issued) -> ClientTls {
    ClientTls::new(pki.ca_pem())
        .unwrap()
        .server_name("localhost")
        .unwrap()
        .identity(identity(issued))
        .unwrap()
}

/// Sleeps until a certificate valid until `not_after` has expired, to the
/// second. (The clock passing, not synchronisation.)
async fn expired(not_after: SystemTime) {
    let left = not_after.duration_since(SystemTime::now());
    tokio::time::sleep(left.unwrap_or_default() + Duration::from_millis(1100)).await;
}

/// A redial to a remote it has talked to resumes the TLS session (the
/// client's session store and the server's tickets), and the server still
/// knows the client's certificate.
#[tokio::test]
async fn a_redial_resumes_the_tls_session_and_keeps_the_clients_certificate() {
    let pki = Pki::new("test CA");
    let tls = mutual_server(&pki);
    let seen = Seen::default();
    let server = serving(tls, &seen).await;
    let tls = mutual_client(&pki, &pki.issue(&["client"]));
    let options = DialOptions::new().timeout(Duration::from_secs(5)).tls(tls);
    for _ in 0..3 {
        call_seen(server.url(), &options, &seen).await.unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [(false, 1), (true, 1), (true, 1)],
        "a full handshake, then resumed ones that still carry the client's certificate"
    );
}

/// A client does not take a resumed session whose server certificate has
/// expired since (rustls would): it verifies the server again, as a full
/// handshake would, drops its sessions and handshakes in full, which the
/// expired certificate fails.
#[tokio::test]
async fn a_client_does_not_resume_a_session_whose_server_certificate_expired() {
    let pki = Pki::new("test CA");
    let not_after = SystemTime::now() + Duration::from_secs(3);
    let tls = ServerTls::new(identity(&pki.issue_until(&["localhost"], not_after))).unwrap();
    let seen = Seen::default();
    let server = serving(tls, &seen).await;
    let tls = ClientTls::new(pki.ca_pem())
        .unwrap()
        .server_name("localhost")
        .unwrap();
    let options = DialOptions::new().timeout(Duration::from_secs(5)).tls(tls);
    let call = || call_seen(server.url(), &options, &seen);
    assert_eq!(call().await.unwrap(), (false, 0));
    assert_eq!(call().await.unwrap(), (true, 0), "resumed while valid");

    expired(not_after).await;
    let err = call()
        .await
        .expect_err("the expired server is not resumed, and fails in full");
    let why = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(why.contains("xpired"), "{why}");
    assert_eq!(seen.lock().unwrap().len(), 2, "no call was served");
    server.shutdown().await;
}

/// A mutual-TLS server refuses a resumed session whose client certificate
/// has expired since (rustls would take it): it verifies the client again,
/// as a full handshake would.
#[tokio::test]
async fn a_server_refuses_a_resumed_session_whose_client_certificate_expired() {
    let pki = Pki::new("test CA");
    let tls = mutual_server(&pki);
    let seen = Seen::default();
    let server = serving(tls, &seen).await;
    let not_after = SystemTime::now() + Duration::from_secs(3);
    let tls = mutual_client(&pki, &pki.issue_until(&["client"], not_after));
    let options = DialOptions::new().timeout(Duration::from_secs(5)).tls(tls);
    let call = || call_seen(server.url(), &options, &seen);
    assert_eq!(call().await.unwrap(), (false, 1));
    assert_eq!(call().await.unwrap(), (true, 1), "resumed while valid");

    expired(not_after).await;
    let refused_before = server.connections().refused;
    call()
        .await
        .expect_err("a resumed session of an expired client is refused");
    assert_eq!(server.connections().refused, refused_before + 1);
    assert_eq!(seen.lock().unwrap().len(), 2, "no call was served");
    server.shutdown().await;
}

/// Certificates that rotate (declared by `rotating`) never resume a
/// session made under the one before, on either side: after the client's
/// rotation its next dial is a full handshake, and after the server's, the
/// server resumes none of the sessions it had made.
#[tokio::test]
async fn rotating_certificates_never_resume_a_session_across_a_rotation() {
    let pki = Pki::new("test CA");
    let credential = |serial: &str| Credential {
        serial: serial.into(),
        not_after: SystemTime::now() + Duration::from_secs(3600),
    };
    let (rotate_server, server_rotating) = watch::channel(credential("s1"));
    let tls = mutual_server(&pki).rotating(server_rotating);
    let seen = Seen::default();
    let server = serving(tls, &seen).await;
    let (rotate_client, client_rotating) = watch::channel(credential("c1"));
    let tls = mutual_client(&pki, &pki.issue(&["client"])).rotating(client_rotating);
    let options = DialOptions::new().timeout(Duration::from_secs(5)).tls(tls);
    let call = || async { call_seen(server.url(), &options, &seen).await.unwrap().0 };
    assert!(!call().await);
    assert!(call().await, "resumed before any rotation");

    rotate_client.send(credential("c2")).unwrap();
    assert!(!call().await, "the client's rotation: in full");
    assert!(call().await, "then resumed under the new certificate");

    rotate_server.send(credential("s2")).unwrap();
    assert!(!call().await, "the server's rotation: in full");
    assert!(call().await, "then resumed under the new certificate");
    server.shutdown().await;
}

/// A TLS handshake with `server` from `config`: the suite it settled on.
async fn negotiated(
    server: &ServerHandle,
    config: Arc<rustls::ClientConfig>,
) -> rustls::CipherSuite {
    let url = server.url();
    let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    session.negotiated_cipher_suite().unwrap().suite()
}

/// Our clients ask for TLS 1.3's AES-128-GCM first, as Go's crypto/tls
/// clients do where the CPU has AES instructions (its SHA-256 key schedule
/// is cheaper on x86-64 than AES-256's SHA-384), and our servers take the
/// client's first choice: a client that asks for ChaCha20 first gets it.
#[tokio::test]
async fn our_clients_prefer_aes_128_gcm_and_our_servers_follow_the_client() {
    use rustls::pki_types::pem::PemObject;
    let pki = Pki::new("test CA");
    let server = serving(
        ServerTls::new(identity(&pki.issue(&["localhost"]))).unwrap(),
        &Seen::default(),
    )
    .await;
    let ours = ClientTls::new(pki.ca_pem()).unwrap().rustls_config();
    assert_eq!(
        negotiated(&server, ours).await,
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );

    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let mut chacha_first = rustls::crypto::ring::default_provider();
    chacha_first
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    let mut other = rustls::ClientConfig::builder_with_provider(Arc::new(chacha_first))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    other.alpn_protocols = vec![b"h2".to_vec()];
    assert_eq!(
        negotiated(&server, Arc::new(other)).await,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
    server.shutdown().await;
}
