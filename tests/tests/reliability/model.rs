//! Model-based random testing: random sequences of operations against
//! `connect` and real remotes, each step checked against a small reference
//! model of what must be true afterwards.
//!
//! Reproducible and shrinking: the seed is fixed (override with
//! `CONNECT_MODEL_SEED`), and a failing sequence is shrunk by proptest to a
//! minimal one before it is reported. `CONNECT_MODEL_CASES` sets how many
//! sequences run (300 by default, what CI runs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_runtime::{
    ClientCancel, ClientChain, Connect, Context, GrpcClient, Monitor, ServerChain, ServerHandle,
};
use connect_tests::elements::{Faults, Gate, Ledger, Op as GateOp};
use connect_tests::harness::{assert_no_leaks, settle};
use connect_tests::remote::{ScratchDir, start_at, start_tcp, start_unix};
use connect_tests::{connection, request};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use tonic::Code;
use url::Url;

const REMOTES: usize = 3;
const IDS: usize = 20;

/// One step of a sequence.
#[derive(Clone, Debug)]
enum Step {
    /// Request (new, refresh or move, depending on the state) `id` at remote `r`.
    Request { id: usize, r: usize },
    /// Close `id` (known or not).
    Close { id: usize },
    /// A request the caller abandons while the remote is handling it.
    Abandon { id: usize, r: usize },
    /// Switch remote `r`'s request and close faults.
    Faults {
        r: usize,
        request: bool,
        close: bool,
    },
    /// Stop remote `r`, gracefully or by killing it.
    Stop { r: usize, kill: bool },
    /// Start remote `r` again at the same URL.
    Restart { r: usize },
    /// Cancel the client for remote `r` through its cancel handle, as a
    /// monitor or heal element would.
    CancelClient { r: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let id = 0..IDS;
    let r = 0..REMOTES;
    prop_oneof![
        8 => (id.clone(), r.clone()).prop_map(|(id, r)| Step::Request { id, r }),
        5 => id.clone().prop_map(|id| Step::Close { id }),
        2 => (id, r.clone()).prop_map(|(id, r)| Step::Abandon { id, r }),
        2 => (r.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(r, request, close)| Step::Faults { r, request, close }),
        1 => (r.clone(), any::<bool>()).prop_map(|(r, kill)| Step::Stop { r, kill }),
        2 => r.clone().prop_map(|r| Step::Restart { r }),
        1 => r.prop_map(|r| Step::CancelClient { r }),
    ]
}

/// What the model knows of one connection id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Binding {
    remote: usize,
    /// Its client was cancelled (remote stopped, client cancelled): the
    /// record remains until the next request or close for it.
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
    /// elsewhere, or on a Close.
    fn close_at(&mut self, id: usize, binding: Binding) -> bool {
        let r = binding.remote;
        let closed = !binding.stale && !self.down[r] && !self.faults[r].1;
        if closed {
            self.remote_open[r].remove(&id);
        }
        closed
    }
}

