//! Telemetry with real receivers: connect's and the server's metrics read
//! as Prometheus text and parsed, the program's `/metrics` scraped, and the
//! spans of caller → passthrough → endpoint, as processes, received by an
//! OTLP collector.

use std::time::Duration;

use connect_runtime::{Serve, ServerChain};
use connect_tests::caller::tonic_caller;
use connect_tests::elements::{Count, InjectError, Park};
use connect_tests::golike::{Behaviour, GoLike};
use connect_tests::harness::{at, connect_chain, grpc_only, settle};
use connect_tests::program::{Program, run_with_env};
use connect_tests::remote::start_tcp;
use connect_tests::telemetry::{
    Collector, PrometheusMeter, Scrape, http_get, https_get, https_get_with,
};
use connect_tests::{from_caller, request, request_for};
use tokio::io::AsyncWriteExt as _;
use tonic::Code;
use tracing_subscriber::Layer as _;

/// A remote that counts calls and holds each request at `park`.
async fn parking(park: &Park) -> connect_runtime::ServerHandle {
    let chain = ServerChain::builder()
        .with(Count::new())
        .with(park.clone())
        .build();
    start_tcp(chain).await
}

/// Every metric connect-runtime exports, as Prometheus names them.
const METRICS: [&str; 12] = [
    "connect_clients",
    "connect_retired_clients",
    "connect_connections",
    "connect_dials_total",
    "connect_dial_duration_seconds",
    "connect_requests_total",
    "connect_request_duration_seconds",
    "connect_closes_total",
    "connect_goaway_redials_total",
    "serve_connections",
    "serve_connections_refused_total",
    "serve_handshake_failures_total",
];

