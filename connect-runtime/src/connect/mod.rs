//! The `connect` server element: forwards each incoming request, as a
//! client, to the server its client URL names, keeping one client per URL
//! for exactly as long as connections use it.

mod client;
mod lease;
mod turns;

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use url::Url;

use self::client::ConnectClient;
use self::lease::{Lease, may_have_acted};
use self::turns::{Turn, Turns};
use crate::chain::ClientChain;
use crate::context::{ClientCancel, Context};
use crate::element::Next;
use crate::map::{Instance, RefCountMap, Released, SyncMap};
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use crate::transport::dial::{ClientConn, DialOptions};
use crate::transport::target::Target;
use crate::{ConcurrentMap, Element, hooks};

/// How long the closes `connect` makes on its own behalf may take: after a
/// failure, on a URL change, and for calls abandoned half-way.
pub const DEFAULT_CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the client chain for a newly dialed remote (Go's `ClientFactory`).
///
/// Called once per client, with the client's own [`Context`] — its client URL
/// and its [`ClientCancel`] handle, for elements such as
/// [`Monitor`](crate::Monitor) — and the dialed channel. Any
/// `Fn(&Context, ClientConn) -> ClientChain` is a factory.
pub trait ClientFactory: Send + Sync + 'static {
    /// The chain requests to this client's remote go through.
    fn client(&self, ctx: &Context, conn: ClientConn) -> ClientChain;
}

impl<F> ClientFactory for F
where
    F: Fn(&Context, ClientConn) -> ClientChain + Send + Sync + 'static,
{
    fn client(&self, ctx: &Context, conn: ClientConn) -> ClientChain {
        self(ctx, conn)
    }
}

/// The `connect` server element (Go's `connect.NewServer`).
///
/// For each `Request` it finds the client for the context's client URL —
/// dialing lazily on first use, within the dial timeout — sends a copy of
/// the request through that client's chain, and passes the remote's answer
/// on to the rest of the server chain. `Close` closes the client side,
/// releases the client, and always continues down the chain.
///
/// - One client per URL, shared by every connection forwarded there, and
///   dropped (channel, tasks, TCP connection) when the last of those
///   connections closes. Never a client for a URL with no connections.
/// - A connection whose URL changes is closed at the old remote first.
/// - If the remote or the rest of the chain fails a new connection, nothing
///   is left behind; the caller sees the original error.
/// - Calls for one connection id are applied one at a time, in arrival
///   order; different ids do not wait for each other.
/// - A caller that goes away mid-call (its future dropped, its cancellation
///   token cancelled, its deadline passed) leaves nothing behind either: a
///   client call already on its way runs to its end (within the cleanup
///   timeout) and what it created on the remote is then closed, as last
///   known, in the background, still holding the id's turn, so the remote
///   never sees two calls for one id at once.
/// - Cancelling a client through its [`ClientCancel`] handle (a
///   [`Monitor`](crate::Monitor) does when the remote dies) closes it at
///   once; connections bound to it fail their next request, and the request
///   after that dials afresh.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::proto::connection::Connection;
/// use connect_runtime::proto::networkservice::NetworkServiceRequest;
/// use connect_runtime::{
///     ClientChain, ClientUrl, Connect, Context, GrpcClient, Monitor, Passthrough, ServerChain, serve,
/// };
/// use tokio_util::sync::CancellationToken;
///
/// // A remote endpoint.
/// let endpoint = serve(
///     &"tcp://127.0.0.1:0".parse()?,
///     ServerChain::builder().with(Passthrough).build(),
///     CancellationToken::new(),
/// )
/// .await?;
///
/// // A passthrough: clienturl → connect, with a health monitor in the client chain.
/// let connect = Connect::new(|ctx: &Context, conn| {
///     ClientChain::builder()
///         .with(Monitor::new(ctx, conn.clone()))
///         .with(GrpcClient::new(conn))
///         .build()
/// });
/// let passthrough = ServerChain::builder()
///     .with(ClientUrl::new(endpoint.url().clone()))
///     .with(connect.clone())
///     .build();
///
/// let request = NetworkServiceRequest {
///     connection: Some(Box::new(Connection { id: "c-1".into(), ..Default::default() })),
///     ..Default::default()
/// };
/// let conn = passthrough.request(Context::new(), request).await?;
/// assert_eq!(connect.stats().clients[0].refs, 1);
///
/// passthrough.close(Context::new(), conn).await?;
/// assert!(connect.stats().is_idle());
/// # Ok(()) }
/// ```
#[derive(Clone, Element)]
#[element(server, name = "connect")]
pub struct Connect {
    shared: Arc<Shared>,
}

