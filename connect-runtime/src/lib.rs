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
//!   URLs, with health checking, bounded dials and graceful shutdown;
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
//!     connection: Some(Connection { id: "c-1".into(), ..Default::default() }),
//!     ..Default::default()
//! };
//! let reply = client.request(Context::new(), request).await?;
//! assert_eq!(reply.id, "c-1");
//!
//! stop.cancel();
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod adapters;
mod chain;
mod clienturl;
mod context;
mod dial;
mod element;
mod grpc_client;
mod passthrough;
mod serve;
mod service;
mod socket;
mod target;

/// The NSM wire API (`connect-proto`), re-exported.
pub use connect_proto as proto;

pub use chain::{Chain, ChainBuilder, ClientChain, IntoElement, Role, ServerChain};
pub use clienturl::ClientUrl;
pub use context::{ClientCancel, Context};
pub use dial::{ClientConn, DEFAULT_DIAL_TIMEOUT, DialError, DialOptions, Keepalive, dial};
pub use element::{BoxFuture, ClientElement, Next, NextFuture, ServerElement};
pub use grpc_client::GrpcClient;
pub use passthrough::Passthrough;
pub use serve::{ConnectionStats, DEFAULT_GRACE_PERIOD, Serve, ServeError, ServerHandle, serve};
pub use service::ChainService;
pub use target::{Target, UrlError};

/// TLS configuration types for [`DialOptions::tls`], re-exported from tonic.
pub mod tls {
    pub use tonic::transport::{Certificate, ClientTlsConfig, Identity};
}
