//! Code generation. Everything generated names runtime items through
//! `::connect_runtime` (its hidden `__private` module for what users never
//! name themselves), so users need no other dependency.

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote};
use syn::{FnArg, parse_quote};

use super::ast::{Element, Flavour, Hooks, Map};

fn runtime() -> TokenStream {
    quote!(::connect_runtime)
}

fn private() -> TokenStream {
    quote!(::connect_runtime::__private)
}

pub(super) fn element(element: &Element<'_>) -> TokenStream {
    let rt = runtime();
    let mut generics = element.generics.clone();
    if !generics.params.is_empty() {
        // The hooks of a generic element may need bounds the struct lacks;
        // the element exists wherever its hooks do.
        generics
            .make_where_clause()
            .predicates
            .push(parse_quote!(Self: #rt::Hooks));
    }
    let roles = [
        (
            element.attrs.server.is_some(),
            "server",
            format_ident!("ServerElement"),
        ),
        (
            element.attrs.client.is_some(),
            "client",
            format_ident!("ClientElement"),
        ),
    ];
    let mut out = TokenStream::new();
    for (wanted, role, trait_name) in roles {
        if wanted {
            out.extend(role_impl(element, &generics, role, &trait_name));
        }
    }
    out
}

fn role_impl(
    element: &Element<'_>,
    generics: &syn::Generics,
    role: &str,
    trait_name: &syn::Ident,
) -> TokenStream {
    let (rt, p) = (runtime(), private());
    let ident = element.ident;
    let span_name = element.span_name();
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics #rt::#trait_name for #ident #ty_generics #where_clause {
            fn request<'__a>(
                &'__a self,
                ctx: #rt::Context,
                request: #p::NetworkServiceRequest,
                next: #rt::Next<'__a>,
            ) -> #rt::BoxFuture<'__a, #p::Result<#p::Connection, #p::Status>> {
                let span = #p::tracing::debug_span!(
                    #span_name,
                    role = #role,
                    connection_id = #p::connection_id(&request),
                );
                #p::Box::pin(#p::Instrument::instrument(
                    <Self as #rt::Hooks>::request(self, ctx, request, next),
                    span,
                ))
            }

            fn close<'__a>(
                &'__a self,
                ctx: #rt::Context,
                connection: #p::Connection,
                next: #rt::Next<'__a>,
            ) -> #rt::BoxFuture<'__a, #p::Result<(), #p::Status>> {
                let span = #p::tracing::debug_span!(
                    #span_name,
                    role = #role,
                    connection_id = connection.id.as_str(),
                );
                #p::Box::pin(#p::Instrument::instrument(
                    <Self as #rt::Hooks>::close(self, ctx, connection, next),
                    span,
                ))
            }
        }
    }
}

/// Expands a map; `use_shards` is false in the fallback, where a bad
/// `shards` value was already reported.
pub(super) fn map(map: &Map<'_>, use_shards: bool) -> TokenStream {
    let p = private();
    let Map {
        vis,
        ident,
        storage,
        key,
        value,
        ..
    } = map;
    let mut generics = map.generics.clone();
    if !generics.params.is_empty() {
        let predicates = &mut generics.make_where_clause().predicates;
        predicates.push(parse_quote!(#key: #p::Hash + #p::Eq + #p::Clone));
        predicates.push(parse_quote!(#value: #p::Clone));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let shards = match (&map.attrs.shards, use_shards) {
        (Some(shards), true) => shards.to_token_stream(),
        _ => quote!(::connect_runtime::map::DEFAULT_SHARDS),
    };
    let verbs = match map.flavour {
        Flavour::Sync => sync_verbs(map),
        Flavour::RefCount => refcount_verbs(map),
    };
    let name = ident.to_string();
    quote! {
        #[allow(dead_code)]
        impl #impl_generics #ident #ty_generics #where_clause {
            /// An empty map.
            #vis fn new() -> Self {
                Self(<#storage>::with_shards(#shards))
            }

            #verbs

            /// Number of entries (a snapshot: other tasks may be changing it).
            #vis fn len(&self) -> usize {
                self.0.len()
            }

            /// Whether the map has no entries.
            #vis fn is_empty(&self) -> bool {
                self.0.is_empty()
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
                f.debug_struct(#name).field("len", &self.0.len()).finish()
            }
        }
    }
}

fn sync_verbs(map: &Map<'_>) -> TokenStream {
    let p = private();
    let Map {
        vis, key, value, ..
    } = map;
    let borrowed = quote! {
        where
            #key: #p::Borrow<Q>,
            Q: #p::Hash + #p::Eq + ?#p::Sized
    };
    quote! {
        /// The value stored for `key`, if any.
        #vis fn load<Q>(&self, key: &Q) -> #p::Option<#value> #borrowed {
            self.0.load(key)
        }

        /// Stores `value` for `key`, replacing any value there.
        #vis fn store(&self, key: #key, value: #value) {
            self.0.store(key, value)
        }

        /// The value already stored for `key` and `true`; or stores `value`
        /// and returns it and `false`.
        #vis fn load_or_store(&self, key: #key, value: #value) -> (#value, bool) {
            self.0.load_or_store(key, value)
        }

        /// As `load_or_store`, creating the value only if `key` has none
        /// (`make` runs under a lock: keep it short).
        #vis fn load_or_store_with(
            &self,
            key: #key,
            make: impl #p::FnOnce() -> #value,
        ) -> (#value, bool) {
            self.0.load_or_store_with(key, make)
        }

        /// Removes `key` if its value satisfies `condition`, atomically;
        /// returns whether it did.
        #vis fn delete_if<Q>(
            &self,
            key: &Q,
            condition: impl #p::FnOnce(&#value) -> bool,
        ) -> bool #borrowed {
            self.0.delete_if(key, condition)
        }

        /// Removes `key`, returning its value if it had one.
        #vis fn load_and_delete<Q>(&self, key: &Q) -> #p::Option<#value> #borrowed {
            self.0.load_and_delete(key)
        }

        /// Removes `key`.
        #vis fn delete<Q>(&self, key: &Q) #borrowed {
            self.0.delete(key)
        }

        /// Calls `f` for each entry until it returns `false`, with no lock
        /// held (`f` may use the map); each shard is seen as it was when
        /// reached.
        #vis fn range(&self, f: impl #p::FnMut(&#key, &#value) -> bool) {
            self.0.range(f)
        }
    }
}

