//! The dialing side of gRPC on the wire, on tonic, hyper and rustls, below
//! everything else of this crate: where to dial and listen ([`Target`]),
//! the bounded dial and the channel tonic's clients call through
//! ([`dial`], [`ClientConn`]), and TLS ([`tls`], and SPIFFE identities).
//! The serving side, which runs chains, is [`crate::server`].

mod dial;
mod error;
pub(crate) mod first_bytes;
pub(crate) mod io;
pub(crate) mod options;
mod replay;
mod reply;
pub(crate) mod resets;
mod resumption;
pub(crate) mod socket;
#[cfg(feature = "spiffe")]
pub mod spiffe;
mod target;
pub mod tls;

pub use dial::{ClientConn, ResponseFuture, TransportError, dial};
pub use error::DialError;
pub(crate) use options::Hook;
pub use options::{DEFAULT_DIAL_TIMEOUT, DialOptions, Keepalive, MIN_KEEPALIVE_INTERVAL};
pub(crate) use target::checked;
pub use target::{IntoUrl, Target, UrlError, UrlProblem};