/// After a known sequence (new, refresh, move, a failure past connect, a
/// caller that left, closes, a GOAWAY), every metric counts what happened
/// and the gauges say what `stats()` says.
#[tokio::test]
async fn connect_metrics_count_a_known_sequence_and_agree_with_stats() {
    let metrics = PrometheusMeter::new();
    let connect = grpc_only().meter(metrics.meter()).build();
    let chain = connect_chain(&connect);
    let first = GoLike::tcp(ServerChain::builder().with(Count::new()).build()).await;
    let park = Park::new();
    let second = parking(&park).await;

    // Two new connections at the first remote, and a refresh.
    let a = chain.request(at(first.url()), request("a")).await.unwrap();
    chain.request(at(first.url()), request("b")).await.unwrap();
    chain
        .request(at(first.url()), request_for(a))
        .await
        .unwrap();
    // b moves to the second remote (which parks it until let go): closed
    // at the first on connect's own behalf.
    let moving = tokio::spawn({
        let (chain, url) = (chain.clone(), second.url().clone());
        async move { chain.request(at(&url), request("b")).await }
    });
    settle("b to reach the second remote", park.arrived()).await;
    park.release_one();
    moving.await.unwrap().unwrap();
    // The rest of the chain refuses c: connect undoes it at the remote.
    let refusing = ServerChain::builder()
        .with(connect.clone())
        .with(InjectError::always(Code::PermissionDenied))
        .build();
    let refused = refusing.request(at(first.url()), request("c")).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    // A caller that leaves while the remote holds its request.
    let leaving = tokio::spawn({
        let (chain, url) = (chain.clone(), second.url().clone());
        async move { chain.request(at(&url), request("gone")).await }
    });
    settle("the leaving call to reach the remote", park.arrived()).await;
    leaving.abort();
    assert!(leaving.await.unwrap_err().is_cancelled());
    // connect finishes the call it left behind, then closes it there.
    park.release_one();
    settle("connect to finish the call", connect.settled()).await;
    // The first remote recycles its connection (a graceful GOAWAY): the
    // next call dials again.
    first.recycle();
    let recycled = connect.wait_for(|s| {
        s.clients
            .iter()
            .any(|c| c.url == first.url().as_str() && c.ended_connections == 1)
    });
    settle("the GOAWAY to end the connection", recycled).await;
    chain.request(at(first.url()), request("d")).await.unwrap();
    settle("connect to settle", connect.settled()).await;

    // Closes: one connect knows, one it does not.
    chain
        .close(at(first.url()), connect_tests::connection("a"))
        .await
        .unwrap();
    let unknown = chain.close(at(first.url()), connect_tests::connection("x"));
    assert_eq!(unknown.await.unwrap_err().code(), Code::NotFound);
    let scrape = metrics.scrape();
    for name in &METRICS[..9] {
        let histogram = format!("{name}_bucket");
        assert!(
            scrape.has(name) || scrape.has(&histogram),
            "{name} missing: {}",
            scrape.text
        );
    }
    let requests =
        |kind, code| scrape.count("connect_requests_total", &[("kind", kind), ("code", code)]);
    assert_eq!(requests("new", "OK"), 3, "a, b, d\n{}", scrape.text);
    assert_eq!(requests("refresh", "OK"), 1);
    assert_eq!(requests("move", "OK"), 1);
    assert_eq!(requests("new", "PermissionDenied"), 1);
    assert_eq!(requests("new", "Canceled"), 1);
    assert_eq!(
        scrape.count("connect_request_duration_seconds_count", &[("kind", "new")]),
        5
    );
    let closes = |origin, code| {
        scrape.count(
            "connect_closes_total",
            &[("origin", origin), ("code", code)],
        )
    };
    assert_eq!(closes("caller", "OK"), 1);
    assert_eq!(closes("caller", "NotFound"), 1);
    // b at the first remote (the move), c (the undo), and the request
    // whose caller left.
    assert_eq!(closes("cleanup", "OK"), 3, "{}", scrape.text);
    // One dial per remote, and the redial after the GOAWAY.
    assert_eq!(scrape.count("connect_dials_total", &[("outcome", "ok")]), 3);
    assert_eq!(scrape.count("connect_dial_duration_seconds_count", &[]), 3);
    assert_eq!(scrape.count("connect_goaway_redials_total", &[]), 1);

    let stats = connect.stats();
    let retired = stats.clients.iter().filter(|c| c.retired).count();
    assert_eq!(
        scrape.count("connect_clients", &[]) as usize,
        stats.clients.len() - retired
    );
    assert_eq!(scrape.count("connect_clients", &[]), 2);
    assert_eq!(
        scrape.count("connect_retired_clients", &[]) as usize,
        retired
    );
    assert_eq!(
        scrape.count("connect_connections", &[]) as usize,
        stats.records
    );
    assert_eq!(stats.records, 2, "b and d");
}

/// The served side's metrics are its `ConnectionStats`, by state and
/// reason.
/// Two `Connect`s in one process, each on a meter of its own name, report
/// apart: Prometheus tells them by `otel_scope_name`. (On one meter, the
/// gauge of whichever reported last would stand for both.)
#[tokio::test]
async fn two_connects_on_meters_of_their_own_report_apart() {
    let metrics = PrometheusMeter::new();
    let remote = GoLike::tcp(ServerChain::default()).await;
    let first = grpc_only().meter(metrics.meter_named("connect-a")).build();
    let second = grpc_only().meter(metrics.meter_named("connect-b")).build();
    let (a, b) = (connect_chain(&first), connect_chain(&second));
    a.request(at(remote.url()), request("a1")).await.unwrap();
    a.request(at(remote.url()), request("a2")).await.unwrap();
    b.request(at(remote.url()), request("b1")).await.unwrap();
    let scrape = metrics.scrape();
    let scoped = |name, scope| scrape.count(name, &[("otel_scope_name", scope)]);
    assert_eq!(
        (
            scoped("connect_connections", "connect-a"),
            scoped("connect_connections", "connect-b")
        ),
        (2, 1),
        "{}",
        scrape.text
    );
    assert_eq!(
        scoped("connect_requests_total", "connect-a"),
        2,
        "{}",
        scrape.text
    );
}

