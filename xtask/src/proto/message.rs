//! Messages that keep the fields they do not know.
//!
//! prost's derive drops unknown fields when it decodes. This pass takes
//! prost-build's output and replaces each `#[derive(::prost::Message)]` with
//! a `prost::Message` impl written out here: the same encoding, field by
//! field, through `prost::encoding` (as the derive does), plus an
//! `unknown_fields` member that the catch-all arm of `merge_field` fills and
//! `encode_raw` writes back after the known fields.

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use syn::punctuated::Punctuated;
use syn::{Fields, Item, ItemStruct, Meta, Token};

use super::fields::{Field, Kind, Label, MapValue, Scalar};

/// The member every message gets.
const MEMBER: &str = "unknown_fields";

/// Rewrites every prost message in `file`, at any depth of nested modules.
/// `unknown` is the path of the type that holds the unknown fields.
pub(crate) fn keep_unknown_fields(file: &mut syn::File, unknown: &syn::Path) -> Result<(), String> {
    rewrite_items(&mut file.items, unknown)
}

fn rewrite_items(items: &mut Vec<Item>, unknown: &syn::Path) -> Result<(), String> {
    let mut out = Vec::with_capacity(items.len());
    for mut item in items.drain(..) {
        if let Item::Struct(message) = &mut item
            && take_message_derive(message)?
        {
            let extra = rewrite_message(message, unknown)
                .map_err(|e| format!("message `{}`: {e}", message.ident))?;
            out.push(item);
            out.extend(extra);
            continue;
        }
        if let Item::Mod(module) = &mut item
            && let Some((_, inner)) = &mut module.content
        {
            rewrite_items(inner, unknown)?;
        }
        out.push(item);
    }
    *items = out;
    Ok(())
}

/// Removes `::prost::Message` (and `Copy`, which a boxed member cannot
/// have) from the struct's derives, and adds `Debug` and `Default` in their
/// place; false if it is not a prost message.
fn take_message_derive(item: &mut ItemStruct) -> Result<bool, String> {
    let mut found = false;
    for attr in &mut item.attrs {
        if !attr.path().is_ident("derive") {
            continue;
        }
        let derives = attr
            .parse_args_with(Punctuated::<syn::Path, Token![,]>::parse_terminated)
            .map_err(|e| format!("struct `{}`: {e}", item.ident))?;
        let is_message = |p: &syn::Path| {
            p.segments.len() == 2
                && p.segments[0].ident == "prost"
                && p.segments[1].ident == "Message"
        };
        if !derives.iter().any(is_message) {
            continue;
        }
        found = true;
        let kept = derives
            .iter()
            .filter(|p| !is_message(p) && !p.is_ident("Copy"));
        *attr = syn::parse_quote!(#[derive(#(#kept,)* Debug, Default)]);
    }
    if found && let Some(attr) = item.attrs.iter().find(|a| a.path().is_ident("prost")) {
        let meta: &Meta = &attr.meta;
        return Err(format!(
            "struct `{}`: `{}` is not supported by the unknown-field generator",
            item.ident,
            quote!(#meta)
        ));
    }
    Ok(found)
}

fn rewrite_message(item: &mut ItemStruct, unknown: &syn::Path) -> Result<Vec<Item>, String> {
    let Fields::Named(named) = &mut item.fields else {
        return Err("prost-build wrote a struct without named fields".into());
    };
    let mut fields = Vec::new();
    for field in &mut named.named {
        if field.ident.as_ref().is_some_and(|i| i == MEMBER) {
            return Err(format!(
                "a field named `{MEMBER}` clashes with the member for unknown fields"
            ));
        }
        fields.push(Field::take(field)?);
    }
    let member = format_ident!("{MEMBER}");
    named.named.push(syn::parse_quote! {
        /// The fields of this message that its schema does not know, in
        /// arrival order; encoding writes them back.
        pub #member: #unknown
    });
    // Encoded in tag order, as prost's derive does; unknown fields last, as Go does.
    fields.sort_by_key(|f| f.tag);

    let ident = &item.ident;
    let name = ident.to_string();
    let encode = fields.iter().map(encode);
    let encoded_len = fields.iter().map(encoded_len);
    let clear = fields.iter().map(clear);
    let merge = fields.iter().map(|f| {
        let tag = Literal::u32_unsuffixed(f.tag);
        let member = &f.ident;
        let field_name = member.to_string();
        let field_name = field_name.trim_start_matches("r#");
        let merge = merge(f);
        quote! {
            #tag => {
                let value = &mut self.#member;
                #merge.map_err(|mut error| {
                    error.push(#name, #field_name);
                    error
                })
            }
        }
    });
    let message: Item = syn::parse_quote! {
        impl ::prost::Message for #ident {
            fn encode_raw(&self, buf: &mut impl ::prost::bytes::BufMut) {
                #(#encode)*
                self.#member.encode_raw(buf);
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: ::prost::encoding::WireType,
                buf: &mut impl ::prost::bytes::Buf,
                ctx: ::prost::encoding::DecodeContext,
            ) -> ::core::result::Result<(), ::prost::DecodeError> {
                match tag {
                    #(#merge)*
                    _ => self.#member.merge_field(tag, wire_type, buf, ctx),
                }
            }

            #[inline]
            fn encoded_len(&self) -> usize {
                0 #(+ #encoded_len)* + self.#member.encoded_len()
            }

            fn clear(&mut self) {
                #(#clear;)*
                self.#member.clear();
            }
        }
    };
    let mut items = vec![message];
    let methods: Vec<TokenStream> = fields.iter().filter_map(methods).collect();
    if !methods.is_empty() {
        items.push(syn::parse_quote! {
            impl #ident {
                #(#methods)*
            }
        });
    }
    Ok(items)
}

