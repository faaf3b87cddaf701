//! The benchmark harness works end to end: every workload, both modes, tiny
//! sizes, against remotes served by `connect-bench serve`. Correctness only:
//! no timing is asserted here (the numbers live in BENCHMARKS.md).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const FIELDS: [&str; 16] = [
    "workload",
    "mode",
    "n",
    "remotes",
    "wall_ms",
    "median_wall_ms",
    "median_pairs_per_s",
    "req_p50_us",
    "req_p99_us",
    "pair_p50_us",
    "pair_p99_us",
    "close_p50_us",
    "dials",
    "errors",
    "cpu_us_per_pair",
    "peak_rss_kb",
];

const SCALE_FIELDS: [&str; 21] = [
    "workload",
    "mode",
    "connections",
    "remotes_used",
    "concurrency",
    "rss_kb_at_zero",
    "rss_kb_at_clients",
    "rss_kb_at_n",
    "bytes_per_connection",
    "bytes_per_client",
    "heap_kb_at_clients",
    "heap_kb_at_n",
    "heap_bytes_per_connection",
    "refreshes",
    "refresh_p50_us",
    "refresh_p99_us",
    "cpu_us_per_refresh",
    "open_ms",
    "close_ms",
    "dials",
    "errors",
];

/// Runs connect-bench with `args`, checks it succeeded, and returns its
/// stdout as the JSON objects it holds, one per line.
async fn bench_lines<I, S>(args: I) -> Vec<serde_json::Value>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    bench(args)
        .await
        .0
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

/// `connect-bench serve -n 3` with `more` arguments, its URLs in
/// `addr_file`, once they are all written (keep the child: it serves).
async fn serve(addr_file: &std::path::Path, more: &[&str]) -> tokio::process::Child {
    let mut serve = Command::new(env!("CARGO_BIN_EXE_connect-bench"))
        .args(["serve", "-n", "3", "--addr-file"])
        .arg(addr_file)
        .args(more)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // `serve` prints one line once the file is complete.
    let mut ready = BufReader::new(serve.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), ready.next_line())
        .await
        .expect("connect-bench serve started")
        .unwrap()
        .unwrap();
    assert!(line.starts_with("serving 3 endpoints"), "{line}");
    assert_eq!(
        std::fs::read_to_string(addr_file).unwrap().lines().count(),
        3
    );
    serve
}

