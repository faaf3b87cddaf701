//! Model-based random testing of the served path: random sequences of
//! operations, sent by a tonic caller to `connect` served over gRPC, in
//! front of grpc-go-like remotes; each step checked against a small
//! reference model of what must be true afterwards, while an observer reads
//! `stats()` throughout and a `MonitorConnections` watcher's every event is
//! checked against the model.
//!
//! Reproducible and shrinking: the seed is fixed (override with
//! `CONNECT_MODEL_SEED`), and a failing sequence is shrunk by proptest to a
//! minimal one before it is reported. `CONNECT_MODEL_CASES` sets how many
//! sequences run (300 by default, what CI runs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_runtime::proto::connection::{
    ConnectionEvent, ConnectionEventType, MonitorScopeSelector,
};
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{
    ClientCancel, ClientChain, Connect, ConnectionMonitor, Context, GrpcClient, Monitor, Serve,
    ServerChain, ServerHandle,
};
use connect_tests::caller::{monitor_caller, tonic_caller};
use connect_tests::elements::{
    CONNECT_TO, DropWatch, Faults, Gate, Ledger, Op as GateOp, RouteByMetadata,
};
use connect_tests::golike::{Behaviour, GoLike};
use connect_tests::harness::settle;
use connect_tests::remote::unix_url;
use connect_tests::{connection, request};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use url::Url;

const REMOTES: usize = 3;
const IDS: usize = 20;
/// The deadline a call to a hanging remote runs out at.
const HANG: Duration = Duration::from_millis(150);

/// `Hang` steps whose call reached the remote, and those set aside because
/// it did not in time: a few may be, but not so many that the step stops
/// testing anything.
static HANGS: (AtomicU64, AtomicU64) = (AtomicU64::new(0), AtomicU64::new(0));

/// One step of a sequence.
#[derive(Clone, Debug)]
enum Step {
    /// Request (new, refresh or move, depending on the state) `id` at remote `r`.
    Request { id: usize, r: usize },
    /// Close `id` (known or not).
    Close { id: usize },
    /// A request whose caller drops its gRPC call while the remote handles it.
    Abandon { id: usize, r: usize },
    /// A request the remote holds past the caller's deadline.
    Hang { id: usize, r: usize },
    /// Switch remote `r`'s request and close faults.
    Faults {
        r: usize,
        request: bool,
        close: bool,
    },
    /// Switch remote `r`'s malformed statuses (on Requests).
    Malformed { r: usize, on: bool },
    /// Remote `r` recycles its connections: a graceful GOAWAY on each.
    Recycle { r: usize },
    /// Stop remote `r`, gracefully or by killing it.
    Stop { r: usize, kill: bool },
    /// Start remote `r` again at the same URL, with none of its state.
    Restart { r: usize },
    /// Cancel the client for remote `r` through its cancel handle, as a
    /// monitor or heal element would.
    CancelClient { r: usize },
    /// Shut `connect` down; everything after is refused or fails.
    Shutdown,
}

fn step() -> impl Strategy<Value = Step> {
    let id = 0..IDS;
    let r = 0..REMOTES;
    prop_oneof![
        8 => (id.clone(), r.clone()).prop_map(|(id, r)| Step::Request { id, r }),
        5 => id.clone().prop_map(|id| Step::Close { id }),
        2 => (id.clone(), r.clone()).prop_map(|(id, r)| Step::Abandon { id, r }),
        1 => (id, r.clone()).prop_map(|(id, r)| Step::Hang { id, r }),
        2 => (r.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(r, request, close)| Step::Faults { r, request, close }),
        1 => (r.clone(), any::<bool>()).prop_map(|(r, on)| Step::Malformed { r, on }),
        2 => r.clone().prop_map(|r| Step::Recycle { r }),
        1 => (r.clone(), any::<bool>()).prop_map(|(r, kill)| Step::Stop { r, kill }),
        2 => r.clone().prop_map(|r| Step::Restart { r }),
        1 => r.prop_map(|r| Step::CancelClient { r }),
        1 => Just(Step::Shutdown),
    ]
}