/// Options for [`Connect`].
pub struct ConnectBuilder {
    factory: Arc<dyn ClientFactory>,
    dial: DialOptions,
    cleanup_timeout: Duration,
    shutdown: Option<CancellationToken>,
}

impl ConnectBuilder {
    /// Bounds each dial (default [`DEFAULT_DIAL_TIMEOUT`](crate::DEFAULT_DIAL_TIMEOUT), 100 ms).
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.dial = self.dial.timeout(timeout);
        self
    }

    /// How clients dial: TLS, keepalive, per-call metadata, timeout.
    pub fn dial_options(mut self, options: DialOptions) -> Self {
        self.dial = options;
        self
    }

    /// Bounds the closes `connect` makes on its own behalf (default
    /// [`DEFAULT_CLEANUP_TIMEOUT`]).
    pub fn cleanup_timeout(mut self, timeout: Duration) -> Self {
        self.cleanup_timeout = timeout;
        self
    }

    /// Closes every client when `token` is cancelled (dropping the last
    /// clone of the element does too).
    pub fn shutdown_on(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// The element.
    pub fn build(self) -> Connect {
        let root = match &self.shutdown {
            Some(token) => token.child_token(),
            None => CancellationToken::new(),
        };
        Connect {
            shared: Arc::new(Shared {
                factory: self.factory,
                dial: self.dial,
                cleanup_timeout: self.cleanup_timeout,
                root,
                records: ConnectionRecords::new(),
                clients: Clients::new(),
                clients_changed: Notify::new(),
                turns: Turns::default(),
            }),
        }
    }
}

/// What a [`Connect`] holds right now: for tests, logs and health endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectStats {
    /// Connections it has forwarded and not yet closed.
    pub records: usize,
    /// Connection ids with a call in progress or waiting for its turn.
    pub in_flight: usize,
    /// Calls queued behind another call for the same connection id.
    pub waiting: usize,
    /// Its clients, by URL.
    pub clients: Vec<ClientStats>,
}

/// One client in [`ConnectStats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientStats {
    /// The remote's URL.
    pub url: String,
    /// Connections using it.
    pub refs: usize,
    /// Whether its dial has completed.
    pub dialed: bool,
    /// Connections it has made to the remote: its dial, and one more each
    /// time the remote ended a connection (a GOAWAY) and a call needed one.
    pub dials: u64,
}

impl ConnectStats {
    /// No connections, no clients, no calls in flight.
    pub fn is_idle(&self) -> bool {
        self.records == 0 && self.in_flight == 0 && self.clients.is_empty()
    }
}

impl Connect {
    /// An element that builds clients with `factory`, with default options.
    pub fn new<F>(factory: F) -> Self
    where
        F: Fn(&Context, ClientConn) -> ClientChain + Send + Sync + 'static,
    {
        Self::builder(factory).build()
    }

    /// Starts building an element with options; the factory is a closure.
    pub fn builder<F>(factory: F) -> ConnectBuilder
    where
        F: Fn(&Context, ClientConn) -> ClientChain + Send + Sync + 'static,
    {
        Self::builder_with_factory(factory)
    }

    /// Starts building an element with options, from any [`ClientFactory`].
    pub fn builder_with_factory(factory: impl ClientFactory) -> ConnectBuilder {
        ConnectBuilder {
            factory: Arc::new(factory),
            dial: DialOptions::new(),
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
            shutdown: None,
        }
    }

    /// Closes every client now. Connections bound to them fail their next
    /// request (which forgets them) and can be closed as usual.
    pub fn shutdown(&self) {
        self.shared.root.cancel();
    }

    /// Waits until the element is idle (see [`ConnectStats::is_idle`]):
    /// every connection closed, every client gone, no call or cleanup in
    /// flight. For graceful shutdowns and tests.
    pub async fn idle(&self) {
        self.wait_for(|stats| stats.is_idle()).await;
    }

