//! Serving a chain over gRPC on a `tcp://` or `unix://` URL, on tonic's
//! server: [`serve`] and its builder [`Serve`], the [`ServerHandle`] of a
//! running server, and [`ChainService`], the chain as a tonic service for
//! servers of your own. Bounded against hostile peers by default.

mod accept;
mod builder;
mod handle;
mod listener;
mod metrics;
mod refusal;
mod service;
mod services;

pub use accept::Peer;
pub use builder::{
    DEFAULT_GRACE_PERIOD, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_SERVER_KEEPALIVE, Serve, ServeError, serve,
};
pub use handle::{ConnectionStats, ServerHandle};
pub use service::{ChainServer, ChainService};
pub use services::Services;
