//! The macros' inputs, parsed from syn into what the later stages need.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::ext::IdentExt as _;
use syn::{DeriveInput, Generics, Ident, Index, Member, Visibility};

use super::attr::{self, ElementAttrs, MapAttrs};
use super::ctxt::Ctxt;

/// A `#[derive(Element)]` input: a struct, enum or union of any shape.
pub(super) struct Element<'a> {
    pub(super) ident: &'a Ident,
    pub(super) generics: &'a Generics,
    pub(super) attrs: ElementAttrs,
    /// Its fields of per-connection state, which the chain releases.
    pub(super) states: Vec<State<'a>>,
}

/// A field of per-connection state: of type `PerConnection<...>`, or marked
/// `#[element(state)]`.
pub(super) struct State<'a> {
    pub(super) member: Member,
    pub(super) ty: &'a syn::Type,
}

impl<'a> Element<'a> {
    pub(super) fn from_syn(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        attr::misplaced(cx, &input.data, "element", false);
        let mut states = Vec::new();
        if let syn::Data::Struct(data) = &input.data {
            for (index, field) in data.fields.iter().enumerate() {
                let marked = attr::element_field(cx, &field.attrs);
                if marked || is_per_connection(&field.ty) {
                    let member = field
                        .ident
                        .clone()
                        .map_or_else(|| Member::Unnamed(Index::from(index)), Member::Named);
                    states.push(State {
                        member,
                        ty: &field.ty,
                    });
                }
            }
        }
        Self {
            ident: &input.ident,
            generics: &input.generics,
            attrs: attr::element(cx, &input.attrs),
            states,
        }
    }

    /// The tracing span name: `name = "..."`, or the type's name.
    pub(super) fn span_name(&self) -> String {
        self.attrs
            .name
            .as_ref()
            .map_or_else(|| self.ident.unraw().to_string(), |n| n.value())
    }

    /// The runtime crate's path: `crate = "..."`, or `::connect_runtime`.
    pub(super) fn runtime(&self) -> TokenStream {
        runtime(self.attrs.krate.as_ref())
    }
}

/// A `#[derive(ConcurrentMap)]` input: a newtype over a map storage.
pub(super) struct Map<'a> {
    pub(super) vis: &'a Visibility,
    pub(super) ident: &'a Ident,
    pub(super) generics: &'a Generics,
    /// The storage type as written: `SyncMap<String, u32>`, or an alias.
    pub(super) storage: &'a syn::Type,
    pub(super) attrs: MapAttrs,
}

const MAP_SHAPE: &str = "ConcurrentMap is derived for a newtype over a map storage: \
     `struct Clients(SyncMap<String, Client>);` or `struct Clients(RefCountMap<String, Client>);`";

impl<'a> Map<'a> {
    /// `None` (with errors recorded) if the input is not a one-field tuple
    /// struct.
    pub(super) fn from_syn(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let attrs = attr::map(cx, &input.attrs);
        attr::misplaced(cx, &input.data, "map", true);
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
        Some(Self {
            vis: &input.vis,
            ident: &input.ident,
            generics: &input.generics,
            storage: &field.ty,
            attrs,
        })
    }

    /// The runtime crate's path: `crate = "..."`, or `::connect_runtime`.
    pub(super) fn runtime(&self) -> TokenStream {
        runtime(self.attrs.krate.as_ref())
    }
}

/// Whether `ty` is named `PerConnection<...>` (by any path): the state type
/// the derive finds without being told.
fn is_per_connection(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "PerConnection"),
        _ => false,
    }
}

fn runtime(krate: Option<&syn::Path>) -> TokenStream {
    krate.map_or_else(|| quote!(::connect_runtime), ToTokens::to_token_stream)
}

fn blame_fields(fields: &syn::Fields, ident: &Ident) -> TokenStream {
    match fields {
        syn::Fields::Unit => ident.to_token_stream(),
        fields => fields.to_token_stream(),
    }
}