/// What the model knows of one connection id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Binding {
    remote: usize,
    /// Its client was cancelled (remote stopped, client cancelled, connect
    /// shut down): the record remains, and the next request or close goes
    /// through the URL's current client.
    stale: bool,
}

/// The reference model.
#[derive(Debug, Default)]
struct Model {
    bound: BTreeMap<usize, Binding>,
    /// Ids each remote holds open, as its ledger should say.
    remote_open: [BTreeSet<usize>; REMOTES],
    down: [bool; REMOTES],
    faults: [(bool, bool); REMOTES],
    malformed: [bool; REMOTES],
    shut: bool,
    /// Ids the served monitor holds: requested successfully since their
    /// last Close (a failed refresh or move keeps one, as a failed request
    /// changes nothing there).
    monitored: BTreeSet<usize>,
}

impl Model {
    fn live_refs(&self) -> BTreeMap<usize, usize> {
        let mut refs = BTreeMap::new();
        for binding in self.bound.values().filter(|b| !b.stale) {
            *refs.entry(binding.remote).or_default() += 1;
        }
        refs
    }

    /// The client for `r` is gone: its bindings go stale.
    fn lose_client(&mut self, r: usize) {
        for binding in self.bound.values_mut() {
            if binding.remote == r {
                binding.stale = true;
            }
        }
    }

    /// The close connect makes at `binding`'s remote before moving `id`
    /// elsewhere, or on a Close: through its client, or, if that one was
    /// cancelled, the URL's current client.
    fn close_at(&mut self, id: usize, binding: Binding) -> bool {
        let r = binding.remote;
        let closed = !self.shut && !self.down[r] && !self.faults[r].1;
        if closed {
            self.remote_open[r].remove(&id);
        }
        closed
    }

    /// Whether a request at `r` reaches the remote's chain (to be held
    /// there).
    fn reaches(&self, r: usize) -> bool {
        !self.shut && !self.down[r] && !self.malformed[r]
    }
}

struct Remote {
    url: Url,
    server: Option<GoLike>,
    ledger: Ledger,
    gate: Gate,
    faults: Faults,
}

fn remote_chain(ledger: &Ledger, gate: &Gate, faults: &Faults) -> ServerChain {
    // The gate sits before the faults, so an abandoned call is always held.
    ServerChain::builder()
        .with(ledger.clone())
        .with(gate.clone())
        .with(faults.clone())
        .build()
}

/// grpc-go-like remotes whose recycled connections are cut 20 ms after
/// their GOAWAY, calls or not (the health watch moves to a new one).
fn behaviour() -> Behaviour {
    Behaviour {
        connection_age: None,
        grace: Some(Duration::from_millis(20)),
        ..Behaviour::default()
    }
}

struct World {
    connect: Connect,
    _front: ServerHandle,
    front_watch: DropWatch,
    caller: NetworkServiceClient<Channel>,
    remotes: Vec<Remote>,
    cancels: Arc<Mutex<HashMap<Url, ClientCancel>>>,
    _observer: Observer,
    monitor: ConnectionMonitor,
    /// What a watcher of the served monitor hears, in order.
    events: tokio::sync::mpsc::UnboundedReceiver<ConnectionEvent>,
    _dir: TempDir,
}

/// Reads `stats()` in a loop for as long as it lives.
struct Observer {
    stop: CancellationToken,
}

