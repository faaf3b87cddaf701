//! Network Service Mesh's `connect` chain element for tokio and tonic, and
//! the runtime it stands on.
//!
//! NSM endpoints are chains of small gRPC elements. This crate provides:
//!
//! - [`Context`]: what a call carries from element to element (client URL,
//!   deadline, cancellation, typed values);
//! - [`ServerElement`], [`ClientElement`], [`Next`] and [`Chain`]: the chain
//!   machinery, in the style of reqwest-middleware;
//! - [`serve`] and [`dial`]: gRPC on `tcp://host:port` and `unix:///path`
//!   URLs, on tonic's server and client, plain or TLS ([`tls`]), with health
//!   checking, bounded dials and graceful shutdown;
//! - [`GrpcClient`], [`ClientUrl`], [`Passthrough`] and the
//!   [`adapters`]: the small elements every chain needs.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use connect_runtime::proto::connection::Connection;
//! use connect_runtime::proto::networkservice::NetworkServiceRequest;
//! use connect_runtime::{ClientChain, Context, DialOptions, GrpcClient, Passthrough, ServerChain};
//! use connect_runtime::{dial, serve};
//! use tokio_util::sync::CancellationToken;
//!
//! // A remote NSM endpoint, served on a free loopback port.
//! let stop = CancellationToken::new();
//! let endpoint = ServerChain::builder().with(Passthrough).build();
//! let server = serve(&"tcp://127.0.0.1:0".parse()?, endpoint, stop.clone()).await?;
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

#![warn(missing_docs)]

// The derives name `::connect_runtime`; this lets the crate use them itself.
extern crate self as connect_runtime;

pub mod adapters;
mod chain;
mod clienturl;
mod connect;
mod context;
mod element;
mod grpc_client;
mod hooks;
pub mod map;
mod monitor;
mod outcome;
mod passthrough;
mod transport;

/// The NSM wire API (`connect-proto`), re-exported.
pub use connect_proto as proto;

pub use chain::{Chain, ChainBuilder, ClientChain, IntoElement, Role, ServerChain};
pub use clienturl::ClientUrl;
pub use connect::{
    ClientFactory, ClientStats, Connect, ConnectBuilder, ConnectStats, DEFAULT_CLEANUP_TIMEOUT,
};
pub use context::{ClientCancel, Context};
pub use element::{BoxFuture, ClientElement, Next, NextFuture, ServerElement};
pub use grpc_client::{DEADLINE_GRACE, GrpcClient};
pub use hooks::Hooks;
pub use monitor::Monitor;
pub use passthrough::Passthrough;
pub use transport::dial::{
    ClientConn, DEFAULT_DIAL_TIMEOUT, DialError, DialOptions, Keepalive, MetadataError,
    ResponseFuture, TransportError, dial,
};
pub use transport::serve::{
    ConnectionStats, DEFAULT_GRACE_PERIOD, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_SERVER_KEEPALIVE, Peer, Serve, ServeError,
    ServerHandle, serve,
};
pub use transport::service::ChainService;
pub use transport::target::{Target, UrlError};
pub use transport::tls;

/// Makes a struct a chain element: implements [`ServerElement`] and/or
/// [`ClientElement`] from the hooks written for it with [`hooks`].
///
/// `#[element(server)]`, `#[element(client)]` or `#[element(server, client)]`
/// says which roles the element plays; `name = "..."` renames the `tracing`
/// span each call runs in (the struct's name by default; its fields are
/// `role` and `connection_id`). Generic structs work: the element exists
/// wherever its hooks do.
///
/// Hooks not written pass calls on unchanged; an empty `#[hooks]` block
/// makes a pure passthrough element.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use connect_runtime::proto::connection::Connection;
/// use connect_runtime::proto::networkservice::NetworkServiceRequest;
/// use connect_runtime::{Context, Element, Next, ServerChain, hooks};
/// use tonic::Status;
///
/// /// Counts requests and tags each connection with its number.
/// #[derive(Element, Default)]
/// #[element(server, client)]
/// struct Numbered {
///     seen: AtomicUsize,
/// }
///
/// #[hooks]
/// impl Numbered {
///     async fn request(
///         &self,
///         ctx: Context,
///         mut request: NetworkServiceRequest,
///         next: Next<'_>,
///     ) -> Result<Connection, Status> {
///         let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
///         if let Some(conn) = request.connection.as_mut() {
///             conn.labels.insert("number".into(), n.to_string());
///         }
///         next.request(ctx, request).await
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