#[tokio::test]
async fn serve_metrics_are_its_connection_stats() {
    let metrics = PrometheusMeter::new();
    let server = Serve::new(ServerChain::builder().with(Count::new()).build())
        .meter(metrics.meter())
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    // A caller that does not speak HTTP/2 is refused.
    let addr = server.url().authority().to_owned();
    let mut stranger = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stranger
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    server.wait_connections(|s| s.not_http2 == 1).await;
    let mut nsm = tonic_caller(server.url()).await;
    nsm.request(request("s")).await.unwrap();
    server.wait_connections(|s| s.open == 1).await;

    let scrape = metrics.scrape();
    let stats = server.connections();
    assert_eq!(
        scrape.count("serve_connections", &[("state", "open")]) as usize,
        stats.open - stats.retired
    );
    assert_eq!(scrape.count("serve_connections", &[("state", "open")]), 1);
    assert_eq!(
        scrape.count("serve_connections", &[("state", "retired")]),
        0
    );
    assert_eq!(
        scrape.count(
            "serve_connections_refused_total",
            &[("reason", "not_http2")]
        ),
        1
    );
    assert_eq!(
        scrape.count("serve_connections_refused_total", &[]),
        stats.not_http2 + stats.refused + stats.timed_out
    );
    assert_eq!(
        scrape.count("serve_handshake_failures_total", &[]),
        stats.refused
    );
    server.shutdown().await;
    // A stopped server reports nothing more.
    assert!(!metrics.scrape().has("serve_connections"));
}

/// The announcement's `metrics on <url>`.
fn metrics_url(program: &Program) -> String {
    let line = program.announcement();
    line.split_once("metrics on ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no metrics URL in {line:?}"))
        .to_owned()
}

/// `PROMETHEUS=true`: `/metrics` parses, and counts what a caller did
/// through the passthrough, a GOAWAY from its remote included.
#[tokio::test]
async fn the_programs_metrics_endpoint_counts_what_a_caller_did() {
    // A recycled connection closes soon after its GOAWAY, health watch
    // and all, as grpc-go's `MaxConnectionAgeGrace` closes it.
    let behaviour = Behaviour {
        grace: Some(Duration::from_millis(100)),
        ..Behaviour::default()
    };
    let chain = ServerChain::builder().with(Count::new()).build();
    let remote = GoLike::tcp_behaving(chain, behaviour).await;
    let passthrough = Program::passthrough_with_env(
        remote.url(),
        None,
        &[
            ("PROMETHEUS", "true"),
            ("NSM_PROMETHEUS_LISTEN_ON", "127.0.0.1:0"),
        ],
    )
    .await;
    let scrape_at = metrics_url(&passthrough);
    let mut nsm = tonic_caller(passthrough.url()).await;
    let long = Some(Duration::from_secs(600));
    let mut open = Vec::new();
    for id in ["p-1", "p-2", "p-3"] {
        let request = request_for(from_caller("nsc", id, long));
        open.push(nsm.request(request).await.unwrap().into_inner());
    }
    let refreshed = nsm
        .request(request_for(open[0].clone()))
        .await
        .unwrap()
        .into_inner();
    nsm.close(open.pop().unwrap()).await.unwrap();
    // The remote recycles its connection; the next call redials.
    remote.recycle();
    remote
        .wait_connections(|s| s.open == 0 || s.accepted == 2)
        .await;
    nsm.request(request_for(refreshed)).await.unwrap();

    let (status, text) = http_get(&scrape_at).await;
    assert_eq!(status, 200, "{text}");
    let scrape = Scrape::parse(&text);
    let requests =
        |kind, code| scrape.count("connect_requests_total", &[("kind", kind), ("code", code)]);
    assert_eq!(requests("new", "OK"), 3, "{text}");
    assert_eq!(requests("refresh", "OK"), 2);
    assert_eq!(
        scrape.count(
            "connect_closes_total",
            &[("origin", "caller"), ("code", "OK")]
        ),
        1
    );
    assert_eq!(scrape.count("connect_dials_total", &[("outcome", "ok")]), 2);
    assert_eq!(scrape.count("connect_goaway_redials_total", &[]), 1);
    assert_eq!(scrape.count("connect_clients", &[]), 1);
    assert_eq!(scrape.count("connect_connections", &[]), 2);
    assert_eq!(scrape.count("serve_connections", &[("state", "open")]), 1);
    // Anything but /metrics is not found.
    let elsewhere = scrape_at.replace("/metrics", "/");
    assert_eq!(http_get(&elsewhere).await.0, 404);

    passthrough.terminate();
    assert!(passthrough.exited().await.success());
}