/// Runs connect-bench with `args`, checks it succeeded, and returns its
/// stdout and stderr.
async fn bench<I, S>(args: I) -> (String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = Command::new(env!("CARGO_BIN_EXE_connect-bench"))
        .args(args)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

/// The cells of a Markdown table's rows, below its header.
fn table_rows(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .skip(2)
        .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

#[tokio::test]
async fn every_workload_runs_in_both_modes_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let addr_file = dir.path().join("remotes.txt");
    let _serve = serve(&addr_file, &[]).await;

    for mode in ["connect", "direct"] {
        let remotes = addr_file.to_str().unwrap();
        let lines = bench_lines([
            "run",
            "--remotes",
            remotes,
            "--mode",
            mode,
            "--workload",
            "a,b,c,w",
            "--n",
            "20",
            "--reps",
            "2",
            "--iters",
            "10",
        ])
        .await;
        assert_eq!(lines.len(), 4, "{lines:?}");
        for (line, workload) in lines.iter().zip(["a", "b", "c", "w"]) {
            for field in FIELDS {
                assert!(line.get(field).is_some(), "{field} missing from {line}");
            }
            assert_eq!(line["workload"], workload);
            assert_eq!(line["mode"], mode);
            assert_eq!(line["errors"], 0, "{line}");
            assert!(line["peak_rss_kb"].as_u64().unwrap() > 0);
            let walls = line["wall_ms"].as_array().unwrap();
            let expected_walls = if matches!(workload, "a" | "b") { 2 } else { 1 };
            assert_eq!(walls.len(), expected_walls, "{line}");
        }
        let by = |w: &str| lines.iter().find(|l| l["workload"] == w).unwrap();
        assert_eq!(by("a")["remotes"], 1);
        assert_eq!(by("b")["remotes"], 3);
        if mode == "connect" {
            // c dials afresh for every pair; w reuses the held connection's client.
            assert_eq!(by("c")["dials"], 10, "{}", by("c"));
            assert_eq!(by("w")["dials"], 0, "{}", by("w"));
            // At least one client per remote per rep: more when a remote's
            // first connections finish before its last ones start, which
            // closes the client (as the semantics demand) and dials again.
            assert!(by("a")["dials"].as_u64().unwrap() >= 2, "{}", by("a"));
            assert!(by("b")["dials"].as_u64().unwrap() >= 6, "{}", by("b"));
        } else {
            assert_eq!(by("c")["dials"], 0);
        }

        // The scale workload: 60 connections over the first 2 remotes.
        let lines = bench_lines([
            "run",
            "--remotes",
            remotes,
            "--mode",
            mode,
            "--workload",
            "s",
            "--connections",
            "60",
            "--remotes-used",
            "2",
            "--concurrency",
            "8",
            "--refresh-rounds",
            "2",
        ])
        .await;
        let [line] = &lines[..] else {
            panic!("one JSON line: {lines:?}");
        };
        for field in SCALE_FIELDS {
            assert!(line.get(field).is_some(), "{field} missing from {line}");
        }
        assert_eq!(line["workload"], "s");
        assert_eq!(line["mode"], mode);
        assert_eq!(line["connections"], 60);
        assert_eq!(line["remotes_used"], 2);
        assert_eq!(line["refreshes"], 120);
        assert_eq!(line["dials"], 2, "one client per remote: {line}");
        assert_eq!(line["errors"], 0, "{line}");
        assert!(line["rss_kb_at_n"].as_u64().unwrap() > 0);
    }
}

/// Over SPIFFE mutual TLS (`serve --spiffe`, `run --spiffe`), both modes
/// call the remotes; connect dials for every pair of c.
#[tokio::test]
async fn the_spiffe_remotes_are_called_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let addr_file = dir.path().join("remotes.txt");
    let _serve = serve(&addr_file, &["--spiffe"]).await;
    for mode in ["connect", "direct"] {
        let remotes = addr_file.to_str().unwrap();
        let lines = bench_lines([
            "run",
            "--remotes",
            remotes,
            "--mode",
            mode,
            "--workload",
            "c,w",
            "--iters",
            "10",
            "--spiffe",
        ])
        .await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        for line in &lines {
            assert_eq!(line["errors"], 0, "{line}");
        }
        let dials = if mode == "connect" { 10 } else { 0 };
        assert_eq!(lines[0]["dials"], dials, "{}", lines[0]);
    }
}

/// `codec` reports both message kinds for both inputs, and the bytes it
/// measured: the newer peer's request is the larger.
#[tokio::test]
async fn the_codec_workload_reports_both_kinds_of_message() {
    let lines = bench_lines(["codec", "--iters", "50", "--rounds", "2"]).await;
    let seen: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["input"].as_str().unwrap(),
                l["messages"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("plain", "prost"),
            ("plain", "connect-proto"),
            ("unknown", "prost"),
            ("unknown", "connect-proto"),
        ]
    );
    for line in &lines {
        for field in ["decode_ns", "encode_ns", "decode_ns_min", "encode_ns_min"] {
            assert!(line[field].as_f64().unwrap() > 0.0, "{field} in {line}");
        }
    }
    assert!(lines[2]["bytes"].as_u64() > lines[0]["bytes"].as_u64());
}

