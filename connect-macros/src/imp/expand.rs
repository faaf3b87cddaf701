//! Code generation. Everything generated names runtime items through the
//! runtime's path (`::connect_runtime`, or the `crate = "..."` override),
//! its hidden `__private` module for what users never name themselves, so
//! users need no other dependency.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt as _;
use syn::spanned::Spanned;

use super::ast::{Element, Map};

/// `impl Element` (each call its hook, in a span named after the type), and
/// `Joins` for the roles of the chains it may join. The element exists
/// wherever its `Hooks` impl does, so a generic element's hooks may need
/// bounds its type lacks.
pub(super) fn element(element: &Element<'_>) -> TokenStream {
    let rt = element.runtime();
    let ident = element.ident;
    let mut generics = element.generics.clone();
    let (_, ty_generics, _) = element.generics.split_for_impl();
    // A missing `impl Hooks` is reported at the derive, the type named in
    // the help that follows (the trait's `on_unimplemented` message).
    let hooks_bound = quote_spanned!(ident.span()=> #ident #ty_generics: #rt::Hooks);
    generics
        .make_where_clause()
        .predicates
        .push(syn::parse2(hooks_bound).expect("a where predicate"));
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let span_name = element.span_name();
    let p = quote!(#rt::__private);
    // Named so that no generic parameter or item of the user's can be
    // taken for them.
    let (role, connection_id) = (quote!(__connect_role), quote!(__connect_connection_id));
    let (ctx, call, next) = (
        quote!(__connect_ctx),
        quote!(__connect_call),
        quote!(__connect_next),
    );
    let lt = quote!('__connect);
    // An element with per-connection state has its entries released as its
    // connections end, and reports them.
    let (request_in, close_in) = if element.states.is_empty() {
        (quote!(request_in), quote!(close_in))
    } else {
        (quote!(request_tracked), quote!(close_tracked))
    };
    let counts = element
        .attrs
        .entries
        .iter()
        .map(|method| quote!(Self::#method(self)))
        .chain((!element.states.is_empty()).then(|| quote!(#p::entries(self))));
    let counts: Vec<TokenStream> = counts.collect();
    let entries = if counts.is_empty() {
        quote!()
    } else {
        let f = quote!(__connect_report);
        quote! {
            fn connection_entries(&self, #f: &mut dyn FnMut(&'static str, usize)) {
                #f(#span_name, #(#counts)+*);
            }
        }
    };
    let mut out = quote! {
        // A function of no generics, so that a generic element's spans share
        // one callsite.
        fn __connect_span(#role: &'static str, #connection_id: &str) -> #p::tracing::Span {
            #p::tracing::debug_span!(
                #span_name,
                role = #role,
                connection_id = #connection_id,
                code = #p::tracing::field::Empty,
                error_message = #p::tracing::field::Empty,
            )
        }

        #[automatically_derived]
        impl #impl_generics #rt::Element for #ident #ty_generics #where_clause {
            fn request<#lt>(
                &#lt self,
                #ctx: #rt::Context,
                #call: #rt::proto::networkservice::NetworkServiceRequest,
                #next: #rt::Next<#lt>,
            ) -> #rt::BoxFuture<#lt, #p::Result<#rt::proto::connection::Connection, #rt::Status>> {
                #p::#request_in(self, __connect_span, #ctx, #call, #next)
            }

            fn close<#lt>(
                &#lt self,
                #ctx: #rt::Context,
                #call: #rt::proto::connection::Connection,
                #next: #rt::Next<#lt>,
            ) -> #rt::BoxFuture<#lt, #p::Result<(), #rt::Status>> {
                #p::#close_in(self, __connect_span, #ctx, #call, #next)
            }
            #entries
        }
    };
    if !element.states.is_empty() {
        // Each field is coerced where it is named, so that a type that is
        // no state is reported once, at the field's type.
        let each = element.states.iter().map(|state| {
            let (member, ty) = (&state.member, state.ty);
            quote_spanned!(ty.span()=> __connect_each(&self.#member);)
        });
        out.extend(quote! {
            #[automatically_derived]
            impl #impl_generics #p::States for #ident #ty_generics #where_clause {
                fn each_state(
                    &self,
                    __connect_each: &mut dyn FnMut(&dyn #p::ConnectionState),
                ) {
                    #(#each)*
                }
            }
        });
    }
    let (server, client) = (&element.attrs.server, &element.attrs.client);
    let roles = [
        (client.is_none() || server.is_some(), quote!(Server)),
        (server.is_none() || client.is_some(), quote!(Client)),
    ];
    for (plays, role) in roles {
        if plays {
            out.extend(quote! {
                #[automatically_derived]
                impl #impl_generics #rt::chain::Joins<#rt::chain::#role> for #ident #ty_generics #where_clause {}
            });
        }
    }
    // In a block of its own: the span function is no item of the user's
    // module.
    quote! {
        const _: () = {
            #out
        };
    }
}

/// `Deref` to the storage, plus `new`, `Default` and a `Debug` showing the
/// name and length. The storage is whatever implements `map::Storage`, so
/// an alias or a renamed import works. `use_shards` is false in the
/// fallback, where a bad `shards` value was already reported.
pub(super) fn map(map: &Map<'_>, use_shards: bool) -> TokenStream {
    let rt = map.runtime();
    let p = quote!(#rt::__private);
    let Map {
        vis,
        ident,
        storage,
        ..
    } = map;
    let (_, ty_generics, _) = map.generics.split_for_impl();
    let mut generics = map.generics.clone();
    // A field type that is no storage is reported at the derive, naming
    // the type (the trait's `on_unimplemented` message).
    let storage_bound = quote_spanned!(storage.span()=> #storage: #rt::map::Storage);
    generics
        .make_where_clause()
        .predicates
        .push(syn::parse2(storage_bound).expect("a where predicate"));
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let (deref_generics, _, deref_where) = map.generics.split_for_impl();
    let shards = match (&map.attrs.shards, use_shards) {
        (Some(shards), true) => shards.to_token_stream(),
        _ => quote!(#rt::map::DEFAULT_SHARDS),
    };
    let name = ident.unraw().to_string();
    quote! {
        #[automatically_derived]
        impl #deref_generics #p::Deref for #ident #ty_generics #deref_where {
            type Target = #storage;

            fn deref(&self) -> &#storage {
                &self.0
            }
        }

        #[allow(dead_code)]
        impl #impl_generics #ident #ty_generics #where_clause {
            /// An empty map.
            #vis fn new() -> Self {
                Self(<#storage as #rt::map::Storage>::with_shards(#shards))
            }
        }

        #[automatically_derived]
        impl #impl_generics #p::Default for #ident #ty_generics #where_clause {
            fn default() -> Self {
                Self::new()
            }
        }

        #[automatically_derived]
        impl #impl_generics #p::fmt::Debug for #ident #ty_generics #where_clause {
            fn fmt(&self, f: &mut #p::fmt::Formatter<'_>) -> #p::fmt::Result {
                let len = <#storage as #rt::map::Storage>::len(&self.0);
                f.debug_struct(#name).field("len", &len).finish()
            }
        }
    }
}
