//! Derives for `connect-runtime`. Use them through its re-exports
//! (`connect_runtime::{Element, ConcurrentMap}`), whose documentation has
//! runnable examples; the generated code names only the runtime's paths, so
//! no other dependency is needed.
//!
//! The implementation lives in `imp/` in three stages, each its own module:
//! parse (`ast`, `attr`), validate (`valid`) and expand (`expand`), with a
//! `fallback` expansion emitted beside the errors so that one mistake does
//! not cascade into many.

use proc_macro::TokenStream;

mod imp;

/// Implements `connect_runtime::Element` for a type whose `Hooks` impl holds
/// its logic. See `connect_runtime::Element`.
#[proc_macro_derive(Element, attributes(element))]
pub fn derive_element(input: TokenStream) -> TokenStream {
    imp::derive_element(input.into()).into()
}

/// Turns a newtype over `SyncMap<K, V>` or `RefCountMap<K, V>` into a
/// named concurrent map. See `connect_runtime::ConcurrentMap`.
#[proc_macro_derive(ConcurrentMap, attributes(map))]
pub fn derive_concurrent_map(input: TokenStream) -> TokenStream {
    imp::derive_concurrent_map(input.into()).into()
}
