//! Fields a message does not know, kept so that they are sent on.
//!
//! A passthrough sits between NSM components of mixed API versions. Go's
//! protobuf keeps the fields a message's schema does not name and encodes
//! them again; prost drops them. Every message of this crate therefore has an
//! `unknown_fields` member: decoding appends each field it does not
//! recognise there, in arrival order, and encoding writes them back after the
//! known fields, as Go does.
//!
//! ```
//! use connect_proto::connection::Connection;
//! use connect_proto::unknown::UnknownValue;
//! use prost::Message;
//!
//! // A newer peer's connection: id (field 1) and a field 100 we do not know.
//! let mut wire = Vec::new();
//! prost::encoding::string::encode(1, &"conn-1".to_owned(), &mut wire);
//! prost::encoding::string::encode(100, &"from the future".to_owned(), &mut wire);
//!
//! let connection = Connection::decode(wire.as_slice()).unwrap();
//! assert_eq!(connection.id, "conn-1");
//! let field = connection.unknown_fields.iter().next().unwrap();
//! assert_eq!(field.number, 100);
//! assert_eq!(field.value, UnknownValue::LengthDelimited(b"from the future"));
//!
//! // Encoding sends it on unchanged.
//! assert_eq!(connection.encode_to_vec(), wire);
//! ```

use std::fmt;

use prost::DecodeError;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};

/// The fields of one message that its schema does not know, as they came
/// off the wire (key and value of each, in order).
///
/// Empty, it is one null pointer: messages without unknown fields pay a word
/// each and no allocation.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct UnknownFields {
    // Boxed so that the common case, no unknown fields, costs one word per
    // message; the second allocation is paid only when there are some.
    #[allow(clippy::box_collection)]
    bytes: Option<Box<Vec<u8>>>,
}

impl UnknownFields {
    /// No fields.
    pub const fn new() -> Self {
        Self { bytes: None }
    }

    /// Whether there are no unknown fields.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// The fields' wire encoding, keys included, in arrival order.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The fields in arrival order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            rest: self.as_bytes(),
        }
    }

    /// Drops every field.
    pub fn clear(&mut self) {
        self.bytes = None;
    }

    /// Appends a varint field (`int32`, `uint64`, `bool`, an enum, ...).
    pub fn push_varint(&mut self, number: u32, value: u64) {
        let buf = self.key(number, WireType::Varint);
        encoding::encode_varint(value, buf);
    }

    /// Appends a 32-bit field (`fixed32`, `sfixed32`, `float`).
    pub fn push_fixed32(&mut self, number: u32, value: u32) {
        self.key(number, WireType::ThirtyTwoBit).put_u32_le(value);
    }

    /// Appends a 64-bit field (`fixed64`, `sfixed64`, `double`).
    pub fn push_fixed64(&mut self, number: u32, value: u64) {
        self.key(number, WireType::SixtyFourBit).put_u64_le(value);
    }

    /// Appends a length-delimited field (`string`, `bytes`, a message, a
    /// packed repeated field).
    pub fn push_length_delimited(&mut self, number: u32, value: &[u8]) {
        let buf = self.key(number, WireType::LengthDelimited);
        buf.reserve(encoding::encoded_len_varint(value.len() as u64) + value.len());
        encoding::encode_varint(value.len() as u64, buf);
        buf.extend_from_slice(value);
    }

    /// Decodes the field whose key was just read, and keeps it. For the
    /// generated `prost::Message` impls: the catch-all arm of `merge_field`.
    ///
    /// # Errors
    ///
    /// prost's own errors for a malformed field: a truncated value, a
    /// mismatched end-group tag, nesting past the recursion limit.
    pub fn merge_field(
        &mut self,
        number: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // prost's decoders do the checking, so a malformed field fails with
        // the error prost would give and nothing of it is kept.
        match wire_type {
            WireType::Varint => {
                let mut value = 0u64;
                encoding::uint64::merge(wire_type, &mut value, buf, ctx)?;
                self.push_varint(number, value);
            }
            WireType::ThirtyTwoBit => {
                let mut value = 0u32;
                encoding::fixed32::merge(wire_type, &mut value, buf, ctx)?;
                self.push_fixed32(number, value);
            }
            WireType::SixtyFourBit => {
                let mut value = 0u64;
                encoding::fixed64::merge(wire_type, &mut value, buf, ctx)?;
                self.push_fixed64(number, value);
            }
            WireType::LengthDelimited => {
                // Usually the whole value is in the buffer's current chunk:
                // copied from there straight into place.
                let chunk = buf.chunk();
                let mut rest = chunk;
                if let Ok(len) = encoding::decode_varint(&mut rest)
                    && let Some(value) = usize::try_from(len).ok().and_then(|l| rest.get(..l))
                {
                    let consumed = chunk.len() - rest.len() + value.len();
                    self.push_length_delimited(number, value);
                    buf.advance(consumed);
                    return Ok(());
                }
                // Split across chunks, or malformed: prost reads (and checks) it.
                let mut value = prost::bytes::Bytes::new();
                encoding::bytes::merge(wire_type, &mut value, buf, ctx)?;
                self.push_length_delimited(number, &value);
            }
            WireType::StartGroup => {
                let mut group = Group::default();
                encoding::group::merge(number, wire_type, &mut group, buf, ctx)?;
                let out = self.key(number, WireType::StartGroup);
                out.extend_from_slice(group.0.as_bytes());
                encoding::encode_key(number, WireType::EndGroup, out);
            }
            // An end-group key with no group open: prost's error.
            WireType::EndGroup => encoding::skip_field(wire_type, number, buf, ctx)?,
        }
        Ok(())
    }

    /// Writes the fields back. For the generated `prost::Message` impls.
    #[inline]
    pub fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(bytes) = &self.bytes {
            buf.put_slice(bytes);
        }
    }

    /// The length [`encode_raw`](Self::encode_raw) writes.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        self.as_bytes().len()
    }

    fn key(&mut self, number: u32, wire_type: WireType) -> &mut Vec<u8> {
        let buf = self.bytes.get_or_insert_with(Box::default);
        encoding::encode_key(number, wire_type, buf.as_mut());
        buf
    }
}

