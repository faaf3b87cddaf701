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

// Not `async fn`s, which would keep their arguments (see `Hooks`).
impl Hooks for MonitorServer {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'a {
        let owner = super::identity(ctx.value::<crate::server::Peer>());
        let call = next.request(ctx, request);
        async move {
            let connection = call.await?;
            self.hub.update(&connection, owner);
            Ok(connection)
        }
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        let id = connection.id.clone();
        let call = next.close(ctx, connection);
        async move {
            // A close given up half way still ends the connection here:
            // connect finishes it at the remote on its own.
            let _deleted = Deleted { hub: &self.hub, id };
            call.await
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
