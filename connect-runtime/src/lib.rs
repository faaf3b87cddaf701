//! Network Service Mesh's `connect` chain element for tokio and tonic, and
//! the runtime it stands on.
//!
//! NSM endpoints are chains of small gRPC elements. This crate provides:
//!
//! - [`chain`]: what a call carries from element to element ([`Context`]),
//!   your own elements (`#[derive(Element)]` and an `impl` [`Hooks`]), and
//!   the chains they make, in the style of reqwest-middleware;
//! - [`transport`]: gRPC on `tcp://host:port` and `unix:///path` URLs, on
//!   tonic's server and client, plain or TLS, with health checking, bounded
//!   dials and graceful shutdown ([`serve`], [`dial`]);
//! - [`elements`]: [`Connect`], and the small elements every chain needs
//!   ([`GrpcClient`], [`ClientUrl`], [`Passthrough`], [`Monitor`], and
//!   [`UpdatePath`] and [`Expire`], which every NSM hop runs), and NSM's
//!   monitor protocol ([`ConnectionMonitor`]);
//! - [`map`]: the sharded concurrent maps `connect` keeps its state in.
//!
//! The items most code needs are re-exported here; [`prelude`] has the ones
//! elements and chains name (import `dial`, `serve`, `Monitor` or
//! `ClientConn` from the root). `connect-runtime/examples/custom_element.rs` is a runnable
//! custom element.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use connect_runtime::prelude::*;
//! use connect_runtime::{dial, serve};
//! use connect_runtime::CancellationToken;
//!
//! // A remote NSM endpoint, served on a free loopback port.
//! let stop = CancellationToken::new();
//! let endpoint = ServerChain::builder().with(Passthrough).build();
//! let server = serve("tcp://127.0.0.1:0", endpoint, stop.clone()).await?;
//!
//! // A client chain calling it.
//! let conn = dial(server.url(), &DialOptions::new()).await?;
//! let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
//! let request = NetworkServiceRequest {
//!     connection: Some(Box::new(Connection { id: "c-1".into(), ..Default::default() })),
//!     ..Default::default()
//! };
//! let reply = client.request(Context::new(), request).await?;
//! assert_eq!(reply.id, "c-1");
//!
//! stop.cancel();
//! # Ok(()) }
//! ```

#![warn(missing_docs, missing_debug_implementations)]

// The derives name `::connect_runtime`; this lets the crate use them itself.
extern crate self as connect_runtime;

pub mod chain;
mod deadline;
pub mod elements;
mod grpc_timeout;
pub mod map;
mod outcome;
pub mod prelude;
pub mod server;
mod sync;
pub mod telemetry;
pub mod transport;
mod unary;

/// The NSM wire API (`connect-proto`), re-exported.
pub use connect_proto as proto;
/// What stops a server (`serve`, `Serve::shutdown_on`) and a `connect`
/// element (`ConnectBuilder::shutdown_on`), re-exported from tokio-util so
/// that no other dependency is needed to call them.
pub use tokio_util::sync::CancellationToken;
/// The error every hook returns, re-exported from tonic.
pub use tonic::Status;
/// The URLs remotes and listeners are named by (`tcp://host:port`,
/// `unix:///path`), re-exported from the `url` crate.
pub use url::Url;

pub use chain::{
    BoxFuture, Chain, ChainBuilder, ClientCancel, ClientChain, Context, Element, Hooks, Next,
    NextFuture, ServerChain,
};
pub use elements::{
    ClientFactory, ClientStats, ClientUrl, Connect, ConnectBuilder, ConnectStats,
    ConnectionMonitor, DEADLINE_GRACE, DEFAULT_CLEANUP_TIMEOUT, DEFAULT_MAX_TOKEN_LIFETIME,
    DEFAULT_WATCHER_BUFFER, Expire, ExpireStats, GrpcClient, Monitor, MonitorRelay, MonitorServer,
    MonitorService, MonitorStats, MonitorStream, Passthrough, UpdatePath,
};
pub use map::PerConnection;
pub use server::{
    ChainService, ConnectionStats, DEFAULT_GRACE_PERIOD, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS, DEFAULT_SERVER_KEEPALIVE, Peer, Serve,
    ServeError, ServerHandle, Services, serve,
};
#[cfg(feature = "spiffe")]
pub use transport::spiffe;
pub use transport::tls::DEFAULT_EXPIRY_MARGIN;
pub use transport::{
    ClientConn, DEFAULT_DIAL_TIMEOUT, DialError, DialOptions, Keepalive, MIN_KEEPALIVE_INTERVAL,
    ResponseFuture, Target, TransportError, UrlError, dial, tls,
};