/// Without `PROMETHEUS` (and `TELEMETRY`) nothing more listens.
#[tokio::test]
async fn without_telemetry_nothing_is_exported_and_nothing_listens() {
    let endpoint = Program::start(&["--endpoint", "--listen", "tcp://127.0.0.1:0"]).await;
    assert!(
        !endpoint.announcement().contains("metrics"),
        "{}",
        endpoint.announcement()
    );
    endpoint.terminate();
    assert!(endpoint.exited().await.success());
}

/// `TELEMETRY=true`: a traced caller's request through passthrough →
/// endpoint, two processes, arrives at an OTLP collector as one trace,
/// each hop's spans children of the hop before, while the hops run.
#[tokio::test]
async fn a_request_through_two_hops_is_one_trace_at_the_collector() {
    let collector = Collector::start().await;
    // Spans and metrics go out every 100 ms, so that they arrive while the
    // hops run (OpenTelemetry's own variable, which the SDK reads).
    let telemetry = [
        ("TELEMETRY", "true"),
        ("NSM_OPEN_TELEMETRY_ENDPOINT", collector.endpoint()),
        ("NSM_METRICS_EXPORT_INTERVAL", "100ms"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let endpoint = Program::start_with_env(
        &[
            "--endpoint",
            "--listen",
            "tcp://127.0.0.1:0",
            "--name",
            "nse",
        ],
        &telemetry,
    )
    .await;
    let passthrough = Program::passthrough_with_env(endpoint.url(), Some("pt"), &telemetry).await;
    let mut nsm = tonic_caller(passthrough.url()).await;
    // The caller's span, as a traced NSC sends it.
    let trace_id = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    let caller_span = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let traceparent = format!("00-{}-{}-01", hex(&trace_id), hex(&caller_span));
    let mut call = tonic::Request::new(request_for(from_caller(
        "nsc",
        "traced",
        Some(Duration::from_secs(600)),
    )));
    call.metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    nsm.request(call).await.unwrap();
    // Another, closed; the traced one stays open, and its spans arrive all
    // the same (the connection its call dialed does not hold them open).
    let other = request_for(from_caller("nsc", "other", Some(Duration::from_secs(600))));
    let reply = nsm.request(other).await.unwrap().into_inner();
    nsm.close(reply).await.unwrap();

    let served = |service: &'static str| {
        move |c: &Collector| {
            c.spans()
                .iter()
                .any(|s| s.service == service && s.name == "request")
        }
    };
    collector
        .until("the passthrough's spans", served("pt"))
        .await;
    collector.until("the endpoint's spans", served("nse")).await;

    let spans = collector.spans();
    let traced: Vec<_> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let request_of = |service: &str| {
        traced
            .iter()
            .find(|s| s.service == service && s.name == "request")
            .unwrap_or_else(|| panic!("no {service} request span in the trace: {spans:#?}"))
    };
    let pt = request_of("pt");
    let nse = request_of("nse");
    assert_eq!(
        pt.parent_span_id, caller_span,
        "the passthrough continues the caller"
    );
    // The endpoint's request span hangs under one of the passthrough's,
    // whose ancestors lead back to the passthrough's request span.
    let by_id = |id: &[u8]| traced.iter().find(|s| s.span_id == id);
    let mut parent = by_id(&nse.parent_span_id)
        .unwrap_or_else(|| panic!("the endpoint's parent is not in the trace: {spans:#?}"));
    assert_eq!(parent.service, "pt");
    while parent.span_id != pt.span_id {
        parent = by_id(&parent.parent_span_id)
            .unwrap_or_else(|| panic!("a broken parent link: {spans:#?}"));
        assert_eq!(parent.service, "pt");
    }
    // The close is traced too, in its own trace (the caller sent none).
    assert!(
        spans
            .iter()
            .any(|s| s.service == "nse" && s.name == "close")
    );
    // And metrics went the same way.
    collector
        .until("metrics from the passthrough", |c| {
            c.metric_names()
                .iter()
                .any(|(service, name)| service == "pt" && name == "connect_requests")
        })
        .await;
    passthrough.terminate();
    endpoint.terminate();
    assert!(passthrough.exited().await.success());
    assert!(endpoint.exited().await.success());
}

/// A bad NSM variable gets one line naming it; a flag wins over its
/// variable.
#[tokio::test]
async fn bad_telemetry_variables_get_one_line_naming_them_and_flags_win() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let endpoint = ["--endpoint", "--listen", "tcp://127.0.0.1:0"];
    let cases: [(&str, &str, &str); 7] = [
        ("TELEMETRY", "maybe", "`maybe` is not true or false"),
        ("PROMETHEUS", "yes please", "is not true or false"),
        ("NSM_LOG_LEVEL", "loud", "`loud` is not a log level"),
        (
            "NSM_METRICS_EXPORT_INTERVAL",
            "often",
            "`often` is not a duration",
        ),
        (
            "NSM_OPEN_TELEMETRY_ENDPOINT",
            "collector",
            "is not a collector address like otel-collector:4317",
        ),
        (
            "NSM_PROMETHEUS_LISTEN_ON",
            "port 80",
            "is not an address like :8081",
        ),
        ("NSM_PROMETHEUS_LISTEN_ON", &in_use, "in use"),
    ];
    for (var, value, expected) in cases {
        let mut env = vec![(var, value)];
        if var == "NSM_PROMETHEUS_LISTEN_ON" {
            env.push(("PROMETHEUS", "true"));
        }
        let output = run_with_env(&endpoint, &env).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{var}={value} was accepted");
        assert_eq!(stderr.lines().count(), 1, "{var}={value}: {stderr}");
        assert!(
            stderr.starts_with(&format!("passthrough: {var}")),
            "{var}={value}: {stderr}"
        );
        assert!(stderr.contains(expected), "{var}={value}: {stderr}");
    }
    // The flag wins: no /metrics, though PROMETHEUS says so.
    let endpoint = Program::start_with_env(
        &[
            "--endpoint",
            "--listen",
            "tcp://127.0.0.1:0",
            "--prometheus=false",
            "--log-level",
            "warn",
        ],
        &[("PROMETHEUS", "true"), ("NSM_LOG_LEVEL", "loud")],
    )
    .await;
    assert!(!endpoint.announcement().contains("metrics"));
    endpoint.terminate();
    assert!(endpoint.exited().await.success());
}

