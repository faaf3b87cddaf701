//! The codec the generated clients and servers use: tonic's prost codec,
//! with buffers sized for NSM's messages.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::{ProstCodec, ProstDecoder};

/// Bytes each call's decoder reserves up front. NSM's messages are a few
/// hundred bytes to a few KiB; tonic's default (8 KiB, held while a
/// message is read) mostly goes unused, and a larger message grows the
/// buffer as it needs.
pub const BUFFER_SIZE: usize = 1024;

/// Bytes each call's encoder starts with, before it knows its message:
/// [`NsmEncoder`] then reserves the message's encoded length.
const ENCODE_START: usize = 64;

/// How many bytes of ready messages a stream batches into one send: tonic's
/// default.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// tonic's `ProstCodec`, decoding into [`BUFFER_SIZE`] buffers and encoding
/// with [`NsmEncoder`]: what the generated clients and servers use.
///
/// ```
/// use connect_proto::codec::{BUFFER_SIZE, NsmCodec};
/// use connect_proto::connection::Connection;
/// use prost::Message;
///
/// // What a generated client calls with; a connection fits one buffer.
/// let _codec = NsmCodec::<Connection, Connection>::default();
/// let connection = Connection { id: "conn-1".into(), ..Default::default() };
/// assert!(connection.encoded_len() < BUFFER_SIZE);
/// ```
#[derive(Debug, Clone)]
pub struct NsmCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for NsmCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for NsmCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = NsmEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        NsmEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}

/// Encodes `T` with prost into a buffer reserved at the message's encoded
/// length. A call keeps its encoded message until the remote answers (to
/// send it again after a GOAWAY), so a buffer of a fixed size would be
/// held, mostly empty, by every call in flight; this one holds the
/// message, and a large message grows it once.
///
/// ```
/// use connect_proto::codec::NsmCodec;
/// use connect_proto::connection::Connection;
/// use tonic::codec::Codec;
///
/// let mut codec = NsmCodec::<Connection, Connection>::default();
/// let _encoder = codec.encoder();
/// ```
#[derive(Debug, Clone)]
pub struct NsmEncoder<T>(PhantomData<T>);

impl<T: prost::Message> Encoder for NsmEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // Not `encode`, which would walk the message for its length again
        // to check a capacity that was just reserved (and that grows).
        item.encode_raw(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_START, YIELD_THRESHOLD)
    }
}