impl Observer {
    /// Starts reading, and returns once it has read once.
    async fn start(connect: &Connect) -> Self {
        let stop = CancellationToken::new();
        let (connect, until) = (connect.clone(), stop.clone());
        let (looked, first_look) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut looked = Some(looked);
            while !until.is_cancelled() {
                let stats = connect.stats();
                std::hint::black_box(stats);
                if let Some(looked) = looked.take() {
                    let _ = looked.send(());
                }
                tokio::task::yield_now().await;
            }
        });
        settle("the observer's first look", first_look)
            .await
            .unwrap();
        Self { stop }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl World {
    async fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let mut remotes = Vec::new();
        for r in 0..REMOTES {
            let (ledger, gate, faults) = (Ledger::new(), Gate::new(), Faults::new());
            let chain = remote_chain(&ledger, &gate, &faults);
            // One of the three on a unix socket.
            let url = if r == REMOTES - 1 {
                unix_url(&dir.path().join("remote.sock"))
            } else {
                "tcp://127.0.0.1:0".parse().unwrap()
            };
            let server = GoLike::start(&url, chain, behaviour()).await;
            remotes.push(Remote {
                url: server.url().clone(),
                server: Some(server),
                ledger,
                gate,
                faults,
            });
        }
        let cancels: Arc<Mutex<HashMap<Url, ClientCancel>>> = Arc::default();
        let registry = Arc::clone(&cancels);
        let connect = Connect::builder(move |ctx: &Context, conn| {
            if let (Some(url), Some(cancel)) = (ctx.client_url(), ctx.client_cancel()) {
                registry.lock().unwrap().insert(url.clone(), cancel.clone());
            }
            ClientChain::builder()
                .with(Monitor::new(ctx, conn.clone()))
                .with(GrpcClient::new(conn))
                .build()
        })
        .dial_timeout(Duration::from_secs(1))
        .cleanup_timeout(Duration::from_secs(2))
        .build();
        let front_watch = DropWatch::new();
        let monitor = ConnectionMonitor::new();
        let front = Serve::new(
            ServerChain::builder()
                .with(front_watch.clone())
                .with(RouteByMetadata)
                .with(monitor.server())
                .with(connect.clone())
                .build(),
        )
        .add_service(monitor.service())
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
        let caller = tonic_caller(front.url()).await;
        let mut watching = monitor_caller(front.url())
            .await
            .monitor_connections(MonitorScopeSelector::default())
            .await
            .unwrap()
            .into_inner();
        let initial = settle("the initial state", watching.message()).await;
        assert!(initial.unwrap().unwrap().connections.is_empty());
        let (heard, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(event)) = watching.message().await {
                if heard.send(event).is_err() {
                    return;
                }
            }
        });
        // It is reading before the first step.
        let observer = Observer::start(&connect).await;
        Self {
            connect,
            _front: front,
            front_watch,
            caller,
            remotes,
            cancels,
            _observer: observer,
            monitor,
            events,
            _dir: dir,
        }
    }

    /// A served Request of `id` at remote `r`, with `timeout`.
    fn request_at(
        &self,
        id: usize,
        r: usize,
        timeout: Duration,
    ) -> tonic::Request<connect_runtime::proto::networkservice::NetworkServiceRequest> {
        let mut call = tonic::Request::new(request(&id.to_string()));
        let to = self.remotes[r].url.as_str().parse().unwrap();
        call.metadata_mut().insert(CONNECT_TO, to);
        call.set_timeout(timeout);
        call
    }

    async fn run(&mut self, model: &mut Model, step: &Step) -> Result<(), TestCaseError> {
        // The monitor events the step makes.
        let mut events = Vec::new();
        match *step {
            Step::Request { id, r } => {
                let call = self.request_at(id, r, Duration::from_secs(5));
                let result = self.caller.clone().request(call).await;
                let expected = expect_request(model, id, r);
                if expected.is_ok() {
                    model.monitored.insert(id);
                    events.push((ConnectionEventType::Update, id));
                }
                check_outcome(step, result.map(drop), expected)?;
            }
            Step::Close { id } => {
                if model.monitored.remove(&id) {
                    events.push((ConnectionEventType::Delete, id));
                }
                let result = self.caller.clone().close(connection(&id.to_string())).await;
                let expected = match model.bound.remove(&id) {
                    None => Err(Code::NotFound),
                    Some(binding) if model.close_at(id, binding) => Ok(()),
                    Some(_) => Err(Code::Unavailable),
                };
                check_outcome(step, result.map(drop), expected)?;
            }
            Step::Abandon { id, r } => {
                if !model.reaches(r) {
                    return Ok(());
                }
                let gate = self.remotes[r].gate.clone();
                gate.arm(GateOp::Request);
                let call = self.request_at(id, r, Duration::from_secs(5));
                let mut caller = self.caller.clone();
                let dropped = self.front_watch.dropped();
                let task = tokio::spawn(async move { caller.request(call).await });
                settle("the abandoned call to reach the remote", gate.holding()).await;
                task.abort();
                prop_assert!(task.await.unwrap_err().is_cancelled());
                settle(
                    "the server to drop the abandoned handler",
                    self.front_watch.until_dropped(dropped + 1),
                )
                .await;
                // The call is not cut off at the remote: it runs to its end
                // (and is then undone), before anything else for the id.
                gate.release();
                expect_abandon(model, id, r, true);
            }
            Step::Hang { id, r } => {
                if !model.reaches(r) {
                    return Ok(());
                }
                let gate = self.remotes[r].gate.clone();
                gate.arm(GateOp::Request);
                let call = self.request_at(id, r, HANG);
                let mut caller = self.caller.clone();
                let mut task = tokio::spawn(async move { caller.request(call).await });
                let reached = settle("the hanging call to reach the remote or end", async {
                    tokio::select! {
                        biased;
                        () = gate.holding() => true,
                        _ = &mut task => false,
                    }
                })
                .await;
                // The step's premise is that its deadline covers the way to
                // the remote, a dial included; a machine too loaded for that
                // sets the case aside rather than failing it.
                let tally = if reached { &HANGS.0 } else { &HANGS.1 };
                tally.fetch_add(1, Ordering::Relaxed);
                prop_assume!(reached, "the hanging call's deadline passed on its way");
                let status = task.await.unwrap().map(drop).unwrap_err();
                prop_assert!(
                    matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                    "{:?}: {:?}",
                    step,
                    status
                );
                // The remote's own deadline ends its call; only then is what
                // it may have made closed.
                expect_abandon(model, id, r, false);
            }
            Step::Faults { r, request, close } => {
                self.remotes[r].faults.set(request, close);
                model.faults[r] = (request, close);
            }
            Step::Malformed { r, on } => {
                if let Some(server) = &self.remotes[r].server {
                    server.set_malformed(on);
                    model.malformed[r] = on;
                }
            }
            Step::Recycle { r } => {
                if let Some(server) = &self.remotes[r].server {
                    // Done once every connection accepted before it has
                    // closed: a call racing the hard close after the grace
                    // period may or may not reach the remote (as with
                    // grpc-go's), which no model can predict. Calls racing
                    // a GOAWAY have deterministic tests in integration/transport/conn.rs.
                    let before = server.connections().accepted;
                    server.recycle();
                    server
                        .wait_connections(|c| c.accepted - c.open as u64 >= before)
                        .await;
                }
            }
            Step::Stop { r, kill } => {
                if let Some(server) = self.remotes[r].server.take() {
                    if kill {
                        server.kill().await;
                    } else {
                        server.stop().await;
                    }
                    model.down[r] = true;
                    model.malformed[r] = false;
                    model.remote_open[r].clear();
                    if model.bound.values().any(|b| b.remote == r && !b.stale) {
                        // Its monitor sees the remote go and closes the client.
                        let url = self.remotes[r].url.to_string();
                        settle(
                            "the client of the stopped remote to go",
                            self.connect
                                .wait_for(|stats| stats.clients.iter().all(|c| c.url != url)),
                        )
                        .await;
                    }
                    model.lose_client(r);
                }
            }
            Step::Restart { r } => {
                if self.remotes[r].server.is_none() {
                    let remote = &mut self.remotes[r];
                    remote.ledger = Ledger::new();
                    remote.faults.set(false, false);
                    let chain = remote_chain(&remote.ledger, &remote.gate, &remote.faults);
                    remote.server = Some(GoLike::start(&remote.url, chain, behaviour()).await);
                    model.down[r] = false;
                    model.faults[r] = (false, false);
                }
            }
            Step::CancelClient { r } => {
                if self.has_client(r) {
                    let handle = self
                        .cancels
                        .lock()
                        .unwrap()
                        .get(&self.remotes[r].url)
                        .cloned();
                    if let Some(handle) = handle {
                        handle.cancel();
                        model.lose_client(r);
                    }
                }
            }
            Step::Shutdown => {
                self.connect.shutdown();
                model.shut = true;
                for r in 0..REMOTES {
                    model.lose_client(r);
                }
                settle(
                    "every client to go",
                    self.connect.wait_for(|stats| stats.clients.is_empty()),
                )
                .await;
            }
        }
        settle("connect to settle", self.connect.settled()).await;
        self.check_events(model, step, &events).await?;
        self.check(model, step).await
    }

    /// The watcher heard `expected` (kind and id, one connection each),
    /// nothing else, and the monitor holds what the model says.
    async fn check_events(
        &mut self,
        model: &Model,
        step: &Step,
        expected: &[(ConnectionEventType, usize)],
    ) -> Result<(), TestCaseError> {
        for (kind, id) in expected {
            let event = settle("a monitor event", self.events.recv()).await.unwrap();
            let ids: Vec<String> = event.connections.into_keys().collect();
            prop_assert_eq!(
                (event.r#type, ids),
                (*kind as i32, vec![id.to_string()]),
                "monitor event after {:?}",
                step
            );
        }
        let extra = self.events.try_recv();
        prop_assert!(
            extra.is_err(),
            "unexpected monitor event after {:?}: {:?}",
            step,
            extra
        );
        let held = self.monitor.stats().connections;
        prop_assert_eq!(held, model.monitored.len(), "monitored after {:?}", step);
        Ok(())
    }

    fn has_client(&self, r: usize) -> bool {
        let url = self.remotes[r].url.as_str();
        self.connect.stats().clients.iter().any(|c| c.url == url)
    }

    /// Every invariant, after a step.
    async fn check(&self, model: &Model, step: &Step) -> Result<(), TestCaseError> {
        let stats = self.connect.stats();
        // Records equal the connections the model holds (stale ones too).
        let records: BTreeMap<String, String> = self
            .connect
            .connections()
            .into_iter()
            .map(|(id, url)| (id, url.to_string()))
            .collect();
        let expected: BTreeMap<String, String> = model
            .bound
            .iter()
            .map(|(id, b)| (id.to_string(), self.remotes[b.remote].url.to_string()))
            .collect();
        prop_assert_eq!(&records, &expected, "records after {:?}", step);
        // References per URL equal the live connections bound to it, and no
        // client exists for a URL without them.
        let refs: BTreeMap<String, usize> = stats
            .clients
            .iter()
            .map(|c| (c.url.clone(), c.refs))
            .collect();
        let expected: BTreeMap<String, usize> = model
            .live_refs()
            .into_iter()
            .map(|(r, n)| (self.remotes[r].url.to_string(), n))
            .collect();
        prop_assert_eq!(&refs, &expected, "client references after {:?}", step);
        prop_assert_eq!(stats.in_flight, 0);
        for (r, remote) in self.remotes.iter().enumerate() {
            let Some(server) = &remote.server else {
                continue;
            };
            // What the remote holds is what the model says it holds.
            let open: BTreeSet<usize> = remote
                .ledger
                .open()
                .iter()
                .map(|id| id.parse().unwrap())
                .collect();
            prop_assert_eq!(
                &open,
                &model.remote_open[r],
                "remote {} after {:?}",
                r,
                step
            );
            prop_assert_eq!(
                remote.ledger.overlaps(),
                0,
                "overlapping calls at remote {}",
                r
            );
            // One TCP connection while the remote has a client; none after.
            let wanted = usize::from(model.live_refs().contains_key(&r));
            let seen = server.wait_connections(|c| c.open == wanted).await;
            prop_assert_eq!(
                seen.open,
                wanted,
                "connections at remote {} after {:?}",
                r,
                step
            );
        }
        Ok(())
    }

    /// Closes everything and checks nothing is left, and that connect goes
    /// idle within a bound.
    async fn finish(mut self, model: &mut Model) -> Result<(), TestCaseError> {
        let ids: BTreeSet<usize> = model
            .bound
            .keys()
            .chain(&model.monitored)
            .copied()
            .collect();
        for id in ids {
            let _ = self.caller.clone().close(connection(&id.to_string())).await;
        }
        model.bound.clear();
        model.monitored.clear();
        prop_assert_eq!(self.monitor.stats().connections, 0);
        let idle = tokio::time::timeout(Duration::from_secs(5), self.connect.idle()).await;
        prop_assert!(
            idle.is_ok(),
            "not idle within 5 s: {:?}",
            self.connect.stats()
        );
        for remote in &mut self.remotes {
            if let Some(server) = remote.server.take() {
                server.wait_connections(|c| c.open == 0).await;
                prop_assert_eq!(remote.ledger.overlaps(), 0);
                server.kill().await;
            }
        }
        Ok(())
    }
}