/// With mutual TLS, `/metrics` is served over the same TLS: a scraper with
/// a certificate of the CA reads it; one without is refused.
#[tokio::test]
async fn with_tls_the_metrics_are_served_over_the_same_tls() {
    let dir = tempfile::TempDir::new().unwrap();
    let pki = connect_tests::pki::Pki::new("test CA");
    let (server, scraper) = (
        pki.issue(&["localhost", "127.0.0.1"]),
        pki.issue(&["prometheus"]),
    );
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(path("nse.pem"), &server.cert_pem).unwrap();
    std::fs::write(path("nse.key"), &server.key_pem).unwrap();
    std::fs::write(path("ca.pem"), pki.ca_pem()).unwrap();
    let (cert, key, ca) = (path("nse.pem"), path("nse.key"), path("ca.pem"));
    let endpoint = Program::start_with_env(
        &[
            "--endpoint",
            "--listen",
            "tcp://127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
        ],
        &[
            ("PROMETHEUS", "true"),
            ("NSM_PROMETHEUS_LISTEN_ON", "127.0.0.1:0"),
        ],
    )
    .await;
    let url = metrics_url(&endpoint);
    assert!(url.starts_with("https://"), "{url}");
    let (status, text) = https_get(&url, &pki.ca_pem(), Some(&scraper))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let scrape = Scrape::parse(&text);
    assert!(scrape.has("serve_connections"), "{text}");
    // No client certificate, no metrics.
    let refused = https_get(&url, &pki.ca_pem(), None).await;
    assert!(refused.is_err(), "{refused:?}");
    endpoint.terminate();
    assert!(endpoint.exited().await.success());
}

