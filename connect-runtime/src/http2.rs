//! The plaintext transport under a [`ClientConn`](crate::ClientConn): one
//! HTTP/2 connection driven by hyper, the origin every request is sent to,
//! and the hand-off that feeds a crowd of calls to hyper in batches.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};

use hyper::client::conn::http2::SendRequest;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use url::Url;

use crate::dial::{ResponseFuture, TransportError};

/// More calls than this in flight on one connection, and new ones are
/// handed to hyper by a task of the connection's own, in batches.
///
/// With every caller of a burst (a thousand calls released together,
/// workload a of BENCHMARKS.md) handing its own request to hyper, the
/// median call of the burst took 23 ms; fed to hyper in batches from one
/// task, 6.4 ms, with the burst as a whole a little shorter (32.0 against
/// 32.6 ms, CPU 31.9 against 33.0 µs per pair; BENCHMARKS.md, fifth round).
/// Why the batches shorten the median call so much was not established.
/// Below the threshold a call goes straight to hyper: the hand-off costs a
/// task switch, a oneshot and a box per call, which a single call gains
/// nothing from.
const CROWD: usize = 8;

/// The most requests the hand-off task passes to hyper per wake-up.
const BATCH: usize = 256;

/// A plaintext connection, as one clone of a `ClientConn` holds it.
#[derive(Clone)]
pub(crate) struct Http2 {
    send: SendRequest<tonic::body::Body>,
    shared: Arc<Shared>,
}

/// What the clones of one connection share.
struct Shared {
    /// The dialed authority, for the `:authority` of every request.
    authority: http::uri::Authority,
    url: Arc<Url>,
    /// Calls sent and not yet answered (or dropped).
    in_flight: AtomicUsize,
    /// The hand-off to the batching task.
    handoff: mpsc::UnboundedSender<Handoff>,
}

type HyperResponse = Result<http::Response<hyper::body::Incoming>, hyper::Error>;
type HyperFuture = Pin<Box<dyn Future<Output = HyperResponse> + Send>>;
/// A request for the batching task, and where its response future goes.
type Handoff = (
    http::Request<tonic::body::Body>,
    oneshot::Sender<HyperFuture>,
);

/// Counts a call in flight until its response (or its dropped future).
struct InFlight(Arc<Shared>);

impl InFlight {
    /// Counts a call in; whether the connection is crowded with it.
    fn enter(shared: &Arc<Shared>) -> (Self, bool) {
        let before = shared.in_flight.fetch_add(1, Ordering::Relaxed);
        (Self(Arc::clone(shared)), before >= CROWD)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Http2 {
    pub(crate) fn new(
        send: SendRequest<tonic::body::Body>,
        authority: http::uri::Authority,
        url: Arc<Url>,
    ) -> Self {
        // Started with the connection, so that the first crowd does not
        // pay for a spawn in the middle of a burst; a dial spawns tasks
        // anyway.
        let (handoff, requests) = mpsc::unbounded_channel();
        tokio::spawn(hand_off(send.clone(), requests));
        Self {
            send,
            shared: Arc::new(Shared {
                authority,
                url,
                in_flight: AtomicUsize::new(0),
                handoff,
            }),
        }
    }

    /// hyper's only readiness failure is a connection that has ended.
    /// Reported here, tonic's generated clients would call it `Unknown`
    /// ("Service was not ready"); reported by the call, it is `Unavailable`.
    pub(crate) fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        self.send.poll_ready(cx).map(|_| ())
    }

    pub(crate) fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> ResponseFuture {
        // HTTP/2 needs :scheme and :authority; tonic's generated clients
        // send a path only (its channel adds the origin).
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.shared.authority.clone());
        match http::Uri::from_parts(parts) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(err) => return Box::pin(std::future::ready(Err(err.into()))),
        }
        let (in_flight, crowded) = InFlight::enter(&self.shared);
        if !crowded {
            let response = self.send.send_request(request);
            return Box::pin(async move {
                let response = response.await;
                finish(&in_flight.0.url, response)
            });
        }
        let (reply, handed) = oneshot::channel();
        let sent = self.shared.handoff.send((request, reply)).is_ok();
        Box::pin(async move {
            let response = match handed.await {
                Ok(response) if sent => response.await,
                _ => return Err(ended_status(&in_flight.0.url, None)),
            };
            finish(&in_flight.0.url, response)
        })
    }

    /// Calls sent on this connection and not yet answered or dropped.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }
}

/// The batching task: passes requests to hyper as they come, as many per
/// wake-up as have queued. It holds a clone of the connection's sender and
/// ends when every clone of the connection is gone.
async fn hand_off(
    mut send: SendRequest<tonic::body::Body>,
    mut requests: mpsc::UnboundedReceiver<Handoff>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while requests.recv_many(&mut batch, BATCH).await > 0 {
        for (request, reply) in batch.drain(..) {
            // A caller that went away has dropped its receiver; the
            // response future goes with the send error, cancelling the call.
            let _ = reply.send(Box::pin(send.send_request(request)));
        }
    }
}

fn finish(
    url: &Url,
    response: HyperResponse,
) -> Result<http::Response<tonic::body::Body>, TransportError> {
    match response {
        Ok(response) => Ok(response.map(tonic::body::Body::new)),
        Err(err) => Err(ended(url, err)),
    }
}

/// hyper reports a call on a connection that has ended, or that ended under
/// it, as closed or canceled; to gRPC that is `Unavailable` (what tonic's
/// channel reports when it cannot reconnect), not `Cancelled` or `Unknown`.
fn ended(url: &Url, err: hyper::Error) -> TransportError {
    if err.is_closed() || err.is_canceled() {
        ended_status(url, Some(&err))
    } else {
        Box::new(err)
    }
}

/// `Unavailable`: the connection has ended, for `cause` if hyper gave one.
fn ended_status(url: &Url, cause: Option<&hyper::Error>) -> TransportError {
    let message = match cause {
        Some(cause) => format!("the connection to {url} has ended: {cause}"),
        None => format!("the connection to {url} has ended"),
    };
    Box::new(Status::unavailable(message))
}
