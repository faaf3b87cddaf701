//! The served chain's side of monitoring: what the chain returns and closes.

use std::future::Future;
use std::sync::Arc;

use tonic::Status;

use super::Hub;
use crate::chain::{Context, Hooks, Next};
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use connect_macros::Element;

/// Records each connection the rest of the chain returns (an UPDATE to the
/// watchers) and each close (a DELETE, whatever the close's outcome, as Go's
/// `monitor` server does). Made by
/// [`ConnectionMonitor::server`](super::ConnectionMonitor::server).
#[derive(Clone, Debug, Element)]
#[element(server, name = "monitorserver")]
pub struct MonitorServer {
    hub: Arc<Hub>,
}

impl MonitorServer {
    pub(super) fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl Hooks for MonitorServer {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let owner = super::identity(ctx.value::<crate::server::Peer>());
        let connection = next.request(ctx, request).await?;
        self.hub.update(&connection, owner);
        Ok(connection)
    }

    // Not an `async fn`, which would keep the connection twice (see `Hooks`).
    #[allow(clippy::manual_async_fn)]
    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        async move {
            // A close given up half way still ends the connection here:
            // connect finishes it at the remote on its own.
            let _deleted = Deleted {
                hub: &self.hub,
                id: connection.id.clone(),
            };
            next.close(ctx, connection).await
        }
    }
}

/// Deletes its connection from the monitor when dropped.
struct Deleted<'a> {
    hub: &'a Hub,
    id: String,
}

impl Drop for Deleted<'_> {
    fn drop(&mut self) {
        self.hub.delete(&self.id);
    }
}
