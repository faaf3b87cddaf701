//! The passthrough program as a real process: endpoint and server modes over
//! TCP and unix sockets, SIGTERM, bad input, and the demo.

use std::time::Duration;

use connect_runtime::proto::connection::{
    ConnectionEvent, ConnectionEventType, MonitorScopeSelector, State,
};
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{ClientConn, DialOptions, ServerChain, dial};
use connect_tests::caller::monitor_caller;
use connect_tests::elements::{Capture, Count, Gate, Ledger, Op};
use connect_tests::harness::settle;
use connect_tests::program::{Program, example, run};
use connect_tests::remote::{start_tcp, unix_url};
use connect_tests::{from_caller, refreshed, request, request_for};
use tempfile::TempDir;
use tonic::{Code, Streaming};
use url::Url;

async fn client(url: &Url) -> NetworkServiceClient<ClientConn> {
    let options = DialOptions::new().timeout(std::time::Duration::from_secs(5));
    NetworkServiceClient::new(dial(url, &options).await.unwrap())
}

/// Requests connection `id` through the program at `url`, then closes it;
/// both succeed, and the reply is the connection asked for.
async fn request_and_close(url: &Url, id: &str) {
    let mut nsm = client(url).await;
    let reply = nsm.request(request(id)).await.unwrap().into_inner();
    assert_eq!(reply.id, id);
    nsm.close(reply).await.unwrap();
}

/// The JSON log lines about connection `id`.
fn lines_about(logs: &[String], id: &str) -> Vec<serde_json::Value> {
    logs.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["fields"]["connection_id"] == id)
        .collect()
}

#[tokio::test]
async fn endpoint_mode_answers_request_and_close_and_stops_on_sigterm() {
    let endpoint = Program::start(&["--endpoint", "--listen", "tcp://127.0.0.1:0"]).await;
    assert_eq!(endpoint.url().scheme(), "tcp");
    request_and_close(endpoint.url(), "e-1").await;

    endpoint.terminate();
    assert!(endpoint.exited().await.success());
}

#[tokio::test]
async fn server_mode_on_a_unix_socket_forwards_requests_and_closes() {
    let dir = TempDir::new().unwrap();
    let seen = Capture::new();
    let count = Count::new();
    let remote = start_tcp(
        ServerChain::builder()
            .with(seen.clone())
            .with(count.clone())
            .build(),
    )
    .await;
    let listen = unix_url(&dir.path().join("passthrough.sock"));
    let passthrough = Program::start(&[
        "--listen",
        listen.as_str(),
        "--connect-to",
        remote.url().as_str(),
        "--dial-timeout",
        "5s",
        "--log-format",
        "json",
    ])
    .await;
    assert_eq!(passthrough.url(), &listen);
    let mut nsm = client(&listen).await;

    let first = nsm.request(request("p-1")).await.unwrap().into_inner();
    let second = nsm.request(request("p-2")).await.unwrap().into_inner();
    assert_eq!(seen.request().unwrap().connection.unwrap().id, "p-2");
    assert_eq!(count.requests(), 2);
    assert_eq!(
        remote.connections().accepted,
        1,
        "one client for the remote"
    );

    nsm.close(first).await.unwrap();
    nsm.close(second).await.unwrap();
    assert_eq!(count.closes(), 2, "closes were propagated");
    settle(
        "the passthrough to close its client after the last connection",
        remote.wait_connections(|c| c.open == 0),
    )
    .await;

    passthrough.terminate();
    assert!(passthrough.exited().await.success());
}

/// The options a pod's manifest sets: every one from the environment, and a
/// flag beside its variable wins.
#[tokio::test]
async fn options_come_from_the_environment_and_flags_win() {
    let remote = start_tcp(ServerChain::builder().with(Count::new()).build()).await;
    let passthrough = Program::start_with_env(
        &[],
        &[
            ("NSM_LISTEN_ON", "tcp://127.0.0.1:0"),
            ("NSM_CONNECT_TO", remote.url().as_str()),
            ("NSM_DIAL_TIMEOUT", "5s"),
            ("NSM_LOG_FORMAT", "json"),
        ],
    )
    .await;
    request_and_close(passthrough.url(), "env").await;
    assert_eq!(
        remote.connections().accepted,
        1,
        "it forwarded to NSM_CONNECT_TO"
    );
    passthrough.terminate();
    assert!(passthrough.exited().await.success());

    let dir = TempDir::new().unwrap();
    let flag = unix_url(&dir.path().join("flag.sock"));
    let endpoint = Program::start_with_env(
        &["--listen", flag.as_str()],
        &[
            ("NSM_ENDPOINT", "true"),
            ("NSM_LISTEN_ON", "tcp://127.0.0.1:0"),
        ],
    )
    .await;
    assert_eq!(endpoint.url(), &flag, "--listen wins over NSM_LISTEN_ON");
    let mut nsm = client(endpoint.url()).await;
    let reply = nsm.request(request("endpoint")).await.unwrap().into_inner();
    assert_eq!(reply.id, "endpoint");
    endpoint.terminate();
    assert!(endpoint.exited().await.success());
}

