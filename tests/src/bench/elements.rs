//! `elements`: what the hop's own elements cost per connection, in process.
//! Opens and closes connections (a request and a close each, a refresh in
//! between) through chains that differ by one element, on one thread, and
//! reports nanoseconds per connection, so the differences are the elements'
//! cost: `updatepath`, `expire`, both (the program's served chain before
//! `connect`), and per-connection state in a derived element.

use std::hint::black_box;
use std::time::{Duration, Instant};

use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::{
    Context, Element, Expire, Hooks, Next, Passthrough, PerConnection, ServerChain, Status,
    UpdatePath,
};
use connect_tests::{from_caller, request_for};
use serde::Serialize;

use crate::measure::round;

#[derive(Serialize)]
struct Line {
    workload: &'static str,
    chain: &'static str,
    /// A request, a refresh and a close.
    ns_per_connection: f64,
    ns_per_connection_min: f64,
    rounds: usize,
    connections: usize,
}

/// Counts requests per connection in a plain field: state that leaks.
#[derive(Default, Element)]
struct Plain {
    requests: std::sync::atomic::AtomicU64,
}

impl Hooks for Plain {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        next.request(ctx, request).await
    }
}

/// Counts requests per connection in a `PerConnection`: state the chain
/// releases.
#[derive(Default, Element)]
struct Tracked {
    requests: PerConnection<u64>,
}

impl Hooks for Tracked {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let id = request.connection.as_ref().map_or("", |c| c.id.as_str());
        self.requests.update(id, |n| *n += 1);
        next.request(ctx, request).await
    }
}

fn chains() -> Vec<(&'static str, ServerChain)> {
    let end = || ServerChain::builder().with(Passthrough).build();
    vec![
        ("passthrough", end()),
        (
            "updatepath",
            ServerChain::builder()
                .with(UpdatePath::new("hop"))
                .with(Passthrough)
                .build(),
        ),
        (
            "expire",
            ServerChain::builder().with(Expire::new(end())).build(),
        ),
        (
            "updatepath+expire",
            ServerChain::builder()
                .with(UpdatePath::new("hop"))
                .with(Expire::new(end()))
                .build(),
        ),
        (
            "plain-state",
            ServerChain::builder()
                .with(Plain::default())
                .with(Passthrough)
                .build(),
        ),
        (
            "per-connection-state",
            ServerChain::builder()
                .with(Tracked::default())
                .with(Passthrough)
                .build(),
        ),
    ]
}

fn request(k: usize) -> NetworkServiceRequest {
    let ttl = Duration::from_secs(600);
    request_for(from_caller("nsc", &format!("c-{k}"), Some(ttl)))
}

/// Each chain in turn, `rounds` times, `connections` connections a round:
/// the median and the fastest round.
pub(crate) fn run(connections: usize, rounds: usize) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    let chains = chains();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); chains.len()];
    // A warm-up round, then the measured ones, the chains interleaved so
    // that drift in the machine spreads over all of them.
    for measured in std::iter::once(false).chain(std::iter::repeat_n(true, rounds)) {
        for (i, (_, chain)) in chains.iter().enumerate() {
            let took = runtime.block_on(pairs(chain, connections))?;
            if measured {
                samples[i].push(took.as_nanos() as f64 / connections as f64);
            }
        }
    }
    for ((name, _), mut ns) in chains.into_iter().zip(samples) {
        ns.sort_by(f64::total_cmp);
        let line = Line {
            workload: "elements",
            chain: name,
            ns_per_connection: round(ns[ns.len() / 2], 1),
            ns_per_connection_min: round(ns[0], 1),
            rounds,
            connections,
        };
        println!(
            "{}",
            serde_json::to_string(&line).expect("a report serialises")
        );
    }
    Ok(())
}

/// Opens, refreshes and closes `connections` connections through `chain`.
async fn pairs(chain: &ServerChain, connections: usize) -> Result<Duration, String> {
    let requests: Vec<NetworkServiceRequest> = (0..connections).map(request).collect();
    let started = Instant::now();
    for request in requests {
        let conn = chain
            .request(Context::new(), request)
            .await
            .map_err(|s| s.message().to_owned())?;
        let refresh = NetworkServiceRequest {
            connection: Some(Box::new(conn)),
            ..Default::default()
        };
        let conn = chain
            .request(Context::new(), refresh)
            .await
            .map_err(|s| s.message().to_owned())?;
        chain
            .close(Context::new(), black_box(conn))
            .await
            .map_err(|s| s.message().to_owned())?;
    }
    Ok(started.elapsed())
}