    /// Waits until no call or cleanup is in flight and every cancelled
    /// client has left the map; connections may still be open. What a test
    /// or an operator waits for after a burst of activity, before reading
    /// [`Connect::stats`].
    pub async fn settled(&self) {
        self.wait_for(|stats| stats.in_flight == 0).await;
        self.wait_until_clients(|shared| {
            let mut cancelled = false;
            shared.clients.range(|_, client, _| {
                cancelled |= client.is_cancelled();
                !cancelled
            });
            !cancelled
        })
        .await;
    }

    /// Every connection it holds: id and the URL it was forwarded to.
    pub fn connections(&self) -> Vec<(String, Url)> {
        let mut connections = Vec::new();
        self.shared.records.range(|id, record| {
            connections.push((id.to_string(), Url::clone(record.client.url())));
            true
        });
        connections.sort();
        connections
    }

    /// Waits until `condition` holds of [`Connect::stats`], re-checking it
    /// whenever a call starts waiting for its turn, a call ends, or a client
    /// leaves the map (no polling).
    pub async fn wait_for(&self, condition: impl Fn(&ConnectStats) -> bool) {
        self.wait_until_clients(|_| condition(&self.stats())).await;
    }

    /// Re-checks `condition` whenever turns change or a client leaves the map.
    async fn wait_until_clients(&self, condition: impl Fn(&Shared) -> bool) {
        loop {
            let turns_changed = self.shared.turns.changed().notified();
            tokio::pin!(turns_changed);
            turns_changed.as_mut().enable();
            let clients_changed = self.shared.clients_changed.notified();
            tokio::pin!(clients_changed);
            clients_changed.as_mut().enable();
            if condition(&self.shared) {
                return;
            }
            tokio::select! {
                () = turns_changed => {}
                () = clients_changed => {}
            }
        }
    }

    /// A snapshot of its connections and clients.
    pub fn stats(&self) -> ConnectStats {
        let mut clients = Vec::new();
        self.shared.clients.range(|url, client, refs| {
            clients.push(ClientStats {
                url: url.to_string(),
                refs,
                dialed: client.is_dialed(),
                dials: client.dials(),
            });
            true
        });
        clients.sort_by(|a, b| a.url.cmp(&b.url));
        ConnectStats {
            records: self.shared.records.len(),
            in_flight: self.shared.turns.len(),
            waiting: self.shared.turns.waiting(),
            clients,
        }
    }
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("stats", &self.stats())
            .finish()
    }
}

#[hooks]
impl Connect {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        // The caller's limits bound what it waits for; an operation cut by
        // them is finished by its lease, as one whose future was dropped.
        let limits = ctx.clone();
        limits
            .run(Shared::request(&self.shared, ctx, request, next))
            .await
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        let limits = ctx.clone();
        limits
            .run(Shared::close(&self.shared, ctx, connection, next))
            .await
    }
}

/// The context a client call runs with: the caller's deadline (sent to the
/// remote, which ends the call there), without its cancellation token (an
/// abandoned call is finished by its lease, bounded by the cleanup
/// timeout), with the client's cancel handle.
fn client_context(ctx: &Context, client: &ConnectClient) -> Context {
    ctx.clone()
        .without_cancellation_token()
        .with_client_cancel(client.cancel_handle().clone())
}

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
    instance: Instance,
    client: Arc<ConnectClient>,
    connection: Arc<Connection>,
}

