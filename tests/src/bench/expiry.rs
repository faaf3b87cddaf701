//! The price of callers that vanish: in one process, null remotes, and a
//! hop of `updatepath → expire(route → connect)` taking N connections whose
//! callers then never refresh or close. Everything the hop holds for them
//! must go when they expire: the heap in use (glibc's count, so the
//! allocator's retained pages do not hide a leak) returns to its baseline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::{
    ClientChain, Connect, Context, DialOptions, Element, Expire, GrpcClient, Hooks, Next,
    Passthrough, ServerChain, ServerHandle, Status, UpdatePath, serve,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use url::Url;

use connect_tests::population::each;
use connect_tests::{from_caller, request_for};

use crate::measure::{heap_kb, round as round_to, rss_kb};
use crate::options::Expiry;

#[derive(Serialize)]
struct Line {
    workload: &'static str,
    /// Which population: a leak grows round over round.
    round: usize,
    connections: usize,
    remotes: usize,
    ttl_ms: u128,
    /// Heap in use (glibc `mallinfo2`: arenas plus mmapped chunks), KiB:
    /// with the hop warm and holding nothing (before the first round),
    /// with all N live, and once all expired.
    heap_kb_at_zero: u64,
    heap_kb_at_n: u64,
    heap_kb_after: u64,
    /// Heap still in use after expiry, beyond the baseline, per connection
    /// that expired: a leak shows as a number that grows with N and with
    /// each round.
    bytes_left_per_connection: f64,
    /// Heap the hop held per live connection.
    bytes_per_connection: f64,
    rss_kb_at_n: u64,
    rss_kb_after: u64,
    open_ms: f64,
    /// From the first expiry due to the last expired connection closed.
    expiry_ms: f64,
    expired: u64,
    /// What the chain's elements and connect hold once all expired.
    entries_after: usize,
    clients_after: usize,
    records_after: usize,
    errors: usize,
}

/// Sends each connection to the remote its `remote` label names: the
/// expiry close carries the connection as last returned, label and all.
#[derive(Element)]
#[element(server)]
struct Route {
    remotes: Vec<Arc<Url>>,
}

impl Hooks for Route {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let ctx = self.route(ctx, request.connection.as_deref())?;
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: Context, conn: Connection, next: Next<'_>) -> Result<(), Status> {
        let ctx = self.route(ctx, Some(&conn))?;
        next.close(ctx, conn).await
    }
}

impl Route {
    fn route(&self, ctx: Context, conn: Option<&Connection>) -> Result<Context, Status> {
        let remote = conn
            .and_then(|c| c.labels.get("remote"))
            .and_then(|r| r.parse::<usize>().ok())
            .and_then(|r| self.remotes.get(r))
            .ok_or_else(|| Status::invalid_argument("no remote label"))?;
        Ok(ctx.with_client_url(Arc::clone(remote)))
    }
}

/// The hop under test.
struct Hop {
    chain: ServerChain,
    expire: Expire,
    connect: Connect,
    remotes: Vec<ServerHandle>,
}

impl Hop {
    /// Until connect holds nothing and every remote has seen its
    /// connection from connect close: nothing is still being torn down.
    async fn settled(&self) {
        self.connect.idle().await;
        for remote in &self.remotes {
            remote.wait_connections(|c| c.open == 0).await;
        }
    }
}

