//! Rust's own duties: a caller that goes away at any `.await` inside
//! `connect` leaks nothing, the client call it started runs to its end, and
//! calls for one connection id never overlap.
//!
//! Every case runs three ways: the caller's future is dropped, the caller's
//! cancellation token is cancelled, and a real tonic caller drops its gRPC
//! call to `connect` served over gRPC (HTTP/2 RST_STREAM).

use std::sync::Arc;
use std::time::Duration;

use connect_runtime::{
    ClientChain, ClientUrl, Connect, Context, GrpcClient, Monitor, ServerChain, ServerHandle,
};
use connect_tests::caller::tonic_caller;
use connect_tests::elements::{DropWatch, Gate, Ledger, Op};
use connect_tests::harness::{assert_no_leaks, grpc_only, settle};
use connect_tests::remote::{BlackHole, start_tcp};
use connect_tests::{connection, request};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use url::Url;

/// How a caller goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abandon {
    /// Its future is dropped.
    Drop,
    /// Its context's cancellation token is cancelled; its future is awaited.
    Token,
    /// A tonic client drops its call to `connect` served over gRPC.
    Served,
}

const EVERY_WAY: [Abandon; 3] = [Abandon::Drop, Abandon::Token, Abandon::Served];

/// A call in progress, to be abandoned or awaited.
struct Caller {
    how: Abandon,
    token: CancellationToken,
    task: JoinHandle<Result<(), Status>>,
    /// For a served call: the server's view, to see the handler dropped.
    served: Option<DropWatch>,
}

impl Caller {
    /// Goes away the way `how` says, and checks the caller saw it so.
    async fn abandon(self) {
        match self.how {
            Abandon::Drop | Abandon::Served => {
                let dropped_before = self.served.as_ref().map(DropWatch::dropped);
                self.task.abort();
                assert!(self.task.await.unwrap_err().is_cancelled());
                // The server learns of it from the caller's RST_STREAM.
                if let (Some(watch), Some(before)) = (&self.served, dropped_before) {
                    settle(
                        "the server to drop the handler",
                        watch.until_dropped(before + 1),
                    )
                    .await;
                }
            }
            Abandon::Token => {
                self.token.cancel();
                let result = settle("the cancelled caller to return", self.task).await;
                let status = result.unwrap().unwrap_err();
                assert_eq!(status.code(), Code::Cancelled, "{status:?}");
            }
        }
    }

    async fn finish(self) -> Result<(), Status> {
        settle("the call", self.task).await.unwrap()
    }
}

/// Serves `chain` over gRPC behind a `ClientUrl` naming `remote`, with a
/// watch on the handlers the server drops.
async fn serve_in_front(remote: &Url, chain: &ServerChain) -> (ServerHandle, DropWatch) {
    let watch = DropWatch::new();
    let served = start_tcp(
        ServerChain::builder()
            .with(watch.clone())
            .with(ClientUrl::new(remote.clone()))
            .with(chain.clone())
            .build(),
    )
    .await;
    (served, watch)
}

/// Where a caller calls `connect`: in process through `chain`, with
/// `remote` as the client URL, or over gRPC at `served` (whose dropped
/// handlers `watch` sees).
struct Front<'a> {
    chain: &'a ServerChain,
    remote: &'a Url,
    served: &'a ServerHandle,
    watch: &'a DropWatch,
}

impl Front<'_> {
    /// Starts `op` for `id` as a caller that can go away `how`.
    async fn start(&self, op: Op, id: &str, how: Abandon) -> Caller {
        let token = CancellationToken::new();
        let id = id.to_owned();
        let task = match how {
            Abandon::Drop | Abandon::Token => {
                let chain = self.chain.clone();
                let mut ctx = Context::new().with_client_url(self.remote.clone());
                if how == Abandon::Token {
                    ctx = ctx.with_cancellation_token(token.clone());
                }
                tokio::spawn(async move {
                    match op {
                        Op::Request => chain.request(ctx, request(&id)).await.map(drop),
                        Op::Close => chain.close(ctx, connection(&id)).await,
                    }
                })
            }
            Abandon::Served => {
                let mut caller = tonic_caller(self.served.url()).await;
                tokio::spawn(async move {
                    match op {
                        Op::Request => caller.request(request(&id)).await.map(drop),
                        Op::Close => caller.close(connection(&id)).await.map(drop),
                    }
                })
            }
        };
        let served = (how == Abandon::Served).then(|| self.watch.clone());
        Caller {
            how,
            token,
            task,
            served,
        }
    }
}