/// What a Request of `id` at `r` must return, applying it to the model.
fn expect_request(model: &mut Model, id: usize, r: usize) -> Result<(), Code> {
    match model.bound.get(&id).copied() {
        Some(binding) if binding.remote == r => {
            // A refresh (through the URL's current client if its own was
            // cancelled); a failure keeps the record as it was.
            if model.shut || model.down[r] {
                Err(Code::Unavailable)
            } else if model.malformed[r] {
                Err(Code::Internal)
            } else if model.faults[r].0 {
                Err(Code::Unavailable)
            } else {
                model.bound.insert(
                    id,
                    Binding {
                        remote: r,
                        stale: false,
                    },
                );
                model.remote_open[r].insert(id);
                Ok(())
            }
        }
        previous => {
            if let Some(binding) = previous {
                model.bound.remove(&id);
                model.close_at(id, binding);
            }
            if model.shut || model.down[r] || model.faults[r].0 && !model.malformed[r] {
                Err(Code::Unavailable)
            } else if model.malformed[r] {
                Err(Code::Internal)
            } else {
                model.bound.insert(
                    id,
                    Binding {
                        remote: r,
                        stale: false,
                    },
                );
                model.remote_open[r].insert(id);
                Ok(())
            }
        }
    }
}

/// A request whose caller went away (`completes`: the remote finished it)
/// or whose remote hung past its deadline: a refresh leaves the record as
/// it was; a new connection (or a move) ends unbound, with the remote told
/// to close it.
fn expect_abandon(model: &mut Model, id: usize, r: usize, completes: bool) {
    match model.bound.get(&id).copied() {
        // A refresh; one through a new client (its own was cancelled) that
        // the remote finished has it open there again (a restart may have
        // lost it), while the record stays with the cancelled client.
        Some(binding) if binding.remote == r => {
            if binding.stale && completes && !model.faults[r].0 {
                model.remote_open[r].insert(id);
            }
        }
        previous => {
            if let Some(binding) = previous {
                model.bound.remove(&id);
                model.close_at(id, binding);
            }
            // The abandoned request runs to its end at the remote; if it may
            // have made the connection, connect then closes it there.
            let (request_fault, close_fault) = model.faults[r];
            let made = completes && !request_fault;
            if made && close_fault {
                model.remote_open[r].insert(id);
            } else if (made || !completes) && !close_fault {
                model.remote_open[r].remove(&id);
            }
        }
    }
}

