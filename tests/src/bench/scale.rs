//! Workload s: a population of live connections. It opens N connections
//! over M remotes (one per remote first, to price a client), holds them,
//! refreshes every one once (or `--refresh-rounds` times) in a shuffled
//! order, then closes them all, each phase at a fixed concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use connect_runtime::proto::connection::Connection;
use serde::Serialize;
use url::Url;

use connect_tests::population::{each, shuffled};

use crate::measure::{Latencies, cpu_time, round};
use crate::options::{Mode, Run};
use crate::workload::Caller;

/// The JSON line of workload s.
#[derive(Serialize)]
struct Line {
    workload: &'static str,
    mode: &'static str,
    connections: usize,
    remotes_used: usize,
    concurrency: usize,
    /// Resident set before anything is dialed, after M clients with one
    /// connection each, and with all N connections live; KiB.
    rss_kb_at_zero: u64,
    rss_kb_at_clients: u64,
    rss_kb_at_n: u64,
    /// Growth from M to N connections, per added connection.
    bytes_per_connection: f64,
    /// Growth from nothing to M clients with one connection each, per client.
    bytes_per_client: f64,
    /// Refreshes made: every connection, `--refresh-rounds` times.
    refreshes: usize,
    refresh_p50_us: u64,
    refresh_p99_us: u64,
    cpu_us_per_refresh: f64,
    open_ms: f64,
    close_ms: f64,
    dials: usize,
    errors: usize,
}

pub(crate) async fn run(run: &Run, remotes: &[Arc<Url>]) -> Result<String, String> {
    let (n, m, concurrency) = (run.connections, remotes.len(), run.concurrency);
    if n < m {
        return Err(format!(
            "--connections {n} is fewer than the {m} remotes used: each remote needs one"
        ));
    }
    let remotes: Arc<[Arc<Url>]> = remotes.into();
    let errors = Arc::new(AtomicUsize::new(0));
    let rss_kb_at_zero = rss_kb()?;

    let opening = Instant::now();
    let caller = Caller::caller(run, &remotes).await?;
    let open = {
        let (caller, remotes, errors) = (caller.clone(), Arc::clone(&remotes), Arc::clone(&errors));
        move |k: usize| {
            let (caller, remotes, errors) =
                (caller.clone(), Arc::clone(&remotes), Arc::clone(&errors));
            async move {
                let remote = k % remotes.len();
                let opened = caller
                    .request(remote, &remotes[remote], format!("s-{k}"))
                    .await;
                opened
                    .inspect_err(|_| {
                        errors.fetch_add(1, Ordering::Relaxed);
                    })
                    .ok()
            }
        }
    };
    let mut live = each(m, concurrency, open.clone()).await;
    let rss_kb_at_clients = rss_kb()?;
    let more = each(n - m, concurrency, move |j| open(m + j)).await;
    live.extend(more);
    let open_ms = opening.elapsed().as_secs_f64() * 1e3;
    let rss_kb_at_n = rss_kb()?;
    let live: Arc<Vec<Option<Connection>>> = Arc::new(live);

    // Every connection once per round, each round in its own shuffled
    // order; a round ends before the next starts, so no id is refreshed
    // twice at once.
    let rounds = run.refresh_rounds;
    let cpu_before = cpu_time();
    let mut refreshes = Vec::with_capacity(n * rounds);
    for round in 0..rounds {
        let order = Arc::new(shuffled(n, round as u64));
        let (caller, remotes, errors) = (caller.clone(), Arc::clone(&remotes), Arc::clone(&errors));
        let live = Arc::clone(&live);
        let refreshed = each(n, concurrency, move |i| {
            let k = order[i];
            let (caller, remotes, errors) =
                (caller.clone(), Arc::clone(&remotes), Arc::clone(&errors));
            let connection = live[k].clone();
            async move {
                let connection = connection?;
                let remote = k % remotes.len();
                let started = Instant::now();
                let refreshed = caller.refresh(remote, &remotes[remote], connection).await;
                let took = started.elapsed();
                refreshed
                    .inspect_err(|_| {
                        errors.fetch_add(1, Ordering::Relaxed);
                    })
                    .ok()
                    .map(|_| took)
            }
        })
        .await;
        refreshes.extend(refreshed);
    }
    let cpu = cpu_time().saturating_sub(cpu_before);
    let mut refresh = Latencies::default();
    for took in refreshes.into_iter().flatten() {
        refresh.push(took);
    }

    let closing = Instant::now();
    {
        let (caller, live, errors) = (caller.clone(), Arc::clone(&live), Arc::clone(&errors));
        let m = remotes.len();
        each(n, concurrency, move |k| {
            let (caller, errors) = (caller.clone(), Arc::clone(&errors));
            let connection = live[k].clone();
            async move {
                if let Some(connection) = connection
                    && caller.close(k % m, connection).await.is_err()
                {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    }
    caller.settle().await;
    let close_ms = closing.elapsed().as_secs_f64() * 1e3;
    let dials = match run.mode {
        Mode::Connect => caller.dials(),
        Mode::Direct => m,
    };
    let kib = |kb: u64| kb as f64 * 1024.0;
    let per = |grown: f64, count: usize| round(grown / count.max(1) as f64, 1);
    let line = Line {
        workload: "s",
        mode: run.mode.name(),
        connections: n,
        remotes_used: m,
        concurrency,
        rss_kb_at_zero,
        rss_kb_at_clients,
        rss_kb_at_n,
        bytes_per_connection: per(kib(rss_kb_at_n) - kib(rss_kb_at_clients), n - m),
        bytes_per_client: per(kib(rss_kb_at_clients) - kib(rss_kb_at_zero), m),
        refresh_p50_us: refresh.percentile(0.50),
        refresh_p99_us: refresh.percentile(0.99),
        refreshes: n * rounds,
        cpu_us_per_refresh: round(cpu.as_secs_f64() * 1e6 / (n * rounds) as f64, 1),
        open_ms: round(open_ms, 1),
        close_ms: round(close_ms, 1),
        dials,
        errors: errors.load(Ordering::Relaxed),
    };
    Ok(serde_json::to_string(&line).expect("a report serialises"))
}

/// This process's resident set now (`VmRSS`), in KiB.
fn rss_kb() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/self/status".to_owned())
}
