//! Parsing the helper attributes: `#[element(...)]` and `#[map(...)]`.

use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, LitInt, LitStr, Token};

use super::ctxt::Ctxt;

/// What `#[element(...)]` attributes say.
#[derive(Default)]
pub(super) struct ElementAttrs {
    pub(super) server: Option<syn::Path>,
    pub(super) client: Option<syn::Path>,
    pub(super) name: Option<LitStr>,
    pub(super) krate: Option<syn::Path>,
    /// A method `fn(&self) -> usize`: per-connection entries the element
    /// keeps itself, reported beside its state fields'.
    pub(super) entries: Option<syn::Path>,
}

/// What `#[map(...)]` attributes say.
#[derive(Default)]
pub(super) struct MapAttrs {
    pub(super) shards: Option<LitInt>,
    pub(super) krate: Option<syn::Path>,
}

const ELEMENT_OPTIONS: &str = "expected `server`, `client`, `name = \"...\"`, \
     `entries = \"method\"` or `crate = \"path::to::connect_runtime\"`";

pub(super) fn element(cx: &Ctxt, attrs: &[Attribute]) -> ElementAttrs {
    let mut out = ElementAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("element")) {
        if !matches!(attr.meta, syn::Meta::List(_)) {
            cx.error_spanned_by(
                attr,
                format!("expected `#[element(...)]`: {ELEMENT_OPTIONS}"),
            );
            continue;
        }
        let parsed = attr.parse_nested_meta(|meta| {
            let path = meta.path.clone();
            if path.is_ident("server") || path.is_ident("client") {
                let role = path.get_ident().expect("checked above").to_string();
                if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                    cx.error_spanned_by(&path, format!("the `{role}` role takes no value"));
                    skip_value(&meta)?;
                }
                let slot = if role == "server" {
                    &mut out.server
                } else {
                    &mut out.client
                };
                once(cx, slot, path, &role);
                Ok(())
            } else if path.is_ident("name") {
                let Some(name) = literal::<LitStr>(&meta)? else {
                    cx.error_spanned_by(
                        &path,
                        "`name` takes a string literal: `name = \"my-element\"`",
                    );
                    return Ok(());
                };
                if name.value().is_empty() {
                    cx.error_spanned_by(&name, "`name` must not be empty");
                } else {
                    once(cx, &mut out.name, name, "name");
                }
                Ok(())
            } else if path.is_ident("crate") {
                crate_path(cx, &meta, &mut out.krate)
            } else if path.is_ident("entries") {
                let Some(lit) = literal::<LitStr>(&meta)? else {
                    cx.error_spanned_by(
                        &path,
                        "`entries` takes a string literal naming a method: `entries = \"held\"`",
                    );
                    return Ok(());
                };
                match lit.parse::<syn::Path>() {
                    Ok(method) => once(cx, &mut out.entries, method, "entries"),
                    Err(_) => cx.error_spanned_by(
                        &lit,
                        format!("`{}` is not a method's name", lit.value()),
                    ),
                }
                Ok(())
            } else {
                cx.error_spanned_by(
                    &path,
                    format!(
                        "unknown element option `{}`: {ELEMENT_OPTIONS}",
                        path_text(&path)
                    ),
                );
                skip_value(&meta)
            }
        });
        if let Err(err) = parsed {
            cx.syn_error(err);
        }
    }
    out
}

pub(super) fn map(cx: &Ctxt, attrs: &[Attribute]) -> MapAttrs {
    let mut out = MapAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("map")) {
        if !matches!(attr.meta, syn::Meta::List(_)) {
            cx.error_spanned_by(attr, "expected `#[map(shards = N)]`");
            continue;
        }
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("shards") {
                let Some(shards) = literal::<LitInt>(&meta)? else {
                    cx.error_spanned_by(
                        &meta.path,
                        "`shards` takes an integer literal: `shards = 16`",
                    );
                    return Ok(());
                };
                once(cx, &mut out.shards, shards, "shards");
                Ok(())
            } else if meta.path.is_ident("crate") {
                crate_path(cx, &meta, &mut out.krate)
            } else {
                cx.error_spanned_by(
                    &meta.path,
                    format!(
                        "unknown map option `{}`: expected `shards = N` or `crate = \"...\"`",
                        path_text(&meta.path)
                    ),
                );
                skip_value(&meta)
            }
        });
        if let Err(err) = parsed {
            cx.syn_error(err);
        }
    }
    out
}

