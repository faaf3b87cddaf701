//! The chain model: what a call carries ([`Context`]), the elements a chain
//! is made of ([`Element`] and [`Hooks`] for your own, [`ServerElement`] and
//! [`ClientElement`] underneath), the [`Next`] cursor that links them, and
//! the chains themselves.

pub mod adapters;
mod chains;
mod context;
mod element;
mod hooks;

pub use chains::{Chain, ChainBuilder, ClientChain, IntoElement, Role, ServerChain};
pub use context::{Bounded, ClientCancel, Context};
pub use element::{BoxFuture, ClientElement, Next, NextFuture, ServerElement};
pub(crate) use hooks::connection_id;
pub use hooks::{ClientRole, Element, Hooks, Recorded, ServerRole};