/// The Grafana dashboard charts every metric, and no name that is not one;
/// the README's metric table lists each.
#[test]
fn the_dashboard_and_the_readme_name_every_metric_and_only_those() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard =
        std::fs::read_to_string(root.join("connect-runtime/grafana/connect.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut charted = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            for word in words.filter(|w| w.starts_with("connect_") || w.starts_with("serve_")) {
                let name = word.strip_suffix("_bucket").unwrap_or(word);
                assert!(
                    METRICS.contains(&name),
                    "the dashboard charts {name}, which is not exported"
                );
                charted.insert(name.to_owned());
            }
        }
    }
    for name in METRICS {
        assert!(
            charted.contains(name),
            "the dashboard does not chart {name}"
        );
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for name in METRICS {
        assert!(
            readme.contains(&format!("| `{name}`")),
            "README's metric table lacks {name}"
        );
    }
    // The panel the README names for leaks is there.
    let leak = "Clients vs connections (leak)";
    assert!(readme.contains(leak));
    let titles: Vec<_> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert!(titles.contains(&leak), "{titles:?}");
}

/// connect's own closes are traced in the call that caused them: the undo
/// after the rest of the chain failed, and the close of a call whose caller
/// left, each reach the remote in the caller's trace, under the served
/// request span that continued it.
#[tokio::test]
async fn a_cleanup_close_is_in_the_trace_of_the_call_that_caused_it() {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let collector = Collector::start().await;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(collector.endpoint())
        .build()
        .unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // This test's thread only (a current-thread runtime): other tests are
    // not traced.
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(tracing_subscriber::EnvFilter::new("connect_runtime=debug")),
    );
    let _traced = tracing::subscriber::set_default(subscriber);

    let park = Park::new();
    let parking = parking(&park).await;
    let counting = start_tcp(ServerChain::builder().with(Count::new()).build()).await;
    let connect = grpc_only().build();
    let hop = |remote: &url::Url, rest: Option<InjectError>| {
        let builder = ServerChain::builder()
            .with(connect_runtime::ClientUrl::new(remote.clone()))
            .with(connect.clone());
        match rest {
            Some(refusal) => builder.with(refusal).build(),
            None => builder.build(),
        }
    };
    let refusing = start_tcp(hop(
        counting.url(),
        Some(InjectError::always(Code::PermissionDenied)),
    ))
    .await;
    let plain = start_tcp(hop(parking.url(), None)).await;
    let traced = |id: &str, trace: &str, span: &str| {
        let mut call = tonic::Request::new(request(id));
        let traceparent = format!("00-{trace}-{span}-01");
        call.metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        call
    };
    let (undo_trace, undo_span) = ("11111111111111111111111111111111", "1111111111111111");
    let (left_trace, left_span) = ("22222222222222222222222222222222", "2222222222222222");

    // The rest of the chain refuses: connect undoes the connection.
    let mut nsm = tonic_caller(refusing.url()).await;
    let refused = nsm.request(traced("undone", undo_trace, undo_span)).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    // The caller leaves while the remote holds its request.
    let mut nsm = tonic_caller(plain.url()).await;
    let leaving =
        tokio::spawn(async move { nsm.request(traced("left", left_trace, left_span)).await });
    settle("the call to reach the remote", park.arrived()).await;
    leaving.abort();
    let _ = leaving.await;
    park.release_one();
    settle("connect to close what the call left", connect.idle()).await;

    let flushing = provider.clone();
    tokio::task::spawn_blocking(move || flushing.force_flush())
        .await
        .unwrap()
        .unwrap();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    for (trace, caller) in [(undo_trace, undo_span), (left_trace, left_span)] {
        collector
            .until("the cleanup close's span", |c| {
                c.spans()
                    .iter()
                    .any(|s| hex(&s.trace_id) == trace && s.name == "close")
            })
            .await;
        let spans: Vec<_> = collector
            .spans()
            .into_iter()
            .filter(|s| hex(&s.trace_id) == trace)
            .collect();
        let by_id = |id: &[u8]| spans.iter().find(|s| s.span_id == id);
        let close = spans.iter().find(|s| s.name == "close").unwrap();
        // Up from the remote's close to the request span that continued the
        // caller's trace.
        let mut at = close;
        let mut hops = 0;
        while hex(&at.parent_span_id) != caller {
            at = by_id(&at.parent_span_id)
                .unwrap_or_else(|| panic!("a broken parent link in {trace}: {spans:#?}"));
            hops += 1;
            assert!(hops < 50, "{spans:#?}");
        }
        assert_eq!(at.name, "request", "{spans:#?}");
    }
    let _ = provider.shutdown();
}

