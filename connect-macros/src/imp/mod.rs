//! The macros' implementation over `proc_macro2`, so that `cargo xtask
//! codegen` can run it too (to write the golden expansion fixtures). Modules
//! here refer to each other through `super::` only, for that reason.

mod ast;
mod attr;
mod ctxt;
mod expand;
mod fallback;
mod valid;

use proc_macro2::TokenStream;

/// `#[derive(Element)]`.
pub(crate) fn derive_element(input: TokenStream) -> TokenStream {
    let input: syn::DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(err) => return err.to_compile_error(),
    };
    let cx = ctxt::Ctxt::new();
    let element = ast::Element::from_syn(&cx, &input);
    valid::element(&cx, &element);
    match cx.check() {
        Ok(()) => expand::element(&element),
        Err(errors) => with_errors(fallback::element(&input), errors),
    }
}

/// `#[derive(ConcurrentMap)]`.
pub(crate) fn derive_concurrent_map(input: TokenStream) -> TokenStream {
    let input: syn::DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(err) => return err.to_compile_error(),
    };
    let cx = ctxt::Ctxt::new();
    let map = ast::Map::from_syn(&cx, &input);
    if let Some(map) = &map {
        valid::map(&cx, map);
    }
    match (cx.check(), &map) {
        (Ok(()), Some(map)) => expand::map(map, true),
        (Err(errors), map) => with_errors(fallback::map(map.as_ref()), errors),
        (Ok(()), None) => unreachable!("a map that failed to parse reported an error"),
    }
}

/// `#[hooks]`.
pub(crate) fn hooks(args: TokenStream, item: TokenStream) -> TokenStream {
    let item_impl: syn::ItemImpl = match syn::parse2(item.clone()) {
        Ok(item_impl) => item_impl,
        Err(_) => {
            let err = syn::Error::new_spanned(
                &item,
                "#[hooks] goes on an inherent impl block: `#[hooks] impl MyElement { async fn request(...) ... }`",
            );
            // Hand the item back untouched so that it still compiles.
            return with_errors(item, vec![err]);
        }
    };
    let cx = ctxt::Ctxt::new();
    if !args.is_empty() {
        cx.error_spanned_by(&args, "#[hooks] takes no arguments");
    }
    let hooks = ast::Hooks::from_syn(&cx, &item_impl);
    valid::hooks(&cx, &hooks);
    match cx.check() {
        Ok(()) => expand::hooks(&hooks),
        Err(errors) => with_errors(fallback::hooks(&item_impl), errors),
    }
}

fn with_errors(mut tokens: TokenStream, errors: Vec<syn::Error>) -> TokenStream {
    for err in errors {
        tokens.extend(err.to_compile_error());
    }
    tokens
}
