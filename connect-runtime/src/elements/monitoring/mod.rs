//! NSM's monitor protocol (`connection.MonitorConnection/MonitorConnections`):
//! the connections a hop holds, told to whoever watches them, and the next
//! hop's word on them relayed upstream.
//!
//! A [`ConnectionMonitor`] is the hub. Its [`server`](ConnectionMonitor::server)
//! element records what the chain returns and closes; its
//! [`service`](ConnectionMonitor::service) serves the watchers; its
//! [`relay`](ConnectionMonitor::relay) client element, one per `connect`
//! client, watches that client's remote with one stream.

mod relay;
mod selector;
mod server;
mod service;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::elements::last_known::LastKnown;
use crate::proto::connection::{
    Connection, ConnectionEvent, ConnectionEventType, MonitorScopeSelector, State,
};
use crate::sync::lock;

pub use relay::MonitorRelay;
pub use server::MonitorServer;
pub use service::{MonitorService, MonitorStream};

/// How many events a watcher may fall behind before it is cut.
pub const DEFAULT_WATCHER_BUFFER: usize = 256;

/// The connections a hop holds and the watchers of them: NSM's `monitor`
/// server element, with the next hop's events relayed through one stream per
/// remote.
///
/// Put [`server`](Self::server) in the served chain after
/// [`UpdatePath`](crate::UpdatePath) (so that connections are in this hop's
/// terms) and inside [`Expire`](crate::Expire) (so that expiry is a delete);
/// serve [`service`](Self::service) beside the chain; and, in a passthrough,
/// put [`relay`](Self::relay) in each `connect` client's chain.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::prelude::*;
/// use connect_runtime::{ConnectionMonitor, Serve, UpdatePath};
///
/// let stop = CancellationToken::new();
/// let monitor = ConnectionMonitor::new().shutdown_on(stop.clone());
/// let chain = ServerChain::builder()
///     .with(UpdatePath::new("endpoint"))
///     .with(monitor.server())
///     .build();
/// let server = Serve::new(chain)
///     .add_service(monitor.service())
///     .shutdown_on(stop.clone())
///     .bind("tcp://127.0.0.1:0")
///     .await?;
/// assert_eq!(monitor.stats().connections, 0);
/// stop.cancel();
/// server.stopped().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ConnectionMonitor {
    hub: Arc<Hub>,
}

/// What a [`ConnectionMonitor`] holds and has done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MonitorStats {
    /// Connections held (told to watchers as their initial state).
    pub connections: usize,
    /// Open `MonitorConnections` streams served.
    pub watchers: usize,
    /// Watchers cut with `RESOURCE_EXHAUSTED` for falling behind.
    pub watchers_cut: u64,
    /// Open streams watching a next hop, one per `connect` client.
    pub relayed_streams: usize,
    /// Streams to next hops opened, reopenings included.
    pub relay_opens: u64,
    /// Clients whose remote answered `UNIMPLEMENTED` or refused the watch:
    /// not monitored.
    pub unmonitored: usize,
    /// Connections reported DOWN (or another state) on a next hop's word or
    /// because their client is gone.
    pub relayed_states: u64,
}

