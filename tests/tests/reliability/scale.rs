//! Scale: 20,000 live connections over 200 remotes, opened, all refreshed in
//! a shuffled order, then closed, at a fixed concurrency (a smaller `s`
//! workload of connect-bench). The remotes and connect agree at every stage,
//! and nothing is left at the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use connect_runtime::proto::connection::Connection;
use connect_runtime::{Connect, Context, ServerChain, ServerHandle, Status};
use connect_tests::elements::Ledger;
use connect_tests::harness::{assert_no_leaks, grpc_only_counting_dials};
use connect_tests::population::{each, shuffled};
use connect_tests::remote::start_tcp;
use connect_tests::request;
use url::Url;

const REMOTES: usize = 200;
const CONNECTIONS: usize = 20_000;
const CONCURRENCY: usize = 64;

/// Checks that every remote holds exactly its share of open connections,
/// and that connect holds one record per connection and one client per
/// remote, referenced once per connection.
fn assert_population(connect: &Connect, ledgers: &[Ledger], urls: &[Url], stage: &str) {
    let per_remote = CONNECTIONS / REMOTES;
    for (ledger, url) in ledgers.iter().zip(urls) {
        assert_eq!(ledger.open().len(), per_remote, "{stage}: open at {url}");
        assert_eq!(ledger.overlaps(), 0, "{stage}: overlapping calls at {url}");
    }
    let stats = connect.stats();
    assert_eq!(stats.records, CONNECTIONS, "{stage}: records");
    assert_eq!(stats.in_flight, 0, "{stage}: turns");
    let refs: HashMap<&str, usize> = stats
        .clients
        .iter()
        .map(|c| (c.url.as_str(), c.refs))
        .collect();
    assert_eq!(refs.len(), REMOTES, "{stage}: clients");
    for url in urls {
        assert_eq!(
            refs.get(url.as_str()),
            Some(&per_remote),
            "{stage}: refs of {url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_connections_over_two_hundred_remotes_leave_nothing() {
    let mut servers: Vec<ServerHandle> = Vec::with_capacity(REMOTES);
    let mut ledgers = Vec::with_capacity(REMOTES);
    for _ in 0..REMOTES {
        let ledger = Ledger::new();
        servers.push(start_tcp(ServerChain::builder().with(ledger.clone()).build()).await);
        ledgers.push(ledger);
    }
    let urls: Arc<Vec<Url>> = Arc::new(servers.iter().map(|s| s.url().clone()).collect());
    let (builder, dials) = grpc_only_counting_dials();
    let connect = builder.dial_timeout(Duration::from_secs(5)).build();
    let chain = ServerChain::builder().with(connect.clone()).build();

    let call = {
        let (chain, urls) = (chain.clone(), Arc::clone(&urls));
        move |k: usize, connection: Option<Connection>| {
            let (chain, urls) = (chain.clone(), Arc::clone(&urls));
            async move {
                let ctx = Context::new().with_client_url(urls[k % REMOTES].clone());
                let mut request = request(&format!("scale-{k}"));
                if let Some(connection) = connection {
                    request.connection = Some(Box::new(connection));
                }
                chain.request(ctx, request).await
            }
        }
    };

    let opened: Vec<Result<Connection, Status>> = {
        let call = call.clone();
        each(CONNECTIONS, CONCURRENCY, move |k| call(k, None)).await
    };
    let opened: Arc<Vec<Connection>> = Arc::new(
        opened
            .into_iter()
            .map(|r| r.expect("opening a connection"))
            .collect(),
    );
    assert_population(&connect, &ledgers, &urls, "opened");
    assert_eq!(
        dials.load(Ordering::Relaxed),
        REMOTES,
        "one dial per remote"
    );

    let order = Arc::new(shuffled(CONNECTIONS, 0));
    let refreshed: Vec<Result<Connection, Status>> = {
        let (call, opened, order) = (call.clone(), Arc::clone(&opened), Arc::clone(&order));
        each(CONNECTIONS, CONCURRENCY, move |i| {
            let k = order[i];
            call(k, Some(opened[k].clone()))
        })
        .await
    };
    for (i, refreshed) in refreshed.into_iter().enumerate() {
        let connection = refreshed.expect("refreshing a connection");
        assert_eq!(connection.id, format!("scale-{}", order[i]));
    }
    assert_population(&connect, &ledgers, &urls, "refreshed");
    assert_eq!(
        dials.load(Ordering::Relaxed),
        REMOTES,
        "refreshes dial nothing"
    );

    let closed: Vec<Result<(), Status>> = {
        let (chain, opened) = (chain.clone(), Arc::clone(&opened));
        each(CONNECTIONS, CONCURRENCY, move |k| {
            let (chain, connection) = (chain.clone(), opened[k].clone());
            async move { chain.close(Context::new(), connection).await }
        })
        .await
    };
    assert!(closed.iter().all(Result::is_ok), "every close succeeds");
    for (ledger, url) in ledgers.iter().zip(urls.iter()) {
        assert!(ledger.open().is_empty(), "connections left open at {url}");
    }
    let remotes: Vec<&ServerHandle> = servers.iter().collect();
    assert_no_leaks(&connect, &remotes).await;
    let stats = connect.stats();
    assert_eq!((stats.records, stats.in_flight, stats.waiting), (0, 0, 0));
    assert!(stats.clients.is_empty());
}
