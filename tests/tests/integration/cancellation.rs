//! Rust's own duties: a caller's future dropped at any `.await` inside
//! `connect` leaks nothing, and calls for one connection id never overlap.

use std::sync::Arc;
use std::time::Duration;

use connect_runtime::{
    ClientChain, Connect, Context, GrpcClient, Monitor, ServerChain, ServerHandle,
};
use connect_tests::elements::{Gate, Ledger, Op};
use connect_tests::harness::{assert_no_leaks, grpc_only, settle};
use connect_tests::remote::{BlackHole, start_tcp};
use connect_tests::{connection, request};
use url::Url;

/// A passthrough with a gate at each place a call can be held: the client
/// chain, the remote, and the rest of the server chain (`next`).
struct Rig {
    connect: Connect,
    chain: ServerChain,
    client_gate: Gate,
    remote_gate: Gate,
    next_gate: Gate,
    ledger: Ledger,
    server: ServerHandle,
}

impl Rig {
    async fn new() -> Self {
        let (client_gate, remote_gate, next_gate) = (Gate::new(), Gate::new(), Gate::new());
        let gate = client_gate.clone();
        let connect = Connect::builder(move |ctx: &Context, conn| {
            ClientChain::builder()
                .with(gate.clone())
                .with(Monitor::new(ctx, conn.clone()))
                .with(GrpcClient::new(conn))
                .build()
        })
        .dial_timeout(Duration::from_secs(1))
        .build();
        let chain = ServerChain::builder()
            .with(connect.clone())
            .with(next_gate.clone())
            .build();
        let ledger = Ledger::new();
        let server = start_tcp(
            ServerChain::builder()
                .with(ledger.clone())
                .with(remote_gate.clone())
                .build(),
        )
        .await;
        Self {
            connect,
            chain,
            client_gate,
            remote_gate,
            next_gate,
            ledger,
            server,
        }
    }

    fn url(&self) -> &Url {
        self.server.url()
    }

    /// Starts `op` for `id` in a task, waits until `gate` holds it, and drops
    /// the call's future there.
    async fn drop_while_held(&self, gate: &Gate, op: Op, id: &str) {
        gate.arm(op);
        let chain = self.chain.clone();
        let ctx = Context::new().with_client_url(self.url().clone());
        let id = id.to_owned();
        let call = tokio::spawn(async move {
            match op {
                Op::Request => chain.request(ctx, request(&id)).await.map(drop),
                Op::Close => chain.close(ctx, connection(&id)).await,
            }
        });
        settle("the call to be held", gate.holding()).await;
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        // The call in flight is not cut off: it finishes, then is undone.
        gate.release();
    }

    /// Nothing left anywhere: connect idle, the remote holding no connection
    /// and no TCP connection.
    async fn assert_clean(&self) {
        assert_no_leaks(&self.connect, &[&self.server]).await;
        assert!(
            self.ledger.open().is_empty(),
            "the remote still holds {:?}",
            self.ledger.open()
        );
        assert_eq!(self.ledger.overlaps(), 0);
    }

    async fn establish(&self, id: &str) {
        self.chain
            .request(
                Context::new().with_client_url(self.url().clone()),
                request(id),
            )
            .await
            .unwrap();
        assert_eq!(self.ledger.open(), [id]);
    }
}

#[tokio::test]
async fn dropped_in_the_client_chain_before_the_remote() {
    let rig = Rig::new().await;
    rig.drop_while_held(&rig.client_gate, Op::Request, "c")
        .await;
    rig.assert_clean().await;
}

#[tokio::test]
async fn dropped_while_the_remote_handles_the_request() {
    let rig = Rig::new().await;
    rig.drop_while_held(&rig.remote_gate, Op::Request, "r")
        .await;
    rig.assert_clean().await;
}

#[tokio::test]
async fn dropped_in_next_after_the_remote_answered() {
    let rig = Rig::new().await;
    rig.drop_while_held(&rig.next_gate, Op::Request, "n").await;
    // The remote had the connection; the cleanup closed it there.
    rig.assert_clean().await;
}