fn refcount_verbs(map: &Map<'_>) -> TokenStream {
    let p = private();
    let Map {
        vis, key, value, ..
    } = map;
    let borrowed = quote! {
        where
            #key: #p::Borrow<Q>,
            Q: #p::Hash + #p::Eq + ?#p::Sized
    };
    quote! {
        /// Counts a reference to `key`'s value, creating it with `make` if
        /// there is none (`make` runs under a lock: keep it short).
        #vis fn acquire(
            &self,
            key: #key,
            make: impl #p::FnOnce(::connect_runtime::map::Instance) -> #value,
        ) -> ::connect_runtime::map::Acquired<#value> {
            self.0.acquire(key, make)
        }

        /// Drops one reference to `instance`, removing it with the last.
        #vis fn release<Q>(
            &self,
            key: &Q,
            instance: ::connect_runtime::map::Instance,
        ) -> ::connect_runtime::map::Released<#value> #borrowed {
            self.0.release(key, instance)
        }

        /// Removes `instance` whatever its count.
        #vis fn evict<Q>(
            &self,
            key: &Q,
            instance: ::connect_runtime::map::Instance,
        ) -> #p::Option<#value> #borrowed {
            self.0.evict(key, instance)
        }

        /// The value for `key` and its instance, without counting a reference.
        #vis fn load<Q>(
            &self,
            key: &Q,
        ) -> #p::Option<(#value, ::connect_runtime::map::Instance)> #borrowed {
            self.0.load(key)
        }

        /// How many references `key`'s value has.
        #vis fn refs<Q>(&self, key: &Q) -> #p::Option<usize> #borrowed {
            self.0.refs(key)
        }

        /// Calls `f` with each key, value and reference count until it
        /// returns `false`, with no lock held.
        #vis fn range(&self, f: impl #p::FnMut(&#key, &#value, usize) -> bool) {
            self.0.range(f)
        }
    }
}

pub(super) fn hooks(hooks: &Hooks<'_>) -> TokenStream {
    let rt = runtime();
    let item = hooks.item;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    let attrs = &item.attrs;
    let functions = [hooks.request, hooks.close]
        .into_iter()
        .flatten()
        .map(hook_fn);
    quote! {
        #(#attrs)*
        impl #impl_generics #rt::Hooks for #self_ty #where_clause {
            #(#functions)*
        }
    }
}

/// `async fn request(&self, ctx, request, next: Next<'_>) -> R { body }`
/// becomes `fn request<'__a>(&'__a self, ctx, request, next: Next<'__a>) ->
/// impl Future<Output = R> + Send + '__a { async move { body } }`, the form
/// the `Hooks` trait declares.
fn hook_fn(function: &syn::ImplItemFn) -> TokenStream {
    let p = private();
    let sig = &function.sig;
    let name = &sig.ident;
    let attrs = &function.attrs;
    let params = sig.inputs.iter().filter_map(|arg| match arg {
        FnArg::Typed(param) => Some(param),
        FnArg::Receiver(_) => None,
    });
    let params = params.enumerate().map(|(index, param)| {
        if index == 2 {
            let mut param = param.clone();
            param.ty = Box::new(with_hook_lifetime(&param.ty));
            param.into_token_stream()
        } else {
            param.into_token_stream()
        }
    });
    let output = match &sig.output {
        syn::ReturnType::Type(_, ty) => ty.to_token_stream(),
        syn::ReturnType::Default => quote!(()),
    };
    let stmts = &function.block.stmts;
    quote! {
        #(#attrs)*
        #[allow(clippy::manual_async_fn)]
        fn #name<'__a>(
            &'__a self,
            #(#params),*
        ) -> impl #p::Future<Output = #output> + #p::Send + '__a {
            async move {
                let __ret: #output = { #(#stmts)* };
                #[allow(unreachable_code)]
                __ret
            }
        }
    }
}

/// `Next<'_>` (or `Next`) with the hook's lifetime.
fn with_hook_lifetime(ty: &syn::Type) -> syn::Type {
    let mut ty = ty.clone();
    if let syn::Type::Path(path) = &mut ty
        && let Some(last) = path.path.segments.last_mut()
    {
        last.arguments = syn::PathArguments::AngleBracketed(parse_quote!(<'__a>));
    }
    ty
}
