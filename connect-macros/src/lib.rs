//! Derives for `connect-runtime`. Use them through its re-exports
//! (`connect_runtime::{Element, ConcurrentMap, hooks}`), whose documentation
//! has runnable examples; the generated code names only `::connect_runtime`
//! paths, so no other dependency is needed.
//!
//! The implementation lives in `imp/` in three stages, each its own module:
//! parse (`ast`, `attr`), validate (`valid`) and expand (`expand`), with a
//! `fallback` expansion emitted beside the errors so that one mistake does
//! not cascade into many.

use proc_macro::TokenStream;

mod imp;

/// Implements `ServerElement` and/or `ClientElement` for a struct whose
/// hooks are written in a `#[hooks]` impl. See `connect_runtime::Element`.
#[proc_macro_derive(Element, attributes(element))]
pub fn derive_element(input: TokenStream) -> TokenStream {
    imp::derive_element(input.into()).into()
}

/// Turns a newtype over `SyncMap<K, V>` or `RefCountMap<K, V>` into a
/// typed concurrent map. See `connect_runtime::ConcurrentMap`.
#[proc_macro_derive(ConcurrentMap, attributes(map))]
pub fn derive_concurrent_map(input: TokenStream) -> TokenStream {
    imp::derive_concurrent_map(input.into()).into()
}

/// Turns an impl block of `async fn request` / `async fn close` into the
/// element's hooks. See `connect_runtime::hooks`.
#[proc_macro_attribute]
pub fn hooks(args: TokenStream, item: TokenStream) -> TokenStream {
    imp::hooks(args.into(), item.into()).into()
}