fn module(scalar: &Scalar) -> syn::Ident {
    format_ident!("{}", scalar.module())
}

/// The condition under which proto3 writes a field with implicit presence.
fn is_set(ty: &Scalar, value: &TokenStream) -> TokenStream {
    match ty {
        Scalar::Named("string" | "bytes") => quote!(!#value.is_empty()),
        Scalar::Named("bool") => quote!(#value),
        Scalar::Named("float" | "double") => quote!(#value != 0.0),
        _ => quote!(#value != 0),
    }
}

fn encode(field: &Field) -> TokenStream {
    let tag = Literal::u32_unsuffixed(field.tag);
    let member = &field.ident;
    let value = quote!(self.#member);
    match &field.kind {
        Kind::Scalar { ty, label } => {
            let m = module(ty);
            match label {
                Label::Plain => {
                    let set = is_set(ty, &value);
                    quote!(if #set { ::prost::encoding::#m::encode(#tag, &#value, buf); })
                }
                Label::Optional => quote! {
                    if let ::core::option::Option::Some(value) = &#value {
                        ::prost::encoding::#m::encode(#tag, value, buf);
                    }
                },
                Label::Repeated { packed: true } => {
                    quote!(::prost::encoding::#m::encode_packed(#tag, &#value, buf);)
                }
                Label::Repeated { packed: false } => {
                    quote!(::prost::encoding::#m::encode_repeated(#tag, &#value, buf);)
                }
            }
        }
        Kind::Message { label } => match label {
            Label::Repeated { .. } => quote! {
                for message in &#value {
                    ::prost::encoding::message::encode(#tag, message, buf);
                }
            },
            _ => quote! {
                if let ::core::option::Option::Some(message) = &#value {
                    ::prost::encoding::message::encode(#tag, message, buf);
                }
            },
        },
        Kind::Map { map, key, value: v } => {
            let map = format_ident!("{map}");
            let k = module(key);
            match v {
                MapValue::Scalar(Scalar::Enumeration(ty)) => quote! {
                    ::prost::encoding::#map::encode_with_default(
                        ::prost::encoding::#k::encode,
                        ::prost::encoding::#k::encoded_len,
                        ::prost::encoding::int32::encode,
                        ::prost::encoding::int32::encoded_len,
                        &(#ty::default() as i32),
                        #tag,
                        &#value,
                        buf,
                    );
                },
                MapValue::Scalar(scalar) => {
                    let vm = module(scalar);
                    quote! {
                        ::prost::encoding::#map::encode(
                            ::prost::encoding::#k::encode,
                            ::prost::encoding::#k::encoded_len,
                            ::prost::encoding::#vm::encode,
                            ::prost::encoding::#vm::encoded_len,
                            #tag,
                            &#value,
                            buf,
                        );
                    }
                }
                MapValue::Message => quote! {
                    ::prost::encoding::#map::encode(
                        ::prost::encoding::#k::encode,
                        ::prost::encoding::#k::encoded_len,
                        ::prost::encoding::message::encode,
                        ::prost::encoding::message::encoded_len,
                        #tag,
                        &#value,
                        buf,
                    );
                },
            }
        }
    }
}

/// An expression merging the field at `value` (a `&mut` to the member).
fn merge(field: &Field) -> TokenStream {
    match &field.kind {
        Kind::Scalar { ty, label } => {
            let m = module(ty);
            match label {
                Label::Plain => quote!(::prost::encoding::#m::merge(wire_type, value, buf, ctx)),
                Label::Optional => quote! {
                    ::prost::encoding::#m::merge(
                        wire_type,
                        value.get_or_insert_with(::core::default::Default::default),
                        buf,
                        ctx,
                    )
                },
                Label::Repeated { .. } => {
                    quote!(::prost::encoding::#m::merge_repeated(wire_type, value, buf, ctx))
                }
            }
        }
        Kind::Message { label } => match label {
            Label::Repeated { .. } => {
                quote!(::prost::encoding::message::merge_repeated(
                    wire_type, value, buf, ctx
                ))
            }
            _ => quote! {
                ::prost::encoding::message::merge(
                    wire_type,
                    value.get_or_insert_with(::core::default::Default::default),
                    buf,
                    ctx,
                )
            },
        },
        Kind::Map { map, key, value: v } => {
            let map = format_ident!("{map}");
            let k = module(key);
            let merge = match v {
                MapValue::Scalar(Scalar::Enumeration(ty)) => quote! {
                    ::prost::encoding::#map::merge_with_default(
                        ::prost::encoding::#k::merge,
                        ::prost::encoding::int32::merge,
                        #ty::default() as i32,
                        value,
                        buf,
                        ctx,
                    )
                },
                MapValue::Scalar(scalar) => {
                    let vm = module(scalar);
                    quote! {
                        ::prost::encoding::#map::merge(
                            ::prost::encoding::#k::merge,
                            ::prost::encoding::#vm::merge,
                            value,
                            buf,
                            ctx,
                        )
                    }
                }
                MapValue::Message => quote! {
                    ::prost::encoding::#map::merge(
                        ::prost::encoding::#k::merge,
                        ::prost::encoding::message::merge,
                        value,
                        buf,
                        ctx,
                    )
                },
            };
            quote! {
                ::prost::encoding::check_wire_type(::prost::encoding::WireType::LengthDelimited, wire_type)
                    .and_then(|()| #merge)
            }
        }
    }
}

fn encoded_len(field: &Field) -> TokenStream {
    let tag = Literal::u32_unsuffixed(field.tag);
    let member = &field.ident;
    let value = quote!(self.#member);
    match &field.kind {
        Kind::Scalar { ty, label } => {
            let m = module(ty);
            match label {
                Label::Plain => {
                    let set = is_set(ty, &value);
                    quote!(if #set { ::prost::encoding::#m::encoded_len(#tag, &#value) } else { 0 })
                }
                Label::Optional => quote! {
                    #value.as_ref().map_or(0, |value| ::prost::encoding::#m::encoded_len(#tag, value))
                },
                Label::Repeated { packed: true } => {
                    quote!(::prost::encoding::#m::encoded_len_packed(#tag, &#value))
                }
                Label::Repeated { packed: false } => {
                    quote!(::prost::encoding::#m::encoded_len_repeated(#tag, &#value))
                }
            }
        }
        Kind::Message { label } => match label {
            Label::Repeated { .. } => {
                quote!(::prost::encoding::message::encoded_len_repeated(#tag, &#value))
            }
            _ => quote! {
                #value.as_ref().map_or(0, |message| ::prost::encoding::message::encoded_len(#tag, message))
            },
        },
        Kind::Map { map, key, value: v } => {
            let map = format_ident!("{map}");
            let k = module(key);
            match v {
                MapValue::Scalar(Scalar::Enumeration(ty)) => quote! {
                    ::prost::encoding::#map::encoded_len_with_default(
                        ::prost::encoding::#k::encoded_len,
                        ::prost::encoding::int32::encoded_len,
                        &(#ty::default() as i32),
                        #tag,
                        &#value,
                    )
                },
                MapValue::Scalar(scalar) => {
                    let vm = module(scalar);
                    quote! {
                        ::prost::encoding::#map::encoded_len(
                            ::prost::encoding::#k::encoded_len,
                            ::prost::encoding::#vm::encoded_len,
                            #tag,
                            &#value,
                        )
                    }
                }
                MapValue::Message => quote! {
                    ::prost::encoding::#map::encoded_len(
                        ::prost::encoding::#k::encoded_len,
                        ::prost::encoding::message::encoded_len,
                        #tag,
                        &#value,
                    )
                },
            }
        }
    }
}

fn clear(field: &Field) -> TokenStream {
    let member = &field.ident;
    match &field.kind {
        Kind::Scalar {
            ty: Scalar::Named("string" | "bytes"),
            label: Label::Plain,
        }
        | Kind::Scalar {
            label: Label::Repeated { .. },
            ..
        }
        | Kind::Message {
            label: Label::Repeated { .. },
        }
        | Kind::Map { .. } => quote!(self.#member.clear()),
        Kind::Scalar { .. } | Kind::Message { .. } => {
            quote!(self.#member = ::core::default::Default::default())
        }
    }
}

/// The accessors prost's derive adds: typed getters and setters for enum
/// fields, and getters that default for optional scalars.
fn methods(field: &Field) -> Option<TokenStream> {
    let Kind::Scalar { ty, label } = &field.kind else {
        return None;
    };
    let member = &field.ident;
    let name = member.to_string();
    let name = name.trim_start_matches("r#");
    match (ty, label) {
        (Scalar::Enumeration(e), Label::Plain) => {
            let set = format_ident!("set_{name}");
            let get_doc = format!(
                "The enum value of `{name}`, or the default if it holds a value the enum does not know."
            );
            let set_doc = format!("Sets `{name}` to `value`.");
            Some(quote! {
                #[doc = #get_doc]
                pub fn #member(&self) -> #e {
                    #e::try_from(self.#member).unwrap_or_default()
                }
                #[doc = #set_doc]
                pub fn #set(&mut self, value: #e) {
                    self.#member = value as i32;
                }
            })
        }
        (Scalar::Enumeration(e), Label::Optional) => {
            let set = format_ident!("set_{name}");
            let get_doc = format!(
                "The enum value of `{name}`, or the default if it is unset or holds a value the enum does not know."
            );
            let set_doc = format!("Sets `{name}` to `value`.");
            Some(quote! {
                #[doc = #get_doc]
                pub fn #member(&self) -> #e {
                    self.#member.and_then(|v| #e::try_from(v).ok()).unwrap_or_default()
                }
                #[doc = #set_doc]
                pub fn #set(&mut self, value: #e) {
                    self.#member = ::core::option::Option::Some(value as i32);
                }
            })
        }
        (Scalar::Enumeration(e), Label::Repeated { .. }) => {
            let push = format_ident!("push_{name}");
            let get_doc = format!("The values of `{name}` that the enum knows.");
            let push_doc = format!("Appends `value` to `{name}`.");
            Some(quote! {
                #[doc = #get_doc]
                pub fn #member(&self) -> impl ::core::iter::Iterator<Item = #e> + '_ {
                    self.#member.iter().filter_map(|v| #e::try_from(*v).ok())
                }
                #[doc = #push_doc]
                pub fn #push(&mut self, value: #e) {
                    self.#member.push(value as i32);
                }
            })
        }
        (Scalar::Named(scalar), Label::Optional) => {
            let doc = format!("`{name}`, or the default if it is unset.");
            let (ty, body) = match *scalar {
                "string" => (quote!(&str), quote!(self.#member.as_deref().unwrap_or(""))),
                "bytes" => (
                    quote!(&[u8]),
                    quote!(self.#member.as_deref().unwrap_or(&[])),
                ),
                other => {
                    let ty = rust_type(other);
                    (quote!(#ty), quote!(self.#member.unwrap_or_default()))
                }
            };
            Some(quote! {
                #[doc = #doc]
                pub fn #member(&self) -> #ty {
                    #body
                }
            })
        }
        _ => None,
    }
}

fn rust_type(scalar: &str) -> syn::Ident {
    let ty = match scalar {
        "double" => "f64",
        "float" => "f32",
        "int32" | "sint32" | "sfixed32" => "i32",
        "int64" | "sint64" | "sfixed64" => "i64",
        "uint32" | "fixed32" => "u32",
        "uint64" | "fixed64" => "u64",
        _ => "bool",
    };
    format_ident!("{ty}")
}