/// A passthrough with a gate at each place a call can be held: the client
/// chain, the remote, and the rest of the server chain (`next`). The same
/// chain is also served over gRPC, behind a `ClientUrl` naming the remote.
struct Rig {
    connect: Connect,
    chain: ServerChain,
    client_gate: Gate,
    remote_gate: Gate,
    next_gate: Gate,
    ledger: Ledger,
    server: ServerHandle,
    served: ServerHandle,
    served_watch: DropWatch,
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
        let (served, served_watch) = serve_in_front(server.url(), &chain).await;
        Self {
            connect,
            chain,
            client_gate,
            remote_gate,
            next_gate,
            ledger,
            server,
            served,
            served_watch,
        }
    }

    fn url(&self) -> &Url {
        self.server.url()
    }

    /// Starts `op` for `id` as a caller that can go away `how`.
    async fn start(&self, op: Op, id: &str, how: Abandon) -> Caller {
        let front = Front {
            chain: &self.chain,
            remote: self.url(),
            served: &self.served,
            watch: &self.served_watch,
        };
        front.start(op, id, how).await
    }

    /// Starts `op` for `id`, waits until `gate` holds it, and goes away
    /// there; then lets the gate go.
    async fn abandon_while_held(&self, gate: &Gate, op: Op, id: &str, how: Abandon) {
        gate.arm(op);
        let caller = self.start(op, id, how).await;
        settle("the call to be held", gate.holding()).await;
        caller.abandon().await;
        gate.release();
    }

    /// Nothing left anywhere: connect idle, the remote holding no connection
    /// and no TCP connection, no two calls for one id at once at the remote,
    /// and no call connect made cut off half-way.
    async fn assert_clean(&self) {
        assert_no_leaks(&self.connect, &[&self.server]).await;
        assert!(
            self.ledger.open().is_empty(),
            "the remote still holds {:?}",
            self.ledger.open()
        );
        assert_eq!(self.ledger.overlaps(), 0, "calls for one id overlapped");
        assert_eq!(self.remote_gate.abandoned(), 0, "a remote call was cut off");
        assert_eq!(self.client_gate.abandoned(), 0, "a client call was cut off");
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
async fn abandoned_in_the_client_chain_before_the_remote() {
    for how in EVERY_WAY {
        eprintln!("abandoned by: {how:?}");
        let rig = Rig::new().await;
        rig.abandon_while_held(&rig.client_gate, Op::Request, "c", how)
            .await;
        rig.assert_clean().await;
    }
}

#[tokio::test]
async fn abandoned_while_the_remote_handles_the_request() {
    for how in EVERY_WAY {
        eprintln!("abandoned by: {how:?}");
        let rig = Rig::new().await;
        rig.abandon_while_held(&rig.remote_gate, Op::Request, "r", how)
            .await;
        rig.assert_clean().await;
    }
}

#[tokio::test]
async fn abandoned_in_next_after_the_remote_answered() {
    for how in EVERY_WAY {
        eprintln!("abandoned by: {how:?}");
        let rig = Rig::new().await;
        rig.abandon_while_held(&rig.next_gate, Op::Request, "n", how)
            .await;
        // The remote had the connection; the cleanup closed it there.
        rig.assert_clean().await;
    }
}

#[tokio::test]
async fn abandoned_while_waiting_for_the_connection_ids_turn() {
    for how in EVERY_WAY {
        eprintln!("abandoned by: {how:?}");
        let rig = Rig::new().await;
        // A first call for the id is held in next, keeping the id's turn.
        rig.next_gate.arm(Op::Request);
        let first = rig.start(Op::Request, "t", Abandon::Drop).await;
        settle("the first call to be held", rig.next_gate.holding()).await;

        let second = rig.start(Op::Request, "t", how).await;
        settle(
            "the second call to queue",
            rig.connect.wait_for(|stats| stats.waiting == 1),
        )
        .await;
        second.abandon().await;
        settle(
            "the queue to empty",
            rig.connect.wait_for(|stats| stats.waiting == 0),
        )
        .await;

        rig.next_gate.release();
        first.finish().await.unwrap();
        rig.chain
            .close(Context::new(), connection("t"))
            .await
            .unwrap();
        rig.assert_clean().await;
    }
}

#[tokio::test]
async fn abandoned_while_closing_at_the_previous_remote() {
    for how in EVERY_WAY {
        eprintln!("abandoned by: {how:?}");
        let rig = Rig::new().await;
        let other = start_tcp(ServerChain::default()).await;
        rig.establish("m").await;

        // Move "m" to another remote; the close at the old one is held there.
        rig.remote_gate.arm(Op::Close);
        let caller = match how {
            // The served chain always forwards to the rig's remote: move by
            // calling in-process, which is what a served call runs anyway.
            Abandon::Served | Abandon::Drop => {
                let chain = rig.chain.clone();
                let ctx = Context::new().with_client_url(other.url().clone());
                Caller {
                    how: Abandon::Drop,
                    token: CancellationToken::new(),
                    task: tokio::spawn(
                        async move { chain.request(ctx, request("m")).await.map(drop) },
                    ),
                    served: None,
                }
            }
            Abandon::Token => {
                let token = CancellationToken::new();
                let chain = rig.chain.clone();
                let ctx = Context::new()
                    .with_client_url(other.url().clone())
                    .with_cancellation_token(token.clone());
                Caller {
                    how,
                    token,
                    task: tokio::spawn(
                        async move { chain.request(ctx, request("m")).await.map(drop) },
                    ),
                    served: None,
                }
            }
        };
        settle(
            "the old remote's close to be held",
            rig.remote_gate.holding(),
        )
        .await;
        caller.abandon().await;
        rig.remote_gate.release();

        // The close is finished in the background; nothing reached the new remote.
        rig.assert_clean().await;
        assert_eq!(other.connections().accepted, 0);
    }
}

#[tokio::test]
async fn abandoned_while_the_remote_handles_the_close() {
    for how in EVERY_WAY {
        eprintln!("abandoned by: {how:?}");
        let rig = Rig::new().await;
        rig.establish("x").await;
        rig.abandon_while_held(&rig.remote_gate, Op::Close, "x", how)
            .await;
        rig.assert_clean().await;
    }
}

#[tokio::test]
async fn abandoned_in_next_after_the_client_side_closed() {
    for how in EVERY_WAY {
        eprintln!("abandoned by: {how:?}");
        let rig = Rig::new().await;
        rig.establish("y").await;
        rig.abandon_while_held(&rig.next_gate, Op::Close, "y", how)
            .await;
        rig.assert_clean().await;
    }
}

#[tokio::test]
async fn abandoned_while_dialing() {
    for how in EVERY_WAY {
        eprintln!("abandoned by: {how:?}");
        let hole = BlackHole::start().await;
        // Long enough that the caller gives up first, on a loaded machine.
        let connect = grpc_only().dial_timeout(Duration::from_secs(1)).build();
        let chain = ServerChain::builder().with(connect.clone()).build();
        let (served, watch) = serve_in_front(hole.url(), &chain).await;
        let front = Front {
            chain: &chain,
            remote: hole.url(),
            served: &served,
            watch: &watch,
        };
        let caller = front.start(Op::Request, "d", how).await;
        hole.first_accepted().await;
        caller.abandon().await;
        assert_no_leaks(&connect, &[]).await;
    }
}

/// Requests, refreshes and closes for the same ids, fired together from
/// many tasks on a multi-threaded runtime, round after round, some through
/// the served chain by tonic callers: the remote never sees two calls for
/// one id at once, and nothing is left at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_requests_and_closes_racing_keep_order_and_leak_nothing() {
    const IDS: usize = 10;
    const ROUNDS: usize = 30;
    let rig = Arc::new(Rig::new().await);
    let caller = tonic_caller(rig.served.url()).await;
    for round in 0..ROUNDS {
        let mut calls = Vec::new();
        for id in 0..IDS {
            let id = format!("race-{id}");
            for (n, op) in [Op::Request, Op::Close, Op::Request]
                .into_iter()
                .enumerate()
            {
                let rig = Arc::clone(&rig);
                let mut caller = caller.clone();
                let id = id.clone();
                let served = (id.len() + n + round) % 2 == 0;
                calls.push(tokio::spawn(async move {
                    let ctx = Context::new().with_client_url(rig.url().clone());
                    match (op, served) {
                        (Op::Request, false) => {
                            rig.chain.request(ctx, request(&id)).await.map(drop)
                        }
                        (Op::Close, false) => rig.chain.close(ctx, connection(&id)).await,
                        (Op::Request, true) => caller.request(request(&id)).await.map(drop),
                        (Op::Close, true) => caller.close(connection(&id)).await.map(drop),
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
    for how in EVERY_WAY {
        eprintln!("abandoned by: {how:?}");
        let rig = Rig::new().await;
        rig.establish("o").await;
        rig.remote_gate.arm(Op::Request);
        let refresh = rig.start(Op::Request, "o", how).await;
        settle("the refresh to reach the remote", rig.remote_gate.holding()).await;
        refresh.abandon().await;

        // A close for the same id now waits for the abandoned refresh.
        let close = rig.start(Op::Close, "o", Abandon::Drop).await;
        settle(
            "the close to queue",
            rig.connect.wait_for(|stats| stats.waiting == 1),
        )
        .await;
        assert_eq!(
            rig.ledger.open(),
            ["o"],
            "nothing has reached the remote yet"
        );

        rig.remote_gate.release();
        close.finish().await.unwrap();
        rig.assert_clean().await;
    }
}

/// An abandoned call the remote never finishes is given up after the cleanup
/// timeout, and then undone all the same.
#[tokio::test]
async fn an_abandoned_call_the_remote_never_finishes_is_given_up() {
    for how in EVERY_WAY {
        eprintln!("abandoned by: {how:?}");
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
        let (served, watch) = serve_in_front(server.url(), &chain).await;

        gate.arm(Op::Request);
        let front = Front {
            chain: &chain,
            remote: server.url(),
            served: &served,
            watch: &watch,
        };
        let caller = front.start(Op::Request, "stuck", how).await;
        settle("the request to be held", gate.holding()).await;
        caller.abandon().await;

        // Never released: after 200 ms connect stops waiting, closes by id and
        // lets go.
        assert_no_leaks(&connect, &[&server]).await;
        assert_eq!(ledger.closes(), 1, "closed at the remote by id");
        assert!(ledger.open().is_empty());
    }
}
