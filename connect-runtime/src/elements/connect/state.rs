//! What `connect` keeps (connection records, clients by URL, turns by
//! connection id) and the bookkeeping on it. Lower than everything else in
//! `connect/`: it calls into clients, never back up.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::client::{ClientFactory, ConnectClient};
use super::turns::{Turn, Turns};
use crate::ConcurrentMap;
use crate::chain::{ClientCancel, Context};
use crate::map::{Instance, RefCountMap, Released, SyncMap};
use crate::proto::connection::Connection;
use crate::transport::DialOptions;

/// Connection id → where it was forwarded (Go's `connectionInfoMap`).
#[derive(ConcurrentMap)]
pub(crate) struct ConnectionRecords(SyncMap<Arc<str>, Record>);

/// Remote URL → its client, counted once per connection (Go's
/// `clientInfoMap` with its `count`). Keyed by the context's shared URL, so
/// finding a client allocates nothing.
#[derive(ConcurrentMap)]
pub(crate) struct Clients(RefCountMap<Arc<Url>, Arc<ConnectClient>>);

/// Where one connection was forwarded: the client (and which instance of
/// it) that holds one reference on the connection's behalf, and the
/// connection as the remote last returned it (what a close on the
/// connection's behalf sends).
#[derive(Clone)]
pub(crate) struct Record {
    pub(super) instance: Instance,
    pub(super) client: Arc<ConnectClient>,
    pub(super) connection: Arc<Connection>,
}

pub(crate) struct Shared {
    pub(super) factory: Arc<dyn ClientFactory>,
    pub(super) dial: DialOptions,
    pub(super) cleanup_timeout: Duration,
    /// Parent of every client's cancel token.
    pub(super) root: CancellationToken,
    pub(super) records: ConnectionRecords,
    pub(super) clients: Clients,
    /// Woken when a client leaves the map.
    pub(super) clients_changed: Notify,
    pub(super) turns: Turns,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

impl Shared {
    /// A client for `url`, and the task that removes it from the map the
    /// moment it is cancelled (by its monitor, by shutdown, or by the last
    /// release). Runs under the map's shard lock: no awaiting here.
    pub(super) fn new_client(
        self: &Arc<Self>,
        url: Arc<Url>,
        instance: Instance,
    ) -> Arc<ConnectClient> {
        let cancel = ClientCancel::from_token(self.root.child_token());
        let client = ConnectClient::new(url, cancel, Arc::clone(&self.factory), &self.dial);
        let shared: Weak<Shared> = Arc::downgrade(self);
        let watched = Arc::clone(&client);
        tokio::spawn(async move {
            watched.cancel_handle().cancelled().await;
            watched.shut();
            if let Some(shared) = shared.upgrade()
                && shared.clients.evict(watched.url(), instance).is_some()
            {
                shared.clients_changed.notify_waiters();
            }
        });
        client
    }

    /// Forgets `record`, which `turn`'s id holds, and releases its reference.
    pub(super) fn forget(&self, turn: &Turn, record: &Record) {
        let instance = record.instance;
        if self
            .records
            .delete_if(turn.id(), |r| r.instance == instance)
        {
            self.release(record.client.url(), instance);
        }
    }

    /// Drops one reference; the last one closes the client.
    pub(super) fn release(&self, url: &Url, instance: Instance) {
        if let Released::Last(client) = self.clients.release(url, instance) {
            client.shut();
            self.clients_changed.notify_waiters();
        }
    }

    /// A context for closes `connect` makes on its own behalf: the client's
    /// URL and cancel handle, and a fresh deadline.
    pub(super) fn cleanup_context(&self, client: &ConnectClient) -> Context {
        Context::new()
            .with_client_url(Arc::clone(client.url()))
            .with_client_cancel(client.cancel_handle().clone())
            .with_timeout(self.cleanup_timeout)
    }
}
