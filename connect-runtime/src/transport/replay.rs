//! Request bodies that can be sent again: what lets a call the remote
//! refused unprocessed (past its GOAWAY's last stream) go out once more on
//! a new connection, as grpc-go's clients retry such calls.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt as _, stream};
use http_body_util::{BodyStream, StreamBody};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

/// A request body, as far as it could be read without waiting.
pub(crate) enum Ready {
    /// All of it (a unary or server-streaming call's one message): it can
    /// be sent again.
    Whole(Bytes),
    /// A client stream: sent once, as it comes.
    Streaming(Body),
}

impl Ready {
    /// Reads what `body` has ready now: all of it, usually. A body that
    /// failed to encode fails the call before anything is sent.
    pub(crate) fn read(mut body: Body) -> Result<Self, Status> {
        let mut cx = TaskContext::from_waker(Waker::noop());
        let mut read: Option<Bytes> = None;
        let unread = loop {
            let frame = match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(None) => return Ok(Self::Whole(read.unwrap_or_default())),
                Poll::Ready(Some(frame)) => frame?,
                Poll::Pending => break None,
            };
            match frame.into_data() {
                Ok(data) => read = Some(join(read, data)),
                // A request has no trailers; whatever sent them keeps the
                // whole body.
                Err(frame) => break Some(frame),
            }
        };
        let first = read.map(Frame::data).into_iter().chain(unread).map(Ok);
        let body = stream::iter(first).chain(BodyStream::new(body));
        Ok(Self::Streaming(Body::new(StreamBody::new(body))))
    }
}

/// A call's body as it goes out: one whole message, held inline so that
/// sending it boxes nothing, or a client stream.
pub(crate) enum Outgoing {
    /// The message, until it is sent.
    Whole(Option<Bytes>),
    /// A client stream.
    Streaming(Body),
}

impl HttpBody for Outgoing {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.get_mut() {
            Self::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Whole(bytes) => bytes.is_none(),
            Self::Streaming(body) => body.is_end_stream(),
        }
    }

    /// Never exact for a whole message: hyper would send it as a
    /// `content-length`, which gRPC requests do not carry.
    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Whole(_) => SizeHint::default(),
            Self::Streaming(body) => body.size_hint(),
        }
    }
}

/// A body of `bytes`, to send (again).
pub(crate) fn whole(bytes: Bytes) -> Outgoing {
    Outgoing::Whole(Some(bytes))
}

/// `more` after what was `read`, copying only if both hold bytes.
fn join(read: Option<Bytes>, more: Bytes) -> Bytes {
    match read {
        Some(read) if !read.is_empty() => {
            let mut joined = BytesMut::with_capacity(read.len() + more.len());
            joined.extend_from_slice(&read);
            joined.extend_from_slice(&more);
            joined.freeze()
        }
        _ => more,
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt as _, Full};
    use tokio::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn a_ready_body_is_read_whole_and_can_be_sent_again() {
        let body = Body::new(Full::new(Bytes::from_static(b"one message")));
        let Ok(Ready::Whole(bytes)) = Ready::read(body) else {
            panic!("a ready body is whole");
        };
        let again = whole(bytes.clone()).collect().await.unwrap().to_bytes();
        assert_eq!(whole(bytes.clone()).size_hint().exact(), None);
        assert_eq!(
            (&bytes[..], &again[..]),
            (&b"one message"[..], &b"one message"[..])
        );
    }

    #[tokio::test]
    async fn a_stream_keeps_what_was_read_and_sends_the_rest_as_it_comes() {
        let (frames, rx) = mpsc::unbounded_channel::<Result<Frame<Bytes>, Status>>();
        frames
            .send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .unwrap();
        frames
            .send(Ok(Frame::data(Bytes::from_static(b"b"))))
            .unwrap();
        let source = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let Ok(Ready::Streaming(body)) = Ready::read(Body::new(StreamBody::new(source))) else {
            panic!("a body still coming is streamed");
        };
        frames
            .send(Ok(Frame::data(Bytes::from_static(b"c"))))
            .unwrap();
        drop(frames);
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"abc");
    }

    #[test]
    fn a_body_that_failed_to_encode_fails_the_call() {
        let failed = stream::iter([Err::<Frame<Bytes>, _>(Status::internal("encoding"))]);
        let Err(status) = Ready::read(Body::new(StreamBody::new(failed))) else {
            panic!("a failed body is an error");
        };
        assert_eq!(status.message(), "encoding");
    }
}
