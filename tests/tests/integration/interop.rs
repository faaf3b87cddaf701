//! The passthrough program between independent peers, as a user deploys
//! it: tonic callers (over TLS too), grpc-go-like endpoints whose handlers
//! outlive a cancelled caller and whose connections are recycled, a
//! unix-socket caller sending `localhost` as `:authority`, an endpoint
//! answering malformed statuses, SIGTERM under load, and the demo twice at
//! once.

use std::time::Duration;

use connect_runtime::ServerChain;
use connect_runtime::proto::connection::Connection;
use connect_tests::caller::{golike_unix_caller, tonic_caller, tonic_uri};
use connect_tests::elements::{Gate, Ledger, Op, ledger_chain};
use connect_tests::golike::{Behaviour, GoLike};
use connect_tests::harness::settle;
use connect_tests::pki::{Issued, Pki};
use connect_tests::program::{Program, run};
use connect_tests::remote::unix_url;
use connect_tests::request;
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A caller that cancels mid-request: the call the program forwarded runs
/// to its end at the endpoint (whose handler goes on, as grpc-go's do,
/// until the deadline the caller gave), and only then does the program
/// close what it created; no two calls for the id overlap there, and
/// nothing is left open.
#[tokio::test]
async fn a_caller_cancelling_mid_request_leaves_nothing_at_the_endpoint() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let endpoint = GoLike::tcp(ledger_chain(&ledger, &gate)).await;
    let passthrough = Program::passthrough_to(endpoint.url()).await;
    let caller = tonic_caller(passthrough.url()).await;

    gate.arm(Op::Request);
    let mut cancelled = caller.clone();
    let call = tokio::spawn(async move {
        let mut call = tonic::Request::new(request("gone"));
        call.set_timeout(Duration::from_secs(1));
        cancelled.request(call).await
    });
    settle("the request to reach the endpoint", gate.holding()).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());

    // Never released: the endpoint's call ends at its deadline, and the
    // program's close comes after it.
    let told = ledger.until(|ledger| ledger.closes() > 0);
    settle("the endpoint to be told to close", told).await;
    assert_eq!(ledger.overlaps(), 0, "the close overlapped the request");
    passthrough.terminate();
    assert!(passthrough.exited().await.success());
    assert_eq!(ledger.closes(), 1, "one close, never repeated");
    endpoint.wait_connections(|c| c.open == 0).await;
}

/// An endpoint recycling its connections on an age timer (grpc-go's
/// `MaxConnectionAge`): requests, refreshes and closes keep working across
/// recycles.
#[tokio::test]
async fn an_endpoint_recycling_its_connections_is_served_throughout() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    // Recycled connections drain (grpc-go's default): calls in flight
    // finish on them.
    let behaviour = Behaviour {
        connection_age: Some(Duration::from_millis(100)),
        grace: None,
        ..Behaviour::default()
    };
    let endpoint = GoLike::tcp_behaving(ledger_chain(&ledger, &gate), behaviour).await;
    let passthrough = Program::passthrough_to(endpoint.url()).await;
    let mut caller = tonic_caller(passthrough.url()).await;

    let mut open: Vec<Connection> = Vec::new();
    let mut round = 0;
    let traffic = async {
        while endpoint.connections().accepted < 4 {
            round += 1;
            let conn = caller
                .request(request(&format!("r{round}")))
                .await
                .unwrap_or_else(|s| panic!("round {round}: {s:?}"))
                .into_inner();
            open.push(conn);
            if let Some(oldest) = open.first().cloned() {
                let mut refresh = request(&oldest.id);
                refresh.connection = Some(Box::new(oldest));
                open[0] = caller.request(refresh).await.unwrap().into_inner();
            }
            if open.len() > 3 {
                caller.close(open.remove(0)).await.unwrap();
            }
        }
    };
    settle(
        "the endpoint to recycle its connections three times",
        traffic,
    )
    .await;
    for conn in open {
        caller.close(conn).await.unwrap();
    }
    assert!(ledger.open().is_empty(), "{:?}", ledger.open());
    assert_eq!(ledger.overlaps(), 0);
    passthrough.terminate();
    assert!(passthrough.exited().await.success());
    endpoint.wait_connections(|c| c.open == 0).await;
}

/// An endpoint answering malformed statuses: the caller gets `Internal`
/// naming the problem, the program keeps serving, nothing is left open.
#[tokio::test]
async fn an_endpoint_answering_malformed_statuses_gets_internal() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let endpoint = GoLike::tcp(ledger_chain(&ledger, &gate)).await;
    let passthrough = Program::passthrough_to(endpoint.url()).await;
    let mut caller = tonic_caller(passthrough.url()).await;

    endpoint.set_malformed(true);
    let status = caller.request(request("m")).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("grpc-status-details-bin"),
        "{status:?}"
    );
    endpoint.wait_connections(|c| c.open == 0).await;

    endpoint.set_malformed(false);
    let conn = caller.request(request("ok")).await.unwrap().into_inner();
    caller.close(conn).await.unwrap();
    passthrough.terminate();
    assert!(passthrough.exited().await.success());
    endpoint.wait_connections(|c| c.open == 0).await;
    assert!(ledger.open().is_empty());
}