/// With `--spiffe`, `/metrics` is served over the SVID's mutual TLS: a
/// scraper with an SVID of the trust domain reads it; one of another trust
/// domain gets nothing.
#[tokio::test]
async fn with_spiffe_the_metrics_are_served_over_the_same_tls() {
    use connect_runtime::spiffe::{Authorize, SpiffeIdentity};
    use connect_tests::workload_api::{Authority, WorkloadApi};
    use std::sync::Arc;

    let lifetime = Duration::from_secs(30);
    let domain = Arc::new(Authority::new("example.org"));
    let endpoint_api = WorkloadApi::start(Arc::clone(&domain), "/nse", lifetime).await;
    let scraper_api = WorkloadApi::start(Arc::clone(&domain), "/prometheus", lifetime).await;
    let stranger_api = WorkloadApi::start(
        Arc::new(Authority::new("other.org")),
        "/prometheus",
        lifetime,
    )
    .await;
    let endpoint = Program::start_with_env(
        &["--endpoint", "--listen", "tcp://127.0.0.1:0", "--spiffe"],
        &[
            ("SPIFFE_ENDPOINT_SOCKET", endpoint_api.endpoint()),
            ("PROMETHEUS", "true"),
            ("NSM_PROMETHEUS_LISTEN_ON", "127.0.0.1:0"),
        ],
    )
    .await;
    let url = metrics_url(&endpoint);
    assert!(url.starts_with("https://"), "{url}");
    let tls_of = |identity: &SpiffeIdentity| {
        identity
            .client_tls(Authorize::SameTrustDomain)
            .unwrap()
            .rustls_config()
    };
    let scraper = SpiffeIdentity::from_endpoint(scraper_api.endpoint())
        .await
        .unwrap();
    let (status, text) = https_get_with(&url, &tls_of(&scraper)).await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(Scrape::parse(&text).has("serve_connections"), "{text}");
    let stranger = SpiffeIdentity::from_endpoint(stranger_api.endpoint())
        .await
        .unwrap();
    let refused = https_get_with(&url, &tls_of(&stranger)).await;
    assert!(refused.is_err(), "{refused:?}");
    endpoint.terminate();
    assert!(endpoint.exited().await.success());
}
