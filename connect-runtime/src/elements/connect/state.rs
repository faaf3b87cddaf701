//! What `connect` keeps (connection records, clients by URL, turns by
//! connection id) and the bookkeeping on it. Lower than everything else in
//! `connect/`: it calls into clients, never back up.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::client::{ClientFactory, ConnectClient};
use crate::elements::changes::Changes;
use crate::elements::last_known::LastKnown;
use crate::elements::turns::Turns;
use connect_macros::ConcurrentMap;

use crate::chain::{ClientCancel, Context};
use crate::deadline::deadline_after;
use crate::map::{DEFAULT_SHARDS, Instance, RefCountMap, Released, Shards};
use crate::sync::lock;
use crate::telemetry::ConnectMetrics;
use crate::transport::tls::Credential;
use crate::transport::{DialOptions, Hook};

/// Connection id → where it was forwarded (Go's `connectionInfoMap`).
/// Each record is its own key, its id kept in the allocation of its
/// last-known connection: a table slot is a record, 24 bytes, and a
/// connection's id costs no allocation of its own.
pub(crate) struct ConnectionRecords(Shards<Record, ()>);

impl ConnectionRecords {
    pub(super) fn new() -> Self {
        Self(Shards::new(DEFAULT_SHARDS))
    }

    /// The client `id`'s record names (the reference stays the record's).
    pub(super) fn client(&self, id: &str) -> Option<Arc<ConnectClient>> {
        let shard = self.0.lock(id.as_bytes());
        shard
            .key(id.as_bytes())
            .map(|record| Arc::clone(&record.client))
    }

    /// Files `record` under its id, replacing any record there.
    pub(super) fn store(&self, record: Record) {
        self.0.lock(&record).insert(record, ());
    }

    /// Removes and returns `id`'s record if `condition` holds of it (under
    /// the shard's lock: `condition` must not use this map).
    pub(super) fn take_if(
        &self,
        id: &str,
        condition: impl FnOnce(&Record) -> bool,
    ) -> Option<Record> {
        let mut shard = self.0.lock(id.as_bytes());
        if shard.key(id.as_bytes()).is_some_and(condition) {
            shard.remove_entry(id.as_bytes()).map(|(record, ())| record)
        } else {
            None
        }
    }

    pub(super) fn load_and_delete(&self, id: &str) -> Option<Record> {
        self.take_if(id, |_| true)
    }