/// The three-process topology from the README: client → passthrough (TCP)
/// → endpoint (unix socket).
#[tokio::test]
async fn a_passthrough_process_in_front_of_an_endpoint_process() {
    let dir = TempDir::new().unwrap();
    let endpoint_url = unix_url(&dir.path().join("endpoint.sock"));
    let endpoint = Program::start(&["--endpoint", "--listen", endpoint_url.as_str()]).await;
    let passthrough = Program::passthrough_to(endpoint.url()).await;
    request_and_close(passthrough.url(), "topology").await;

    passthrough.terminate();
    endpoint.terminate();
    assert!(passthrough.exited().await.success());
    assert!(endpoint.exited().await.success());
}

/// Allowed one CPU (pinned, as the hop benchmark runs it, or a cgroup quota
/// of one), the program runs on one thread, a current-thread runtime, and
/// forwards as it does on many.
#[tokio::test]
async fn on_one_cpu_the_program_forwards_on_one_thread() {
    let endpoint = start_tcp(ServerChain::default()).await;
    let passthrough = Program::passthrough_on_one_cpu(endpoint.url()).await;
    request_and_close(passthrough.url(), "pinned").await;
    assert_eq!(passthrough.threads(), 1);
    passthrough.terminate();
    assert!(passthrough.exited().await.success());
}

/// Callers that vanish without refresh or close: the passthrough closes
/// each connection at the endpoint once its caller's segment expires, then
/// drains its TCP connections to it; a connection refreshed in time stays.
#[tokio::test]
async fn connections_whose_callers_vanish_are_closed_at_the_endpoint() {
    let ledger = Ledger::new();
    let remote = start_tcp(ServerChain::builder().with(ledger.clone()).build()).await;
    let passthrough =
        Program::passthrough_named(remote.url(), Some("passthrough-under-test")).await;
    let ttl = Duration::from_secs(1);
    {
        let mut nsm = client(passthrough.url()).await;
        for n in 0..20 {
            let reply = nsm
                .request(request_for(from_caller(
                    "vanishing-nsc",
                    &format!("gone-{n}"),
                    Some(2 * ttl),
                )))
                .await
                .unwrap()
                .into_inner();
            let path = reply.path.unwrap();
            assert_eq!(path.path_segments[1].name, "passthrough-under-test");
        }
        // The caller goes away here, its channel closed.
    }
    assert_eq!(ledger.open().len(), 20);
    settle(
        "every connection to be closed at the endpoint",
        ledger.until(|l| l.open().is_empty()),
    )
    .await;
    assert_eq!(ledger.closes(), 20, "each closed once");
    settle(
        "the passthrough to drain its connections to the endpoint",
        remote.wait_connections(|c| c.open == 0),
    )
    .await;

    // One refreshed before each expiry stays open.
    let mut nsm = client(passthrough.url()).await;
    let kept = from_caller("vanishing-nsc", "kept", Some(ttl));
    let mut conn = nsm.request(request_for(kept)).await.unwrap().into_inner();
    for _ in 0..6 {
        tokio::time::sleep(ttl / 4).await;
        let refresh = request_for(refreshed(conn, ttl));
        conn = nsm.request(refresh).await.unwrap().into_inner();
    }
    assert_eq!(
        ledger.closes(),
        20,
        "the refreshed connection was not closed"
    );
    nsm.close(conn).await.unwrap();
    assert_eq!(ledger.closes(), 21);
    passthrough.terminate();
    assert!(passthrough.exited().await.success());
}

