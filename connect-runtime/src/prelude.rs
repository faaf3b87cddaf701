//! Everything an element or an endpoint usually names, in one import:
//! `use connect_runtime::prelude::*;`.
//!
//! ```
//! use connect_runtime::prelude::*;
//!
//! #[derive(Element)]
//! struct Noop;
//!
//! impl Hooks for Noop {}
//!
//! let chain: ServerChain = ServerChain::builder().with(Noop).with(Passthrough).build();
//! assert_eq!(chain.len(), 2);
//! ```

pub use crate::proto::connection::Connection;
pub use crate::proto::networkservice::NetworkServiceRequest;
pub use crate::{
    CancellationToken, ClientChain, ClientUrl, ConcurrentMap, Connect, Context, DialOptions,
    GrpcClient, Hooks, Next, Passthrough, PerConnection, Serve, ServerChain, Status,
};
/// The derive only: the [`Element`](crate::Element) trait's methods would
/// make `element.request(...)` ambiguous beside [`Hooks`]'.
pub use connect_macros::Element;
