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
        Err(errors) => with_errors(fallback::element(&element), errors),
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

fn with_errors(mut tokens: TokenStream, errors: Vec<syn::Error>) -> TokenStream {
    for err in errors {
        tokens.extend(err.to_compile_error());
    }
    tokens
}
