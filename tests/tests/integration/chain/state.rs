//! Per-connection state (`PerConnection`, `#[element(state)]`): the chain
//! releases each entry when its connection ends at the element, and no user
//! code removes one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use connect_runtime::proto::connection::{Connection, Path, PathSegment};
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::{Context, Element, Expire, Hooks, Next, PerConnection, ServerChain};
use proptest::prelude::*;
use tonic::Status;

/// Keeps two kinds of state per connection: one found by its type, one
/// marked.
#[derive(Default, Element)]
struct Tracker {
    requests: PerConnection<u32>,
    #[element(state)]
    labels: Arc<PerConnection<String>>,
}

impl Hooks for Tracker {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let id = request.connection.as_ref().map_or("", |c| c.id.as_str());
        self.requests.update(id, |n| *n += 1);
        self.labels.set(id, "seen".into());
        next.request(ctx, request).await
    }
}

impl Tracker {
    /// The ids it holds, after checking both fields agree.
    fn ids(&self, candidates: &[String]) -> Vec<String> {
        let held: Vec<String> = candidates
            .iter()
            .filter(|id| self.requests.contains(id))
            .cloned()
            .collect();
        let labelled: Vec<String> = candidates
            .iter()
            .filter(|id| self.labels.contains(id))
            .cloned()
            .collect();
        assert_eq!(held, labelled, "both fields are released together");
        assert_eq!(self.requests.len(), held.len(), "no entry for another id");
        held
    }
}

/// After the tracker: fails calls labelled `fail`, and holds forever
/// requests labelled `hold` (a call its caller then gives up).
#[derive(Default, Element)]
struct Faulty;

impl Hooks for Faulty {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let labels = &request.connection.as_ref().unwrap().labels;
        if labels.contains_key("fail") {
            return Err(Status::internal("told to fail"));
        }
        if labels.contains_key("hold") {
            std::future::pending::<()>().await;
        }
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: Context, conn: Connection, next: Next<'_>) -> Result<(), Status> {
        if conn.labels.contains_key("fail") {
            return Err(Status::internal("told to fail"));
        }
        next.close(ctx, conn).await
    }
}

/// A request for `id` (labelled `label`, if any) from a caller whose
/// segment expires in `ttl`.
fn request(id: &str, label: Option<&str>, ttl: Duration) -> NetworkServiceRequest {
    let caller = PathSegment {
        name: "nsc".into(),
        id: format!("caller-{id}"),
        expires: Some((SystemTime::now() + ttl).into()),
        ..Default::default()
    };
    let hop = PathSegment {
        name: "hop".into(),
        id: id.into(),
        ..Default::default()
    };
    let mut conn = Connection {
        id: id.into(),
        path: Some(Box::new(Path {
            index: 1,
            path_segments: vec![caller, hop],
            ..Default::default()
        })),
        ..Default::default()
    };
    if let Some(label) = label {
        conn.labels.insert(label.into(), String::new());
    }
    NetworkServiceRequest {
        connection: Some(Box::new(conn)),
        ..Default::default()
    }
}

fn close(id: &str, label: Option<&str>) -> Connection {
    *request(id, label, Duration::ZERO).connection.unwrap()
}