#[derive(Debug)]
struct Hub {
    state: std::sync::Mutex<Held>,
    buffer: usize,
    shutdown: CancellationToken,
    stats: watch::Sender<MonitorStats>,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct Held {
    connections: HashMap<String, Tracked>,
    watchers: Vec<Watcher>,
    /// Watchers cut and not yet counted: counted once the lock is let go
    /// (a `wait_for` condition may call back into the monitor while the
    /// stats are locked).
    cut: u64,
}

/// One connection: as the chain last returned it (once it has), and which
/// relay, if any, watches its next hop.
#[derive(Debug, Default)]
struct Tracked {
    connection: Option<LastKnown>,
    /// Its state, as last told.
    state: i32,
    relay: Option<u64>,
    /// The SPIFFE ID of the caller that requested it: the owner of its
    /// previous path segment.
    owner: Option<Arc<str>>,
}

#[derive(Debug)]
struct Watcher {
    id: u64,
    selector: MonitorScopeSelector,
    /// The watcher's SPIFFE ID: it sees only the connections it owns.
    identity: Option<Arc<str>>,
    events: mpsc::Sender<ConnectionEvent>,
    cut: Arc<AtomicBool>,
}

impl Default for ConnectionMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionMonitor {
    /// A monitor holding nothing, whose watchers may fall
    /// [`DEFAULT_WATCHER_BUFFER`] events behind.
    pub fn new() -> Self {
        Self {
            hub: Arc::new(Hub {
                state: Default::default(),
                buffer: DEFAULT_WATCHER_BUFFER,
                shutdown: CancellationToken::new(),
                stats: watch::Sender::new(MonitorStats::default()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// How many events a watcher may fall behind; one further behind is
    /// ended with `RESOURCE_EXHAUSTED`, so that a caller that does not read
    /// costs at most this much memory.
    ///
    /// # Panics
    ///
    /// If `events` is zero, or once the monitor has been cloned.
    pub fn watcher_buffer(mut self, events: usize) -> Self {
        assert!(events > 0, "a watcher buffer holds at least one event");
        Arc::get_mut(&mut self.hub)
            .expect("watcher_buffer is set before the monitor is shared")
            .buffer = events;
        self
    }

    /// Ends every watcher's stream when `token` is cancelled (pass the
    /// server's shutdown token: tonic's graceful shutdown waits for open
    /// streams).
    ///
    /// # Panics
    ///
    /// Once the monitor has been cloned.
    pub fn shutdown_on(mut self, token: CancellationToken) -> Self {
        Arc::get_mut(&mut self.hub)
            .expect("shutdown_on is set before the monitor is shared")
            .shutdown = token;
        self
    }

    /// The server-chain element that records each connection the rest of
    /// the chain returns (an UPDATE) and each close (a DELETE).
    pub fn server(&self) -> MonitorServer {
        MonitorServer::new(Arc::clone(&self.hub))
    }

    /// The tonic service to serve beside the chain
    /// ([`Serve::add_service`](crate::Serve::add_service)).
    pub fn service(
        &self,
    ) -> crate::proto::connection::monitor_connection_server::MonitorConnectionServer<MonitorService>
    {
        MonitorService::new(Arc::clone(&self.hub)).into_server()
    }

    /// The client-chain element that watches the remote of the `connect`
    /// client whose context `ctx` is, over `conn`, and relays what the
    /// remote says of this client's connections. Build it in the client
    /// factory.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (its watch is a task).
    pub fn relay(
        &self,
        ctx: &crate::chain::Context,
        conn: crate::transport::ClientConn,
    ) -> MonitorRelay {
        MonitorRelay::new(Arc::clone(&self.hub), ctx, conn)
    }

    /// Sets the state of connection `id` (an endpoint whose data plane
    /// failed reports `State::Down`, say) and tells the watchers. Returns
    /// whether the monitor holds that connection.
    pub fn set_state(&self, id: &str, state: State) -> bool {
        self.hub.set_state(id, None, state)
    }

    /// The connection `id` as the monitor holds it.
    pub fn connection(&self, id: &str) -> Option<Connection> {
        let held = lock(&self.hub.state);
        let tracked = held.connections.get(id)?;
        tracked.connection.as_ref().map(LastKnown::connection)
    }

    /// A snapshot of what it holds and has done.
    pub fn stats(&self) -> MonitorStats {
        self.hub.stats.borrow().clone()
    }

    /// Waits until `condition` holds of [`ConnectionMonitor::stats`],
    /// re-checking it whenever they change (no polling).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    pub async fn wait_for(&self, condition: impl Fn(&MonitorStats) -> bool) -> MonitorStats {
        let mut stats = self.hub.stats.subscribe();
        let seen = stats
            .wait_for(|s| condition(s))
            .await
            .expect("the monitor owns the sender");
        seen.clone()
    }
}

impl Hub {
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn count(&self, change: impl FnOnce(&mut MonitorStats)) {
        self.stats.send_modify(change);
    }

    /// The chain returned `connection` to `owner`: hold it and tell the
    /// watchers.
    fn update(&self, connection: &Connection, owner: Option<Arc<str>>) {
        let kept = LastKnown::new(connection);
        let mut held = lock(&self.state);
        let tracked = held.connections.entry(connection.id.clone()).or_default();
        let new = tracked.connection.is_none();
        tracked.connection = Some(kept);
        tracked.state = connection.state;
        tracked.owner = owner.clone();
        self.publish(
            &mut held,
            ConnectionEventType::Update,
            connection,
            owner.as_deref(),
        );
        self.unlock(held);
        if new {
            self.count(|s| s.connections += 1);
        }
    }

    /// Connection `id` was closed: forget it and tell the watchers.
    fn delete(&self, id: &str) {
        let mut held = lock(&self.state);
        let Some(tracked) = held.connections.remove(id) else {
            return;
        };
        let Some(connection) = tracked.connection else {
            // Only a relay's claim: nothing was told of it.
            return;
        };
        // Decoding the last known connection is most of a delete's cost,
        // and nobody watches most closes.
        if !held.watchers.is_empty() {
            let owner = tracked.owner.as_deref();
            let connection = connection.connection();
            self.publish(&mut held, ConnectionEventType::Delete, &connection, owner);
        }
        self.unlock(held);
        self.count(|s| s.connections -= 1);
    }

    /// Relay `relay` now watches connection `id`'s next hop.
    fn claim(&self, id: &str, relay: u64) {
        let mut held = lock(&self.state);
        held.connections.entry(id.to_owned()).or_default().relay = Some(relay);
    }

    /// Relay `relay` no longer watches connection `id`'s next hop.
    fn unclaim(&self, id: &str, relay: u64) {
        let mut held = lock(&self.state);
        if let Entry::Occupied(mut entry) = held.connections.entry(id.to_owned()) {
            if entry.get().relay == Some(relay) {
                entry.get_mut().relay = None;
            }
            if entry.get().relay.is_none() && entry.get().connection.is_none() {
                entry.remove();
            }
        }
    }

    /// Sets connection `id`'s state, on the word of `relay` if given (and
    /// only while that relay watches it), and tells the watchers if it
    /// changed.
    fn set_state(&self, id: &str, relay: Option<u64>, state: State) -> bool {
        let mut held = lock(&self.state);
        let Some(tracked) = held.connections.get_mut(id) else {
            return false;
        };
        if relay.is_some() && tracked.relay != relay {
            return false;
        }
        let Some(current) = tracked.connection.as_mut() else {
            return false;
        };
        if tracked.state == state as i32 {
            return true;
        }
        let mut changed = current.connection();
        changed.state = state as i32;
        *current = LastKnown::new(&changed);
        tracked.state = changed.state;
        let owner = tracked.owner.clone();
        self.publish(
            &mut held,
            ConnectionEventType::Update,
            &changed,
            owner.as_deref(),
        );
        self.unlock(held);
        if relay.is_some() {
            self.count(|s| s.relayed_states += 1);
        }
        true
    }

    /// Sends one event about `connection` (owned by `owner`) to every
    /// watcher it concerns, cutting those that have fallen too far behind.
    fn publish(
        &self,
        held: &mut Held,
        kind: ConnectionEventType,
        connection: &Connection,
        owner: Option<&str>,
    ) {
        let mut cut = 0;
        held.watchers.retain(|watcher| {
            if !watcher.sees(connection, owner) {
                return true;
            }
            let event = ConnectionEvent {
                r#type: kind as i32,
                connections: HashMap::from([(connection.id.clone(), connection.clone())]),
                ..Default::default()
            };
            match watcher.events.try_send(event) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        watcher = watcher.id,
                        buffer = self.buffer,
                        "a MonitorConnections caller fell too far behind; ending its stream with RESOURCE_EXHAUSTED"
                    );
                    watcher.cut.store(true, Ordering::Release);
                    cut += 1;
                    false
                }
                // Its stream is being dropped; it takes itself off the list.
                Err(mpsc::error::TrySendError::Closed(_)) => true,
            }
        });
        held.cut += cut;
    }

    /// Lets go of the lock, then counts the watchers cut under it. Stats
    /// change only by increments, which commute, so counting after the
    /// lock keeps them exact.
    fn unlock(&self, mut held: MutexGuard<'_, Held>) {
        let cut = std::mem::take(&mut held.cut);
        drop(held);
        if cut > 0 {
            self.count(|s| {
                s.watchers -= cut as usize;
                s.watchers_cut += cut;
            });
        }
    }

    /// A new watcher, of SPIFFE ID `identity` if any, of the connections
    /// `selector` names, whose first event is their initial state.
    fn watch(
        &self,
        selector: MonitorScopeSelector,
        identity: Option<Arc<str>>,
    ) -> (u64, mpsc::Receiver<ConnectionEvent>, Arc<AtomicBool>) {
        let id = self.id();
        let (events, receiver) = mpsc::channel(self.buffer + 1);
        let cut = Arc::new(AtomicBool::new(false));
        let watcher = Watcher {
            id,
            selector,
            identity,
            events,
            cut: Arc::clone(&cut),
        };
        let mut held = lock(&self.state);
        let initial = held
            .connections
            .values()
            .filter_map(|t| Some((t.connection.as_ref()?.connection(), t.owner.as_deref())))
            .filter(|(c, owner)| watcher.sees(c, *owner))
            .map(|(c, _)| (c.id.clone(), c))
            .collect();
        let event = ConnectionEvent {
            r#type: ConnectionEventType::InitialStateTransfer as i32,
            connections: initial,
            ..Default::default()
        };
        watcher
            .events
            .try_send(event)
            .expect("a new channel has room for one event");
        held.watchers.push(watcher);
        drop(held);
        self.count(|s| s.watchers += 1);
        (id, receiver, cut)
    }

    /// Watcher `id`'s stream ended.
    fn unwatch(&self, id: u64) {
        let mut held = lock(&self.state);
        let before = held.watchers.len();
        held.watchers.retain(|w| w.id != id);
        let left = held.watchers.len() != before;
        drop(held);
        // One cut is off the list already, and counted.
        if left {
            self.count(|s| s.watchers -= 1);
        }
    }
}

impl Watcher {
    /// Whether this watcher is told of `connection`, owned by `owner`: its
    /// selector names it, and with SPIFFE identities on, it owns it.
    fn sees(&self, connection: &Connection, owner: Option<&str>) -> bool {
        let allowed = match &self.identity {
            Some(identity) => owner == Some(&**identity),
            None => true,
        };
        allowed && selector::selects(&self.selector, connection)
    }
}

/// The SPIFFE ID a served call's peer presented, if any.
fn identity(peer: Option<&crate::server::Peer>) -> Option<Arc<str>> {
    #[cfg(feature = "spiffe")]
    {
        peer?.spiffe_id().map(|id| Arc::from(id.to_string()))
    }
    #[cfg(not(feature = "spiffe"))]
    {
        let _ = peer;
        None
    }
}
