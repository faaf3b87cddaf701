//! A connection as last known, kept as its encoding: what a live
//! connection's copy costs is its wire size, not its struct's (184 bytes
//! before any string, map or segment).

use prost::Message;
use prost::bytes::BufMut;
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};

use crate::proto::connection::Connection;

/// An encoded connection (unknown fields and all: the codec keeps them), to
/// decode when it is needed again, which for the copies elements keep (a
/// close on the connection's behalf, a watcher's initial state) is rarely.
///
/// It may carry a key, the id its holder files it under, in the same
/// allocation: a table of them then needs no key of its own. Owned, not
/// shared: a box has no reference counts to pay for.
#[derive(Debug)]
pub(crate) struct LastKnown(Box<[u8]>);

impl LastKnown {
    pub(crate) fn new(connection: &Connection) -> Self {
        Self::filed("", connection)
    }

    /// Kept under `key`: the key's length (a varint), the key, then the
    /// encoded connection.
    pub(crate) fn filed(key: &str, connection: &Connection) -> Self {
        let head = encoded_len_varint(key.len() as u64) + key.len();
        // Encoded where it is kept: one allocation of the exact size, not
        // zeroed first.
        let mut bytes = Vec::with_capacity(head + connection.encoded_len());
        encode_varint(key.len() as u64, &mut bytes);
        bytes.put_slice(key.as_bytes());
        connection
            .encode(&mut bytes)
            .expect("a Vec grows to hold the encoding");
        debug_assert_eq!(
            bytes.len(),
            bytes.capacity(),
            "the encoding fills its buffer"
        );
        Self(bytes.into_boxed_slice())
    }

    /// The key it is filed under, as bytes (what a table hashes).
    pub(crate) fn key_bytes(&self) -> &[u8] {
        self.split().0
    }

    /// The key it is filed under.
    pub(crate) fn key(&self) -> &str {
        std::str::from_utf8(self.key_bytes()).expect("a key is written from a str")
    }

    /// The connection, decoded.
    pub(crate) fn connection(&self) -> Connection {
        Connection::decode(self.split().1).expect("a connection's own encoding decodes")
    }

    fn split(&self) -> (&[u8], &[u8]) {
        let mut rest = &self.0[..];
        let len = decode_varint(&mut rest).expect("a key's length is written first");
        rest.split_at(usize::try_from(len).expect("a key's length fits in memory"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::connection::{Path, PathSegment};

    #[test]
    fn a_connection_comes_back_as_it_was_unknown_fields_too() {
        let mut connection = Connection {
            id: "c-1".into(),
            network_service: "ns".into(),
            path: Some(Box::new(Path {
                index: 1,
                path_segments: vec![PathSegment {
                    name: "hop".into(),
                    id: "c-1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        connection.labels.insert("k".into(), "v".into());
        // Field 99, a varint 7: a field from a newer API.
        let mut bytes = connection.encode_to_vec();
        bytes.extend([0x98, 0x06, 0x07]);
        let newer = Connection::decode(&bytes[..]).unwrap();
        let kept = LastKnown::new(&newer);
        assert_eq!(kept.connection(), newer);
        assert_eq!(kept.connection().encode_to_vec(), bytes);
        assert_eq!(kept.key(), "");
    }

    #[test]
    fn a_key_of_any_length_comes_back_before_the_connection() {
        let connection = Connection {
            id: "c-1".into(),
            ..Default::default()
        };
        // Lengths whose varints take one byte and two.
        for key in [
            String::new(),
            "c-1".to_owned(),
            "k".repeat(127),
            "é".repeat(300),
        ] {
            let kept = LastKnown::filed(&key, &connection);
            assert_eq!(kept.key(), key);
            assert_eq!(kept.key_bytes(), key.as_bytes());
            assert_eq!(kept.connection(), connection);
        }
    }
}