    /// Calls `f` on what `copy` takes of each record, as
    /// [`SyncMap::range`](crate::map::SyncMap::range) does.
    pub(super) fn range<R>(&self, mut copy: impl FnMut(&Record) -> R, f: impl FnMut(R) -> bool) {
        self.0.range(|record, ()| copy(record), f);
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Remote URL → its client, counted once per connection (Go's
/// `clientInfoMap` with its `count`). Keyed by the context's shared URL, so
/// finding a client allocates nothing.
#[derive(ConcurrentMap)]
pub(crate) struct Clients(RefCountMap<Arc<Url>, Arc<ConnectClient>>);

/// Clients retired from [`Clients`] while connections still use them, by
/// instance, with the count of those connections. Locked around a
/// retirement's move out of `Clients`, so that a release that misses the
/// client there finds it here.
pub(crate) type Retired = Mutex<HashMap<Instance, (Arc<ConnectClient>, usize)>>;

/// Where one connection was forwarded: the client that holds one
/// reference on the connection's behalf, and the connection as the remote
/// last returned it (what a close on the connection's behalf sends).
pub(crate) struct Record {
    pub(super) client: Arc<ConnectClient>,
    /// Filed under the connection's id: the record's key.
    pub(super) connection: LastKnown,
}

// A record is compared and hashed by its id alone, as bytes: a lookup by
// an id's bytes finds it.
impl Hash for Record {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.connection.key_bytes().hash(state);
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.connection.key_bytes() == other.connection.key_bytes()
    }
}

impl Eq for Record {}

impl Borrow<[u8]> for Record {
    fn borrow(&self) -> &[u8] {
        self.connection.key_bytes()
    }
}

impl Record {
    /// The id it is filed under.
    pub(super) fn id(&self) -> &str {
        self.connection.key()
    }

    /// Which instance of the URL's client it is (the client knows: one
    /// field fewer in every record).
    pub(super) fn instance(&self) -> Instance {
        self.client.instance()
    }
}

pub(crate) struct Shared {
    pub(super) factory: Arc<dyn ClientFactory>,
    pub(super) dial: DialOptions,
    pub(super) cleanup_timeout: Duration,
    /// Parent of every client's cancel token.
    pub(super) root: CancellationToken,
    pub(super) records: ConnectionRecords,
    pub(super) clients: Clients,
    pub(super) retired: Retired,
    /// How long before its credential expires a client is closed.
    pub(super) expiry_margin: Duration,
    /// How long a client whose last connection left stays for the next.
    pub(super) linger: Duration,
    /// Starts the task that retires clients when the credential rotates.
    pub(super) following: Once,
    /// Woken when a client leaves the map.
    pub(super) clients_changed: Changes,
    pub(super) turns: Turns,
    pub(super) metrics: ConnectMetrics,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

impl Shared {
    /// A client for `url`, and the task that removes it from the map the
    /// moment it is cancelled (by its monitor, by shutdown, by the last
    /// release, or as its credential nears expiry). Runs under the map's
    /// shard lock: no awaiting here.
    pub(super) fn new_client(
        self: &Arc<Self>,
        url: Arc<Url>,
        instance: Instance,
    ) -> Arc<ConnectClient> {
        let cancel = ClientCancel::from_token(self.root.child_token());
        let shared: Weak<Shared> = Arc::downgrade(self);
        // Observers of `stats()` hear when one of its connections ends.
        let observed = Weak::clone(&shared);
        let ended = Hook(Arc::new(move || {
            if let Some(shared) = observed.upgrade() {
                shared.clients_changed.notify();
            }
        }));
        let dial = self.dial.clone().on_connection_end(ended);
        let client = ConnectClient::new(url, instance, cancel, Arc::clone(&self.factory), dial);
        let watched = Arc::clone(&client);
        let (margin, linger) = (self.expiry_margin, self.linger);
        // Watched from now: its last connection may leave before the task
        // first runs.
        let unused = watched.unused();
        tokio::spawn(async move {
            tokio::select! {
                () = watched.cancel_handle().cancelled() => {}
                () = Self::until_expiry(&shared, &watched, margin) => {
                    tracing::debug!(url = %watched.url(), "closing a client before its credential expires");
                    if let Some(shared) = shared.upgrade() {
                        shared.retire(&watched);
                    }
                }
                () = Self::until_unused(&shared, &watched, unused, linger) => {
                    tracing::debug!(url = %watched.url(), ?linger, "closing a client that lingered unused");
                }
            }
            watched.shut();
            if let Some(shared) = shared.upgrade()
                && shared.clients.evict(watched.url(), instance).is_some()
            {
                shared.clients_changed.notify();
            }
        });
        client
    }

    /// Waits until `margin` before the expiry of the credential `client`
    /// dialed with (forever if it has none), retiring it meanwhile if a
    /// rotation came between reading that credential and tagging it.
    async fn until_expiry(shared: &Weak<Self>, client: &Arc<ConnectClient>, margin: Duration) {
        let mut tag = client.credential();
        let tagged = match tag.wait_for(Option::is_some).await {
            Ok(tagged) => tagged.clone(),
            Err(_) => None,
        };
        let Some(credential) = tagged else {
            return std::future::pending().await;
        };
        if let Some(shared) = shared.upgrade()
            && let Some(current) = shared.dial.credential()
            && current.borrow().serial != credential.serial
        {
            shared.retire(client);
        }
        let left = credential
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(left.saturating_sub(margin)).await;
    }

    /// Waits until `client` has gone `linger` without a connection, and
    /// takes it out of the map then (forever with no linger: the last
    /// release closes it at once).
    async fn until_unused(
        shared: &Weak<Self>,
        client: &Arc<ConnectClient>,
        mut unused: watch::Receiver<u64>,
        linger: Duration,
    ) {
        if linger.is_zero() {
            return std::future::pending().await;
        }
        loop {
            if unused.changed().await.is_err() {
                return std::future::pending().await;
            }
            // Each time its last connection leaves, the linger starts over.
            loop {
                tokio::time::sleep(linger).await;
                if !unused.has_changed().unwrap_or(false) {
                    break;
                }
                unused.mark_unchanged();
            }
            let Some(shared) = shared.upgrade() else {
                return std::future::pending().await;
            };
            if shared
                .clients
                .evict_unused(client.url(), client.instance())
                .is_some()
            {
                shared.clients_changed.notify();
                return;
            }
        }
    }

    /// Starts, once, the task that retires every client dialed under an
    /// earlier credential when the dial options' credential rotates.
    pub(super) fn follow_rotation(self: &Arc<Self>) {
        let Some(credential) = self.dial.credential() else {
            return;
        };
        // Outside a runtime the call fails anyway (it cannot dial); the
        // task starts with the first call made in one.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.following.call_once(|| {
            let mut credential = credential.clone();
            let shared = Arc::downgrade(self);
            let root = self.root.clone();
            runtime.spawn(async move {
                loop {
                    tokio::select! {
                        changed = credential.changed() => if changed.is_err() { return },
                        () = root.cancelled() => return,
                    }
                    let current = credential.borrow_and_update().clone();
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    shared.retire_all_but(&current);
                }
            });
        });
    }

    /// Retires every client whose dial presented a credential other than
    /// `current`.
    fn retire_all_but(&self, current: &Credential) {
        let mut stale = Vec::new();
        self.clients.range(|_, client, _| {
            if client
                .credential_now()
                .is_some_and(|c| c.serial != current.serial)
            {
                stale.push(Arc::clone(client));
            }
            true
        });
        for client in stale {
            self.retire(&client);
        }
    }

    /// Moves `client` out of the map, so that new requests for its URL get
    /// a fresh client; it lives on while connections use it.
    pub(super) fn retire(&self, client: &Arc<ConnectClient>) {
        if !client.retire() {
            return;
        }
        let mut retired = lock(&self.retired);
        if let Some((client, refs)) = self.clients.take(client.url(), client.instance()) {
            tracing::debug!(url = %client.url(), refs, "retiring a client dialed under an earlier credential");
            retired.insert(client.instance(), (client, refs));
        }
        drop(retired);
        self.clients_changed.notify();
    }

    /// Drops one reference; the last one closes the client, retired or not
    /// (one in the map lingers first, if a linger is set).
    pub(super) fn release(&self, url: &Url, instance: Instance) {
        let released = match self.linger.is_zero() {
            true => self.clients.release(url, instance),
            false => self.clients.release_keeping(url, instance),
        };
        let last = match released {
            Released::Last(client) => client,
            Released::Unused(client) => {
                client.went_unused();
                self.clients_changed.notify();
                return;
            }
            Released::Shared(_) => return,
            Released::Gone => {
                let mut retired = lock(&self.retired);
                let Entry::Occupied(mut entry) = retired.entry(instance) else {
                    return;
                };
                entry.get_mut().1 -= 1;
                if entry.get().1 > 0 {
                    return;
                }
                entry.remove().0
            }
        };
        last.shut();
        self.clients_changed.notify();
    }

    /// A context for closes `connect` makes on its own behalf, from the
    /// context of the call that caused them: its values and metadata (as
    /// Go's `postpone.ContextWithValues` keeps them: a token, say), but a
    /// fresh deadline and no cancellation; the client's URL and cancel
    /// handle.
    pub(super) fn cleanup_context(&self, origin: &Context, client: &ConnectClient) -> Context {
        origin
            .clone()
            .without_cancellation_token()
            .with_fresh_deadline(Some(deadline_after(self.cleanup_timeout)))
            .with_client_url(Arc::clone(client.url()))
            .with_client_cancel(client.cancel_handle().clone())
    }
}