fn tracked() -> (Arc<Tracker>, ServerChain) {
    let tracker = Arc::new(Tracker::default());
    let chain = ServerChain::builder()
        .with_arc(Arc::clone(&tracker))
        .with(Faulty)
        .build();
    (tracker, chain)
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_close_releases_the_entry_even_when_the_rest_of_the_chain_fails() {
    let (tracker, chain) = tracked();
    let ids = ["a".to_owned(), "b".to_owned()];
    for id in &ids {
        chain
            .request(Context::new(), request(id, None, HOUR))
            .await
            .unwrap();
    }
    assert_eq!(tracker.ids(&ids), ids);
    chain.close(Context::new(), close("a", None)).await.unwrap();
    assert_eq!(tracker.ids(&ids), ["b"]);
    let failed = chain.close(Context::new(), close("b", Some("fail"))).await;
    assert!(failed.is_err());
    assert!(tracker.ids(&ids).is_empty());
}

#[tokio::test]
async fn a_failed_first_request_leaves_nothing_and_a_failed_refresh_keeps_the_entry() {
    let (tracker, chain) = tracked();
    let ids = ["new".to_owned(), "old".to_owned()];
    let failed = chain
        .request(Context::new(), request("new", Some("fail"), HOUR))
        .await;
    assert!(failed.is_err());
    assert!(tracker.ids(&ids).is_empty());

    chain
        .request(Context::new(), request("old", None, HOUR))
        .await
        .unwrap();
    let failed = chain
        .request(Context::new(), request("old", Some("fail"), HOUR))
        .await;
    assert!(failed.is_err());
    assert_eq!(tracker.ids(&ids), ["old"]);
    assert_eq!(
        tracker.requests.get("old"),
        Some(2),
        "the refresh was counted"
    );
}

#[tokio::test]
async fn a_request_given_up_half_way_leaves_nothing_for_a_new_connection() {
    let (tracker, chain) = tracked();
    let ids = ["new".to_owned(), "old".to_owned()];
    chain
        .request(Context::new(), request("old", None, HOUR))
        .await
        .unwrap();
    for id in &ids {
        let call = chain.request(Context::new(), request(id, Some("hold"), HOUR));
        tokio::pin!(call);
        assert!(futures_util::poll!(call.as_mut()).is_pending());
        assert!(tracker.requests.contains(id), "the entry exists mid-call");
        // The caller goes away.
    }
    assert_eq!(tracker.ids(&ids), ["old"], "the refresh's entry is kept");
}

#[tokio::test]
async fn stats_name_each_element_and_the_connections_it_holds() {
    let (_, rest) = tracked();
    let expire = Expire::new(rest);
    let chain = ServerChain::builder().with(expire).build();
    for id in ["a", "b", "c"] {
        chain
            .request(Context::new(), request(id, None, HOUR))
            .await
            .unwrap();
    }
    let stats = chain.stats();
    // The tracker holds two entries per connection, one per field.
    assert_eq!(stats.connection_entries, [("Expire", 3), ("Tracker", 6)]);
    chain.close(Context::new(), close("b", None)).await.unwrap();
    assert_eq!(chain.stats().entries_of("Tracker"), Some(4));
    assert_eq!(chain.stats().entries_of("Expire"), Some(2));
}

/// One step of a connection's life, on one of a few ids.
#[derive(Clone, Debug)]
enum Step {
    /// A request that succeeds: a new connection or a refresh, whose
    /// caller's segment expires in this many seconds.
    Request(usize, u64),
    /// A request that fails.
    Fail(usize),
    /// A request given up half-way.
    Abandon(usize),
    /// A close; one the rest of the chain fails if `true`.
    Close(usize, bool),
    /// Time passes, this many seconds: connections not refreshed expire.
    Wait(u64),
}

const IDS: usize = 5;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..IDS, 1..4u64).prop_map(|(k, ttl)| Step::Request(k, ttl)),
        1 => (0..IDS).prop_map(Step::Fail),
        1 => (0..IDS).prop_map(Step::Abandon),
        2 => (0..IDS, any::<bool>()).prop_map(|(k, fail)| Step::Close(k, fail)),
        2 => (1..4u64).prop_map(Step::Wait),
    ]
}

/// Runs `steps` through `expire(tracker → faulty)` on a paused clock and
/// checks, after each, that the tracker holds exactly the live connections.
fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let (tracker, rest) = tracked();
        let expire = Expire::new(rest);
        let chain = ServerChain::builder().with(expire.clone()).build();
        let ids: Vec<String> = (0..IDS).map(|k| format!("c{k}")).collect();
        // Live connections and the virtual time each expires at.
        let mut live: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
        let mut expired = 0;
        for step in steps {
            let now = tokio::time::Instant::now();
            match step {
                Step::Request(k, ttl) => {
                    let ttl = Duration::from_secs(*ttl);
                    let conn = chain
                        .request(Context::new(), request(&ids[*k], None, ttl))
                        .await;
                    prop_assert!(conn.is_ok());
                    live.insert(ids[*k].clone(), now + ttl);
                }
                Step::Fail(k) => {
                    let failed = chain
                        .request(Context::new(), request(&ids[*k], Some("fail"), HOUR))
                        .await;
                    prop_assert!(failed.is_err());
                }
                Step::Abandon(k) => {
                    let call = chain.request(Context::new(), request(&ids[*k], Some("hold"), HOUR));
                    tokio::pin!(call);
                    prop_assert!(futures_util::poll!(call.as_mut()).is_pending());
                }
                Step::Close(k, fail) => {
                    let label = fail.then_some("fail");
                    let closed = chain.close(Context::new(), close(&ids[*k], label)).await;
                    prop_assert_eq!(closed.is_err(), *fail);
                    live.remove(&ids[*k]);
                }
                Step::Wait(seconds) => {
                    tokio::time::advance(Duration::from_secs(*seconds)).await;
                    let now = tokio::time::Instant::now();
                    let before = live.len();
                    live.retain(|_, at| *at > now);
                    expired += (before - live.len()) as u64;
                    let stats = expire.wait_for(|s| s.expired >= expired).await;
                    prop_assert_eq!(stats.expired, expired, "only what the model expired");
                }
            }
            let held = tracker.ids(&ids);
            let model: Vec<String> = live.keys().cloned().collect();
            prop_assert_eq!(&held, &model, "after {:?}", step);
            prop_assert_eq!(expire.stats().connections, live.len());
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random requests, refreshes, failures, abandoned calls, closes and
    /// expiries: after every step the element's keys are the live
    /// connections, with no user code removing any.
    #[test]
    fn per_connection_state_follows_the_live_connections(
        steps in prop::collection::vec(step(), 1..40),
    ) {
        run(&steps)?;
    }
}
