//! The `connect` server element: forwards each incoming request, as a
//! client, to the server its client URL names, keeping one client per URL
//! for exactly as long as connections use it.

mod client;
mod forward;
mod lease;
mod state;

use std::fmt;
use std::sync::{Arc, Once, Weak};
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::Meter;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use url::Url;

pub use self::client::ClientFactory;
use self::client::ConnectClient;
use self::state::{Clients, ConnectionRecords, Retired, Shared};
use crate::chain::ClientChain;
use crate::chain::Context;
use crate::chain::Next;
use crate::elements::changes::{self, Changes};
use crate::elements::turns::Turns;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use crate::telemetry::{Census, ConnectMetrics};
use crate::transport::tls::DEFAULT_EXPIRY_MARGIN;
use crate::transport::{ClientConn, DialOptions};
use connect_macros::Element;

use crate::chain::Hooks;

/// How long the closes `connect` makes on its own behalf may take: after a
/// failure, on a URL change, and for calls abandoned half-way.
pub const DEFAULT_CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

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
///   connections closes. Never a client for a URL with no connections
///   (unless a [`linger`](ConnectBuilder::linger) keeps it a while).
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
/// - When the dial options' TLS certificate rotates (a
///   [`ClientTls::rotating`](crate::tls::ClientTls::rotating) one, such as a
///   SPIFFE identity's), every client dialed under the earlier certificate
///   is *retired*: new requests for its URL go to a fresh client (one dial
///   for the whole burst); each connection bound to it moves to the fresh
///   client on its next refresh (the remote sees a refresh, not a close);
///   and it closes when its last connection leaves, or
///   [`expiry_margin`](ConnectBuilder::expiry_margin) before its
///   certificate expires, whichever comes first. Connections still bound to
///   it then move on their next refresh all the same.
/// - A remote's connection ending (a GOAWAY of any code, a restart) costs
///   nothing but a new connection on the next call. Cancelling a client
///   through its [`ClientCancel`](crate::ClientCancel) handle (a
///   [`Monitor`](crate::Monitor) does when the remote stops serving, and a
///   new connection that cannot be made does it too) closes it at once and
///   takes it out of the map; the connections bound to it keep their
///   records, and their next request or close goes through the URL's
///   current client, dialing one if there is none (one dial for a burst).
///   While the remote is unreachable that call fails `Unavailable` within
///   the dial timeout, and a refresh leaves the record for the next try.
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
///     "tcp://127.0.0.1:0",
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
#[element(server, name = "connect", entries = "records_held")]
pub struct Connect {
    shared: Arc<Shared>,
}

/// Options for [`Connect`].
pub struct ConnectBuilder {
    factory: Arc<dyn ClientFactory>,
    dial: DialOptions,
    dial_timeout: Option<Duration>,
    cleanup_timeout: Duration,
    expiry_margin: Duration,
    linger: Duration,
    shutdown: Option<CancellationToken>,
    meter: Option<Meter>,
}