struct Remote {
    url: Url,
    server: Option<ServerHandle>,
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

struct World {
    connect: Connect,
    chain: ServerChain,
    remotes: Vec<Remote>,
    cancels: Arc<Mutex<HashMap<Url, ClientCancel>>>,
    _dir: ScratchDir,
}

impl World {
    async fn new() -> Self {
        let dir = ScratchDir::new();
        let mut remotes = Vec::new();
        for r in 0..REMOTES {
            let (ledger, gate, faults) = (Ledger::new(), Gate::new(), Faults::new());
            let chain = remote_chain(&ledger, &gate, &faults);
            // One of the three on a unix socket.
            let server = if r == REMOTES - 1 {
                start_unix(&dir, "remote.sock", chain).await
            } else {
                start_tcp(chain).await
            };
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
        let chain = ServerChain::builder().with(connect.clone()).build();
        Self {
            connect,
            chain,
            remotes,
            cancels,
            _dir: dir,
        }
    }

    fn at(&self, r: usize) -> Context {
        Context::new()
            .with_client_url(self.remotes[r].url.clone())
            .with_timeout(Duration::from_secs(5))
    }

    async fn run(&mut self, model: &mut Model, step: &Step) -> Result<(), TestCaseError> {
        match *step {
            Step::Request { id, r } => {
                let result = self
                    .chain
                    .request(self.at(r), request(&id.to_string()))
                    .await;
                let expected = expect_request(model, id, r);
                check_outcome(step, result.map(drop), expected)?;
            }
            Step::Close { id } => {
                let result = self
                    .chain
                    .close(Context::new(), connection(&id.to_string()))
                    .await;
                let expected = match model.bound.remove(&id) {
                    None => Err(Code::NotFound),
                    Some(binding) if model.close_at(id, binding) => Ok(()),
                    Some(_) => Err(Code::Unavailable),
                };
                check_outcome(step, result, expected)?;
            }
            Step::Abandon { id, r } => {
                // Only calls that reach the remote can be held there.
                let reaches = !model.down[r]
                    && model
                        .bound
                        .get(&id)
                        .is_none_or(|b| b.remote != r || !b.stale);
                if !reaches {
                    return Ok(());
                }
                let gate = self.remotes[r].gate.clone();
                gate.arm(GateOp::Request);
                let call = tokio::spawn({
                    let (chain, ctx) = (self.chain.clone(), self.at(r));
                    async move { chain.request(ctx, request(&id.to_string())).await }
                });
                settle("the abandoned call to reach the remote", gate.holding()).await;
                call.abort();
                prop_assert!(call.await.unwrap_err().is_cancelled());
                // The call is not cut off at the remote: it runs to its end
                // (and is then undone), before anything else for the id.
                gate.release();
                expect_abandon(model, id, r);
            }
            Step::Faults { r, request, close } => {
                self.remotes[r].faults.set(request, close);
                model.faults[r] = (request, close);
            }
            Step::Stop { r, kill } => {
                if let Some(server) = self.remotes[r].server.take() {
                    if kill {
                        server.kill().await;
                    } else {
                        settle("the remote to shut down", server.shutdown()).await;
                    }
                    model.down[r] = true;
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
                    remote.server = Some(start_at(&remote.url, chain).await);
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
        }
        settle("connect to settle", self.connect.settled()).await;
        self.check(model, step).await
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
            prop_assert_eq!(remote.ledger.overlaps(), 0);
            // One TCP connection while the remote has a client; none after.
            let wanted = usize::from(model.live_refs().contains_key(&r));
            let seen = settle(
                "the remote's connection count to settle",
                server.wait_connections(|c| c.open == wanted),
            )
            .await;
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

    /// Closes everything and checks nothing is left.
    async fn finish(mut self, model: &mut Model) -> Result<(), TestCaseError> {
        for id in model.bound.keys().copied().collect::<Vec<_>>() {
            let _ = self
                .chain
                .close(Context::new(), connection(&id.to_string()))
                .await;
        }
        model.bound.clear();
        let servers: Vec<&ServerHandle> = self
            .remotes
            .iter()
            .filter_map(|r| r.server.as_ref())
            .collect();
        assert_no_leaks(&self.connect, &servers).await;
        for remote in &mut self.remotes {
            if let Some(server) = remote.server.take() {
                server.kill().await;
            }
        }
        Ok(())
    }
}

/// What a Request of `id` at `r` must return, applying it to the model.
fn expect_request(model: &mut Model, id: usize, r: usize) -> Result<(), Code> {
    match model.bound.get(&id).copied() {
        Some(binding) if binding.remote == r && binding.stale => {
            model.bound.remove(&id);
            Err(Code::Unavailable)
        }
        Some(binding) if binding.remote == r => {
            // A refresh; a failure keeps the record.
            if model.faults[r].0 {
                Err(Code::Unavailable)
            } else {
                Ok(())
            }
        }
        previous => {
            if let Some(binding) = previous {
                model.bound.remove(&id);
                model.close_at(id, binding);
            }
            if model.down[r] || model.faults[r].0 {
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
    }
}

/// An abandoned request: a refresh leaves everything as it was; a new
/// connection (or a move) ends unbound, with the remote told to close it.
fn expect_abandon(model: &mut Model, id: usize, r: usize) {
    match model.bound.get(&id).copied() {
        Some(binding) if binding.remote == r => {}
        previous => {
            if let Some(binding) = previous {
                model.bound.remove(&id);
                model.close_at(id, binding);
            }
            // The abandoned request runs to its end at the remote; if the
            // remote made the connection, connect then closes it there.
            let (request_fault, close_fault) = model.faults[r];
            if !request_fault {
                if close_fault {
                    model.remote_open[r].insert(id);
                } else {
                    model.remote_open[r].remove(&id);
                }
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
fn random_sequences_agree_with_the_model() {
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
        let runtime = tokio::runtime::Builder::new_current_thread()
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
}