/// Writes an element's hooks as plain `async fn`s; see [`Element`].
///
/// The impl block holds only hooks, with these signatures (the parameter
/// names are free; the types are checked by the compiler):
///
/// ```text
/// async fn request(&self, ctx: Context, request: NetworkServiceRequest, next: Next<'_>) -> Result<Connection, Status>
/// async fn close(&self, ctx: Context, connection: Connection, next: Next<'_>) -> Result<(), Status>
/// ```
///
/// It implements [`Hooks`] for the type. Anything else in the block (a
/// helper method, a non-`async` hook, a misspelt hook name) is a compile
/// error naming the problem.
///
/// ```
/// use connect_runtime::proto::connection::Connection;
/// use connect_runtime::{ClientChain, Context, Element, Next, hooks};
/// use tonic::Status;
///
/// /// Refuses to close connections whose id starts with `keep-`.
/// #[derive(Element)]
/// #[element(client)]
/// struct KeepSome;
///
/// #[hooks]
/// impl KeepSome {
///     async fn close(&self, ctx: Context, conn: Connection, next: Next<'_>) -> Result<(), Status> {
///         if conn.id.starts_with("keep-") {
///             return Err(Status::failed_precondition(format!("{} is kept", conn.id)));
///         }
///         next.close(ctx, conn).await
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let chain = ClientChain::builder().with(KeepSome).build();
/// let kept = Connection { id: "keep-1".into(), ..Default::default() };
/// assert!(chain.close(Context::new(), kept).await.is_err());
/// let other = Connection { id: "2".into(), ..Default::default() };
/// assert!(chain.close(Context::new(), other).await.is_ok());
/// # }
/// ```
pub use connect_macros::hooks;

/// Turns a newtype over [`map::SyncMap`] or [`map::RefCountMap`] into a
/// named, typed concurrent map with the verbs of the Go original.
///
/// For `SyncMap<K, V>`: `new`, `load`, `store`, `load_or_store`,
/// `load_and_delete`, `delete`, `range`, `len`, `is_empty`, and two verbs Go
/// lacked: `load_or_store_with` (create only if absent) and `delete_if`
/// (compare-and-delete). For
/// `RefCountMap<K, V>`: `new`, `acquire`, `release`, `evict`, `load`,
/// `refs`, `range`, `len`, `is_empty`. Both get `Default` and a `Debug`
/// that shows the name and length. The methods take the struct's
/// visibility. `#[map(shards = N)]` (a power of two up to 1024) sets the
/// number of shards.
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
/// #[derive(ConcurrentMap)]
/// struct Remotes(RefCountMap<String, u64>);
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
    pub use std::borrow::Borrow;
    pub use std::boxed::Box;
    pub use std::clone::Clone;
    pub use std::cmp::Eq;
    pub use std::default::Default;
    pub use std::fmt;
    pub use std::future::Future;
    pub use std::hash::Hash;
    pub use std::marker::{Send, Sized};
    pub use std::ops::{FnMut, FnOnce};
    pub use std::option::Option;
    pub use std::result::Result;

    pub use tonic::Status;
    pub use tracing;
    pub use tracing::Instrument;

    pub use crate::proto::connection::Connection;
    pub use crate::proto::networkservice::NetworkServiceRequest;

    /// The id a span records for a request's connection.
    pub fn connection_id(request: &NetworkServiceRequest) -> &str {
        request.connection.as_deref().map_or("", |c| c.id.as_str())
    }
}