pub(crate) struct Shared {
    factory: Arc<dyn ClientFactory>,
    dial: DialOptions,
    cleanup_timeout: Duration,
    /// Parent of every client's cancel token.
    root: CancellationToken,
    records: ConnectionRecords,
    clients: Clients,
    /// Woken when a client leaves the map.
    clients_changed: Notify,
    turns: Turns,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

fn in_context(status: Status, what: &str, id: &str, url: &Url) -> Status {
    Status::new(
        status.code(),
        format!(
            "connect: {what} of connection {id} via {url}: {}",
            status.message()
        ),
    )
}

impl Shared {
    async fn request(
        self: &Arc<Self>,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let Some(connection) = request.connection.as_deref() else {
            return Err(Status::invalid_argument(
                "connect: the request has no connection",
            ));
        };
        if connection.id.is_empty() {
            return Err(Status::invalid_argument(
                "connect: the request's connection has an empty id",
            ));
        }
        let id: Arc<str> = Arc::from(connection.id.as_str());
        let Some(url) = ctx.client_url_arc().cloned() else {
            return Err(Status::invalid_argument(format!(
                "connect: no client URL for connection {id}: put a clienturl element before connect"
            )));
        };
        if let Err(err) = Target::from_url(&url) {
            return Err(Status::invalid_argument(format!(
                "connect: connection {id}: {err}"
            )));
        }

        let turn = self.turns.take(&id).await;
        let turn = match self.records.load(&*id) {
            Some(record) if *record.client.url() == url => {
                return self.refresh(ctx, request, next, record, turn).await;
            }
            // The URL changed: close at the old remote, then proceed as new.
            // Boxed: a cold path that would otherwise swell every request.
            Some(record) => Box::pin(self.leave(&id, record, turn)).await,
            None => turn,
        };
        self.establish(ctx, request, next, url, id, turn).await
    }

    /// Closes `id` at the remote its record names and forgets the record,
    /// before the connection moves elsewhere. A failure is only logged.
    async fn leave(self: &Arc<Self>, id: &Arc<str>, record: Record, turn: Turn) -> Turn {
        let instance = record.instance;
        self.records.delete_if(&**id, |r| r.instance == instance);
        let old_url = Arc::clone(record.client.url());
        let closing = Connection::clone(&record.connection);
        let mut lease = Lease::adopt(Arc::clone(self), record, turn);
        let ctx = self.cleanup_context(lease.client());
        if let Err(status) = lease.close(ctx, closing).await {
            tracing::warn!(
                connection_id = %id,
                url = %old_url,
                error = %status.message(),
                "closing at the previous remote failed"
            );
        }
        lease.release()
    }

    async fn refresh(
        self: &Arc<Self>,
        ctx: Context,
        mut request: NetworkServiceRequest,
        next: Next<'_>,
        record: Record,
        turn: Turn,
    ) -> Result<Connection, Status> {
        let client = Arc::clone(&record.client);
        if client.is_cancelled() {
            // Its monitor (or a heal element) gave up on the remote: forget
            // the connection; the next request for it dials afresh.
            self.forget(&turn, &record);
            return Err(in_context(
                Status::unavailable("its client was closed; request again to reconnect"),
                "refresh",
                turn.id(),
                client.url(),
            ));
        }
        let mut lease = Lease::borrow(Arc::clone(self), &record, turn);
        let client_ctx = client_context(&ctx, &client);
        let reply = match lease.request(client_ctx, request.clone()).await {
            Ok(reply) => reply,
            Err(status) => {
                let status = in_context(status, "refresh", lease.id(), client.url());
                let turn = lease.keep();
                if client.is_cancelled() {
                    // The remote could not be reached again: forget the
                    // connection; the next request for it dials afresh.
                    self.forget(&turn, &record);
                }
                return Err(status);
            }
        };
        let turn = lease.keep();
        let reply = Arc::new(reply);
        self.records.store(
            Arc::from(turn.id()),
            Record {
                connection: Arc::clone(&reply),
                ..record
            },
        );
        request.connection = Some(Box::new(Connection::clone(&reply)));
        next.request(ctx, request).await
    }

