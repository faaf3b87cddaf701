//! `compare`: both modes, alternately, several rounds, summarised as medians
//! and ratios. Alternating (and swapping which mode goes first each round)
//! spreads the machine's drift over both modes. Each workload runs in a
//! process of its own, so that its peak RSS is its own.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::measure::{median, ratio};
use crate::options::{Mode, Run};

/// The fields summarised, in the table's column order.
const FIELDS: [&str; 7] = [
    "median_wall_ms",
    "pair_p50_us",
    "pair_p99_us",
    "req_p50_us",
    "cpu_us_per_pair",
    "peak_rss_kb",
    "dials",
];

pub(crate) fn run(run: &Run, rounds: usize) -> Result<(), String> {
    if let Some(idle) = crate::machine::idle_policy() {
        eprintln!("{idle}");
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let workloads: Vec<&str> = run.workloads.iter().map(|w| w.name()).collect();
    // (workload, mode) -> field -> samples
    let mut samples: BTreeMap<(String, String), BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for round in 0..rounds {
        let modes = match round % 2 {
            0 => [Mode::Direct, Mode::Connect],
            _ => [Mode::Connect, Mode::Direct],
        };
        for (workload, mode) in workloads.iter().flat_map(|w| modes.map(|m| (w, m))) {
            eprintln!("round {}/{rounds}: {workload} {}", round + 1, mode.name());
            let output = Command::new(&me)
                .arg("run")
                .arg("--remotes")
                .arg(&run.remotes)
                .args(["--mode", mode.name(), "--workload", workload])
                .args(["--n", &run.n.to_string(), "--reps", &run.reps.to_string()])
                .args(["--iters", &run.iters.to_string()])
                .args(run.tls.then_some("--tls"))
                .args(run.spiffe.then_some("--spiffe"))
                .arg(format!("--linger-ms={}", run.linger.as_millis()))
                .args(run.telemetry.then_some("--telemetry"))
                .args(run.otlp.iter().flat_map(|url| ["--otlp-endpoint", url]))
                .output()
                .map_err(|e| format!("running {}: {e}", me.display()))?;
            if !output.status.success() {
                return Err(String::from_utf8_lossy(&output.stderr).into_owned());
            }
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let json: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
                let errors = json["errors"].as_u64().unwrap_or(u64::MAX);
                if errors != 0 {
                    return Err(format!("{errors} errors in {line}"));
                }
                let key = (
                    json["workload"].as_str().unwrap_or("?").to_owned(),
                    mode.name().to_owned(),
                );
                let fields = samples.entry(key).or_default();
                for field in FIELDS {
                    if let Some(value) = json[field].as_f64() {
                        fields.entry(field).or_default().push(value);
                    }
                }
            }
        }
    }
    println!(
        "| workload | mode | wall ms | pair p50 µs | pair p99 µs | req p50 µs | CPU µs/pair | peak RSS KiB | dials in the run |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for workload in &workloads {
        let get = |mode: &str, field: &str| {
            samples
                .get(&(workload.to_string(), mode.to_owned()))
                .and_then(|f| f.get(field))
                .map(|v| median(v))
                .unwrap_or(f64::NAN)
        };
        for mode in ["direct", "connect"] {
            let cells: Vec<String> = FIELDS
                .iter()
                .map(|f| format!("{:.1}", get(mode, f)))
                .collect();
            println!("| {workload} | {mode} | {} |", cells.join(" | "));
        }
        let ratios: Vec<String> = FIELDS
            .iter()
            .map(|f| ratio(get("connect", f), get("direct", f)))
            .collect();
        println!("| {workload} | connect ÷ direct | {} |", ratios.join(" | "));
    }
    Ok(())
}
