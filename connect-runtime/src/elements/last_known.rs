//! A connection as last known, kept as its encoding: what a live
//! connection's copy costs is its wire size, not its struct's (184 bytes
//! before any string, map or segment).

use std::sync::Arc;

use prost::Message;

use crate::proto::connection::Connection;

/// An encoded connection (unknown fields and all: the codec keeps them), to
/// decode when it is needed again, which for the copies elements keep (a
/// close on the connection's behalf, a watcher's initial state) is rarely.
#[derive(Clone, Debug)]
pub(crate) struct LastKnown(Arc<[u8]>);

impl LastKnown {
    pub(crate) fn new(connection: &Connection) -> Self {
        // Encoded where it is kept: one allocation, not a `Vec` copied
        // into an `Arc`.
        let mut bytes: Arc<[u8]> = std::iter::repeat_n(0, connection.encoded_len()).collect();
        let mut into = Arc::get_mut(&mut bytes).expect("a new Arc is not shared");
        connection
            .encode(&mut into)
            .expect("a buffer of the encoded length holds the encoding");
        debug_assert!(into.is_empty(), "the encoding fills its buffer");
        Self(bytes)
    }

    /// The connection, decoded.
    pub(crate) fn connection(&self) -> Connection {
        Connection::decode(&*self.0).expect("a connection's own encoding decodes")
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
    }
}
