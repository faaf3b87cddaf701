//! The cost of an SVID rotation: in one process, a remote serving mutual TLS
//! with a SPIFFE identity, connect dialing it with an identity of its own,
//! both from the test Workload API, and a population of connections
//! refreshed back to back while one of the identities rotates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_runtime::spiffe::{Authorize, SpiffeIdentity};
use connect_runtime::{
    ClientChain, ClientUrl, Connect, Context, DialOptions, GrpcClient, Passthrough, Serve,
    ServerChain,
};
use connect_tests::request;
use connect_tests::workload_api::{Authority, WorkloadApi};
use tokio_util::sync::CancellationToken;

use crate::measure::Latencies;
use crate::options::Rotation;

/// One refresh: when it started (since the run began), how long it took,
/// and whether it failed.
struct Sample {
    started: Duration,
    took: Duration,
    failed: bool,
}

pub(crate) async fn run(options: Rotation) -> Result<(), String> {
    let domain = Arc::new(Authority::new("example.org"));
    let hour = Duration::from_secs(3600);
    let remote_api = WorkloadApi::start(Arc::clone(&domain), "/nse", hour).await;
    let remote_identity = SpiffeIdentity::from_endpoint(remote_api.endpoint())
        .await
        .map_err(|e| format!("the remote's identity: {e}"))?;
    let remote_tls = remote_identity
        .server_tls(Authorize::SameTrustDomain)
        .map_err(|e| e.to_string())?;
    let remote = Serve::new(ServerChain::builder().with(Passthrough).build())
        .tls(remote_tls)
        .bind("tcp://127.0.0.1:0")
        .await
        .map_err(|e| format!("serving the remote: {e}"))?;

    let api = WorkloadApi::start(Arc::clone(&domain), "/passthrough", hour).await;
    let identity = SpiffeIdentity::from_endpoint(api.endpoint())
        .await
        .map_err(|e| format!("connect's identity: {e}"))?;
    let tls = identity
        .client_tls(Authorize::SameTrustDomain)
        .map_err(|e| e.to_string())?;
    let connect = Connect::builder(|_: &Context, conn| {
        ClientChain::builder().with(GrpcClient::new(conn)).build()
    })
    .dial_options(DialOptions::new().timeout(Duration::from_secs(5)).tls(tls))
    .build();
    let chain = ServerChain::builder()
        .with(ClientUrl::new(remote.url().clone()))
        .with(connect.clone())
        .build();

    let ids: Vec<String> = (0..options.connections).map(|i| format!("r-{i}")).collect();
    for id in &ids {
        chain
            .request(Context::new(), request(id))
            .await
            .map_err(|s| format!("establishing {id}: {}", s.message()))?;
    }

    let begun = Instant::now();
    let stop = CancellationToken::new();
    let mut loops = Vec::new();
    for id in ids.clone() {
        let (chain, stop) = (chain.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.is_cancelled() {
                let started = Instant::now();
                let failed = chain.request(Context::new(), request(&id)).await.is_err();
                samples.push(Sample {
                    started: started - begun,
                    took: started.elapsed(),
                    failed,
                });
            }
            samples
        }));
    }

    // Each window runs from a rotation until every connection has moved.
    let mut windows = Vec::new();
    tokio::time::sleep(options.period).await;
    for rotation in 1..=options.rotations {
        let from = begun.elapsed();
        if options.server {
            // Until connect has dialed anew and the drained connection closed.
            remote_api.rotate();
            let dialed = 1 + rotation as u64;
            remote
                .wait_connections(|s| s.accepted == dialed && s.open == 1 && s.retired == 0)
                .await;
        } else {
            let serial = api.rotate().serial_text();
            connect
                .wait_for(|stats| {
                    matches!(stats.clients.as_slice(),
                        [client] if client.serial.as_deref() == Some(serial.as_str())
                            && client.refs == options.connections)
                })
                .await;
        }
        windows.push((from, begun.elapsed()));
        tokio::time::sleep(options.period).await;
    }
    stop.cancel();
    let mut samples = Vec::new();
    for task in loops {
        samples.extend(task.await.map_err(|e| format!("a refresh loop: {e}"))?);
    }

    let during = |s: &Sample| {
        windows
            .iter()
            .any(|(from, to)| s.started + s.took >= *from && s.started <= *to)
    };
    let (mut steady, mut rotating) = (Latencies::default(), Latencies::default());
    let (mut steady_calls, mut rotating_calls, mut errors) = (0usize, 0usize, 0usize);
    for sample in &samples {
        errors += usize::from(sample.failed);
        if during(sample) {
            rotating.push(sample.took);
            rotating_calls += 1;
        } else {
            steady.push(sample.took);
            steady_calls += 1;
        }
    }
    let mut moved: Vec<u128> = windows
        .iter()
        .map(|(from, to)| (*to - *from).as_micros())
        .collect();
    moved.sort_unstable();
    let dials = remote.connections().accepted;
    println!(
        "{{\"side\":\"{}\",\"connections\":{},\"rotations\":{},\"dials\":{},\"dials_per_rotation\":{:.2},\
         \"moved_us_median\":{},\"moved_us_max\":{},\"steady_calls\":{},\"steady_p50_us\":{},\
         \"steady_p99_us\":{},\"rotating_calls\":{},\"rotating_p50_us\":{},\"rotating_p99_us\":{},\
         \"errors\":{}}}",
        if options.server { "server" } else { "client" },
        options.connections,
        options.rotations,
        dials,
        (dials as f64 - 1.0) / options.rotations as f64,
        moved[moved.len() / 2],
        moved[moved.len() - 1],
        steady_calls,
        steady.percentile(0.50),
        steady.percentile(0.99),
        rotating_calls,
        rotating.percentile(0.50),
        rotating.percentile(0.99),
        errors,
    );
    connect.shutdown();
    remote.shutdown().await;
    if errors > 0 {
        return Err(format!("{errors} refreshes failed"));
    }
    Ok(())
}
