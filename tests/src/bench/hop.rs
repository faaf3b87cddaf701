//! `hop`: the hop users pay for, as deployed. A driver (`run --mode direct`,
//! tonic's own client) calls a passthrough process that forwards to an
//! endpoint process; any passthrough that takes the program's flags
//! (`--listen URL --connect-to URL`) can be measured, so ours and Go's run
//! side by side. Each workload of each round gets a fresh passthrough,
//! pinned alone to CPU 1, whose peak RSS is read before it is stopped; the
//! driver and the endpoint share CPU 0. The order of the passthroughs
//! alternates round by round.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::measure::{median, ratio};
use crate::options::Hop;

/// The fields summarised, in the table's column order: the driver's, then
/// the passthrough's peak RSS.
const FIELDS: [&str; 4] = [
    "median_wall_ms",
    "pair_p50_us",
    "pair_p99_us",
    "passthrough_rss_kb",
];

/// How long a passthrough may take to start listening.
const START: Duration = Duration::from_secs(20);

pub(crate) fn run(hop: &Hop) -> Result<(), String> {
    if let Some(idle) = crate::machine::idle_policy() {
        eprintln!("{idle}");
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let endpoint = Endpoint::start(&me, dir.path())?;
    let remotes = dir.path().join("passthrough.txt");
    // (workload, passthrough) -> field -> samples
    let mut samples: BTreeMap<(&str, &str), BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for round in 0..hop.rounds {
        let mut order: Vec<&(String, String)> = hop.passthroughs.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for workload in &hop.workloads {
            for (name, command) in &order {
                eprintln!(
                    "round {}/{}: {} through {name}",
                    round + 1,
                    hop.rounds,
                    workload.name()
                );
                let passthrough = Passthrough::start(command, &endpoint.url)?;
                std::fs::write(&remotes, format!("tcp://{}\n", passthrough.addr))
                    .map_err(|e| format!("writing {}: {e}", remotes.display()))?;
                let output = Command::new("taskset")
                    .args(["-c", "0"])
                    .arg(&me)
                    .arg("run")
                    .arg("--remotes")
                    .arg(&remotes)
                    .args(["--mode", "direct", "--workload", workload.run_as()])
                    .args(["--n", &hop.burst.to_string()])
                    .args(["--reps", &hop.reps.to_string()])
                    .args(["--iters", &hop.iters.to_string()])
                    .output()
                    .map_err(|e| format!("running the driver: {e}"))?;
                let rss = passthrough.peak_rss_kb();
                passthrough.stop();
                if !output.status.success() {
                    return Err(format!(
                        "the driver failed through {name}: {}",
                        String::from_utf8_lossy(&output.stderr)
                    ));
                }
                let line = String::from_utf8_lossy(&output.stdout);
                let line = line.lines().next().unwrap_or_default();
                let json: Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
                let errors = json["errors"].as_u64().unwrap_or(u64::MAX);
                if errors != 0 {
                    return Err(format!("{errors} errors through {name}: {line}"));
                }
                let fields = samples.entry((workload.name(), name)).or_default();
                for field in FIELDS {
                    let value = match field {
                        "passthrough_rss_kb" => rss.map(|kb| kb as f64),
                        _ => json[field].as_f64(),
                    };
                    if let Some(value) = value {
                        fields.entry(field).or_default().push(value);
                    }
                }
            }
        }
    }
    print_table(hop, &samples);
    Ok(())
}

fn print_table(hop: &Hop, samples: &BTreeMap<(&str, &str), BTreeMap<&str, Vec<f64>>>) {
    println!(
        "| workload | passthrough | wall ms | pair p50 µs | pair p99 µs | passthrough peak RSS KiB |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    let names: Vec<&str> = hop.passthroughs.iter().map(|(n, _)| n.as_str()).collect();
    for workload in &hop.workloads {
        let get = |name: &str, field: &str| {
            samples
                .get(&(workload.name(), name))
                .and_then(|f| f.get(field))
                .map(|v| median(v))
                .unwrap_or(f64::NAN)
        };
        for name in &names {
            let cells: Vec<String> = FIELDS
                .iter()
                .map(|f| format!("{:.1}", get(name, f)))
                .collect();
            println!("| {} | {name} | {} |", workload.name(), cells.join(" | "));
        }
        if let [first, second, ..] = names[..] {
            let ratios: Vec<String> = FIELDS
                .iter()
                .map(|f| ratio(get(first, f), get(second, f)))
                .collect();
            println!(
                "| {} | {first} ÷ {second} | {} |",
                workload.name(),
                ratios.join(" | ")
            );
        }
    }
}

/// One connect-bench endpoint, on CPU 0.
struct Endpoint {
    child: Child,
    url: String,
}

impl Endpoint {
    fn start(me: &Path, dir: &Path) -> Result<Self, String> {
        let file = dir.join("endpoint.txt");
        let mut child = Command::new("taskset")
            .args(["-c", "0"])
            .arg(me)
            .args(["serve", "-n", "1", "--addr-file"])
            .arg(&file)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the endpoint: {e}"))?;
        // It prints its line once the file is complete.
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("reading the endpoint: {e}"))?;
        let url = std::fs::read_to_string(&file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        let url = url.lines().next().unwrap_or_default().to_owned();
        Ok(Self { child, url })
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A passthrough under test, pinned to CPU 1.
struct Passthrough {
    child: Child,
    addr: SocketAddr,
}

impl Passthrough {
    fn start(command: &str, endpoint: &str) -> Result<Self, String> {
        let addr = free_port()?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec taskset -c 1 {command} \"$@\""))
            .arg("sh")
            .args([
                "--listen",
                &format!("tcp://{addr}"),
                "--connect-to",
                endpoint,
            ])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting `{command}`: {e}"))?;
        let mut passthrough = Self { child, addr };
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = passthrough.child.try_wait() {
                return Err(format!("`{command}` exited at start: {status}"));
            }
            if started.elapsed() > START {
                return Err(format!(
                    "`{command}` did not listen on {addr} within {START:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(passthrough)
    }

    /// Its peak resident set (VmHWM), KiB.
    fn peak_rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    }

    /// SIGTERM, then waits.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// A loopback port free a moment ago.
fn free_port() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map_err(|e| e.to_string())
}
