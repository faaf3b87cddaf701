//! The chain model: what a call carries ([`Context`]), the elements a chain
//! is made of ([`Hooks`] and `#[derive(Element)]` for your own, the
//! [`Element`] trait chains hold underneath), which chains an element may
//! join ([`Joins`] a [`Role`]), the [`Next`] cursor that links them, and the
//! chains themselves.

mod chains;
mod context;
mod element;
mod hooks;

pub use chains::{
    Chain, ChainBuilder, ChainStats, Client, ClientChain, Joins, Role, Server, ServerChain,
};
pub use context::{Bounded, ClientCancel, Context};
pub use element::{BoxFuture, Element, Next, NextFuture};
pub(crate) use hooks::connection_id;
pub use hooks::{Hooks, Recorded};
#[doc(hidden)]
pub use hooks::{States, close_in, close_tracked, entries, request_in, request_tracked};
