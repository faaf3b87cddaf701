//! `floor`: the per-call floor under every client call connect makes.
//! Sequential unary Close calls on one warm HTTP/2 connection to a remote,
//! by hyper's HTTP/2 client (what `ClientConn`, and tonic's own channel,
//! call through) and by h2's client under it, alternating round by round.
//!
//! hyper opens a stream in its connection task and sends a request's body
//! from a task of its own once h2 grants the stream capacity, so HEADERS
//! and DATA leave in two writes and two more tasks run per call; h2's
//! client, given the body at once, buffers both for one write. The
//! difference is what connect's client calls would gain below tonic.

use std::path::Path;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use connect_runtime::proto::connection::Connection;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use tokio::net::TcpStream;

use crate::measure::{Latencies, median, ratio};

const PATH: &str = "/networkservice.NetworkService/Close";
/// Calls before each measured run, on the same connection.
const WARMUP: usize = 500;

/// One client's measured run: p50 and p99, µs.
type Run = (f64, f64);

pub(crate) async fn run(remotes: &Path, iters: usize, rounds: usize) -> Result<(), String> {
    let text = std::fs::read_to_string(remotes)
        .map_err(|e| format!("reading {}: {e}", remotes.display()))?;
    let remote = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .ok_or_else(|| format!("{} lists no remotes", remotes.display()))?;
    let addr = remote
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("{remote}: floor dials tcp:// remotes (serve without --tls)"))?
        .trim_end_matches('/')
        .to_owned();
    let body = grpc_frame(&Connection {
        id: "floor".into(),
        ..Default::default()
    });
    let (mut by_hyper, mut by_h2) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        if round % 2 == 0 {
            by_hyper.push(hyper_run(&addr, &body, iters).await?);
            by_h2.push(h2_run(&addr, &body, iters).await?);
        } else {
            by_h2.push(h2_run(&addr, &body, iters).await?);
            by_hyper.push(hyper_run(&addr, &body, iters).await?);
        }
    }
    let p =
        |runs: &[Run], pick: fn(&Run) -> f64| median(&runs.iter().map(pick).collect::<Vec<_>>());
    println!("| client | call p50 µs | call p99 µs |");
    println!("|---|---:|---:|");
    for (name, runs) in [("hyper", &by_hyper), ("h2", &by_h2)] {
        println!(
            "| {name} | {:.1} | {:.1} |",
            p(runs, |r| r.0),
            p(runs, |r| r.1)
        );
    }
    println!(
        "| h2 ÷ hyper | {} | {} |",
        ratio(p(&by_h2, |r| r.0), p(&by_hyper, |r| r.0)),
        ratio(p(&by_h2, |r| r.1), p(&by_hyper, |r| r.1))
    );
    Ok(())
}

/// `message` as one gRPC length-prefixed frame.
fn grpc_frame(message: &Connection) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.encoded_len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.encoded_len()).unwrap_or(u32::MAX));
    message.encode(&mut frame).expect("a BytesMut grows");
    frame.freeze()
}

fn request(addr: &str) -> Result<http::Request<()>, String> {
    http::Request::post(format!("http://{addr}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())
}

/// Fails unless the call's trailers say `OK`.
fn succeeded(trailers: Option<&http::HeaderMap>) -> Result<(), String> {
    let status = trailers.and_then(|t| t.get("grpc-status"));
    match status {
        Some(status) if status == "0" => Ok(()),
        other => Err(format!("the remote answered grpc-status {other:?}")),
    }
}

async fn connected(addr: &str) -> Result<TcpStream, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(tcp)
}

fn summary(latencies: &Latencies) -> Run {
    // (u64 µs to f64: exact below 2^53.)
    #[allow(clippy::cast_precision_loss)]
    let at = |q| latencies.percentile(q) as f64;
    (at(0.5), at(0.99))
}

async fn hyper_run(addr: &str, body: &Bytes, iters: usize) -> Result<Run, String> {
    let io = TokioIo::new(connected(addr).await?);
    let (send, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let run = measured(iters, async || {
        let (head, ()) = request(addr)?.into_parts();
        let call = http::Request::from_parts(head, Full::new(body.clone()));
        let response = send
            .clone()
            .send_request(call)
            .await
            .map_err(|e| e.to_string())?;
        let reply = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        succeeded(reply.trailers())
    })
    .await;
    connection.abort();
    run
}

async fn h2_run(addr: &str, body: &Bytes, iters: usize) -> Result<Run, String> {
    let (send, connection) = h2::client::handshake(connected(addr).await?)
        .await
        .map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let run = measured(iters, async || {
        let mut send = send.clone().ready().await.map_err(|e| e.to_string())?;
        let (response, mut stream) = send
            .send_request(request(addr)?, false)
            .map_err(|e| e.to_string())?;
        stream
            .send_data(body.clone(), true)
            .map_err(|e| e.to_string())?;
        let mut reply = response.await.map_err(|e| e.to_string())?.into_body();
        while let Some(data) = reply.data().await {
            let data = data.map_err(|e| e.to_string())?;
            let _ = reply.flow_control().release_capacity(data.len());
        }
        let trailers = reply.trailers().await.map_err(|e| e.to_string())?;
        succeeded(trailers.as_ref())
    })
    .await;
    connection.abort();
    run
}

/// Makes [`WARMUP`] calls, then `iters` timed ones, one after another.
async fn measured(
    iters: usize,
    mut call: impl AsyncFnMut() -> Result<(), String>,
) -> Result<Run, String> {
    for _ in 0..WARMUP {
        call().await?;
    }
    let mut latencies = Latencies::default();
    for _ in 0..iters {
        let started = Instant::now();
        call().await?;
        latencies.push(started.elapsed());
    }
    Ok(summary(&latencies))
}