/// `expiry` abandons its connections, sees every one expire, and leaves
/// the hop holding nothing, round after round.
#[tokio::test]
async fn the_expiry_workload_expires_everything_it_opened() {
    let lines = bench_lines([
        "expiry",
        "--connections",
        "200",
        "--remotes",
        "3",
        "--ttl-ms",
        "1000",
        "--rounds",
        "2",
    ])
    .await;
    assert_eq!(lines.len(), 2);
    for (round, line) in lines.iter().enumerate() {
        assert_eq!(line["round"], round + 1);
        assert_eq!(line["expired"], 200, "{line}");
        assert_eq!(line["errors"], 0, "{line}");
        for held in ["entries_after", "clients_after", "records_after"] {
            assert_eq!(line[held], 0, "{held} in {line}");
        }
        assert!(line["heap_kb_at_n"].as_u64() > line["heap_kb_after"].as_u64());
    }
}

/// `elements` reports every chain it compares.
#[tokio::test]
async fn the_elements_workload_reports_each_chain() {
    let lines = bench_lines(["elements", "--connections", "50", "--rounds", "1"]).await;
    let chains: Vec<String> = lines
        .iter()
        .map(|line| {
            assert!(line["ns_per_connection"].as_f64().unwrap() > 0.0, "{line}");
            line["chain"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        chains,
        [
            "passthrough",
            "updatepath",
            "expire",
            "updatepath+expire",
            "plain-state",
            "per-connection-state"
        ]
    );
}

#[tokio::test]
async fn the_hop_workload_measures_two_passthrough_processes_side_by_side() {
    // The example program, and the bench's own byte relay (the hop's
    // floor): the harness runs each as a process of its own between its
    // driver and its endpoint, and fails on any call that fails through it.
    let program = connect_tests::program::binary();
    let passthrough = format!("env RUST_LOG=warn {}", program.display());
    let relay = format!("{} relay", env!("CARGO_BIN_EXE_connect-bench"));
    let (table, stderr) = bench([
        "hop".to_owned(),
        "--rounds=2".to_owned(),
        "--burst=10".to_owned(),
        "--reps=1".to_owned(),
        "--iters=5".to_owned(),
        format!("--passthrough=first={passthrough}"),
        format!("--passthrough=second={relay}"),
    ])
    .await;
    // A Markdown table: a row per workload and passthrough, then the ratio.
    let rows = table_rows(&table);
    let expected: Vec<(&str, &str)> = ["burst", "c", "w"]
        .into_iter()
        .flat_map(|w| [(w, "first"), (w, "second"), (w, "first ÷ second")])
        .collect();
    let seen: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(seen, expected, "{table}");
    for row in rows.iter().filter(|r| !r[1].contains('÷')) {
        let rss: f64 = row[5].parse().unwrap();
        assert!(rss > 0.0, "the passthrough's peak RSS: {table}");
        let p50: f64 = row[3].parse().unwrap();
        assert!(p50 > 0.0, "{table}");
    }
    // Two rounds, each passthrough first once.
    assert_eq!(stderr.matches("through first").count(), 6, "{stderr}");
}

#[tokio::test]
async fn the_floor_workload_calls_a_remote_by_both_clients() {
    let dir = tempfile::tempdir().unwrap();
    let addr_file = dir.path().join("remotes.txt");
    let _serve = serve(&addr_file, &[]).await;
    let (table, stderr) = bench([
        "floor".as_ref(),
        "--iters=20".as_ref(),
        "--rounds=2".as_ref(),
        "--remotes".as_ref(),
        addr_file.as_os_str(),
    ])
    .await;
    // A Markdown table: a row per client (each call answered OK), then the
    // ratio.
    let rows = table_rows(&table);
    let clients: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(clients, ["hyper", "h2", "h2 ÷ hyper"], "{table}");
    for row in &rows[..2] {
        let p50: f64 = row[1].parse().unwrap();
        let p99: f64 = row[2].parse().unwrap();
        assert!(p50 > 0.0 && p99 >= p50, "{table}");
    }
    assert_eq!(stderr.matches("round ").count(), 2, "{stderr}");
}