/// SIGTERM under a stream of new requests: every caller gets an answer
/// (a connection, or `Unavailable` once the program stops), the program
/// exits cleanly, and its connections to the endpoint close.
#[tokio::test]
async fn sigterm_under_a_stream_of_new_requests() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let endpoint = GoLike::tcp(ledger_chain(&ledger, &gate)).await;
    let passthrough = Program::passthrough_to(endpoint.url()).await;
    let caller = tonic_caller(passthrough.url()).await;

    let callers: Vec<_> = (0..8)
        .map(|k| {
            let mut caller = caller.clone();
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0, 0);
                for n in 0.. {
                    match caller.request(request(&format!("s{k}-{n}"))).await {
                        Ok(_) => ok += 1,
                        // Refused once the program stops: Unavailable, or
                        // (tonic's word for a call its connection never
                        // sent before the GOAWAY) Cancelled.
                        Err(status)
                            if matches!(status.code(), Code::Unavailable | Code::Cancelled) =>
                        {
                            refused += 1;
                            break;
                        }
                        Err(status) => panic!("caller {k}: {status:?}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let flowing = ledger.until(|ledger| ledger.open().len() >= 16);
    settle("requests to flow", flowing).await;
    passthrough.terminate();
    for task in callers {
        let (ok, refused) = settle("a caller to get its answer", task).await.unwrap();
        assert!(ok > 0 && refused == 1, "{ok} {refused}");
    }
    assert!(passthrough.exited().await.success());
    endpoint.wait_connections(|c| c.open == 0).await;
    assert_eq!(ledger.overlaps(), 0);
}

/// A unix-socket caller that sends `localhost` as `:authority`, as grpc-go
/// does, is served.
#[tokio::test]
async fn a_unix_socket_caller_sending_localhost_is_served() {
    let dir = TempDir::new().unwrap();
    let endpoint = GoLike::tcp(ServerChain::default()).await;
    let listen = unix_url(&dir.path().join("passthrough.sock"));
    let passthrough = Program::start(&[
        "--listen",
        listen.as_str(),
        "--connect-to",
        endpoint.url().as_str(),
    ])
    .await;
    let mut caller = golike_unix_caller(&dir.path().join("passthrough.sock")).await;

    let conn = caller.request(request("uds")).await.unwrap().into_inner();
    assert_eq!(conn.id, "uds");
    caller.close(conn).await.unwrap();
    passthrough.terminate();
    assert!(passthrough.exited().await.success());
}

/// The demo, twice at once, a few times over: every run passes its checks
/// (it samples `stats()` throughout).
#[tokio::test]
async fn the_demo_runs_twice_at_once_and_passes() {
    for round in 0..3 {
        let (a, b) = tokio::join!(
            run(&["--connections", "200"]),
            run(&["--connections", "200"])
        );
        for output in [a, b] {
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "round {round}: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                stdout.contains("all checks passed"),
                "round {round}: {stdout}"
            );
        }
    }
}

/// PEM files for the TLS topology, in `dir`.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new(pki: &Pki, names: &[(&str, &Issued)]) -> Self {
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
        for (name, issued) in names {
            std::fs::write(dir.path().join(format!("{name}.pem")), &issued.cert_pem).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), &issued.key_pem).unwrap();
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    fn tls_args(&self, name: &str) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path(&format!("{name}.pem")),
            "--tls-key".into(),
            self.path(&format!("{name}.key")),
            "--tls-ca".into(),
            self.path("ca.pem"),
        ]
    }
}

async fn tls_caller(
    url: &url::Url,
    pki: &Pki,
    identity: Option<&Issued>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .domain_name("localhost");
    if let Some(issued) = identity {
        tls = tls.identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem));
    }
    let uri = tonic_uri(url).replace("http://", "https://");
    Endpoint::from_shared(uri)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A TLS caller through a TLS passthrough to a TLS endpoint, every hop
/// with mutual TLS from one CA; a caller without a certificate is refused.
#[tokio::test]
async fn mutual_tls_end_to_end_and_a_caller_without_a_certificate_is_refused() {
    use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;

    let pki = Pki::new("interop CA");
    let names = ["localhost", "127.0.0.1"];
    let (endpoint_id, passthrough_id, caller_id) =
        (pki.issue(&names), pki.issue(&names), pki.issue(&["caller"]));
    let files = Files::new(
        &pki,
        &[("endpoint", &endpoint_id), ("passthrough", &passthrough_id)],
    );
    let mut endpoint_args = vec![
        "--endpoint".to_owned(),
        "--listen".into(),
        "tcp://127.0.0.1:0".into(),
    ];
    endpoint_args.extend(files.tls_args("endpoint"));
    let endpoint_args: Vec<&str> = endpoint_args.iter().map(String::as_str).collect();
    let endpoint = Program::start(&endpoint_args).await;
    let mut passthrough_args = vec![
        "--listen".to_owned(),
        "tcp://127.0.0.1:0".into(),
        "--connect-to".into(),
        endpoint.url().to_string(),
    ];
    passthrough_args.extend(files.tls_args("passthrough"));
    let passthrough_args: Vec<&str> = passthrough_args.iter().map(String::as_str).collect();
    let passthrough = Program::start(&passthrough_args).await;

    let channel = tls_caller(passthrough.url(), &pki, Some(&caller_id))
        .await
        .unwrap();
    let mut caller = NetworkServiceClient::new(channel);
    let conn = caller.request(request("tls")).await.unwrap().into_inner();
    assert_eq!(conn.id, "tls");
    caller.close(conn).await.unwrap();

    // No client certificate: refused (under TLS 1.3 the caller learns it
    // from the server's alert, or from the closed connection).
    if let Ok(channel) = tls_caller(passthrough.url(), &pki, None).await {
        let call = NetworkServiceClient::new(channel)
            .request(request("anonymous"))
            .await;
        assert!(call.is_err(), "a caller without a certificate was served");
    }

    passthrough.terminate();
    endpoint.terminate();
    assert!(passthrough.exited().await.success());
    assert!(endpoint.exited().await.success());
}
