//! gRPC on the wire, on tonic, hyper and rustls: where to listen and dial
//! ([`Target`]), the bounded dial and the channel tonic's clients call
//! through ([`dial`], [`ClientConn`]), TLS ([`tls`]), and the server that
//! runs a chain ([`serve`], [`Serve`], [`ChainService`]).

pub(crate) mod dial;
mod replay;
pub(crate) mod serve;
pub(crate) mod service;
pub(crate) mod socket;
pub(crate) mod target;
pub mod tls;
