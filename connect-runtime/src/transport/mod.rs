//! gRPC on the wire, on tonic, hyper and rustls: where to listen and dial
//! ([`Target`]), the bounded dial and the channel tonic's clients call
//! through ([`dial`], [`ClientConn`]), TLS ([`tls`]), and the server that
//! runs a chain ([`serve`], [`Serve`], [`ChainService`]).

mod dial;
mod error;
mod options;
mod replay;
mod reply;
mod serve;
mod service;
mod socket;
#[cfg(feature = "spiffe")]
pub mod spiffe;
mod target;
pub mod tls;

pub use dial::{ClientConn, ResponseFuture, TransportError, dial};
pub use error::DialError;
pub(crate) use options::Hook;
pub use options::{DEFAULT_DIAL_TIMEOUT, DialOptions, Keepalive, MIN_KEEPALIVE_INTERVAL};
pub use serve::{
    ConnectionStats, DEFAULT_GRACE_PERIOD, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS, DEFAULT_SERVER_KEEPALIVE, Peer, Serve,
    ServeError, ServerHandle, serve,
};
pub use service::{ArrivalLayer, ChainService};
pub use target::{Target, UrlError, UrlProblem};
