//! The element that does nothing (Go's `null`).

use connect_macros::Element;

use crate::chain::Hooks;

/// Passes every call on unchanged; usable in server and client chains.
///
/// Handy as a placeholder, and as the smallest element for tests and
/// benchmarks of the chain machinery itself.
///
/// ```
/// use connect_runtime::{ClientChain, Passthrough, ServerChain};
///
/// let server = ServerChain::builder().with(Passthrough).build();
/// let client = ClientChain::builder().with(Passthrough).build();
/// assert_eq!(server.len() + client.len(), 2);
/// ```
#[derive(Clone, Copy, Debug, Default, Element)]
pub struct Passthrough;

impl Hooks for Passthrough {}