#[tokio::test]
async fn sigterm_lets_calls_in_flight_finish_then_closes_every_client() {
    let gate = Gate::new();
    let count = Count::new();
    let remote = start_tcp(
        ServerChain::builder()
            .with(count.clone())
            .with(gate.clone())
            .build(),
    )
    .await;
    let passthrough = Program::passthrough_to(remote.url()).await;
    let mut nsm = client(passthrough.url()).await;
    nsm.request(request("open")).await.unwrap();

    gate.arm(Op::Request);
    let in_flight = tokio::spawn({
        let mut nsm = nsm.clone();
        async move { nsm.request(request("in-flight")).await }
    });
    settle("the call to reach the remote", gate.holding()).await;
    passthrough.terminate();
    gate.release();

    let reply = settle("the call in flight", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.into_inner().id, "in-flight");
    assert!(passthrough.exited().await.success());
    settle(
        "the remote to see the passthrough's client close",
        remote.wait_connections(|c| c.open == 0),
    )
    .await;
    assert_eq!(count.requests(), 2);
}

/// Takes its time over each close, as a remote tearing down a dataplane
/// does.
#[derive(connect_runtime::Element)]
#[element(server)]
struct SlowClose(std::time::Duration);

impl connect_runtime::Hooks for SlowClose {
    async fn close(
        &self,
        ctx: connect_runtime::Context,
        connection: connect_runtime::proto::connection::Connection,
        next: connect_runtime::Next<'_>,
    ) -> Result<(), tonic::Status> {
        tokio::time::sleep(self.0).await;
        next.close(ctx, connection).await
    }
}

/// A close connect makes on its own behalf (here after the remote failed a
/// request at its deadline) still under way at SIGTERM is done: the program
/// lets connect's cleanups finish before closing its clients.
#[tokio::test]
async fn sigterm_waits_for_connects_own_closes() {
    use connect_tests::elements::FailAfterDeadline;

    let (gate, count) = (Gate::new(), Count::new());
    let remote = start_tcp(
        ServerChain::builder()
            .with(gate.clone())
            .with(SlowClose(std::time::Duration::from_millis(500)))
            .with(count.clone())
            .with(FailAfterDeadline)
            .build(),
    )
    .await;
    let passthrough = Program::passthrough_to(remote.url()).await;
    let mut nsm = client(passthrough.url()).await;

    // The remote fails the request at the caller's deadline; connect closes
    // the connection there on its own, and the remote takes its time.
    gate.arm(Op::Close);
    let mut call = tonic::Request::new(request("abandoned"));
    call.metadata_mut()
        .insert("grpc-timeout", "1000m".parse().unwrap());
    let err = nsm.request(call).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    settle("connect's close to reach the remote", gate.holding()).await;

    passthrough.terminate();
    gate.release();
    assert!(passthrough.exited().await.success());
    assert_eq!(count.closes(), 1, "the close was done before exit");
}

