//! A request body that can be sent again: what lets a call the remote
//! refused unprocessed (past its GOAWAY's last stream) go out once more on
//! a new connection, as grpc-go's clients retry such calls.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

use crate::map::lock;

/// How much of a body is kept for a second sending; a larger body (a long
/// client stream) is not sent again.
const KEPT: usize = 64 * 1024;

/// A body and what of it has been read, shared by its sendings.
#[derive(Clone)]
pub(crate) struct Replay(Arc<Mutex<Kept>>);

struct Kept {
    body: Body,
    frames: Vec<Frame<Bytes>>,
    bytes: usize,
    ended: bool,
    /// Too much was read to keep it all: no second sending.
    overflowed: bool,
}

impl Replay {
    pub(crate) fn new(body: Body) -> Self {
        Self(Arc::new(Mutex::new(Kept {
            body,
            frames: Vec::new(),
            bytes: 0,
            ended: false,
            overflowed: false,
        })))
    }

    /// A body for one sending: what was read so far, then the rest.
    pub(crate) fn sending(&self) -> Option<Body> {
        (!lock(&self.0).overflowed).then(|| {
            Body::new(Sending {
                kept: self.clone(),
                next: 0,
            })
        })
    }
}

struct Sending {
    kept: Replay,
    next: usize,
}

fn copy(frame: &Frame<Bytes>) -> Frame<Bytes> {
    match frame.data_ref() {
        Some(data) => Frame::data(data.clone()),
        None => Frame::trailers(frame.trailers_ref().cloned().unwrap_or_else(HeaderMap::new)),
    }
}

impl HttpBody for Sending {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let mut kept = lock(&self.kept.0);
        if let Some(frame) = kept.frames.get(self.next).map(copy) {
            drop(kept);
            self.next += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        if kept.ended {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut kept.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) if !kept.overflowed => {
                kept.bytes += frame.data_ref().map_or(0, Bytes::len);
                if kept.bytes > KEPT {
                    kept.overflowed = true;
                    kept.frames = Vec::new();
                } else {
                    kept.frames.push(copy(frame));
                }
            }
            Poll::Ready(None) => kept.ended = true,
            _ => {}
        }
        let next = kept.frames.len();
        drop(kept);
        self.next = next;
        polled
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
