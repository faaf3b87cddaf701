//! A soak of the served path: several served connects, each before the same
//! grpc-go-like remotes, which recycle their connections every few seconds
//! and now and then restart hard, losing their state; callers send random
//! requests, refreshes and closes (without a deadline) throughout.
//!
//! It asserts that no call fails unless it was under way while a remote
//! restarted: the first refresh of a connection after its remote is back
//! must succeed, as through grpc-go's reconnecting channel. At the end no
//! remote holds a connection its callers closed or that a restart did not
//! kill, and every TCP connection drains. About 15 s by default;
//! `CONNECT_SOAK_SECS` sets the traffic's duration and `CONNECT_SOAK_SEED`
//! its randomness.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_runtime::proto::connection::Connection;
use connect_runtime::{
    ClientChain, Connect, Context, GrpcClient, Monitor, ServerChain, ServerHandle,
};
use connect_tests::caller::tonic_caller;
use connect_tests::elements::{CONNECT_TO, Gate, Ledger, RouteByMetadata};
use connect_tests::golike::{Behaviour, GoLike};
use connect_tests::harness::{PATIENCE, settle};
use connect_tests::remote::start_tcp;
use connect_tests::request;
use tokio::time::Instant;
use url::Url;

const REMOTES: usize = 3;
const FRONTS: usize = 2;
const CALLERS: usize = 4;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fronts' dial timeout.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// One remote and what the soak knows of its life.
struct Remote {
    url: Url,
    server: Mutex<Option<GoLike>>,
    ledger: Mutex<Ledger>,
    life: Mutex<Life>,
}

/// A remote's restarts, as calls see them.
#[derive(Clone, Default)]
struct Life {
    /// Bumped by every hard restart: connections made before are lost.
    epoch: u64,
    /// When each restart began (the kill) and when the remote was up again;
    /// `None` while it is not yet.
    restarts: Vec<(Instant, Option<Instant>)>,
}

fn behaviour() -> Behaviour {
    Behaviour {
        connection_age: Some(Duration::from_secs(3)),
        grace: Some(Duration::from_secs(1)),
        ..Behaviour::default()
    }
}

impl Remote {
    async fn start() -> Arc<Self> {
        let ledger = Ledger::new();
        let chain = ServerChain::builder()
            .with(ledger.clone())
            .with(Gate::new())
            .build();
        let server = GoLike::start(&"tcp://127.0.0.1:0".parse().unwrap(), chain, behaviour()).await;
        Arc::new(Self {
            url: server.url().clone(),
            server: Mutex::new(Some(server)),
            ledger: Mutex::new(ledger),
            life: Mutex::default(),
        })
    }

    /// Kills the remote and starts it again on its address, with nothing
    /// of its former state. The restart lasts until it is up again and
    /// every front's client has seen its old connection end: a call sent
    /// on a connection whose end the client has not yet read cannot be
    /// told from one the remote may have processed, and may fail.
    async fn restart(&self, fronts: &[Connect]) {
        {
            let mut life = self.life.lock().unwrap();
            life.epoch += 1;
            life.restarts.push((Instant::now(), None));
        }
        let old = self.server.lock().unwrap().take();
        if let Some(old) = old {
            old.kill().await;
        }
        let url = self.url.to_string();
        for front in fronts {
            let seen = front.wait_for(|stats| {
                stats
                    .clients
                    .iter()
                    .filter(|c| c.url == url)
                    .all(|c| c.ended_connections >= c.dials)
            });
            settle("the fronts to see the killed connections end", seen).await;
        }
        let ledger = Ledger::new();
        let chain = ServerChain::builder()
            .with(ledger.clone())
            .with(Gate::new())
            .build();
        let server = GoLike::start(&self.url, chain, behaviour()).await;
        *self.ledger.lock().unwrap() = ledger;
        *self.server.lock().unwrap() = Some(server);
        let mut life = self.life.lock().unwrap();
        life.restarts.last_mut().expect("begun above").1 = Some(Instant::now());
    }