fn check_outcome<T: std::fmt::Debug>(
    step: &Step,
    result: Result<T, tonic::Status>,
    expected: Result<(), Code>,
) -> Result<(), TestCaseError> {
    match (&result, expected) {
        (Ok(_), Ok(())) => Ok(()),
        (Err(status), Err(code)) if status.code() == code => Ok(()),
        _ => Err(TestCaseError::fail(format!(
            "{step:?}: got {result:?}, the model expects {expected:?}"
        ))),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_sequences_on_the_served_path_agree_with_the_model() {
    let config = Config {
        cases: env_number("CONNECT_MODEL_CASES", 300) as u32,
        rng_seed: RngSeed::Fixed(env_number("CONNECT_MODEL_SEED", 0x00c0_ffee)),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let sequences = proptest::collection::vec(step(), 1..24);
    let outcome = runner.run(&sequences, |steps| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut world = World::new().await;
            let mut model = Model::default();
            for step in &steps {
                world.run(&mut model, step).await?;
            }
            world.finish(&mut model).await
        })
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    let (reached, set_aside) = (
        HANGS.0.load(Ordering::Relaxed),
        HANGS.1.load(Ordering::Relaxed),
    );
    assert!(
        set_aside * 5 <= reached,
        "{set_aside} Hang steps set aside against {reached} that reached the remote"
    );
}
