//! The codec the generated clients and servers use: tonic's prost codec,
//! with buffers sized for NSM's messages.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes each call's encoder and decoder reserve up front. NSM's messages
/// are a few hundred bytes to a few KiB; tonic's default (8 KiB each way,
/// held while the call is in flight) mostly goes unused, and a larger
/// message grows its buffer as it needs.
pub const BUFFER_SIZE: usize = 1024;

/// How many bytes of ready messages a stream batches into one send: tonic's
/// default.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// tonic's `ProstCodec` with [`BUFFER_SIZE`] buffers: what the generated
/// clients and servers encode and decode with.
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

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for NsmCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