    fn epoch(&self) -> u64 {
        self.life.lock().unwrap().epoch
    }

    /// Whether a call to it that ran from `start` to `end` was under way
    /// while it restarted (from the kill until it was up again). A call
    /// may wait on a dial another call began up to a dial timeout before
    /// it (a burst shares one dial), so a restart that ended that shortly
    /// before the call started counts too.
    fn restarted_during(&self, start: Instant, end: Instant) -> bool {
        let life = self.life.lock().unwrap();
        let start = start.checked_sub(DIAL_TIMEOUT).unwrap_or(start);
        life.restarts
            .iter()
            .any(|&(killed, up)| start <= up.unwrap_or(end) && killed <= end)
    }
}

/// A connection a caller holds: where, and in which life of its remote.
struct Held {
    conn: Connection,
    remote: usize,
    epoch: u64,
}

#[derive(Default)]
struct Tally {
    calls: u64,
    /// Calls on connections a restart killed (they must succeed too).
    lost: u64,
    /// Calls under way while their remote restarted, that failed.
    during_restarts: u64,
    unexpected: Vec<String>,
}

async fn caller(
    k: usize,
    front: Url,
    remotes: Arc<Vec<Arc<Remote>>>,
    until: Instant,
    seed: u64,
    tally: Arc<Mutex<Tally>>,
) {
    let mut dice =
        fastrand::Rng::with_seed(seed ^ (k as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let client = tonic_caller(&front).await;
    let mut held: HashMap<String, Held> = HashMap::new();
    let mut next_id = 0;
    while Instant::now() < until {
        let started = Instant::now();
        let mut caller = client.clone();
        let choice = dice.usize(..10);
        let (id, outcome, remote, lost) = if held.is_empty() || choice < 4 {
            // A new connection.
            next_id += 1;
            let id = format!("c{k}-{next_id}");
            let r = dice.usize(..REMOTES);
            let epoch = remotes[r].epoch();
            let mut call = tonic::Request::new(request(&id));
            call.metadata_mut()
                .insert(CONNECT_TO, remotes[r].url.as_str().parse().unwrap());
            call.set_timeout(Duration::from_secs(5));
            let outcome = caller.request(call).await.map(|reply| {
                let conn = reply.into_inner();
                held.insert(
                    id.clone(),
                    Held {
                        conn,
                        remote: r,
                        epoch,
                    },
                );
            });
            (id, outcome, r, false)
        } else {
            let id = held.keys().nth(dice.usize(..held.len())).unwrap().clone();
            let entry = &held[&id];
            let (r, lost) = (entry.remote, entry.epoch != remotes[entry.remote].epoch());
            if choice < 7 {
                // A refresh.
                let mut refresh = request(&id);
                refresh.connection = Some(Box::new(entry.conn.clone()));
                let mut call = tonic::Request::new(refresh);
                call.metadata_mut()
                    .insert(CONNECT_TO, remotes[r].url.as_str().parse().unwrap());
                call.set_timeout(Duration::from_secs(5));
                // A failed refresh leaves the connection to be closed (or
                // refreshed again).
                let outcome = caller.request(call).await.map(|reply| {
                    held.get_mut(&id).unwrap().conn = reply.into_inner();
                });
                (id, outcome, r, lost)
            } else {
                let conn = held.remove(&id).unwrap().conn;
                (id, caller.close(conn).await.map(drop), r, lost)
            }
        };
        let ended = Instant::now();
        let mut tally = tally.lock().unwrap();
        tally.calls += 1;
        tally.lost += u64::from(lost);
        if let Err(status) = outcome {
            if remotes[remote].restarted_during(started, ended) {
                tally.during_restarts += 1;
            } else {
                let lost = if lost { " (lost in a restart)" } else { "" };
                tally
                    .unexpected
                    .push(format!("{id}{lost} at remote {remote}: {status:?}"));
            }
        }
    }
    // Everything still held is closed (a lost one may fail to).
    for (_, entry) in held {
        let _ = client.clone().close(entry.conn).await;
    }
}

#[test]
fn a_soak_of_served_connects_before_recycling_and_restarting_remotes() {
    let secs = env_number("CONNECT_SOAK_SECS", 15);
    let seed = env_number("CONNECT_SOAK_SEED", 0x5eed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut remotes = Vec::new();
        for _ in 0..REMOTES {
            remotes.push(Remote::start().await);
        }
        let remotes = Arc::new(remotes);
        let mut fronts: Vec<(Connect, ServerHandle)> = Vec::new();
        for _ in 0..FRONTS {
            let connect = Connect::builder(|ctx: &Context, conn| {
                ClientChain::builder()
                    .with(Monitor::new(ctx, conn.clone()))
                    .with(GrpcClient::new(conn))
                    .build()
            })
            .dial_timeout(DIAL_TIMEOUT)
            .build();
            let chain = ServerChain::builder()
                .with(RouteByMetadata)
                .with(connect.clone())
                .build();
            fronts.push((connect, start_tcp(chain).await));
        }

        let until = Instant::now() + Duration::from_secs(secs);
        let tally = Arc::new(Mutex::new(Tally::default()));
        let callers: Vec<_> = (0..CALLERS)
            .map(|k| {
                let front = fronts[k % FRONTS].1.url().clone();
                tokio::spawn(caller(
                    k,
                    front,
                    Arc::clone(&remotes),
                    until,
                    seed,
                    Arc::clone(&tally),
                ))
            })
            .collect();
        // Now and then a remote dies and comes back, empty.
        let mut dice = fastrand::Rng::with_seed(seed);
        let mut restarts = 0;
        while Instant::now() + Duration::from_secs(3) < until {
            tokio::time::sleep(Duration::from_millis(2500 + 500 * dice.usize(..4) as u64)).await;
            let connects: Vec<Connect> = fronts.iter().map(|(c, _)| c.clone()).collect();
            remotes[dice.usize(..REMOTES)].restart(&connects).await;
            restarts += 1;
        }
        for task in callers {
            // A caller that does not finish (a close has no deadline) fails
            // the soak saying what connect and the remotes held then.
            match tokio::time::timeout(PATIENCE, task).await {
                Ok(finished) => finished.unwrap(),
                Err(_) => {
                    let fronts: Vec<_> = fronts.iter().map(|(c, _)| c.stats()).collect();
                    let remotes: Vec<_> = remotes
                        .iter()
                        .map(|r| {
                            let server = r.server.lock().unwrap();
                            let ledger = r.ledger.lock().unwrap();
                            (server.as_ref().map(GoLike::connections), ledger.open())
                        })
                        .collect();
                    panic!(
                        "a caller did not finish: connect held {fronts:#?}; the remotes (connections, open ids) {remotes:#?}"
                    );
                }
            }
        }

        let tally = std::mem::take(&mut *tally.lock().unwrap());
        assert!(
            tally.unexpected.is_empty(),
            "{} of {} calls failed away from any restart ({} during one; {} calls on lost connections): {:#?}",
            tally.unexpected.len(),
            tally.calls,
            tally.during_restarts,
            tally.lost,
            tally.unexpected
        );
        assert!(
            tally.calls > 100 && restarts > 0,
            "{} calls, {restarts} restarts",
            tally.calls
        );
        for (connect, _) in &fronts {
            settle("connect to go idle", connect.idle()).await;
        }
        for (r, remote) in remotes.iter().enumerate() {
            let ledger = remote.ledger.lock().unwrap().clone();
            assert!(
                ledger.open().is_empty(),
                "remote {r} still holds {:?}",
                ledger.open()
            );
            assert_eq!(ledger.overlaps(), 0, "remote {r}");
            let server = remote.server.lock().unwrap().take().unwrap();
            server.wait_connections(|c| c.open == 0).await;
        }
        drop(fronts);
        eprintln!(
            "soak: {} calls; {} failed during the {restarts} restarts; {} calls on the connections they killed, all answered",
            tally.calls, tally.during_restarts, tally.lost
        );
    });
}
