//! What a macro emits beside its errors, so that code using the item does
//! not pile further errors on top of the real one.

use proc_macro2::TokenStream;

use super::ast::{Element, Map};

/// The element as far as its options were understood: both roles unless one
/// was named, the default span name and runtime path where those were wrong.
pub(super) fn element(element: &Element<'_>) -> TokenStream {
    super::expand::element(element)
}

/// The full map when its shape was understood (only an option was wrong);
/// nothing otherwise, since the storage type is unknown.
pub(super) fn map(map: Option<&Map<'_>>) -> TokenStream {
    map.map(|map| super::expand::map(map, false))
        .unwrap_or_default()
}
