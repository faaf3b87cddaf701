//! What the harness measures: latencies, process CPU and peak memory, and
//! the JSON line each workload prints.

use std::time::Duration;

use hdrhistogram::Histogram;
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;
use serde::Serialize;

/// Ten minutes, in microseconds.
const HIGHEST_US: u64 = 600_000_000;

/// Latencies of one kind of call, in microseconds, to three significant
/// figures; any longer than [`HIGHEST_US`] count as that.
pub(crate) struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(
            Histogram::new_with_bounds(1, HIGHEST_US, 3)
                .expect("1 µs to 10 minutes at 3 significant figures is a valid range"),
        )
    }
}

impl Latencies {
    pub(crate) fn push(&mut self, took: Duration) {
        self.0
            .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// The `p`-th quantile (0 to 1); 0 when empty.
    pub(crate) fn percentile(&self, p: f64) -> u64 {
        self.0.value_at_quantile(p)
    }
}

/// What `getrusage(RUSAGE_SELF)` says about this process so far.
struct Usage {
    /// User plus system CPU time.
    cpu: Duration,
    /// Peak resident set (`ru_maxrss`), in KiB.
    peak_rss_kb: u64,
}

/// This process's usage, or zeros if `getrusage` fails (it cannot for
/// `RUSAGE_SELF`).
fn usage() -> Usage {
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return Usage {
            cpu: Duration::ZERO,
            peak_rss_kb: 0,
        };
    };
    let time = |t: TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    Usage {
        cpu: time(usage.user_time()) + time(usage.system_time()),
        peak_rss_kb: u64::try_from(usage.max_rss()).unwrap_or(0),
    }
}

/// User plus system CPU time this process has used so far.
pub(crate) fn cpu_time() -> Duration {
    usage().cpu
}

/// One workload's results, printed as one JSON line.
pub(crate) struct Report {
    pub(crate) workload: &'static str,
    pub(crate) mode: &'static str,
    pub(crate) n: usize,
    pub(crate) remotes: usize,
    pub(crate) wall: Vec<Duration>,
    pub(crate) request: Latencies,
    pub(crate) pair: Latencies,
    pub(crate) close: Latencies,
    pub(crate) dials: usize,
    pub(crate) errors: usize,
    pub(crate) cpu: Duration,
    pub(crate) pairs: usize,
}

/// The JSON line: its fields, in this order, are what `compare`, the smoke
/// test and BENCHMARKS.md read.
#[derive(Serialize)]
struct Line {
    workload: &'static str,
    mode: &'static str,
    n: usize,
    remotes: usize,
    /// Each rep's wall time.
    wall_ms: Vec<f64>,
    median_wall_ms: f64,
    median_pairs_per_s: f64,
    req_p50_us: u64,
    req_p99_us: u64,
    pair_p50_us: u64,
    pair_p99_us: u64,
    close_p50_us: u64,
    dials: usize,
    errors: usize,
    cpu_us_per_pair: f64,
    /// The process's peak resident set so far, in KiB (`ru_maxrss`). Linux
    /// counts the spawning process's resident set at the `exec` into it, so
    /// this is at least that: `compare` and the smoke test are far smaller
    /// than a workload's peak, but a large parent would hide it.
    peak_rss_kb: u64,
}

impl Report {
    pub(crate) fn json(self) -> String {
        let mut walls: Vec<f64> = self.wall.iter().map(|w| w.as_secs_f64() * 1e3).collect();
        let wall_ms = walls.iter().map(|&w| round(w, 3)).collect();
        walls.sort_by(f64::total_cmp);
        let median_wall_ms = walls.get(walls.len() / 2).copied().unwrap_or(0.0);
        let pairs_per_rep = self.n as f64;
        let median_pairs_per_s = if median_wall_ms > 0.0 {
            pairs_per_rep / (median_wall_ms / 1e3)
        } else {
            0.0
        };
        let cpu_us_per_pair = if self.pairs > 0 {
            self.cpu.as_secs_f64() * 1e6 / self.pairs as f64
        } else {
            0.0
        };
        let line = Line {
            workload: self.workload,
            mode: self.mode,
            n: self.n,
            remotes: self.remotes,
            wall_ms,
            median_wall_ms: round(median_wall_ms, 3),
            median_pairs_per_s: round(median_pairs_per_s, 1),
            req_p50_us: self.request.percentile(0.50),
            req_p99_us: self.request.percentile(0.99),
            pair_p50_us: self.pair.percentile(0.50),
            pair_p99_us: self.pair.percentile(0.99),
            close_p50_us: self.close.percentile(0.50),
            dials: self.dials,
            errors: self.errors,
            cpu_us_per_pair: round(cpu_us_per_pair, 1),
            peak_rss_kb: usage().peak_rss_kb,
        };
        serde_json::to_string(&line).expect("a report serialises")
    }
}

/// `value` to `decimals` places, as the report prints it.
pub(crate) fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// This process's resident set now (`VmRSS`), in KiB.
/// The heap in use now, in KiB: glibc's count of bytes handed out, in its
/// arenas and in chunks mapped on their own.
#[allow(unsafe_code)]
pub(crate) fn heap_kb() -> u64 {
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's
    // statistics.
    let info = unsafe { libc::mallinfo2() };
    ((info.uordblks + info.hblkhd) / 1024) as u64
}

/// The resident set once the allocator has handed back the free memory
/// it can (`malloc_trim`), KiB: Go's `FreeOSMemory` before a reading.
#[allow(unsafe_code)]
pub(crate) fn trimmed_rss_kb() -> Result<u64, String> {
    // SAFETY: malloc_trim only releases free memory of glibc's arenas.
    unsafe { libc::malloc_trim(0) };
    rss_kb()
}

pub(crate) fn rss_kb() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/self/status".to_owned())
}

/// `a ÷ b` as a table cell, or an empty cell where it means nothing (a
/// count of zero: direct mode dials nothing during the measurement).
pub(crate) fn ratio(a: f64, b: f64) -> String {
    match a / b {
        ratio if ratio.is_finite() => format!("{ratio:.2}×"),
        _ => String::new(),
    }
}

/// The median of `values` (NaN for none).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_one_json_object_with_every_field() {
        let mut request = Latencies::default();
        for us in [10, 20, 30, 40] {
            request.push(Duration::from_micros(us));
        }
        let report = Report {
            workload: "a",
            mode: "connect",
            n: 4,
            remotes: 1,
            wall: vec![Duration::from_micros(2_500_400), Duration::from_millis(2)],
            request,
            pair: Latencies::default(),
            close: Latencies::default(),
            dials: 1,
            errors: 0,
            cpu: Duration::from_micros(1234),
            pairs: 8,
        };
        let line = report.json();
        assert!(!line.contains('\n'), "{line}");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 16, "{line}");
        assert!(line.starts_with(r#"{"workload":"a","mode":"connect","n":4,"remotes":1,"#));
        assert_eq!(json["wall_ms"], serde_json::json!([2500.4, 2.0]));
        assert_eq!(json["median_wall_ms"], 2500.4);
        assert_eq!(json["median_pairs_per_s"], 1.6);
        assert_eq!(json["req_p50_us"], 20);
        assert_eq!(json["req_p99_us"], 40);
        assert_eq!(json["pair_p50_us"], 0);
        assert_eq!(json["cpu_us_per_pair"], 154.3);
        assert!(json["peak_rss_kb"].as_u64().unwrap() > 0, "{line}");
    }

    #[test]
    fn getrusage_answers() {
        assert!(cpu_time() > Duration::ZERO);
        assert!(usage().peak_rss_kb > 0);
    }
}
