//! Checks that go beyond parsing: shapes, roles, shard counts and hook
//! signatures. Every problem is recorded; none stops the others being found.

use syn::{FnArg, ReceiverKind, ReturnType, Type};

use super::ast::{Element, Hooks, Map};
use super::ctxt::Ctxt;

const ROLES: &str = "`#[element(server)]`, `#[element(client)]` or `#[element(server, client)]`";

pub(super) fn element(cx: &Ctxt, element: &Element<'_>) {
    match element.data {
        syn::Data::Struct(_) => {}
        syn::Data::Enum(data) => cx.error_spanned_by(
            data.enum_token,
            "`Element` is derived for structs, not enums: an element is a struct holding its state",
        ),
        syn::Data::Union(data) => cx.error_spanned_by(
            data.union_token,
            "`Element` is derived for structs, not unions: an element is a struct holding its state",
        ),
    }
    let attrs = &element.attrs;
    match &attrs.first {
        None => cx.error_spanned_by(
            element.ident,
            format!("say which roles `{}` plays: {ROLES}", element.ident),
        ),
        Some(first) if attrs.server.is_none() && attrs.client.is_none() => {
            cx.error_spanned_by(first, format!("no role given: {ROLES}"));
        }
        Some(_) => {}
    }
}

/// Most shards a map may ask for; beyond this `len` and `range` get slow.
const MAX_SHARDS: u64 = 1024;

pub(super) fn map(cx: &Ctxt, map: &Map<'_>) {
    if let Some(shards) = &map.attrs.shards {
        match shards.base10_parse::<u64>() {
            Ok(n) if n.is_power_of_two() && n <= MAX_SHARDS => {}
            Ok(n) => cx.error_spanned_by(
                shards,
                format!("`shards` must be a power of two from 1 to {MAX_SHARDS}, not {n}"),
            ),
            Err(err) => cx.error_spanned_by(shards, err),
        }
    }
}

/// The hook signatures, for error messages.
const REQUEST_SIGNATURE: &str = "async fn request(&self, ctx: Context, request: NetworkServiceRequest, next: Next<'_>) -> Result<Connection, Status>";
const CLOSE_SIGNATURE: &str = "async fn close(&self, ctx: Context, connection: Connection, next: Next<'_>) -> Result<(), Status>";

pub(super) fn hooks(cx: &Ctxt, hooks: &Hooks<'_>) {
    if let Some(request) = hooks.request {
        hook(cx, request, REQUEST_SIGNATURE);
    }
    if let Some(close) = hooks.close {
        hook(cx, close, CLOSE_SIGNATURE);
    }
}

fn hook(cx: &Ctxt, function: &syn::ImplItemFn, expected: &str) {
    let sig = &function.sig;
    let name = &sig.ident;
    let wrong = |what: &str| format!("hook `{name}` {what}; expected `{expected}`");

    if sig.asyncness.is_none() {
        cx.error_spanned_by(sig.fn_token, wrong("must be an `async fn`"));
    }
    if let Some(constness) = sig.constness {
        cx.error_spanned_by(constness, wrong("cannot be `const`"));
    }
    if let syn::Safety::Unsafe(unsafety) = sig.safety {
        cx.error_spanned_by(unsafety, wrong("cannot be `unsafe`"));
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned_by(abi, wrong("cannot have an ABI"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        cx.error_spanned_by(&sig.generics, wrong("takes no generic parameters"));
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(variadic, wrong("is not variadic"));
    }

    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if matches!(receiver.kind, ReceiverKind::Reference(_, _, None))
                && receiver.mutability.is_none() => {}
        Some(FnArg::Receiver(receiver)) => {
            cx.error_spanned_by(receiver, wrong("takes `&self`"));
        }
        Some(other) => cx.error_spanned_by(other, wrong("takes `&self` first")),
        None => cx.error_spanned_by(name, wrong("takes `&self` first")),
    }
    let params: Vec<&syn::PatType> = inputs
        .filter_map(|arg| match arg {
            FnArg::Typed(param) => Some(param),
            FnArg::Receiver(_) => None,
        })
        .collect();
    if params.len() != 3 {
        cx.error_spanned_by(
            &sig.inputs,
            wrong(&format!(
                "takes 3 parameters after `&self`, not {}",
                params.len()
            )),
        );
    } else if !is_next(&params[2].ty) {
        cx.error_spanned_by(
            &params[2].ty,
            wrong("takes `next: Next<'_>` as its last parameter"),
        );
    }
    if let ReturnType::Default = sig.output {
        cx.error_spanned_by(name, wrong("must return a `Result`"));
    }
}

/// `Next`, `Next<'_>`, `Next<'a>`, or any path ending so.
pub(super) fn is_next(ty: &Type) -> bool {
    let Type::Path(path) = ty else {
        return false;
    };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    last.ident == "Next"
        && match &last.arguments {
            syn::PathArguments::None => true,
            syn::PathArguments::AngleBracketed(args) => {
                args.args.len() == 1
                    && matches!(args.args.first(), Some(syn::GenericArgument::Lifetime(_)))
            }
            syn::PathArguments::Parenthesized(_) => false,
        }
}