    async fn establish(
        self: &Arc<Self>,
        ctx: Context,
        mut request: NetworkServiceRequest,
        next: Next<'_>,
        url: Arc<Url>,
        id: Arc<str>,
        turn: Turn,
    ) -> Result<Connection, Status> {
        let mut lease = self.acquire(&url, turn)?;
        let client = Arc::clone(lease.client());
        let outgoing = request.clone();
        // From here the remote may have the connection: if this call is
        // abandoned, the lease closes it there, as sent.
        lease.may_exist_remotely(Arc::new(
            outgoing.connection.as_deref().cloned().unwrap_or_default(),
        ));
        let client_ctx = client_context(&ctx, &client);
        let reply = match lease.request(client_ctx, outgoing).await {
            Ok(reply) => Box::new(reply),
            Err(status) => {
                if may_have_acted(&status) {
                    // The remote may have it: dropping the armed lease closes
                    // it there in the background, then releases.
                    drop(lease);
                } else {
                    lease.release();
                }
                return Err(in_context(status, "request", &id, &url));
            }
        };
        let last_known = Arc::new(Connection::clone(&reply));
        lease.may_exist_remotely(Arc::clone(&last_known));
        lease.record(id, last_known);
        request.connection = Some(reply);
        match next.request(ctx, request).await {
            Ok(connection) => {
                drop(lease.keep());
                Ok(connection)
            }
            Err(status) => {
                // Undo, with a deadline of its own: the caller's may be gone.
                let cleanup = self.cleanup_context(&client);
                let (closed, turn) = Box::pin(lease.undo(cleanup)).await;
                if let Err(close) = closed {
                    tracing::warn!(
                        connection_id = %turn.id(),
                        url = %url,
                        error = %close.message(),
                        "closing after the rest of the chain failed also failed"
                    );
                }
                Err(status)
            }
        }
    }

    async fn close(
        self: &Arc<Self>,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        let id: Arc<str> = Arc::from(connection.id.as_str());
        let turn = self.turns.take(&id).await;
        let (client_result, _turn) = match self.records.load_and_delete(&*id) {
            Some(record) => {
                let client_ctx = client_context(&ctx, &record.client);
                let url = Arc::clone(record.client.url());
                let mut lease = Lease::adopt(Arc::clone(self), record, turn);
                let result = lease.close(client_ctx, connection.clone()).await;
                (
                    result.map_err(|s| in_context(s, "close", &id, &url)),
                    lease.release(),
                )
            }
            None => (
                Err(Status::not_found(format!(
                    "connect: no client found for connection {id}"
                ))),
                turn,
            ),
        };
        let next_result = next.close(ctx, connection).await;
        match (client_result, next_result) {
            (Ok(()), next_result) => next_result,
            (Err(client), Ok(())) => Err(client),
            (Err(client), Err(next)) => Err(Status::new(
                next.code(),
                format!("{} (and {})", next.message(), client.message()),
            )),
        }
    }

    /// One reference to the client for `url`, creating the client if there
    /// is none. A client found cancelled but not yet evicted is evicted and
    /// replaced.
    /// After shutdown every new client is born cancelled: the request is
    /// refused at once rather than retried.
    fn acquire(self: &Arc<Self>, url: &Arc<Url>, turn: Turn) -> Result<Lease, Status> {
        loop {
            if self.root.is_cancelled() {
                return Err(Status::unavailable("connect is shut down"));
            }
            let acquired = self.clients.acquire(Arc::clone(url), |instance| {
                self.new_client(Arc::clone(url), instance)
            });
            if acquired.value.is_cancelled() {
                self.release(url, acquired.instance);
                if self.clients.evict(url, acquired.instance).is_some() {
                    acquired.value.shut();
                    self.clients_changed.notify_waiters();
                }
                continue;
            }
            return Ok(Lease::new(
                Arc::clone(self),
                acquired.instance,
                acquired.value,
                turn,
            ));
        }
    }

    /// A client for `url`, and the task that removes it from the map the
    /// moment it is cancelled (by its monitor, by shutdown, or by the last
    /// release). Runs under the map's shard lock: no awaiting here.
    fn new_client(self: &Arc<Self>, url: Arc<Url>, instance: Instance) -> Arc<ConnectClient> {
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
    fn forget(&self, turn: &Turn, record: &Record) {
        let instance = record.instance;
        if self
            .records
            .delete_if(turn.id(), |r| r.instance == instance)
        {
            self.release(record.client.url(), instance);
        }
    }

    /// Drops one reference; the last one closes the client.
    fn release(&self, url: &Url, instance: Instance) {
        if let Released::Last(client) = self.clients.release(url, instance) {
            client.shut();
            self.clients_changed.notify_waiters();
        }
    }

    /// A context for closes `connect` makes on its own behalf: the client's
    /// URL and cancel handle, and a fresh deadline.
    fn cleanup_context(&self, client: &ConnectClient) -> Context {
        Context::new()
            .with_client_url(Arc::clone(client.url()))
            .with_client_cancel(client.cancel_handle().clone())
            .with_timeout(self.cleanup_timeout)
    }
}
