//! What a prost-build message field is, read from its `#[prost(...)]`
//! attribute: the facts [`super::message`] generates its encoding from.

use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprLit, Lit, Meta, Token};

/// One field of a message.
pub(crate) struct Field {
    pub(crate) ident: syn::Ident,
    pub(crate) tag: u32,
    pub(crate) kind: Kind,
}

pub(crate) enum Kind {
    Scalar {
        ty: Scalar,
        label: Label,
    },
    Message {
        label: Label,
    },
    Map {
        map: &'static str,
        key: Scalar,
        value: MapValue,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    /// proto3's implicit presence: written when not the default.
    Plain,
    Optional,
    Repeated {
        packed: bool,
    },
}

#[derive(Clone)]
pub(crate) enum Scalar {
    /// A scalar type, named by its `prost::encoding` module.
    Named(&'static str),
    /// An enum, stored as `i32`; the path names the Rust enum.
    Enumeration(syn::Path),
}

pub(crate) enum MapValue {
    Scalar(Scalar),
    Message,
}

const SCALARS: &[&str] = &[
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32",
    "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes",
];

impl Scalar {
    fn named(name: &str) -> Option<Self> {
        SCALARS
            .iter()
            .find(|s| **s == name)
            .map(|s| Scalar::Named(s))
    }

    fn parse(name: &str) -> Result<Self, String> {
        if let Some(scalar) = Self::named(name) {
            return Ok(scalar);
        }
        let inner = name
            .strip_prefix("enumeration(")
            .and_then(|rest| rest.strip_suffix(')'))
            .ok_or_else(|| format!("unknown map type `{name}`"))?;
        Ok(Scalar::Enumeration(path(inner)?))
    }

    /// The `prost::encoding` module that encodes it.
    pub(crate) fn module(&self) -> &'static str {
        match self {
            Scalar::Named(name) => name,
            Scalar::Enumeration(_) => "int32",
        }
    }

    pub(crate) fn is_numeric(&self) -> bool {
        !matches!(self, Scalar::Named("string" | "bytes"))
    }
}

impl Field {
    /// Reads `field`'s `#[prost(...)]` attribute and removes it.
    pub(crate) fn take(field: &mut syn::Field) -> Result<Self, String> {
        let ident = field
            .ident
            .clone()
            .ok_or("prost-build wrote a tuple struct")?;
        let position = field
            .attrs
            .iter()
            .position(|a| a.path().is_ident("prost"))
            .ok_or_else(|| format!("field `{ident}` has no #[prost] attribute"))?;
        let attr = field.attrs.remove(position);
        Self::parse(ident, &attr)
    }

    fn parse(ident: syn::Ident, attr: &Attribute) -> Result<Self, String> {
        let unsupported = |what: &str| {
            Err(format!(
                "field `{ident}`: {what} is not supported by the unknown-field generator"
            ))
        };
        let metas = attr
            .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
            .map_err(|e| format!("field `{ident}`: {e}"))?;
        let mut tag = None;
        let mut scalar = None;
        let mut message = false;
        let mut map = None;
        let mut optional = false;
        let mut repeated = false;
        let mut packed = None;
        for meta in &metas {
            let name = meta
                .path()
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            match (meta, name.as_str()) {
                (Meta::Path(_), "message") => message = true,
                (Meta::Path(_), "optional") => optional = true,
                (Meta::Path(_), "repeated") => repeated = true,
                // Boxing changes the Rust type only; `Box<M>` is a Message.
                (Meta::Path(_), "boxed") => {}
                (Meta::Path(_), other) if Scalar::named(other).is_some() => {
                    scalar = Scalar::named(other);
                }
                (Meta::NameValue(_), "tag") => {
                    tag = Some(
                        string(meta)?
                            .parse::<u32>()
                            .map_err(|e| format!("field `{ident}`: tag: {e}"))?,
                    );
                }
                (Meta::NameValue(_), "enumeration") => {
                    scalar = Some(Scalar::Enumeration(path(&string(meta)?)?));
                }
                (Meta::NameValue(_), "bytes") => {
                    if string(meta)? != "vec" {
                        return unsupported("`bytes::Bytes` for bytes fields");
                    }
                    scalar = Scalar::named("bytes");
                }
                (Meta::NameValue(_), "packed") => packed = Some(string(meta)? == "true"),
                (Meta::NameValue(_), "map" | "hash_map") => map = Some(("hash_map", meta)),
                (Meta::NameValue(_), "btree_map") => map = Some(("btree_map", meta)),
                _ => return unsupported(&format!("`{}`", quote::quote!(#meta))),
            }
        }
        let tag = tag.ok_or_else(|| format!("field `{ident}` has no tag"))?;
        let label = match (optional, repeated) {
            (false, false) => Label::Plain,
            (true, false) => Label::Optional,
            (false, true) => Label::Repeated {
                packed: packed.unwrap_or(true),
            },
            (true, true) => return unsupported("optional and repeated at once"),
        };
        let kind = if let Some((map, meta)) = map {
            let types = string(meta)?;
            let (key, value) = types
                .split_once(',')
                .ok_or_else(|| format!("field `{ident}`: map types `{types}`"))?;
            let value = match value.trim() {
                "message" => MapValue::Message,
                other => MapValue::Scalar(Scalar::parse(other)?),
            };
            Kind::Map {
                map,
                key: Scalar::parse(key.trim())?,
                value,
            }
        } else if message {
            if label == Label::Plain {
                return unsupported("a required message");
            }
            Kind::Message { label }
        } else if let Some(ty) = scalar {
            let label = match label {
                Label::Repeated { packed } => Label::Repeated {
                    packed: packed && ty.is_numeric(),
                },
                other => other,
            };
            Kind::Scalar { ty, label }
        } else {
            return unsupported("a field that is not a scalar, message or map (oneof, group)");
        };
        Ok(Field { ident, tag, kind })
    }
}

fn string(meta: &Meta) -> Result<String, String> {
    match meta {
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => Ok(s.value()),
            _ => Err(format!("`{}` is not a string", quote::quote!(#meta))),
        },
        _ => Err(format!("`{}` has no value", quote::quote!(#meta))),
    }
}

fn path(text: &str) -> Result<syn::Path, String> {
    syn::parse_str(text).map_err(|e| format!("`{text}` is not a path: {e}"))
}
