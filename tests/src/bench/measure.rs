//! What the harness measures: latencies, process CPU and peak memory, and
//! the JSON line each workload prints.

use std::fmt::Write;
use std::time::Duration;

/// Latencies of one kind of call, in microseconds.
#[derive(Default)]
pub(crate) struct Latencies(Vec<u64>);

impl Latencies {
    pub(crate) fn push(&mut self, took: Duration) {
        self.0
            .push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// The `p`-th percentile (nearest rank); 0 when empty.
    pub(crate) fn percentile(&mut self, p: f64) -> u64 {
        self.0.sort_unstable();
        if self.0.is_empty() {
            return 0;
        }
        let rank = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1]
    }
}

/// User plus system CPU time this process has used so far.
#[allow(unsafe_code)]
pub(crate) fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full `rusage` into the pointer it is given,
    // which points at one; RUSAGE_SELF is always a valid `who`.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The process's peak resident set (VmHWM), in KiB.
pub(crate) fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
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

impl Report {
    pub(crate) fn json(mut self) -> String {
        let mut walls: Vec<f64> = self.wall.iter().map(|w| w.as_secs_f64() * 1e3).collect();
        let wall_list = walls
            .iter()
            .map(|w| format!("{w:.3}"))
            .collect::<Vec<_>>()
            .join(",");
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
        let mut line = String::new();
        let _ = write!(
            line,
            "{{\"workload\":\"{}\",\"mode\":\"{}\",\"n\":{},\"remotes\":{},\"wall_ms\":[{}],\
             \"median_wall_ms\":{:.3},\"median_pairs_per_s\":{:.1},\
             \"req_p50_us\":{},\"req_p99_us\":{},\"pair_p50_us\":{},\"pair_p99_us\":{},\
             \"close_p50_us\":{},\"dials\":{},\"errors\":{},\"cpu_us_per_pair\":{:.1},\"peak_rss_kb\":{}}}",
            self.workload,
            self.mode,
            self.n,
            self.remotes,
            wall_list,
            median_wall_ms,
            median_pairs_per_s,
            self.request.percentile(0.50),
            self.request.percentile(0.99),
            self.pair.percentile(0.50),
            self.pair.percentile(0.99),
            self.close.percentile(0.50),
            self.dials,
            self.errors,
            cpu_us_per_pair,
            peak_rss_kb(),
        );
        line
    }
}