impl fmt::Debug for UnknownFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a UnknownFields {
    type Item = UnknownField<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// One unknown field: its number and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownField<'a> {
    /// The field number (the tag).
    pub number: u32,
    /// The value, by wire type.
    pub value: UnknownValue<'a>,
}

/// An unknown field's value. The wire type says how it was encoded, not what
/// it means: a length-delimited value may be a string, bytes, a message or a
/// packed repeated field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnknownValue<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 5.
    Fixed32(u32),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: the bytes after the length.
    LengthDelimited(&'a [u8]),
    /// Wire types 3 and 4: the fields between the start and end keys.
    Group(Iter<'a>),
}

/// The fields of an [`UnknownFields`] (or of a group in it), in order.
#[derive(Clone)]
pub struct Iter<'a> {
    rest: &'a [u8],
}

impl PartialEq for Iter<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.rest == other.rest
    }
}

impl Eq for Iter<'_> {}

impl fmt::Debug for Iter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = UnknownField<'a>;

    fn next(&mut self) -> Option<UnknownField<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        // The bytes were checked when they were kept, so a parse error here
        // cannot happen; it ends the iteration rather than panicking.
        let parsed = parse(&mut self.rest);
        if parsed.is_none() {
            self.rest = &[];
        }
        parsed
    }
}

fn parse<'a>(rest: &mut &'a [u8]) -> Option<UnknownField<'a>> {
    let (number, wire_type) = encoding::decode_key(rest).ok()?;
    let value = match wire_type {
        WireType::Varint => UnknownValue::Varint(encoding::decode_varint(rest).ok()?),
        WireType::ThirtyTwoBit => UnknownValue::Fixed32(take(rest, 4)?.get_u32_le()),
        WireType::SixtyFourBit => UnknownValue::Fixed64(take(rest, 8)?.get_u64_le()),
        WireType::LengthDelimited => {
            let len = usize::try_from(encoding::decode_varint(rest).ok()?).ok()?;
            UnknownValue::LengthDelimited(take(rest, len)?)
        }
        WireType::StartGroup => {
            let start = *rest;
            encoding::skip_field(wire_type, number, rest, DecodeContext::default()).ok()?;
            let end_key = encoding::key_len(number);
            let body = &start[..start.len() - rest.len() - end_key];
            UnknownValue::Group(Iter { rest: body })
        }
        WireType::EndGroup => return None,
    };
    Some(UnknownField { number, value })
}

fn take<'a>(rest: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if rest.len() < len {
        return None;
    }
    let (value, tail) = rest.split_at(len);
    *rest = tail;
    Some(value)
}

/// A group's body while it is decoded: every field in it is unknown.
#[derive(Debug, Default)]
struct Group(UnknownFields);

