//! `UpdatePath` and `Expire` on the served path: a hop of
//! `updatepath → expire(clienturl → connect)`, called over gRPC by callers
//! that set their path segment's expiry, before a remote that records what
//! reaches it.

use std::time::{Duration, SystemTime};

use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{
    ClientUrl, Connect, Context, Expire, Passthrough, ServerChain, ServerHandle, UpdatePath,
};
use connect_tests::caller::tonic_caller;
use connect_tests::elements::{Gate, Ledger, Op, ledger_chain};
use connect_tests::harness::{assert_no_leaks, grpc_only, settle};
use connect_tests::remote::start_tcp;
use connect_tests::{from_caller, refreshed, request_for};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use url::Url;

/// A served hop before `remote`, and a caller of it.
struct Hop {
    chain: ServerChain,
    connect: Connect,
    expire: Expire,
    caller: NetworkServiceClient<Channel>,
    _served: ServerHandle,
}

impl Hop {
    async fn new(remote: &Url, max_lifetime: Duration) -> Self {
        let connect = grpc_only().build();
        let rest = ServerChain::builder()
            .with(ClientUrl::new(remote.clone()))
            .with(connect.clone())
            .build();
        let expire = Expire::new(rest).max_lifetime(max_lifetime);
        let chain = ServerChain::builder()
            .with(UpdatePath::new("hop").max_lifetime(max_lifetime))
            .with(expire.clone())
            .build();
        let served = start_tcp(chain.clone()).await;
        let caller = tonic_caller(served.url()).await;
        Self {
            chain,
            connect,
            expire,
            caller,
            _served: served,
        }
    }

    async fn request(&self, conn: Connection) -> Result<Connection, tonic::Status> {
        let mut caller = self.caller.clone();
        caller
            .request(request_for(conn))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn close(&self, conn: Connection) -> Result<(), tonic::Status> {
        let mut caller = self.caller.clone();
        caller.close(conn).await.map(drop)
    }

    /// A refresh of `conn`, running until `gate` lets it through: returns
    /// once it is held at the remote.
    async fn held_refresh(
        &self,
        gate: &Gate,
        conn: Connection,
    ) -> JoinHandle<Result<tonic::Response<Connection>, tonic::Status>> {
        gate.arm(Op::Request);
        let (caller, conn) = (
            self.caller.clone(),
            refreshed(conn, Duration::from_secs(60)),
        );
        let refresh = tokio::spawn(async move { caller.clone().request(request_for(conn)).await });
        settle("the refresh to reach the remote", gate.holding()).await;
        refresh
    }

    /// A close of `conn` by the caller, running on its own.
    fn spawned_close(
        &self,
        conn: Connection,
    ) -> JoinHandle<Result<tonic::Response<()>, tonic::Status>> {
        let mut caller = self.caller.clone();
        tokio::spawn(async move { caller.close(conn).await })
    }
}

async fn remote(ledger: &Ledger, gate: &Gate) -> ServerHandle {
    start_tcp(ledger_chain(ledger, gate)).await
}

#[tokio::test]
async fn callers_that_vanish_have_every_connection_closed_at_the_remote() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = remote(&ledger, &gate).await;
    let hop = Hop::new(remote.url(), Duration::from_secs(600)).await;
    for n in 0..20 {
        let conn = from_caller("nsc", &format!("c-{n}"), Some(Duration::from_millis(1500)));
        hop.request(conn).await.unwrap();
    }
    assert_eq!(ledger.open().len(), 20);
    assert_eq!(
        hop.chain.stats().connection_entries,
        [("Expire", 20), ("connect", 20)]
    );
    // Nobody refreshes or closes.
    let stats = settle(
        "every connection to expire",
        hop.expire.wait_for(|s| s.expired == 20),
    )
    .await;
    assert_eq!((stats.connections, stats.superseded), (0, 0));
    settle(
        "the remote to see 20 closes",
        ledger.until(|l| l.open().is_empty()),
    )
    .await;
    assert_eq!(ledger.closes(), 20, "each connection closed once");
    assert_eq!(ledger.overlaps(), 0);
    assert_no_leaks(&hop.connect, &[&remote]).await;
    assert_eq!(
        hop.chain.stats().connection_entries,
        [("Expire", 0), ("connect", 0)]
    );
}