/// Whether `#[element(state)]` marks a struct's field: per-connection
/// state of a type the derive does not recognise by name.
pub(super) fn element_field(cx: &Ctxt, attrs: &[Attribute]) -> bool {
    let mut state: Option<syn::Path> = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("element")) {
        if !matches!(attr.meta, syn::Meta::List(_)) {
            cx.error_spanned_by(attr, "expected `#[element(state)]` on a field");
            continue;
        }
        let parsed = attr.parse_nested_meta(|meta| {
            let path = meta.path.clone();
            if path.is_ident("state") {
                if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                    cx.error_spanned_by(&path, "`state` takes no value");
                    skip_value(&meta)?;
                }
                once(cx, &mut state, path, "state");
            } else {
                let option = path_text(&path);
                let why = if ["server", "client", "name", "crate", "entries"]
                    .contains(&option.as_str())
                {
                    format!("`{option}` goes on the type itself, not on a field")
                } else {
                    format!("unknown field option `{option}`")
                };
                cx.error_spanned_by(
                    &path,
                    format!("{why}: on a field, `#[element(state)]` marks per-connection state"),
                );
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(err) = parsed {
            cx.syn_error(err);
        }
    }
    state.is_some()
}

/// Reports every `#[name(...)]` on a field or variant: the derive reads
/// only the type's own attributes (and, for elements, a struct's fields'
/// `#[element(state)]`, which `fields_too` leaves to [`element_field`]).
pub(super) fn misplaced(cx: &Ctxt, data: &syn::Data, name: &str, fields_too: bool) {
    let fields: Vec<&syn::Field> = match data {
        syn::Data::Struct(_) if !fields_too => Vec::new(),
        syn::Data::Struct(data) => data.fields.iter().collect(),
        syn::Data::Union(data) => data.fields.named.iter().collect(),
        syn::Data::Enum(data) => {
            for variant in &data.variants {
                misplaced_on(cx, &variant.attrs, name, "variant");
            }
            data.variants.iter().flat_map(|v| &v.fields).collect()
        }
    };
    // Fields of a struct an element derive reads itself: these are the
    // others.
    let place = if fields_too {
        "field"
    } else {
        "variant's or union's field"
    };
    for field in fields {
        misplaced_on(cx, &field.attrs, name, place);
    }
}

fn misplaced_on(cx: &Ctxt, attrs: &[Attribute], name: &str, place: &str) {
    let state = if name == "element" && place != "variant" {
        " (`#[element(state)]` goes on a struct's field)"
    } else {
        ""
    };
    for attr in attrs.iter().filter(|a| a.path().is_ident(name)) {
        cx.error_spanned_by(
            attr,
            format!("`#[{name}(...)]` goes on the type itself, not on a {place}{state}"),
        );
    }
}

/// Fills `slot` with `value`, or reports that the option came twice.
fn once<T: ToTokens>(cx: &Ctxt, slot: &mut Option<T>, value: T, option: &str) {
    if slot.is_some() {
        cx.error_spanned_by(value, format!("`{option}` is given twice"));
    } else {
        *slot = Some(value);
    }
}

/// `crate = "path"`: where the runtime is, for users who renamed it.
fn crate_path(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    slot: &mut Option<syn::Path>,
) -> syn::Result<()> {
    let Some(lit) = literal::<LitStr>(meta)? else {
        cx.error_spanned_by(
            &meta.path,
            "`crate` takes a string literal: `crate = \"my_connect\"`",
        );
        return Ok(());
    };
    match lit.parse::<syn::Path>() {
        Ok(path) => once(cx, slot, path, "crate"),
        Err(_) => cx.error_spanned_by(
            &lit,
            format!("`{}` is not a path to the runtime crate", lit.value()),
        ),
    }
    Ok(())
}

/// Parses `= <literal of type L>`; `None` if a value of another kind is
/// there (it is consumed, so parsing can go on).
fn literal<L: syn::parse::Parse>(meta: &ParseNestedMeta<'_>) -> syn::Result<Option<L>> {
    let expr: syn::Expr = meta.value()?.parse()?;
    Ok(match expr {
        syn::Expr::Lit(lit) => syn::parse2(lit.lit.into_token_stream()).ok(),
        _ => None,
    })
}

/// Consumes whatever follows an option's name (`= expr` or `(...)`), so
/// that parsing goes on to report the options after it.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        let _: syn::Expr = meta.value()?.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        let _: proc_macro2::Group = meta.input.parse()?;
    }
    Ok(())
}

fn path_text(path: &syn::Path) -> String {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    segments.join("::")
}
