//! The one message of a unary call, read from tonic's stream of them.
//!
//! tonic's unary handlers, on both sides, keep room for reading the message
//! in their future for the whole call. Here the call's future is tonic's
//! streaming one, and the message is read in a future of its own that the
//! caller boxes and frees once it is in. Either side reads as tonic's unary
//! handler does: one message (an `Internal` status if there is none), then
//! the rest of the body and its trailers.

use std::future::Future;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// A served call's message.
pub(crate) fn request<M: Send + 'static>(
    request: Request<Streaming<M>>,
) -> impl Future<Output = Result<Request<M>, Status>> + Send {
    let (metadata, extensions, mut stream) = request.into_parts();
    async move {
        let message = stream
            .message()
            .await?
            .ok_or_else(|| Status::internal("Missing request message."))?;
        let metadata = match stream.trailers().await? {
            Some(trailers) => merged(metadata, trailers),
            None => metadata,
        };
        Ok(Request::from_parts(metadata, extensions, message))
    }
}

/// A call's reply message. A status met while reading it carries the
/// reply's headers too, as tonic's unary call gives it; the metadata of a
/// reply that succeeds is not kept, as a chain's elements return messages.
pub(crate) fn reply<M: Send + 'static>(
    reply: Response<Streaming<M>>,
) -> impl Future<Output = Result<M, Status>> + Send {
    let (metadata, mut stream, _) = reply.into_parts();
    async move {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return Err(Status::internal("Missing response message.")),
            Err(mut status) => {
                let own = std::mem::take(status.metadata_mut());
                *status.metadata_mut() = merged(own, metadata);
                return Err(status);
            }
        };
        // The rest of the body, for the status in its trailers.
        stream.trailers().await?;
        Ok(message)
    }
}

/// `into` with every entry of `from` added.
fn merged(into: MetadataMap, from: MetadataMap) -> MetadataMap {
    let mut headers = into.into_headers();
    headers.extend(from.into_headers());
    MetadataMap::from_headers(headers)
}
