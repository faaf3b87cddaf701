//! What a macro emits beside its errors, so that code using the item does
//! not pile further errors on top of the real one.

use proc_macro2::TokenStream;
use quote::quote;

use super::ast::Map;

/// Both roles, with the traits' passthrough defaults: uses of the element in
/// chains keep compiling while the derive's errors are fixed.
pub(super) fn element(input: &syn::DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        impl #impl_generics ::connect_runtime::ServerElement for #ident #ty_generics #where_clause {}
        impl #impl_generics ::connect_runtime::ClientElement for #ident #ty_generics #where_clause {}
    }
}

/// The full map when its shape was understood (only an option was wrong);
/// nothing otherwise, since the key and value types are unknown.
pub(super) fn map(map: Option<&Map<'_>>) -> TokenStream {
    map.map(|map| super::expand::map(map, false))
        .unwrap_or_default()
}

/// The impl handed back unchanged, plus passthrough hooks for its type, so
/// that a derived `Element` on that type still compiles.
pub(super) fn hooks(item: &syn::ItemImpl) -> TokenStream {
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    let hooks = if item.trait_.is_some() {
        TokenStream::new()
    } else {
        quote! {
            impl #impl_generics ::connect_runtime::Hooks for #self_ty #where_clause {}
        }
    };
    quote! {
        #item
        #hooks
    }
}