impl Hop {
    /// Opens the population, lets it expire, and reports.
    async fn round(
        &self,
        options: &Expiry,
        round: usize,
        heap_kb_at_zero: u64,
    ) -> Result<Line, String> {
        let (n, m, ttl) = (options.connections, options.remotes, options.ttl);
        let expired_before = self.expire.stats().expired;
        let opening = Instant::now();
        let opened = {
            let chain = self.chain.clone();
            each(n, options.concurrency, move |k| {
                let chain = chain.clone();
                async move { chain.request(Context::new(), request(k, m, ttl)).await.ok() }
            })
            .await
        };
        let open_ms = opening.elapsed().as_secs_f64() * 1e3;
        let errors = opened.iter().filter(|c| c.is_none()).count();
        drop(opened);
        let (heap_kb_at_n, rss_kb_at_n) = (heap_kb(), rss_kb()?);

        // The first expiry is due `ttl` after the first request.
        let first_due = opening + ttl;
        let live = (n - errors) as u64;
        self.expire
            .wait_for(|s| s.expired >= expired_before + live)
            .await;
        let expiry_ms = first_due.elapsed().as_secs_f64() * 1e3;
        self.settled().await;
        let stats = self.chain.stats();
        let entries_after = stats.connection_entries.iter().map(|(_, e)| e).sum();
        let connect_stats = self.connect.stats();
        let (heap_kb_after, rss_kb_after) = (heap_kb(), rss_kb()?);

        let kib = |kb: u64| kb as f64 * 1024.0;
        let per_connection =
            |kb: u64| round_to((kib(kb) - kib(heap_kb_at_zero)) / live.max(1) as f64, 1);
        Ok(Line {
            workload: "expiry",
            round,
            connections: n,
            remotes: m,
            ttl_ms: ttl.as_millis(),
            heap_kb_at_zero,
            heap_kb_at_n,
            heap_kb_after,
            bytes_left_per_connection: per_connection(heap_kb_after),
            bytes_per_connection: per_connection(heap_kb_at_n),
            rss_kb_at_n,
            rss_kb_after,
            open_ms: round_to(open_ms, 1),
            expiry_ms: round_to(expiry_ms, 1),
            expired: self.expire.stats().expired - expired_before,
            entries_after,
            clients_after: connect_stats.clients.len(),
            records_after: connect_stats.records,
            errors,
        })
    }
}

fn request(k: usize, remotes: usize, ttl: Duration) -> NetworkServiceRequest {
    let mut conn = from_caller("vanishing-nsc", &format!("x-{k}"), Some(ttl));
    conn.labels
        .insert("remote".into(), (k % remotes).to_string());
    request_for(conn)
}

pub(crate) async fn run(options: Expiry) -> Result<(), String> {
    let stop = CancellationToken::new();
    let mut servers: Vec<ServerHandle> = Vec::new();
    for _ in 0..options.remotes {
        let chain = ServerChain::builder().with(Passthrough).build();
        let server = serve("tcp://127.0.0.1:0", chain, stop.clone())
            .await
            .map_err(|e| format!("serving a remote: {e}"))?;
        servers.push(server);
    }
    let remotes: Vec<Arc<Url>> = servers.iter().map(|s| Arc::new(s.url().clone())).collect();
    let connect = Connect::builder(|_: &Context, conn| {
        ClientChain::builder().with(GrpcClient::new(conn)).build()
    })
    .dial_options(DialOptions::new().timeout(Duration::from_secs(5)))
    .build();
    let rest = ServerChain::builder()
        .with(Route { remotes })
        .with(connect.clone())
        .build();
    let expire = Expire::new(rest);
    let chain = ServerChain::builder()
        .with(UpdatePath::new("bench-hop"))
        .with(expire.clone())
        .build();
    let (m, ttl) = (options.remotes, options.ttl);

    // The baseline: the hop warm (each remote's client dialed once and
    // closed again), holding no connection.
    for k in 0..m {
        let conn = chain
            .request(Context::new(), request(k, m, ttl))
            .await
            .map_err(|s| format!("warming up: {}", s.message()))?;
        chain
            .close(Context::new(), conn)
            .await
            .map_err(|s| format!("warming up: {}", s.message()))?;
    }
    let hop = Hop {
        chain,
        expire,
        connect,
        remotes: servers,
    };
    hop.settled().await;
    let heap_kb_at_zero = heap_kb();
    for round in 1..=options.rounds {
        let line = hop.round(&options, round, heap_kb_at_zero).await?;
        println!(
            "{}",
            serde_json::to_string(&line).expect("a report serialises")
        );
    }
    stop.cancel();
    for server in hop.remotes {
        server.stopped().await;
    }
    Ok(())
}