#[tokio::test]
async fn a_connection_refreshed_before_each_expiry_stays_open() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = remote(&ledger, &gate).await;
    let hop = Hop::new(remote.url(), Duration::from_secs(600)).await;
    let ttl = Duration::from_secs(1);
    let mut conn = hop
        .request(from_caller("nsc", "kept", Some(ttl)))
        .await
        .unwrap();
    // Refreshes a quarter of the lifetime apart, for one and a half
    // lifetimes: each moves the expiry before it comes.
    for _ in 0..6 {
        tokio::time::sleep(ttl / 4).await;
        conn = hop.request(refreshed(conn, ttl)).await.unwrap();
    }
    let stats = hop.expire.stats();
    assert_eq!((stats.connections, stats.expired), (1, 0), "{stats:?}");
    assert_eq!(ledger.closes(), 0);
    hop.close(conn).await.unwrap();
    assert_eq!(ledger.closes(), 1);
    assert_eq!(hop.expire.stats().connections, 0);
    assert_no_leaks(&hop.connect, &[&remote]).await;
}

#[tokio::test]
async fn a_refresh_racing_the_expiry_keeps_the_connection() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = remote(&ledger, &gate).await;
    let hop = Hop::new(remote.url(), Duration::from_secs(600)).await;
    let conn = hop
        .request(from_caller("nsc", "raced", Some(Duration::from_secs(1))))
        .await
        .unwrap();
    // The refresh is held at the remote while the expiry comes due.
    let refresh = hop.held_refresh(&gate, conn).await;
    settle(
        "the expiry to wait behind the refresh",
        hop.expire.wait_for(|s| s.waiting == 1),
    )
    .await;
    gate.release();
    let conn = refresh.await.unwrap().unwrap().into_inner();
    let stats = settle(
        "the expiry to find the connection refreshed",
        hop.expire.wait_for(|s| s.superseded == 1),
    )
    .await;
    assert_eq!((stats.connections, stats.expired), (1, 0), "{stats:?}");
    assert_eq!(ledger.closes(), 0);
    assert_eq!(ledger.overlaps(), 0);
    hop.close(conn).await.unwrap();
    assert_eq!(ledger.closes(), 1);
    assert_no_leaks(&hop.connect, &[&remote]).await;
}

#[tokio::test]
async fn a_close_racing_the_expiry_is_the_only_close() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = remote(&ledger, &gate).await;
    let hop = Hop::new(remote.url(), Duration::from_secs(600)).await;
    let conn = hop
        .request(from_caller("nsc", "closing", Some(Duration::from_secs(1))))
        .await
        .unwrap();
    gate.arm(Op::Close);
    let close = hop.spawned_close(conn);
    settle("the close to reach the remote", gate.holding()).await;
    settle(
        "the expiry to wait behind the close",
        hop.expire.wait_for(|s| s.waiting == 1),
    )
    .await;
    gate.release();
    close.await.unwrap().unwrap();
    let stats = settle(
        "the expiry to find the connection closed",
        hop.expire.wait_for(|s| s.superseded == 1),
    )
    .await;
    assert_eq!((stats.connections, stats.expired), (0, 0), "{stats:?}");
    assert_eq!(ledger.closes(), 1, "one close reached the remote");
    assert_eq!(ledger.overlaps(), 0);
    assert_no_leaks(&hop.connect, &[&remote]).await;
}

/// A close that arrives while a refresh of its connection is in flight
/// waits for the refresh's turn, then closes at the remote and forgets the
/// expiry.
#[tokio::test]
async fn a_close_behind_a_refresh_waits_its_turn_and_ends_the_connection() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = remote(&ledger, &gate).await;
    let hop = Hop::new(remote.url(), Duration::from_secs(600)).await;
    let conn = hop
        .request(from_caller("nsc", "queued", Some(Duration::from_secs(60))))
        .await
        .unwrap();
    let refresh = hop.held_refresh(&gate, conn.clone()).await;
    let close = hop.spawned_close(conn);
    settle(
        "the close to wait behind the refresh",
        hop.expire.wait_for(|s| s.waiting == 1),
    )
    .await;
    assert_eq!(ledger.closes(), 0, "the close waits at Expire");
    gate.release();
    refresh.await.unwrap().unwrap();
    close.await.unwrap().unwrap();
    let stats = hop.expire.stats();
    assert_eq!((stats.connections, stats.expired), (0, 0), "{stats:?}");
    assert_eq!(ledger.closes(), 1);
    assert_eq!(ledger.overlaps(), 0);
    assert_no_leaks(&hop.connect, &[&remote]).await;
}