/// Makes a type a chain element whose logic is its [`Hooks`] impl: one
/// derive and one ordinary `impl Hooks` block holding only the hooks the
/// element needs, as plain `async fn`s. Helper methods go in any other
/// `impl` block.
///
/// The element joins server and client chains. Options, in
/// `#[element(...)]`:
/// - `server` or `client`: the one role it may play (`Connect` is
///   server-only, say); putting it in the other kind of chain is a compile
///   error;
/// - `name = "..."`: the `tracing` span's name (the type's name by default).
///   The span's fields are `role`, `connection_id`, and on failure `code`
///   and `error_message`;
/// - `entries = "method"`: a method `fn(&self) -> usize` counting the
///   per-connection entries the element keeps itself (`Connect`'s records),
///   for [`Chain::stats`];
/// - `crate = "..."`: the runtime's path, for users who renamed the crate.
///
/// Per-connection state goes in fields of type [`PerConnection`] (or marked
/// `#[element(state)]`, for any [`map::ConnectionState`]): the element
/// releases a connection's entries when the connection ends there (see
/// [`map::ConnectionState`]), and reports them to [`Chain::stats`].
///
/// Generic types work: the element exists wherever its hooks do.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use connect_runtime::prelude::*;
///
/// /// Counts requests and tags each connection with its number.
/// #[derive(Element, Default)]
/// struct Numbered {
///     seen: AtomicUsize,
/// }
///
/// impl Hooks for Numbered {
///     async fn request(
///         &self,
///         ctx: Context,
///         mut request: NetworkServiceRequest,
///         next: Next<'_>,
///     ) -> Result<Connection, Status> {
///         let n = self.next_number();
///         if let Some(conn) = request.connection.as_mut() {
///             conn.labels.insert("number".into(), n.to_string());
///         }
///         next.request(ctx, request).await
///     }
/// }
///
/// impl Numbered {
///     fn next_number(&self) -> usize {
///         self.seen.fetch_add(1, Ordering::Relaxed) + 1
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let chain = ServerChain::builder().with(Numbered::default()).build();
/// let request = NetworkServiceRequest {
///     connection: Some(Box::new(Connection { id: "c".into(), ..Default::default() })),
///     ..Default::default()
/// };
/// let conn = chain.request(Context::new(), request).await.unwrap();
/// assert_eq!(conn.labels["number"], "1");
/// # }
/// ```
pub use connect_macros::Element;

/// Turns a newtype over a [`map::SyncMap`] or [`map::RefCountMap`] into a
/// named concurrent map: it derefs to the storage, whose methods are the
/// map's verbs, and gains `new`, `Default` and a `Debug` showing its name
/// and length. `new` takes the struct's visibility.
///
/// The storage is any type implementing [`map::Storage`], however it is
/// spelt: an alias or a renamed import works. `#[map(shards = N)]` (a
/// power of two up to 1024) sets the number of shards; `#[map(crate =
/// "...")]` the runtime's path.
///
/// ```
/// use connect_runtime::ConcurrentMap;
/// use connect_runtime::map::{RefCountMap, Released, SyncMap};
///
/// /// Connection id → the URL it was forwarded to.
/// #[derive(ConcurrentMap)]
/// #[map(shards = 8)]
/// struct Routes(SyncMap<String, String>);
///
/// /// Remote URL → how many connections use it.
/// type Counted = RefCountMap<String, u64>;
/// #[derive(ConcurrentMap)]
/// struct Remotes(Counted);
///
/// let routes = Routes::new();
/// routes.store("conn-1".into(), "tcp://10.0.0.1:5001".into());
/// assert_eq!(routes.load("conn-1").as_deref(), Some("tcp://10.0.0.1:5001"));
/// assert_eq!(format!("{routes:?}"), "Routes { len: 1 }");
///
/// let remotes = Remotes::default();
/// let first = remotes.acquire("tcp://10.0.0.1:5001".into(), |_instance| 7);
/// assert_eq!(remotes.release("tcp://10.0.0.1:5001", first.instance), Released::Last(7));
/// assert!(remotes.is_empty());
/// ```
pub use connect_macros::ConcurrentMap;

/// What generated code names. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use std::default::Default;
    pub use std::fmt;
    pub use std::ops::Deref;
    pub use std::result::Result;

    pub use tracing;

    pub use crate::chain::{States, close_in, close_tracked, entries, request_in, request_tracked};
    pub use crate::map::ConnectionState;
}

/// The README's Rust snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