impl fmt::Debug for ConnectBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectBuilder")
            .field("dial", &self.dial)
            .field("dial_timeout", &self.dial_timeout)
            .field("cleanup_timeout", &self.cleanup_timeout)
            .field("expiry_margin", &self.expiry_margin)
            .field("linger", &self.linger)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl ConnectBuilder {
    /// Bounds each dial (default [`DEFAULT_DIAL_TIMEOUT`](crate::DEFAULT_DIAL_TIMEOUT),
    /// 100 ms), over the timeout of the [`dial_options`](Self::dial_options),
    /// whichever is called first.
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.dial_timeout = Some(timeout);
        self
    }

    /// How clients dial: TLS, keepalive, timeout (unless
    /// [`dial_timeout`](Self::dial_timeout) sets one). Metadata for every
    /// call is a tonic interceptor in the factory (see
    /// [`GrpcClient`](crate::GrpcClient)).
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

    /// How long before the certificate it dialed with expires a client is
    /// closed, when the dial's TLS rotates (default
    /// [`DEFAULT_EXPIRY_MARGIN`]): room for its TCP connection to go before
    /// a remote that checks expiry would refuse it.
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.expiry_margin = margin;
        self
    }

    /// How long a client whose last connection left stays open for the
    /// next one (default zero: closed at once, as the seed's `connect`
    /// closes it). A close followed within the linger by a new request for
    /// the same URL then dials nothing. A lingering client shows in
    /// [`Connect::stats`] with no references, keeps [`Connect::idle`]
    /// waiting, and closes at once on shutdown or when its remote goes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use connect_runtime::{ClientChain, Connect, Context, GrpcClient};
    ///
    /// let connect = Connect::builder(|_: &Context, conn| {
    ///     ClientChain::builder().with(GrpcClient::new(conn)).build()
    /// })
    /// .linger(Duration::from_secs(1))
    /// .build();
    /// # let _ = connect;
    /// ```
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Records connect's metrics on `meter` (by default the global
    /// provider's [`METER_NAME`](crate::telemetry::METER_NAME) meter, which
    /// records nothing until a program installs a provider), its dials'
    /// too unless [`DialOptions::meter`] names another. The gauges
    /// (`connect_clients`, `connect_retired_clients`,
    /// `connect_connections`) are read from [`Connect::stats`] when a reader
    /// collects; see [`telemetry`](crate::telemetry) for the rest. Give each
    /// `Connect` of a process a meter of its own name: on a shared one their
    /// gauges overwrite each other.
    ///
    /// ```
    /// use connect_runtime::{ClientChain, Connect, GrpcClient};
    /// use opentelemetry::metrics::MeterProvider as _;
    ///
    /// let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    /// let connect = Connect::builder(|_ctx, conn| {
    ///     ClientChain::builder().with(GrpcClient::new(conn)).build()
    /// })
    /// .meter(provider.meter(connect_runtime::telemetry::METER_NAME))
    /// .build();
    /// # let _ = connect;
    /// ```
    pub fn meter(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
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
        let mut dial = match self.dial_timeout {
            Some(timeout) => self.dial.timeout(timeout),
            None => self.dial,
        };
        let meter = self
            .meter
            .unwrap_or_else(|| opentelemetry::global::meter(crate::telemetry::METER_NAME));
        if !dial.has_meter() {
            dial = dial.meter(meter.clone());
        }
        Connect {
            shared: Arc::new_cyclic(|shared: &Weak<Shared>| Shared {
                metrics: {
                    let shared = Weak::clone(shared);
                    ConnectMetrics::new(&meter, move || {
                        shared.upgrade().map(|shared| Connect { shared }.census())
                    })
                },
                factory: self.factory,
                dial,
                cleanup_timeout: self.cleanup_timeout,
                root,
                records: ConnectionRecords::new(),
                clients: Clients::new(),
                retired: Retired::default(),
                expiry_margin: self.expiry_margin,
                linger: self.linger,
                following: Once::new(),
                clients_changed: Changes::default(),
                turns: Turns::default(),
            }),
        }
    }
}

/// What a [`Connect`] holds right now: for tests, logs and health endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectStats {
    /// Connections it has forwarded and not yet closed.
    pub records: usize,
    /// Connection ids with a call in progress or waiting for its turn.
    pub in_flight: usize,
    /// Calls queued behind another call for the same connection id.
    pub waiting: usize,
    /// Its clients, by URL, a URL's retired ones after its current one.
    pub clients: Vec<ClientStats>,
}

