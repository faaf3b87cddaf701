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
    ClientChain, ClientElement, ClientUrl, ConcurrentMap, Connect, Context, DialOptions, Element,
    GrpcClient, Hooks, Next, Passthrough, Serve, ServerChain, ServerElement, Status,
};