#[tokio::test]
async fn bad_input_gets_one_line_and_a_non_zero_exit() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let in_use = format!("tcp://{}", taken.local_addr().unwrap());
    let cases: [(&[&str], &str); 24] = [
        (
            // `run` leaves SPIFFE_ENDPOINT_SOCKET out.
            &["--endpoint", "--listen", "tcp://127.0.0.1:0", "--spiffe"],
            "--spiffe: SPIFFE_ENDPOINT_SOCKET is not set",
        ),
        (
            &[
                "--endpoint",
                "--listen",
                "tcp://127.0.0.1:0",
                "--spiffe",
                "--tls-cert",
                "a.pem",
                "--tls-key",
                "a.key",
            ],
            "--spiffe and the --tls-* files are alternatives",
        ),
        (&["--spiffe"], "the TLS options are for --listen"),
        (
            &["--listen", "not a url", "--connect-to", "tcp://127.0.0.1:1"],
            "invalid URL `not a url`: no scheme: expected tcp://host:port or unix:///path",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:5002",
                "--connect-to",
                "tcp://127.0.0.1:1",
            ],
            "invalid URL `127.0.0.1:5002`: no scheme: did you mean tcp://127.0.0.1:5002?",
        ),
        (
            &[
                "--listen",
                "http://127.0.0.1:1",
                "--connect-to",
                "tcp://127.0.0.1:1",
            ],
            "unsupported scheme `http`",
        ),
        (
            &["--listen", &in_use, "--connect-to", "tcp://127.0.0.1:1"],
            "in use",
        ),
        (
            &[
                "--listen",
                "unix:///no/such/directory/p.sock",
                "--connect-to",
                "tcp://127.0.0.1:1",
            ],
            "directory /no/such/directory does not exist",
        ),
        (
            &["--listen", "tcp://127.0.0.1:0"],
            "--connect-to URL is required",
        ),
        (
            &["--endpoint", "--listen", "tcp://127.0.0.1"],
            "missing port",
        ),
        (&["--verbose"], "unexpected argument '--verbose' found"),
        (&["--listen"], "a value is required for '--listen <URL>'"),
        (&["--endpoint"], "--endpoint needs --listen"),
        (
            &["--log-format", "xml"],
            "invalid value 'xml' for '--log-format <FORMAT>'; [possible values: text, json]",
        ),
        (
            &[
                "--listen",
                "tcp://127.0.0.1:0",
                "--connect-to",
                "tcp://127.0.0.1:1",
                "--dial-timeout",
                "soon",
            ],
            "`soon` is not a duration like 100ms, 1.5s, 10m or 1h",
        ),
        (
            &["--connections", "0"],
            "invalid value '0' for '--connections <N>': a positive number is needed, not `0`",
        ),
        (
            &["--connections=-3"],
            "a positive number is needed, not `-3`",
        ),
        (
            &["--endpoint=yes", "--listen", "tcp://127.0.0.1:0"],
            "unexpected value 'yes' for '--endpoint' found",
        ),
        (&["stray"], "unexpected argument 'stray' found"),
        (
            &[
                "--listen",
                "tcp://127.0.0.1:0",
                "--connect-to",
                "tcp://127.0.0.1:1",
                "--tls-cert",
                "pt.pem",
                "--tls-key",
                "pt.key",
            ],
            "a passthrough with TLS checks the remote it dials against a CA: add --tls-ca FILE",
        ),
        (
            &["--endpoint", "--listen", "tcp://127.0.0.1:0", "--name", ""],
            "--name must not be empty",
        ),
        (
            &["--name", "hop"],
            "--name and --max-token-lifetime are for --listen",
        ),
        (
            &["--log-format", "json"],
            "--dial-timeout and --log-format for --listen",
        ),
        (
            &[
                "--listen",
                "tcp://127.0.0.1:0",
                "--listen",
                "tcp://127.0.0.1:1",
                "--connect-to",
                "tcp://127.0.0.1:2",
            ],
            "the argument '--listen <URL>' cannot be used multiple times",
        ),
    ];
    for (args, expected) in cases {
        let output = run(args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("passthrough: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn the_demo_drives_its_connections_and_passes_its_checks() {
    let output = run(&["--connections", "200"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(
        stdout.contains("200 (refreshed 200, moved A → B 50, closed 200)"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// The caller gets a clear status, and the program logs the failure as a
/// warning at the default level.
#[tokio::test]
async fn a_request_the_passthrough_cannot_forward_gets_a_clear_status() {
    // Nothing listens at the target: the dial fails, quickly and clearly.
    let dir = TempDir::new().unwrap();
    let nowhere = unix_url(&dir.path().join("nobody-home.sock"));
    let passthrough = Program::start(&[
        "--listen",
        "tcp://127.0.0.1:0",
        "--connect-to",
        nowhere.as_str(),
        "--log-format",
        "json",
        "--log-level",
        "info",
    ])
    .await;
    let mut nsm = client(passthrough.url()).await;

    let err = nsm.request(request("lost")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("nobody-home.sock"), "{err:?}");

    passthrough.terminate();
    let (status, logs) = passthrough.exited_with_logs().await;
    assert!(status.success());
    let about = lines_about(&logs, "lost");
    assert_eq!(about.len(), 1, "{logs:?}");
    assert_eq!(about[0]["level"], "WARN");
    assert_eq!(about[0]["fields"]["message"], "request failed");
    assert!(
        about[0]["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("nobody-home.sock"),
        "{about:?}"
    );
}

/// A dial timeout too large for the clock is accepted (it saturates), in
/// plain digits or with an exponent.
#[tokio::test]
async fn a_huge_dial_timeout_is_accepted() {
    let endpoint = start_tcp(ServerChain::default()).await;
    for timeout in ["1000000000000s", "1e12s"] {
        let passthrough = Program::start(&[
            "--listen",
            "tcp://127.0.0.1:0",
            "--connect-to",
            endpoint.url().as_str(),
            "--dial-timeout",
            timeout,
        ])
        .await;
        request_and_close(passthrough.url(), "patient").await;
        passthrough.terminate();
        assert!(passthrough.exited().await.success(), "{timeout}");
    }
}

/// `--help` is clap's: usage, every option with its value's name, the TLS
/// options under their own heading, and what the program does without any.
#[tokio::test]
async fn help_lists_every_option() {
    let output = run(&["--help"]).await;
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("Usage: passthrough [OPTIONS]"), "{help}");
    for option in [
        "--listen <URL>",
        "--connect-to <URL>",
        "--endpoint",
        "--dial-timeout <DURATION>",
        "--log-format <FORMAT>",
        "--connections <N>",
        "--tls-cert <FILE>",
        "--spiffe",
        "--name <NAME>",
        "--max-token-lifetime <DURATION>",
    ] {
        assert!(help.contains(option), "{option} missing from {help}");
    }
    assert!(help.contains("[env: NSM_NAME=]"), "{help}");
    assert!(help.contains("[env: NSM_MAX_TOKEN_LIFETIME=]"), "{help}");
    assert!(help.contains("[env: NSM_CONNECT_TO=]"), "{help}");
    // NSM's variables for telemetry, logging and identity.
    for var in [
        "NSM_LISTEN_ON",
        "NSM_DIAL_TIMEOUT",
        "NSM_LOG_LEVEL",
        "TELEMETRY",
        "NSM_OPEN_TELEMETRY_ENDPOINT",
        "NSM_METRICS_EXPORT_INTERVAL",
        "PROMETHEUS",
        "NSM_PROMETHEUS_LISTEN_ON",
    ] {
        assert!(help.contains(&format!("[env: {var}=]")), "{var}: {help}");
    }
    assert!(help.contains("SPIFFE_ENDPOINT_SOCKET"), "{help}");
    assert!(help.contains("Telemetry:"), "{help}");
    assert!(help.contains("TLS:"), "{help}");
    assert!(help.contains("runs the demo"), "{help}");
}

/// The element users copy: after a refused request, a close, and 20
/// connections whose callers vanished, its state is empty again on both
/// sides of the wire.
#[tokio::test]
async fn the_custom_element_example_ends_holding_nothing() {
    let output = settle(
        "the custom element example to finish",
        tokio::process::Command::new(example("custom_element"))
            .env("RUST_LOG", "off")
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let line = |start: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no `{start}` line in {stdout}"))
            .to_owned()
    };
    assert!(line("attempt 3: refused: ResourceExhausted").contains("c-1"));
    assert!(line("after the close: client holds").contains(r#"[("Quota", 0)]"#));
    assert!(line("after the close: endpoint holds").contains(r#"[("Expire", 0), ("Quota", 0)]"#));
    assert!(line("abandoned: endpoint holds").contains(r#"[("Expire", 20), ("Quota", 20)]"#));
    assert!(line("expired: endpoint holds").contains(r#"[("Expire", 0), ("Quota", 0)]"#));
}

/// Logs fit the pipeline: no colour codes when stderr is not a terminal,
/// and in JSON mode every line, the one that says where it listens
/// included, is a JSON object.
#[tokio::test]
async fn logs_are_plain_off_a_terminal_and_all_json_in_json_mode() {
    for format in ["text", "json"] {
        let endpoint = Program::start_with_env(
            &[
                "--endpoint",
                "--listen",
                "tcp://127.0.0.1:0",
                "--log-format",
                format,
            ],
            &[("RUST_LOG", "info")],
        )
        .await;
        if format == "json" {
            let said: serde_json::Value = serde_json::from_str(endpoint.announcement()).unwrap();
            assert_eq!(said["listening_on"], endpoint.url().as_str());
            assert_eq!(said["role"], "endpoint");
        } else {
            assert!(
                endpoint
                    .announcement()
                    .starts_with("endpoint listening on tcp://")
            );
        }
        request_and_close(endpoint.url(), "logged").await;
        endpoint.terminate();
        let (status, logs) = endpoint.exited_with_logs().await;
        assert!(status.success());
        assert!(!logs.is_empty(), "info lines were written");
        assert!(
            logs.iter()
                .any(|l| l.contains("serving") && l.contains("plaintext")),
            "the startup line says the security mode: {logs:?}"
        );
        for line in &logs {
            assert!(!line.contains('\u{1b}'), "a colour code in {line:?}");
            if format == "json" {
                let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
                assert!(parsed.is_ok(), "not JSON: {line:?}");
            }
        }
    }
}

/// At info, the default level, a call that succeeds writes nothing (a
/// busy hop would otherwise write two lines a pair); at debug each request
/// and close is a line naming its connection. (A call that fails is a
/// warning: `a_request_the_passthrough_cannot_forward_gets_a_clear_status`.)
#[tokio::test]
async fn a_call_that_succeeds_is_logged_at_debug_not_info() {
    for level in ["info", "debug"] {
        let endpoint = Program::start(&[
            "--endpoint",
            "--listen",
            "tcp://127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            level,
        ])
        .await;
        request_and_close(endpoint.url(), "quiet").await;
        endpoint.terminate();
        let (status, logs) = endpoint.exited_with_logs().await;
        assert!(status.success());
        let about = lines_about(&logs, "quiet");
        let said: Vec<_> = about
            .iter()
            .map(|l| (&l["level"], &l["fields"]["message"]))
            .collect();
        if level == "info" {
            assert!(about.is_empty(), "a line per call at info: {logs:?}");
        } else {
            assert_eq!(
                said,
                [
                    (&"DEBUG".into(), &"request".into()),
                    (&"DEBUG".into(), &"close".into())
                ]
            );
        }
    }
}

/// The README's client: the `client` example requests, refreshes and
/// closes a connection through a passthrough process and an endpoint
/// process, each adding its own segment to the path.
#[tokio::test]
async fn the_client_example_goes_through_a_passthrough_to_an_endpoint() {
    let dir = TempDir::new().unwrap();
    let endpoint_url = unix_url(&dir.path().join("endpoint.sock"));
    let endpoint = Program::start(&[
        "--endpoint",
        "--listen",
        endpoint_url.as_str(),
        "--name",
        "nse",
    ])
    .await;
    let passthrough = Program::passthrough_named(endpoint.url(), Some("pt")).await;
    let output = settle(
        "the client example to finish",
        tokio::process::Command::new(example("client"))
            .arg(passthrough.url().as_str())
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("requested: example-"), "{stdout}");
    assert!(
        lines[0].ends_with("via example-client → pt → nse"),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with("via example-client → pt → nse"),
        "{stdout}"
    );
    assert!(lines[2].starts_with("closed: example-"), "{stdout}");
    passthrough.terminate();
    endpoint.terminate();
    assert!(passthrough.exited().await.success());
    assert!(endpoint.exited().await.success());
}

/// In JSON mode, a failure's one line is JSON too.
#[tokio::test]
async fn in_json_mode_a_failure_is_a_json_line() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let in_use = format!("tcp://{}", taken.local_addr().unwrap());
    let output = run(&["--endpoint", "--listen", &in_use, "--log-format", "json"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().expect("a line");
    let line: serde_json::Value = serde_json::from_str(last).expect("a JSON line");
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["message"].as_str().unwrap().contains(&in_use),
        "{line}"
    );
}

/// TLS files that cannot work get a message naming the file and the fix:
/// a certificate made by plain `openssl x509 -req` (X.509 v1), and a key
/// from another certificate.
#[tokio::test]
async fn tls_files_that_cannot_work_say_why_and_what_to_do() {
    /// What an endpoint serving `cert` and `key` says as it fails.
    async fn refused(cert: &std::path::Path, key: &std::path::Path) -> String {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let args = ["--endpoint", "--listen", "tcp://127.0.0.1:0"];
        let output = run(&[&args[..], &["--tls-cert", cert, "--tls-key", key]].concat()).await;
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/openssl-v1");
    let said = refused(&data.join("nse.pem"), &data.join("nse.key")).await;
    assert!(
        said.contains("nse.pem: the certificate is X.509 v1"),
        "{said}"
    );
    assert!(said.contains("subjectAltName"), "{said}");

    let dir = TempDir::new().unwrap();
    let pki = connect_tests::pki::Pki::new("test CA");
    let (ours, other) = (pki.issue(&["localhost"]), pki.issue(&["localhost"]));
    let (cert, key) = (dir.path().join("nse.pem"), dir.path().join("other.key"));
    std::fs::write(&cert, &ours.cert_pem).unwrap();
    std::fs::write(&key, &other.key_pem).unwrap();
    let said = refused(&cert, &key).await;
    assert!(
        said.contains("other.key does not match the certificate")
            && said.contains("nse.pem: give the key it was issued for"),
        "{said}"
    );
}

/// NSM's monitor protocol through the processes: a tonic monitor caller of
/// the passthrough hears the initial state, an update and a delete, each in
/// the passthrough's terms, and the endpoint going away as DOWN.
#[tokio::test]
async fn a_monitor_caller_of_the_passthrough_hears_updates_deletes_and_the_endpoint_going() {
    let endpoint = Program::start(&["--endpoint", "--listen", "tcp://127.0.0.1:0"]).await;
    let passthrough = Program::passthrough_named(endpoint.url(), Some("watched-hop")).await;
    let mut nsm = client(passthrough.url()).await;
    let mut events = watch_everything(passthrough.url()).await;
    let initial = next_event(&mut events).await;
    assert_eq!(
        initial.r#type,
        ConnectionEventType::InitialStateTransfer as i32
    );
    assert!(initial.connections.is_empty());

    let long = Some(Duration::from_secs(600));
    let first = nsm
        .request(request_for(from_caller("nsc", "m-1", long)))
        .await
        .unwrap()
        .into_inner();
    let update = next_event(&mut events).await;
    assert_eq!(update.r#type, ConnectionEventType::Update as i32);
    let here = first.path.as_ref().unwrap().path_segments[1].clone();
    let held = &update.connections[&here.id];
    assert_eq!(held.path.as_ref().unwrap().index, 1);
    assert_eq!(here.name, "watched-hop");
    nsm.close(first).await.unwrap();
    let delete = next_event(&mut events).await;
    assert_eq!(delete.r#type, ConnectionEventType::Delete as i32);
    assert!(delete.connections.contains_key(&here.id));

    let second = nsm
        .request(request_for(from_caller("nsc", "m-2", long)))
        .await
        .unwrap()
        .into_inner();
    let second_here = second.path.as_ref().unwrap().path_segments[1].id.clone();
    assert_eq!(
        next_event(&mut events).await.r#type,
        ConnectionEventType::Update as i32
    );
    endpoint.terminate();
    let down = next_event(&mut events).await;
    assert_eq!(down.r#type, ConnectionEventType::Update as i32);
    assert_eq!(down.connections[&second_here].state, State::Down as i32);
    assert!(endpoint.exited().await.success());
    passthrough.terminate();
    assert!(passthrough.exited().await.success());
}

/// Behind an endpoint that does not serve MonitorConnections, nothing is
/// reported DOWN (Go's hop would report every connection DOWN).
#[tokio::test]
async fn behind_an_endpoint_without_monitoring_nothing_is_down() {
    let remote = start_tcp(ServerChain::builder().with(Count::new()).build()).await;
    let passthrough =
        Program::passthrough_with_env(remote.url(), None, &[("RUST_LOG", "info")]).await;
    let mut nsm = client(passthrough.url()).await;
    let mut events = watch_everything(passthrough.url()).await;
    next_event(&mut events).await;
    let long = Some(Duration::from_secs(600));
    let conn = nsm
        .request(request_for(from_caller("nsc", "u-1", long)))
        .await
        .unwrap()
        .into_inner();
    let update = settle("an update", events.message())
        .await
        .unwrap()
        .unwrap();
    assert!(
        update
            .connections
            .values()
            .all(|c| c.state == State::Up as i32)
    );
    passthrough
        .until_logged("does not serve MonitorConnections")
        .await;
    // The next event is the close's delete: nothing came between.
    nsm.close(conn).await.unwrap();
    let delete = settle("the delete", events.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delete.r#type, ConnectionEventType::Delete as i32);
    passthrough.terminate();
    assert!(passthrough.exited().await.success());
}

/// A tonic monitor caller's stream of every connection the program at
/// `url` holds.
async fn watch_everything(url: &Url) -> Streaming<ConnectionEvent> {
    let mut watcher = monitor_caller(url).await;
    let events = watcher.monitor_connections(MonitorScopeSelector::default());
    events.await.unwrap().into_inner()
}

async fn next_event(events: &mut Streaming<ConnectionEvent>) -> ConnectionEvent {
    let event = settle("a monitor event", events.message()).await;
    event.expect("a healthy stream").expect("an open stream")
}
