//! The demo: two endpoints and a passthrough on loopback, 1000 concurrent
//! connections through it, and a report a person can read at a glance.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connect_runtime::CancellationToken;
use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{
    ClientChain, ClientConn, ClientUrl, Connect, Context, DialOptions, Element, GrpcClient, Hooks,
    Monitor, Next, ServerChain, ServerHandle, dial, serve,
};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tonic::Status;
use url::Url;

/// Counts the requests and closes an endpoint answers.
#[derive(Clone, Default, Element)]
#[element(server)]
struct Tally {
    requests: Arc<AtomicUsize>,
    closes: Arc<AtomicUsize>,
}

impl Hooks for Tally {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        next.request(ctx, request).await
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        self.closes.fetch_add(1, Ordering::Relaxed);
        next.close(ctx, connection).await
    }
}

struct Endpoint {
    name: &'static str,
    tally: Tally,
    server: ServerHandle,
}

async fn endpoint(name: &'static str) -> Result<Endpoint, String> {
    let tally = Tally::default();
    let server = serve(
        &loopback(),
        ServerChain::builder().with(tally.clone()).build(),
        CancellationToken::new(),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(Endpoint {
        name,
        tally,
        server,
    })
}

fn loopback() -> Url {
    Url::parse("tcp://127.0.0.1:0").expect("a valid URL")
}

/// Ten minutes, in microseconds.
const HIGHEST_US: u64 = 600_000_000;

/// Latencies of one kind of call, in microseconds, to three significant
/// figures; any longer than [`HIGHEST_US`] count as that.
struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(
            Histogram::new_with_bounds(1, HIGHEST_US, 3)
                .expect("1 µs to 10 minutes at 3 significant figures is a valid range"),
        )
    }
}

impl Latencies {
    fn push(&mut self, took: Duration) {
        self.0
            .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    fn merge(&mut self, other: &Latencies) {
        self.0
            .add(&other.0)
            .expect("histograms of the same bounds add up");
    }

    fn percentile(&self, p: f64) -> Duration {
        Duration::from_micros(self.0.value_at_quantile(p))
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// One phase: `calls` run concurrently, with a progress line on stderr.
async fn phase<T: Send + 'static>(
    name: &str,
    calls: Vec<impl Future<Output = Result<T, Status>> + Send + 'static>,
) -> (Vec<T>, Latencies, usize) {
    let total = calls.len();
    // A progress line that rewrites itself on a terminal; one line per
    // phase in a log.
    let interactive = std::io::stderr().is_terminal();
    let mut running = JoinSet::new();
    for (index, call) in calls.into_iter().enumerate() {
        running.spawn(async move {
            let started = Instant::now();
            let outcome = call.await;
            (index, started.elapsed(), outcome)
        });
    }
    let mut results: Vec<Option<T>> = (0..total).map(|_| None).collect();
    let (mut latencies, mut errors, mut done) = (Latencies::default(), 0, 0);
    while let Some(joined) = running.join_next().await {
        done += 1;
        match joined {
            Ok((index, took, Ok(value))) => {
                latencies.push(took);
                results[index] = Some(value);
            }
            Ok((_, _, Err(status))) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("\n  first error: {status}");
                }
            }
            Err(_) => errors += 1,
        }
        if interactive && (done % 50 == 0 || done == total) {
            eprint!("\r  {name:<24} {done:>5}/{total}");
            let _ = std::io::stderr().flush();
        }
    }
    if interactive {
        eprintln!();
    } else {
        eprintln!("  {name:<24} {done:>5}/{total}");
    }
    (results.into_iter().flatten().collect(), latencies, errors)
}