/// One client in [`ConnectStats`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// The remote's URL.
    pub url: String,
    /// Connections using it.
    pub refs: usize,
    /// Whether its dial has completed.
    pub dialed: bool,
    /// Connections it has made to the remote: its dial, and one more each
    /// time a connection had ended and a call needed one.
    pub dials: u64,
    /// Its connections that have ended (a GOAWAY of any code, a reset, a
    /// restart of the remote); it goes on past each.
    pub ended_connections: u64,
    /// Whether it was retired: its dial presented a certificate that has
    /// since rotated, so new requests go to a fresh client.
    pub retired: bool,
    /// The serial number of the rotating certificate its dial presented.
    pub serial: Option<String>,
    /// When that certificate expires.
    pub expires: Option<SystemTime>,
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
            dial_timeout: None,
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
            expiry_margin: DEFAULT_EXPIRY_MARGIN,
            linger: Duration::ZERO,
            shutdown: None,
            meter: None,
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
        self.shared.records.range(
            |record| (record.id().to_owned(), Url::clone(record.client.url())),
            |connection| {
                connections.push(connection);
                true
            },
        );
        connections.sort();
        connections
    }

    /// Waits until `condition` holds of [`Connect::stats`], re-checking it
    /// whenever a call starts waiting for its turn, a call ends, a client
    /// leaves the map, or one of a client's connections ends (no polling).
    pub async fn wait_for(&self, condition: impl Fn(&ConnectStats) -> bool) {
        self.wait_until_clients(|_| condition(&self.stats())).await;
    }

    /// Re-checks `condition` whenever turns change or a client leaves the map.
    async fn wait_until_clients(&self, condition: impl Fn(&Shared) -> bool) {
        let shared = &self.shared;
        changes::until(shared.turns.changed(), &shared.clients_changed, || {
            condition(shared)
        })
        .await;
    }

    /// Its connection records, for [`Chain::stats`](crate::Chain::stats):
    /// they end with the remote's close, so connect keeps them itself.
    fn records_held(&self) -> usize {
        self.shared.records.len()
    }

    /// Its gauges' values, as [`Connect::stats`] counts them.
    fn census(&self) -> Census {
        let stats = self.stats();
        let retired = stats.clients.iter().filter(|c| c.retired).count();
        Census {
            clients: (stats.clients.len() - retired) as u64,
            retired: retired as u64,
            connections: stats.records as u64,
        }
    }

    /// A snapshot of its connections and clients.
    pub fn stats(&self) -> ConnectStats {
        let client_stats = |client: &ConnectClient, refs| {
            let credential = client.credential_now();
            ClientStats {
                url: client.url().to_string(),
                refs,
                dialed: client.is_dialed(),
                dials: client.dials(),
                ended_connections: client.ended_connections(),
                retired: client.is_retired(),
                serial: credential.as_ref().map(|c| c.serial.clone()),
                expires: credential.map(|c| c.not_after),
            }
        };
        let mut clients = Vec::new();
        self.shared.clients.range(|_, client, refs| {
            clients.push(client_stats(client, refs));
            true
        });
        for (client, refs) in crate::sync::lock(&self.shared.retired).values() {
            clients.push(client_stats(client, *refs));
        }
        clients.sort_by(|a, b| (&a.url, a.retired).cmp(&(&b.url, b.retired)));
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

// Not `async fn`s: the caller's bounds wrap the operation's future directly,
// which keeps the boxed future one chain step allocates small.
impl Hooks for Connect {
    /// Forwards the request to the client for the context's client URL, and
    /// the reply on through the rest of the chain (see [`Connect`]).
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a request without a connection, an id or a
    /// client URL, or with a URL connect cannot dial; `Unavailable` when the
    /// remote cannot be reached or connect is shut down; the remote's own
    /// status, in context, when it refuses; the rest of the chain's
    /// status, after the connection it made at the remote is closed again.
    ///
    /// # Cancel safety
    ///
    /// A future dropped at any await (the caller went away) leaks no
    /// reference, record or task: a client call already sent runs to its
    /// end in the background, within the cleanup timeout, holding the id's
    /// turn, and what it made at the remote is then closed.
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'a {
        // The caller's limits bound what it waits for; an operation cut by
        // them is finished by its lease, as one whose future was dropped.
        let limits = ctx.clone();
        limits.run(Shared::request(&self.shared, ctx, request, next))
    }

    /// Closes the connection at its remote, forgets it, and always passes
    /// the close on through the rest of the chain.
    ///
    /// # Errors
    ///
    /// `NotFound` for an id connect does not know; the remote's status, in
    /// context, when its close fails; the rest of the chain's status (with
    /// the remote's, when both fail).
    ///
    /// # Cancel safety
    ///
    /// As for [`request`](Hooks::request): a close already sent runs to its
    /// end in the background, and is sent again if its outcome is unknown.
    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        let limits = ctx.clone();
        limits.run(Shared::close(&self.shared, ctx, connection, next))
    }
}