impl prost::Message for Group {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.0.encode_raw(buf);
    }

    fn merge_field(
        &mut self,
        number: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        self.0.merge_field(number, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.encoded_len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(wire: &[u8]) -> UnknownFields {
        let mut fields = UnknownFields::new();
        let mut buf = wire;
        while buf.has_remaining() {
            let (number, wire_type) = encoding::decode_key(&mut buf).unwrap();
            fields
                .merge_field(number, wire_type, &mut buf, DecodeContext::default())
                .unwrap();
        }
        fields
    }

    #[test]
    fn every_wire_type_is_kept_in_order_and_written_back() {
        let mut wire = Vec::new();
        encoding::uint64::encode(7, &u64::MAX, &mut wire);
        encoding::fixed32::encode(8, &0xdead_beef, &mut wire);
        encoding::fixed64::encode(9, &0x0123_4567_89ab_cdef, &mut wire);
        encoding::string::encode(10, &"ten".to_owned(), &mut wire);
        encoding::encode_key(11, WireType::StartGroup, &mut wire);
        encoding::uint32::encode(1, &5, &mut wire);
        encoding::encode_key(12, WireType::StartGroup, &mut wire);
        encoding::encode_key(12, WireType::EndGroup, &mut wire);
        encoding::encode_key(11, WireType::EndGroup, &mut wire);
        encoding::uint32::encode(7, &1, &mut wire);

        let fields = kept(&wire);
        assert_eq!(fields.as_bytes(), wire.as_slice());
        let numbers: Vec<u32> = fields.iter().map(|f| f.number).collect();
        assert_eq!(numbers, [7, 8, 9, 10, 11, 7]);
        let values: Vec<UnknownValue<'_>> = fields.iter().map(|f| f.value).collect();
        assert_eq!(values[0], UnknownValue::Varint(u64::MAX));
        assert_eq!(values[1], UnknownValue::Fixed32(0xdead_beef));
        assert_eq!(values[2], UnknownValue::Fixed64(0x0123_4567_89ab_cdef));
        assert_eq!(values[3], UnknownValue::LengthDelimited(b"ten"));
        let UnknownValue::Group(group) = values[4].clone() else {
            panic!("field 11 is a group: {:?}", values[4]);
        };
        let inner: Vec<UnknownField<'_>> = group.collect();
        assert_eq!(inner.len(), 2);
        assert_eq!(inner[0].value, UnknownValue::Varint(5));
        assert_eq!(inner[1].number, 12);
        assert_eq!(values[5], UnknownValue::Varint(1));
    }

    #[test]
    fn a_value_split_across_chunks_is_kept_whole() {
        let mut wire = Vec::new();
        encoding::string::encode(100, &"split across two chunks".to_owned(), &mut wire);
        encoding::uint32::encode(101, &3, &mut wire);
        for at in 1..wire.len() {
            let (head, tail) = wire.split_at(at);
            let mut buf = head.chain(tail);
            let mut fields = UnknownFields::new();
            while buf.has_remaining() {
                let (number, wire_type) = encoding::decode_key(&mut buf).unwrap();
                fields
                    .merge_field(number, wire_type, &mut buf, DecodeContext::default())
                    .unwrap();
            }
            assert_eq!(fields.as_bytes(), wire.as_slice(), "split at {at}");
        }
    }

    #[test]
    fn pushed_fields_read_back() {
        let mut fields = UnknownFields::new();
        assert!(fields.is_empty());
        fields.push_varint(100, 1);
        fields.push_fixed32(101, 2);
        fields.push_fixed64(102, 3);
        fields.push_length_delimited(103, b"four");
        assert_eq!(kept(fields.as_bytes()), fields);
        assert_eq!(fields.iter().count(), 4);
        fields.clear();
        assert!(fields.is_empty());
        assert_eq!(fields.encoded_len(), 0);
    }

    #[test]
    fn a_malformed_field_fails_as_prost_fails_and_keeps_nothing() {
        // A string field whose length runs past the end.
        let mut wire = Vec::new();
        encoding::encode_key(100, WireType::LengthDelimited, &mut wire);
        encoding::encode_varint(10, &mut wire);
        wire.extend_from_slice(b"short");
        let mut fields = UnknownFields::new();
        let mut buf = wire.as_slice();
        let (number, wire_type) = encoding::decode_key(&mut buf).unwrap();
        let err = fields
            .merge_field(number, wire_type, &mut buf, DecodeContext::default())
            .unwrap_err();
        assert!(err.to_string().contains("buffer underflow"), "{err}");
        assert!(fields.is_empty());

        // An end-group key with no group open.
        let mut wire = Vec::new();
        encoding::encode_key(100, WireType::EndGroup, &mut wire);
        let mut buf = wire.as_slice();
        let (number, wire_type) = encoding::decode_key(&mut buf).unwrap();
        let err = fields
            .merge_field(number, wire_type, &mut buf, DecodeContext::default())
            .unwrap_err();
        assert!(err.to_string().contains("end group"), "{err}");
        assert!(fields.is_empty());
    }

    #[test]
    fn groups_nested_past_the_recursion_limit_fail() {
        let mut wire = Vec::new();
        for _ in 0..200 {
            encoding::encode_key(1, WireType::StartGroup, &mut wire);
        }
        for _ in 0..200 {
            encoding::encode_key(1, WireType::EndGroup, &mut wire);
        }
        let mut fields = UnknownFields::new();
        let mut buf = wire.as_slice();
        let (number, wire_type) = encoding::decode_key(&mut buf).unwrap();
        let err = fields
            .merge_field(number, wire_type, &mut buf, DecodeContext::default())
            .unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
        assert!(fields.is_empty());
    }
}
