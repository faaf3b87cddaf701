//! The macros' inputs, parsed from syn into what the later stages need.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{DeriveInput, Generics, Ident, Visibility};

use super::attr::{self, ElementAttrs, MapAttrs};
use super::ctxt::Ctxt;

/// A `#[derive(Element)]` input.
pub(super) struct Element<'a> {
    pub(super) ident: &'a Ident,
    pub(super) generics: &'a Generics,
    pub(super) data: &'a syn::Data,
    pub(super) attrs: ElementAttrs,
}

impl<'a> Element<'a> {
    pub(super) fn from_syn(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        Self {
            ident: &input.ident,
            generics: &input.generics,
            data: &input.data,
            attrs: attr::element(cx, &input.attrs),
        }
    }

    /// The tracing span name: `name = "..."`, or the struct's name.
    pub(super) fn span_name(&self) -> String {
        self.attrs
            .name
            .as_ref()
            .map_or_else(|| self.ident.to_string(), |n| n.value())
    }
}

/// Which storage a map newtype wraps.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavour {
    /// `SyncMap<K, V>`: Go's `sync.Map` verbs.
    Sync,
    /// `RefCountMap<K, V>`: acquire/release/evict.
    RefCount,
}

/// A `#[derive(ConcurrentMap)]` input.
pub(super) struct Map<'a> {
    pub(super) vis: &'a Visibility,
    pub(super) ident: &'a Ident,
    pub(super) generics: &'a Generics,
    pub(super) flavour: Flavour,
    /// The storage type as written, e.g. `connect_runtime::map::SyncMap<String, u32>`.
    pub(super) storage: &'a syn::Type,
    pub(super) key: &'a syn::Type,
    pub(super) value: &'a syn::Type,
    pub(super) attrs: MapAttrs,
}

const MAP_SHAPE: &str = "ConcurrentMap is derived for a newtype over the runtime's storage: \
     `struct Clients(SyncMap<String, Client>);` or `struct Clients(RefCountMap<String, Client>);`";

impl<'a> Map<'a> {
    /// `None` (with errors recorded) if the input is not a newtype over
    /// `SyncMap<K, V>` or `RefCountMap<K, V>`.
    pub(super) fn from_syn(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let attrs = attr::map(cx, &input.attrs);
        let field = match &input.data {
            syn::Data::Struct(data) => match &data.fields {
                syn::Fields::Unnamed(fields) if fields.unnamed.len() == 1 => &fields.unnamed[0],
                fields => {
                    cx.error_spanned_by(blame_fields(fields, &input.ident), MAP_SHAPE);
                    return None;
                }
            },
            syn::Data::Enum(data) => {
                cx.error_spanned_by(data.enum_token, MAP_SHAPE);
                return None;
            }
            syn::Data::Union(data) => {
                cx.error_spanned_by(data.union_token, MAP_SHAPE);
                return None;
            }
        };
        let Some((flavour, key, value)) = storage(&field.ty) else {
            cx.error_spanned_by(
                &field.ty,
                "expected `SyncMap<K, V>` or `RefCountMap<K, V>` (from `connect_runtime::map`)",
            );
            return None;
        };
        Some(Self {
            vis: &input.vis,
            ident: &input.ident,
            generics: &input.generics,
            flavour,
            storage: &field.ty,
            key,
            value,
            attrs,
        })
    }
}

fn blame_fields(fields: &syn::Fields, ident: &Ident) -> TokenStream {
    match fields {
        syn::Fields::Unit => ident.to_token_stream(),
        fields => fields.to_token_stream(),
    }
}

/// Recognises `…::SyncMap<K, V>` / `…::RefCountMap<K, V>` by the last path
/// segment, and returns its key and value types.
fn storage(ty: &syn::Type) -> Option<(Flavour, &syn::Type, &syn::Type)> {
    let syn::Type::Path(path) = ty else {
        return None;
    };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    let flavour = if last.ident == "SyncMap" {
        Flavour::Sync
    } else if last.ident == "RefCountMap" {
        Flavour::RefCount
    } else {
        return None;
    };
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        syn::GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    let (key, value) = (types.next()?, types.next()?);
    if types.next().is_some() || args.args.len() != 2 {
        return None;
    }
    Some((flavour, key, value))
}

/// A `#[hooks]` impl block, its functions sorted into the two hooks.
pub(super) struct Hooks<'a> {
    pub(super) item: &'a syn::ItemImpl,
    pub(super) request: Option<&'a syn::ImplItemFn>,
    pub(super) close: Option<&'a syn::ImplItemFn>,
}

impl<'a> Hooks<'a> {
    pub(super) fn from_syn(cx: &Ctxt, item: &'a syn::ItemImpl) -> Self {
        let mut hooks = Self {
            item,
            request: None,
            close: None,
        };
        if let Some((path, _)) = &item.trait_ {
            cx.error_spanned_by(
                path,
                "#[hooks] goes on an inherent impl block (`impl MyElement`), not a trait impl",
            );
        }
        for member in &item.items {
            let syn::ImplItem::Fn(function) = member else {
                cx.error_spanned_by(
                    member,
                    "a #[hooks] impl holds only `async fn request` and `async fn close`",
                );
                continue;
            };
            let name = &function.sig.ident;
            let slot = if name == "request" {
                &mut hooks.request
            } else if name == "close" {
                &mut hooks.close
            } else {
                cx.error_spanned_by(
                    name,
                    format!(
                        "unknown hook `{name}`: a #[hooks] impl holds only `request` and `close`; \
                         put other methods in a separate impl block"
                    ),
                );
                continue;
            };
            if slot.is_some() {
                cx.error_spanned_by(name, format!("hook `{name}` is written twice"));
            } else {
                *slot = Some(function);
            }
        }
        hooks
    }
}
