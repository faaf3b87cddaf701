//! Parsing the helper attributes: `#[element(...)]` and `#[map(...)]`.

use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, LitInt, LitStr, Token};

use super::ctxt::Ctxt;

/// What `#[element(...)]` attributes say.
#[derive(Default)]
pub(super) struct ElementAttrs {
    /// The first `#[element]` attribute, for errors about the whole.
    pub(super) first: Option<Attribute>,
    pub(super) server: Option<syn::Path>,
    pub(super) client: Option<syn::Path>,
    pub(super) name: Option<LitStr>,
}

/// What `#[map(...)]` attributes say.
#[derive(Default)]
pub(super) struct MapAttrs {
    pub(super) shards: Option<LitInt>,
}

pub(super) fn element(cx: &Ctxt, attrs: &[Attribute]) -> ElementAttrs {
    let mut out = ElementAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("element")) {
        if out.first.is_none() {
            out.first = Some(attr.clone());
        }
        if !matches!(attr.meta, syn::Meta::List(_)) {
            cx.error_spanned_by(
                attr,
                "expected `#[element(server)]`, `#[element(client)]` or `#[element(server, client)]`",
            );
            continue;
        }
        let parsed = attr.parse_nested_meta(|meta| {
            let path = meta.path.clone();
            if path.is_ident("server") || path.is_ident("client") {
                if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                    let role = path.get_ident().expect("checked above");
                    cx.error_spanned_by(&path, format!("the `{role}` role takes no value"));
                    // The role is still taken, so no "no role given" follows.
                    skip_value(&meta)?;
                }
                let slot = if path.is_ident("server") {
                    &mut out.server
                } else {
                    &mut out.client
                };
                if slot.is_some() {
                    let role = path.get_ident().expect("checked above");
                    cx.error_spanned_by(&path, format!("the `{role}` role is given twice"));
                } else {
                    *slot = Some(path);
                }
                Ok(())
            } else if path.is_ident("name") {
                let Some(name) = literal::<LitStr>(&meta)? else {
                    cx.error_spanned_by(
                        &path,
                        "`name` takes a string literal: `name = \"my-element\"`",
                    );
                    return Ok(());
                };
                if out.name.is_some() {
                    cx.error_spanned_by(&path, "`name` is given twice");
                } else if name.value().is_empty() {
                    cx.error_spanned_by(&name, "`name` must not be empty");
                } else {
                    out.name = Some(name);
                }
                Ok(())
            } else {
                cx.error_spanned_by(
                    &path,
                    format!(
                        "unknown element option `{}`: expected `server`, `client` or `name = \"...\"`",
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
                if out.shards.is_some() {
                    cx.error_spanned_by(&meta.path, "`shards` is given twice");
                } else {
                    out.shards = Some(shards);
                }
                Ok(())
            } else {
                cx.error_spanned_by(
                    &meta.path,
                    format!(
                        "unknown map option `{}`: expected `shards = N`",
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