pub(crate) async fn run(connections: usize) -> Result<(), String> {
    let a = endpoint("A").await?;
    let b = endpoint("B").await?;

    // clienturl → connect, with a monitor in the client chain. One connect
    // element behind two entries, one per endpoint, so that sending a
    // connection to the other entry changes its client URL.
    let opened: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let counted = Arc::clone(&opened);
    let connect = Connect::builder(move |ctx: &Context, conn| {
        let url = ctx.client_url().map(|u| u.to_string()).unwrap_or_default();
        *counted
            .lock()
            .expect("not poisoned")
            .entry(url)
            .or_default() += 1;
        ClientChain::builder()
            .with(Monitor::new(ctx, conn.clone()))
            .with(GrpcClient::new(conn))
            .build()
    })
    .dial_timeout(Duration::from_secs(1))
    .build();
    let entry = |to: &Endpoint| {
        ServerChain::builder()
            .with(ClientUrl::new(to.server.url().clone()))
            .with(connect.clone())
            .build()
    };
    let stop = CancellationToken::new();
    let to_a = serve(&loopback(), entry(&a), stop.clone())
        .await
        .map_err(|e| e.to_string())?;
    let to_b = serve(&loopback(), entry(&b), stop.clone())
        .await
        .map_err(|e| e.to_string())?;
    let client = |url: Url| async move {
        let conn: ClientConn = dial(&url, &DialOptions::new().timeout(Duration::from_secs(1)))
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(NetworkServiceClient::new(conn))
    };
    let (via_a, via_b) = (
        client(to_a.url().clone()).await?,
        client(to_b.url().clone()).await?,
    );

    // Sample the client count while the demo runs, for the peak.
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn({
        let (connect, peak) = (connect.clone(), Arc::clone(&peak));
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            loop {
                tick.tick().await;
                peak.fetch_max(connect.stats().clients.len(), Ordering::Relaxed);
            }
        }
    });

    println!(
        "connect passthrough demo: {connections} concurrent connections through clienturl → connect (monitor in the client chain) to 2 endpoints"
    );
    let started = Instant::now();
    let send = |client: &NetworkServiceClient<ClientConn>, request: NetworkServiceRequest| {
        let mut client = client.clone();
        async move { Ok(client.request(request).await?.into_inner()) }
    };
    let new = (0..connections)
        .map(|k| {
            send(
                &via_a,
                NetworkServiceRequest {
                    connection: Some(Box::new(Connection {
                        id: format!("demo-{k}"),
                        network_service: "demo".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                },
            )
        })
        .collect();
    let (made, mut request_latency, mut errors) = phase("request", new).await;

    let refresh = made.iter().map(|conn| send(&via_a, with(conn))).collect();
    let (refreshed, more_latency, refresh_errors) = phase("refresh", refresh).await;
    request_latency.merge(&more_latency);
    errors += refresh_errors;

    // Every fourth connection moves from A to B.
    let movers: Vec<_> = refreshed.iter().step_by(4).cloned().collect();
    let move_calls = movers.iter().map(|conn| send(&via_b, with(conn))).collect();
    let (moved, more_latency, move_errors) = phase("move A → B", move_calls).await;
    request_latency.merge(&more_latency);
    errors += move_errors;

    let moved_ids: std::collections::HashSet<&str> = moved.iter().map(|c| c.id.as_str()).collect();
    let finals: Vec<Connection> = refreshed
        .iter()
        .filter(|c| !moved_ids.contains(c.id.as_str()))
        .cloned()
        .chain(moved.iter().cloned())
        .collect();
    let closes = finals
        .into_iter()
        .map(|conn| {
            let mut client = if moved_ids.contains(conn.id.as_str()) {
                via_b.clone()
            } else {
                via_a.clone()
            };
            async move {
                client.close(conn).await?;
                Ok(())
            }
        })
        .collect();
    let (closed, close_latency, close_errors) = phase("close", closes).await;
    errors += close_errors;
    let elapsed = started.elapsed();

    // Everything closed?
    let idle = tokio::time::timeout(Duration::from_secs(10), connect.idle())
        .await
        .is_ok();
    let stats = connect.stats();
    sampler.abort();
    drop((via_a, via_b));
    let mut endpoint_connections = 0;
    for endpoint in [&a, &b] {
        let settled = tokio::time::timeout(
            Duration::from_secs(10),
            endpoint.server.wait_connections(|c| c.open == 0),
        )
        .await;
        endpoint_connections += match settled {
            Ok(stats) => stats.open,
            Err(_) => endpoint.server.connections().open,
        };
    }

    let n = connections;
    let m = moved.len();
    let opened = opened.lock().expect("not poisoned").clone();
    let mut report = Report::default();
    println!();
    report.line(
        "connections made",
        format!(
            "{} (refreshed {}, moved A → B {}, closed {})",
            made.len(),
            refreshed.len(),
            m,
            closed.len()
        ),
        made.len() == n && refreshed.len() == n && closed.len() == n && m == n.div_ceil(4),
    );
    report.line("errors", errors.to_string(), errors == 0);
    for endpoint in [&a, &b] {
        let url = endpoint.server.url().to_string();
        let clients = opened.get(&url).copied().unwrap_or(0);
        let tcp = endpoint.server.connections().accepted;
        report.line(
            &format!("gRPC clients to {}", endpoint.name),
            format!("{clients} (TCP connections {tcp}) {url}"),
            clients == 1 && tcp == 1,
        );
    }
    let (ta, tb) = (&a.tally, &b.tally);
    report.line(
        "endpoint calls",
        format!(
            "A {} requests {} closes, B {} requests {} closes",
            ta.requests.load(Ordering::Relaxed),
            ta.closes.load(Ordering::Relaxed),
            tb.requests.load(Ordering::Relaxed),
            tb.closes.load(Ordering::Relaxed)
        ),
        ta.requests.load(Ordering::Relaxed) == 2 * n
            && ta.closes.load(Ordering::Relaxed) == n
            && tb.requests.load(Ordering::Relaxed) == m
            && tb.closes.load(Ordering::Relaxed) == m,
    );
    let peak = peak.load(Ordering::Relaxed);
    report.line("peak clients", peak.to_string(), peak <= 2);
    report.line(
        "request latency",
        format!(
            "p50 {}  p99 {}",
            ms(request_latency.percentile(0.50)),
            ms(request_latency.percentile(0.99))
        ),
        true,
    );
    report.line(
        "close latency",
        format!(
            "p50 {}  p99 {}",
            ms(close_latency.percentile(0.50)),
            ms(close_latency.percentile(0.99))
        ),
        true,
    );
    report.line(
        "at the end",
        format!(
            "clients {}, records {}, endpoint connections {}",
            stats.clients.len(),
            stats.records,
            endpoint_connections
        ),
        idle && stats.is_idle() && endpoint_connections == 0,
    );
    report.line("wall time", format!("{:.2} s", elapsed.as_secs_f64()), true);

    stop.cancel();
    to_a.stopped().await;
    to_b.stopped().await;
    if report.failed == 0 {
        println!("\nall checks passed");
        Ok(())
    } else {
        Err(format!("{} check(s) failed", report.failed))
    }
}

fn with(conn: &Connection) -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Box::new(conn.clone())),
        ..Default::default()
    }
}

#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn line(&mut self, what: &str, value: String, ok: bool) {
        if !ok {
            self.failed += 1;
        }
        let mark = if ok { "ok " } else { "FAIL" };
        println!("  {mark} {what:<22} {value}");
    }
}
