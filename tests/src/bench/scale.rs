//! Workload s: a population of live connections. It opens N connections
//! over M remotes (one per remote first, to price a client), holds them,
//! refreshes every one once (or `--refresh-rounds` times) in a shuffled
//! order, then closes them all, each phase at a fixed concurrency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use connect_runtime::proto::connection::Connection;
use serde::Serialize;
use url::Url;

use connect_tests::population::{each, shuffled};

use crate::measure::{Latencies, cpu_time, heap_kb, round, trimmed_rss_kb};
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
    /// The heap in use (glibc's count of bytes handed out) with M and with
    /// N connections live, KiB, and its growth per added connection: what
    /// is held, without the allocator's slack.
    heap_kb_at_clients: u64,
    heap_kb_at_n: u64,
    heap_bytes_per_connection: f64,
    /// Refreshes made: every connection, `--refresh-rounds` times.
    refreshes: usize,
    refresh_p50_us: u64,
    refresh_p99_us: u64,
    cpu_us_per_refresh: f64,
    open_ms: f64,
    close_ms: f64,
    dials: usize,
    errors: usize,
    /// With `--monitoring`: open relayed monitor streams per remote, and
    /// streams opened in all, at N.
    #[serde(skip_serializing_if = "Option::is_none")]
    streams_per_remote: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_opens: Option<u64>,
}

/// What every call of the workload shares: the caller, the remotes, and
/// the count of calls that failed.
struct Population {
    caller: Caller,
    remotes: Vec<Arc<Url>>,
    errors: AtomicUsize,
}

impl Population {
    /// Connection `k`'s remote: remote `k` mod M.
    fn remote(&self, k: usize) -> (usize, &Arc<Url>) {
        let remote = k % self.remotes.len();
        (remote, &self.remotes[remote])
    }

    /// Counts a failed call; the value of one that succeeded.
    fn counted<T, E>(&self, result: Result<T, E>) -> Option<T> {
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        result.ok()
    }

    /// Opens connection `k`, keeping it as returned in its slot.
    async fn open(&self, k: usize, slot: &OnceLock<Box<Connection>>) {
        let (remote, url) = self.remote(k);
        let opened = self.caller.request(remote, url, format!("s-{k}")).await;
        if let Some(connection) = self.counted(opened) {
            let _ = slot.set(Box::new(connection));
        }
    }

    /// How long the refresh of connection `k` took, if it succeeded.
    async fn refresh(&self, k: usize, connection: Connection) -> Option<Duration> {
        let (remote, url) = self.remote(k);
        let started = Instant::now();
        let refreshed = self.caller.refresh(remote, url, connection).await;
        let took = started.elapsed();
        self.counted(refreshed).map(|_| took)
    }

    async fn close(&self, k: usize, connection: Connection) {
        let closed = self.caller.close(self.remote(k).0, connection).await;
        self.counted(closed);
    }
}

pub(crate) async fn run(run: &Run, remotes: &[Arc<Url>]) -> Result<String, String> {
    let (n, m, concurrency) = (run.connections, remotes.len(), run.concurrency);
    if n < m {
        return Err(format!(
            "--connections {n} is fewer than the {m} remotes used: each remote needs one"
        ));
    }
    // As Go's driver measures: the driver's own slots for the live
    // connections allocated and written before the baseline, and each RSS
    // read after handing freed memory back (`malloc_trim`, where Go runs a
    // GC and `FreeOSMemory`). What grows is then the connections as
    // returned (boxed, as Go's are) and what the caller keeps for them.
    let live: Arc<Vec<OnceLock<Box<Connection>>>> =
        Arc::new((0..n).map(|_| OnceLock::new()).collect());
    let rss_kb_at_zero = trimmed_rss_kb()?;

    let opening = Instant::now();
    let population = Arc::new(Population {
        caller: Caller::caller(run, remotes).await?,
        remotes: remotes.to_vec(),
        errors: AtomicUsize::new(0),
    });
    let open = |first: usize| {
        let (population, live) = (Arc::clone(&population), Arc::clone(&live));
        move |k: usize| {
            let (population, live) = (Arc::clone(&population), Arc::clone(&live));
            async move { population.open(first + k, &live[first + k]).await }
        }
    };
    each(m, concurrency, open(0)).await;
    let rss_kb_at_clients = trimmed_rss_kb()?;
    let heap_kb_at_clients = heap_kb();
    each(n - m, concurrency, open(m)).await;
    let open_ms = opening.elapsed().as_secs_f64() * 1e3;
    let monitored = match population.caller.monitor() {
        Some(monitor) => {
            let streams = monitor.wait_for(|s| s.relayed_streams >= m);
            let stats = tokio::time::timeout(Duration::from_secs(30), streams)
                .await
                .unwrap_or_else(|_| monitor.stats());
            Some(stats)
        }
        None => None,
    };
    let rss_kb_at_n = trimmed_rss_kb()?;
    let heap_kb_at_n = heap_kb();
    if run.exit_at_n {
        // Without destructors: what is live now is what the profiler reports.
        std::process::exit(0);
    }

    // Every connection once per round, each round in its own shuffled
    // order; a round ends before the next starts, so no id is refreshed
    // twice at once.
    let rounds = run.refresh_rounds;
    let cpu_before = cpu_time();
    let mut refresh = Latencies::default();
    for round in 0..rounds {
        // Shared, not cloned: each of the workers holds the closure.
        let order = Arc::new(shuffled(n, round as u64));
        let (population, live) = (Arc::clone(&population), Arc::clone(&live));
        let took = each(n, concurrency, move |i| {
            let (population, k) = (Arc::clone(&population), order[i]);
            let connection = live[k].get().map(|c| Connection::clone(c));
            async move { population.refresh(k, connection?).await }
        })
        .await;
        for took in took.into_iter().flatten() {
            refresh.push(took);
        }
    }
    let cpu = cpu_time().saturating_sub(cpu_before);

    let closing = Instant::now();
    let (closer, closed) = (Arc::clone(&population), Arc::clone(&live));
    each(n, concurrency, move |k| {
        let (population, connection) = (
            Arc::clone(&closer),
            closed[k].get().map(|c| Connection::clone(c)),
        );
        async move {
            if let Some(connection) = connection {
                population.close(k, connection).await;
            }
        }
    })
    .await;
    let caller = &population.caller;
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
        heap_kb_at_clients,
        heap_kb_at_n,
        heap_bytes_per_connection: per(kib(heap_kb_at_n) - kib(heap_kb_at_clients), n - m),
        refresh_p50_us: refresh.percentile(0.50),
        refresh_p99_us: refresh.percentile(0.99),
        refreshes: n * rounds,
        cpu_us_per_refresh: round(cpu.as_secs_f64() * 1e6 / (n * rounds) as f64, 1),
        open_ms: round(open_ms, 1),
        close_ms: round(close_ms, 1),
        dials,
        errors: population.errors.load(Ordering::Relaxed),
        streams_per_remote: monitored
            .as_ref()
            .map(|s| round(s.relayed_streams as f64 / m as f64, 2)),
        relay_opens: monitored.map(|s| s.relay_opens),
    };
    Ok(serde_json::to_string(&line).expect("a report serialises"))
}