#[tokio::test]
async fn dropped_while_waiting_for_the_connection_ids_turn() {
    let rig = Rig::new().await;
    // A first call for the id is held in next, keeping the id's turn.
    rig.next_gate.arm(Op::Request);
    let first = tokio::spawn({
        let chain = rig.chain.clone();
        let ctx = Context::new().with_client_url(rig.url().clone());
        async move { chain.request(ctx, request("t")).await }
    });
    settle("the first call to be held", rig.next_gate.holding()).await;

    let second = tokio::spawn({
        let chain = rig.chain.clone();
        let ctx = Context::new().with_client_url(rig.url().clone());
        async move { chain.request(ctx, request("t")).await }
    });
    settle("the second call to queue", async {
        while rig.connect.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    second.abort();
    assert!(second.await.unwrap_err().is_cancelled());
    assert_eq!(rig.connect.stats().waiting, 0, "{:?}", rig.connect.stats());

    rig.next_gate.release();
    let conn = settle("the first call", first).await.unwrap().unwrap();
    rig.chain.close(Context::new(), conn).await.unwrap();
    rig.assert_clean().await;
}

#[tokio::test]
async fn dropped_while_closing_at_the_previous_remote() {
    let rig = Rig::new().await;
    let other = start_tcp(ServerChain::default()).await;
    rig.establish("m").await;

    // Move "m" to another remote; the close at the old one is held there.
    rig.remote_gate.arm(Op::Close);
    let call = tokio::spawn({
        let chain = rig.chain.clone();
        let ctx = Context::new().with_client_url(other.url().clone());
        async move { chain.request(ctx, request("m")).await }
    });
    settle(
        "the old remote's close to be held",
        rig.remote_gate.holding(),
    )
    .await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    rig.remote_gate.release();

    // The close is finished in the background; nothing reached the new remote.
    rig.assert_clean().await;
    assert_eq!(other.connections().accepted, 0);
}

#[tokio::test]
async fn dropped_while_the_remote_handles_the_close() {
    let rig = Rig::new().await;
    rig.establish("x").await;
    rig.drop_while_held(&rig.remote_gate, Op::Close, "x").await;
    rig.assert_clean().await;
}

#[tokio::test]
async fn dropped_in_next_after_the_client_side_closed() {
    let rig = Rig::new().await;
    rig.establish("y").await;
    rig.drop_while_held(&rig.next_gate, Op::Close, "y").await;
    rig.assert_clean().await;
}

#[tokio::test]
async fn dropped_while_dialing() {
    let hole = BlackHole::start().await;
    let connect = grpc_only().dial_timeout(Duration::from_millis(300)).build();
    let chain = ServerChain::builder().with(connect.clone()).build();
    let call = tokio::spawn({
        let ctx = Context::new().with_client_url(hole.url().clone());
        async move { chain.request(ctx, request("d")).await }
    });
    settle("the dial to connect", async {
        while hole.accepted() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert_no_leaks(&connect, &[]).await;
}

/// Requests, refreshes and closes for the same ids, fired together from
/// many tasks on a multi-threaded runtime, round after round: the remote
/// never sees two calls for one id at once, and nothing is left at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_requests_and_closes_racing_keep_order_and_leak_nothing() {
    const IDS: usize = 10;
    const ROUNDS: usize = 30;
    let rig = Arc::new(Rig::new().await);
    for round in 0..ROUNDS {
        let mut calls = Vec::new();
        for id in 0..IDS {
            let id = format!("race-{id}");
            for op in [Op::Request, Op::Close, Op::Request] {
                let rig = Arc::clone(&rig);
                let id = id.clone();
                calls.push(tokio::spawn(async move {
                    let ctx = Context::new().with_client_url(rig.url().clone());
                    match op {
                        Op::Request => rig.chain.request(ctx, request(&id)).await.map(drop),
                        Op::Close => rig.chain.close(ctx, connection(&id)).await,
                    }
                }));
            }
        }
        for call in calls {
            // Errors are expected (a close may find nothing to close); what
            // matters is the state once the round is over.
            let _ = settle("a racing call", call).await.unwrap();
        }
        let stats = rig.connect.stats();
        assert_eq!(
            stats.records,
            rig.ledger.open().len(),
            "round {round}: {stats:?}"
        );
        assert!(stats.clients.len() <= 1);
    }
    for id in 0..IDS {
        let _ = rig
            .chain
            .close(Context::new(), connection(&format!("race-{id}")))
            .await;
    }
    assert_eq!(rig.ledger.overlaps(), 0, "calls for one id overlapped");
    rig.assert_clean().await;
}

/// The remote must never see two calls for one id at once: a call whose
/// caller went away runs to its end before the next call for that id goes.
#[tokio::test]
async fn an_abandoned_call_finishes_before_the_next_call_for_its_id() {
    let rig = Rig::new().await;
    rig.establish("o").await;
    rig.remote_gate.arm(Op::Request);
    let refresh = tokio::spawn({
        let chain = rig.chain.clone();
        let ctx = Context::new().with_client_url(rig.url().clone());
        async move { chain.request(ctx, request("o")).await }
    });
    settle("the refresh to reach the remote", rig.remote_gate.holding()).await;
    refresh.abort();
    assert!(refresh.await.unwrap_err().is_cancelled());

    // A close for the same id now waits for the abandoned refresh.
    let close = tokio::spawn({
        let chain = rig.chain.clone();
        async move { chain.close(Context::new(), connection("o")).await }
    });
    settle("the close to queue", async {
        while rig.connect.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        rig.ledger.open(),
        ["o"],
        "nothing has reached the remote yet"
    );

    rig.remote_gate.release();
    settle("the close", close).await.unwrap().unwrap();
    rig.assert_clean().await;
}

/// An abandoned call the remote never finishes is given up after the cleanup
/// timeout, and then undone all the same.
#[tokio::test]
async fn an_abandoned_call_the_remote_never_finishes_is_given_up() {
    let (ledger, gate) = (Ledger::new(), Gate::new());
    let server = start_tcp(
        ServerChain::builder()
            .with(ledger.clone())
            .with(gate.clone())
            .build(),
    )
    .await;
    let connect = Connect::builder(|ctx: &Context, conn| {
        ClientChain::builder()
            .with(Monitor::new(ctx, conn.clone()))
            .with(GrpcClient::new(conn))
            .build()
    })
    .cleanup_timeout(Duration::from_millis(200))
    .dial_timeout(Duration::from_secs(1))
    .build();
    let chain = ServerChain::builder().with(connect.clone()).build();

    gate.arm(Op::Request);
    let call = tokio::spawn({
        let ctx = Context::new().with_client_url(server.url().clone());
        let chain = chain.clone();
        async move { chain.request(ctx, request("stuck")).await }
    });
    settle("the request to be held", gate.holding()).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());

    // Never released: after 200 ms connect stops waiting, closes by id and
    // lets go.
    assert_no_leaks(&connect, &[&server]).await;
    assert!(ledger.open().is_empty());
}
