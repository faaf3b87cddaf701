//! Stress: 10,000 connections across 100 remotes, requested and then closed
//! concurrently.

use std::sync::Arc;
use std::time::Duration;

use connect_runtime::{Context, ServerChain, ServerHandle};
use connect_tests::elements::Count;
use connect_tests::harness::{assert_no_leaks, grpc_only, settle};
use connect_tests::remote::start_tcp;
use connect_tests::request;
use tokio::sync::Barrier;

const REMOTES: usize = 100;
const CONNECTIONS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_across_a_hundred_remotes() {
    let mut servers: Vec<ServerHandle> = Vec::with_capacity(REMOTES);
    let mut counts = Vec::with_capacity(REMOTES);
    for _ in 0..REMOTES {
        let count = Count::new();
        servers.push(start_tcp(ServerChain::builder().with(count.clone()).build()).await);
        counts.push(count);
    }
    let urls: Arc<Vec<url::Url>> = Arc::new(servers.iter().map(|s| s.url().clone()).collect());
    let connect = grpc_only().dial_timeout(Duration::from_secs(5)).build();
    let chain = ServerChain::builder().with(connect.clone()).build();

    // Every connection is requested at once; once all are up, every one is
    // closed at once.
    let requested = Arc::new(Barrier::new(CONNECTIONS + 1));
    let close = Arc::new(Barrier::new(CONNECTIONS + 1));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|k| {
            let (chain, urls) = (chain.clone(), Arc::clone(&urls));
            let (requested, close) = (Arc::clone(&requested), Arc::clone(&close));
            tokio::spawn(async move {
                let ctx = Context::new().with_client_url(urls[k % REMOTES].clone());
                let conn = chain.request(ctx, request(&format!("stress-{k}"))).await;
                requested.wait().await;
                close.wait().await;
                chain.close(Context::new(), conn?).await
            })
        })
        .collect();

    settle("every connection to be requested", requested.wait()).await;
    let stats = connect.stats();
    assert_eq!(stats.records, CONNECTIONS);
    assert_eq!(stats.clients.len(), REMOTES);
    assert!(
        stats
            .clients
            .iter()
            .all(|c| c.refs == CONNECTIONS / REMOTES)
    );
    for count in &counts {
        assert_eq!(count.requests(), CONNECTIONS / REMOTES);
    }

    close.wait().await;
    for task in tasks {
        settle("a connection's close", task).await.unwrap().unwrap();
    }
    for (count, server) in counts.iter().zip(&servers) {
        assert_eq!(count.requests(), CONNECTIONS / REMOTES);
        assert_eq!(count.closes(), CONNECTIONS / REMOTES);
        let seen = server.connections();
        assert_eq!(
            seen.peak_open, 1,
            "at most one TCP connection at any moment"
        );
        assert_eq!(seen.accepted, 1);
    }
    let handles: Vec<&ServerHandle> = servers.iter().collect();
    assert_no_leaks(&connect, &handles).await;
}
