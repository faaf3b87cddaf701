//! The served `connection.MonitorConnection` service.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::{Request, Response, Status};

use super::Hub;
use crate::proto::connection::monitor_connection_server::{
    MonitorConnection, MonitorConnectionServer,
};
use crate::proto::connection::{ConnectionEvent, MonitorScopeSelector};

/// `connection.MonitorConnection` over a
/// [`ConnectionMonitor`](super::ConnectionMonitor): made by its
/// [`service`](super::ConnectionMonitor::service).
#[derive(Clone, Debug)]
pub struct MonitorService {
    hub: Arc<Hub>,
}

impl MonitorService {
    pub(super) fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    pub(super) fn into_server(self) -> MonitorConnectionServer<Self> {
        MonitorConnectionServer::new(self)
    }
}

#[tonic::async_trait]
impl MonitorConnection for MonitorService {
    type MonitorConnectionsStream = MonitorStream;

    async fn monitor_connections(
        &self,
        request: Request<MonitorScopeSelector>,
    ) -> Result<Response<MonitorStream>, Status> {
        if self.hub.shutdown.is_cancelled() {
            return Err(Status::unavailable("the server is shutting down"));
        }
        let identity = super::identity(request.extensions().get::<crate::server::Peer>());
        let (id, events, cut) = self.hub.watch(request.into_inner(), identity);
        Ok(Response::new(MonitorStream {
            events,
            cut,
            shutdown: Box::pin(self.hub.shutdown.clone().cancelled_owned()),
            hub: Arc::clone(&self.hub),
            id,
            ended: false,
        }))
    }
}

/// One watcher's events: its initial state, then each update and delete.
/// It ends when the server shuts down, and with `RESOURCE_EXHAUSTED` when
/// its caller reads too slowly; dropping it (the caller went away) takes
/// the watcher off the monitor.
pub struct MonitorStream {
    events: mpsc::Receiver<ConnectionEvent>,
    cut: Arc<AtomicBool>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    hub: Arc<Hub>,
    id: u64,
    ended: bool,
}

impl std::fmt::Debug for MonitorStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorStream")
            .field("id", &self.id)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl tokio_stream::Stream for MonitorStream {
    type Item = Result<ConnectionEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended || this.shutdown.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(None);
        }
        // Once cut, the backlog is not worth sending: the error goes first.
        let cut = this.cut.load(Ordering::Acquire);
        let next = match cut {
            true => Poll::Ready(None),
            false => this.events.poll_recv(cx),
        };
        match next {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(event))),
            Poll::Ready(None) => {
                this.ended = true;
                // Cut between the look above and the channel's end.
                let cut = cut || this.cut.load(Ordering::Acquire);
                Poll::Ready(cut.then(|| {
                    Err(Status::resource_exhausted(format!(
                        "this monitor fell more than {} events behind",
                        this.hub.buffer
                    )))
                }))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for MonitorStream {
    fn drop(&mut self) {
        self.hub.unwatch(self.id);
    }
}
