//! Concurrent interleavings: requests, moves, closes and calls cut off at
//! random points, fired together from many tasks on a multi-threaded
//! runtime; once quiet, `connect` and the remotes must agree exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use connect_runtime::{
    ClientChain, Connect, Context, GrpcClient, Monitor, ServerChain, ServerHandle,
};
use connect_tests::elements::Ledger;
use connect_tests::harness::{assert_no_leaks, settle};
use connect_tests::remote::{start_tcp, start_unix};
use connect_tests::{connection, request};
use tempfile::TempDir;
use url::Url;

const REMOTES: usize = 3;
const IDS: u64 = 20;
const TASKS: usize = 60;
const ROUNDS: usize = 100;

#[derive(Clone, Copy, Debug)]
enum Action {
    Request {
        id: u64,
        r: usize,
    },
    Close {
        id: u64,
    },
    /// A request dropped after `micros` microseconds, wherever it is by then.
    Cut {
        id: u64,
        r: usize,
        micros: u64,
    },
}

fn action(rng: &mut fastrand::Rng) -> Action {
    let id = rng.u64(..IDS);
    let r = rng.u64(..REMOTES as u64) as usize;
    match rng.u64(..10) {
        0..=4 => Action::Request { id, r },
        5..=7 => Action::Close { id },
        _ => Action::Cut {
            id,
            r,
            micros: rng.u64(..800),
        },
    }
}

async fn perform(chain: ServerChain, urls: Arc<Vec<Url>>, action: Action) {
    match action {
        Action::Request { id, r } => {
            let ctx = Context::new().with_client_url(urls[r].clone());
            let _ = chain.request(ctx, request(&id.to_string())).await;
        }
        Action::Close { id } => {
            let _ = chain
                .close(Context::new(), connection(&id.to_string()))
                .await;
        }
        Action::Cut { id, r, micros } => {
            let ctx = Context::new().with_client_url(urls[r].clone());
            let call = chain.request(ctx, request(&id.to_string()));
            let _ = tokio::time::timeout(Duration::from_micros(micros), call).await;
        }
    }
}

/// `connect`'s records, references and the remotes' ledgers must describe
/// the same connections.
fn check_agreement(round: usize, connect: &Connect, urls: &[Url], ledgers: &[Ledger]) {
    let records: BTreeSet<(String, String)> = connect
        .connections()
        .into_iter()
        .map(|(id, url)| (id, url.to_string()))
        .collect();
    let remote_side: BTreeSet<(String, String)> = ledgers
        .iter()
        .zip(urls)
        .flat_map(|(ledger, url)| ledger.open().into_iter().map(|id| (id, url.to_string())))
        .collect();
    assert_eq!(
        records, remote_side,
        "round {round}: connect and the remotes disagree"
    );

    let mut per_url: BTreeMap<String, usize> = BTreeMap::new();
    for (_, url) in &records {
        *per_url.entry(url.clone()).or_default() += 1;
    }
    let stats = connect.stats();
    let refs: BTreeMap<String, usize> = stats
        .clients
        .iter()
        .map(|c| (c.url.clone(), c.refs))
        .collect();
    assert_eq!(refs, per_url, "round {round}: references per URL");
    assert_eq!(stats.in_flight, 0);
    for ledger in ledgers {
        assert_eq!(
            ledger.overlaps(),
            0,
            "round {round}: calls for one id overlapped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_operations_leave_connect_and_remotes_in_agreement() {
    let dir = TempDir::new().unwrap();
    let mut ledgers = Vec::new();
    let mut servers = Vec::new();
    for r in 0..REMOTES {
        let ledger = Ledger::new();
        let chain = ServerChain::builder().with(ledger.clone()).build();
        servers.push(if r == 0 {
            start_unix(dir.path(), "interleave.sock", chain).await
        } else {
            start_tcp(chain).await
        });
        ledgers.push(ledger);
    }
    let urls: Arc<Vec<Url>> = Arc::new(servers.iter().map(|s| s.url().clone()).collect());
    let connect = Connect::builder(|ctx: &Context, conn| {
        ClientChain::builder()
            .with(Monitor::new(ctx, conn.clone()))
            .with(GrpcClient::new(conn))
            .build()
    })
    .dial_timeout(Duration::from_secs(1))
    .build();
    let chain = ServerChain::builder().with(connect.clone()).build();

    let seed = std::env::var("CONNECT_INTERLEAVE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1eaf_5eed_u64);
    let mut rng = fastrand::Rng::with_seed(seed);
    for round in 0..ROUNDS {
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| tokio::spawn(perform(chain.clone(), Arc::clone(&urls), action(&mut rng))))
            .collect();
        for task in tasks {
            settle("a concurrent call", task).await.unwrap();
        }
        settle("connect to settle", connect.settled()).await;
        check_agreement(round, &connect, &urls, &ledgers);
    }

    for id in 0..IDS {
        let _ = chain
            .close(Context::new(), connection(&id.to_string()))
            .await;
    }
    let handles: Vec<&ServerHandle> = servers.iter().collect();
    assert_no_leaks(&connect, &handles).await;
    for ledger in &ledgers {
        assert!(ledger.open().is_empty());
    }
}
