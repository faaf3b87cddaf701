//! Request bodies that can be sent again: what lets a call the remote
//! refused unprocessed (past its GOAWAY's last stream) go out once more on
//! a new connection, as grpc-go's clients retry such calls.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Waker};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

/// A request body as the connection sends it.
pub(crate) enum OutBody {
    /// All of it, read before sending (a unary or server-streaming call's
    /// one message): it can be sent again.
    Whole(Option<Bytes>),
    /// What was read before sending, then the rest as it comes (a client
    /// stream): sent once only.
    Streaming(Option<Bytes>, Body),
    /// Encoding the request failed.
    Failed(Option<Status>),
}

impl OutBody {
    /// Reads what `body` has ready now; all of it, usually.
    pub(crate) fn new(mut body: Body) -> Self {
        let mut cx = TaskContext::from_waker(Waker::noop());
        let mut read: Option<Bytes> = None;
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(None) => return Self::Whole(Some(read.unwrap_or_default())),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => read = Some(join(read, data)),
                    // A request has no trailers; whatever sent them keeps
                    // the whole body.
                    Err(_) => return Self::Streaming(read, body),
                },
                Poll::Ready(Some(Err(status))) => return Self::Failed(Some(status)),
                Poll::Pending => return Self::Streaming(read, body),
            }
        }
    }

    /// The same body again, if it can be sent again.
    pub(crate) fn again(&self) -> Option<Self> {
        match self {
            Self::Whole(Some(data)) => Some(Self::Whole(Some(data.clone()))),
            _ => None,
        }
    }
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

impl HttpBody for OutBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let data = |data: Option<Bytes>| data.filter(|d| !d.is_empty()).map(|d| Ok(Frame::data(d)));
        match &mut *self {
            Self::Whole(whole) => Poll::Ready(data(whole.take())),
            Self::Streaming(read, rest) => match data(read.take()) {
                Some(frame) => Poll::Ready(Some(frame)),
                None => Pin::new(rest).poll_frame(cx),
            },
            Self::Failed(status) => Poll::Ready(status.take().map(Err)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Whole(whole) => whole.as_ref().is_none_or(Bytes::is_empty),
            Self::Streaming(_, _) => false,
            Self::Failed(status) => status.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Whole(whole) => {
                SizeHint::with_exact(whole.as_ref().map_or(0, |d| d.len() as u64))
            }
            _ => SizeHint::default(),
        }
    }
}