#[tokio::test]
async fn a_caller_that_sets_no_expiry_gets_the_maximum_lifetime() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = remote(&ledger, &gate).await;
    let hop = Hop::new(remote.url(), Duration::from_millis(300)).await;
    let conn = hop
        .request(from_caller("nsc", "no-expiry", None))
        .await
        .unwrap();
    // This hop vouches for it no longer than its maximum lifetime.
    let own = &conn.path.as_ref().unwrap().path_segments[1];
    let expires = SystemTime::try_from(own.expires.unwrap()).unwrap();
    assert!(expires <= SystemTime::now() + Duration::from_millis(300));
    settle("the expiry", hop.expire.wait_for(|s| s.expired == 1)).await;
    settle("the remote's close", ledger.until(|l| l.open().is_empty())).await;
    assert_eq!(ledger.closes(), 1);
    assert_no_leaks(&hop.connect, &[&remote]).await;
}

#[tokio::test]
async fn two_callers_reusing_one_id_get_a_connection_each() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = remote(&ledger, &gate).await;
    let hop = Hop::new(remote.url(), Duration::from_secs(600)).await;
    let ttl = Some(Duration::from_secs(600));
    let a = hop
        .request(from_caller("nsc-a", "same", ttl))
        .await
        .unwrap();
    let b = hop
        .request(from_caller("nsc-b", "same", ttl))
        .await
        .unwrap();
    // Each caller gets its own id back, and the remote saw two connections
    // under this hop's two ids.
    assert_eq!((a.id.as_str(), b.id.as_str()), ("same", "same"));
    let own = |c: &Connection| c.path.as_ref().unwrap().path_segments[1].id.clone();
    assert_ne!(own(&a), own(&b));
    assert_eq!(ledger.open(), {
        let mut ids = vec![own(&a), own(&b)];
        ids.sort();
        ids
    });
    assert_eq!(hop.connect.stats().records, 2);
    hop.close(a).await.unwrap();
    assert_eq!(ledger.open(), [own(&b)]);
    hop.close(b).await.unwrap();
    assert!(ledger.open().is_empty());
    assert_no_leaks(&hop.connect, &[&remote]).await;
}

#[tokio::test]
async fn a_malformed_path_is_refused_before_it_reaches_anything() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = remote(&ledger, &gate).await;
    let hop = Hop::new(remote.url(), Duration::from_secs(600)).await;
    let mut past_the_end = from_caller("nsc", "c", None);
    past_the_end.path.as_mut().unwrap().index = 3;
    let mut not_the_callers = from_caller("nsc", "c", None);
    not_the_callers.id = "other".into();
    for conn in [past_the_end, not_the_callers] {
        let status = hop.request(conn.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let status = hop.close(conn).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    assert!(ledger.open().is_empty());
    assert_eq!(ledger.closes(), 0);
    assert_eq!(hop.expire.stats().connections, 0);
    assert_no_leaks(&hop.connect, &[&remote]).await;
}

/// The wheel's room goes back once a burst of connections has ended; an
/// expiry set after that still comes.
#[tokio::test]
async fn an_expiry_set_after_a_burst_ended_still_comes() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let remote = remote(&ledger, &gate).await;
    let hop = Hop::new(remote.url(), Duration::from_secs(600)).await;
    let ttl = Some(Duration::from_secs(600));
    let mut burst = Vec::new();
    for n in 0..200 {
        burst.push(
            hop.request(from_caller("nsc", &format!("b-{n}"), ttl))
                .await
                .unwrap(),
        );
    }
    for conn in burst {
        hop.close(conn).await.unwrap();
    }
    assert_eq!(hop.expire.stats().connections, 0);
    let short = Some(Duration::from_millis(300));
    hop.request(from_caller("nsc", "after", short))
        .await
        .unwrap();
    settle("the expiry", hop.expire.wait_for(|s| s.expired == 1)).await;
    settle("the remote's close", ledger.until(|l| l.open().is_empty())).await;
    assert_eq!(ledger.closes(), 201);
    assert_no_leaks(&hop.connect, &[&remote]).await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_timer_task_ends_with_the_element() {
    let tasks = tokio::runtime::Handle::current().metrics();
    let before = tasks.num_alive_tasks();
    let expire = Expire::new(ServerChain::builder().with(Passthrough).build());
    let chain = ServerChain::builder()
        .with(UpdatePath::new("hop"))
        .with(expire.clone())
        .build();
    let conn = from_caller("nsc", "c", Some(Duration::from_secs(600)));
    chain
        .request(Context::new(), request_for(conn))
        .await
        .unwrap();
    assert_eq!(tasks.num_alive_tasks(), before + 1, "the timer task runs");
    assert_eq!(expire.stats().connections, 1);
    drop((chain, expire));
    settle("the timer task to end", async {
        while tasks.num_alive_tasks() > before {
            tokio::task::yield_now().await;
        }
    })
    .await;
}
