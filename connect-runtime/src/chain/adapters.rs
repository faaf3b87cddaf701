//! Adapters between the two roles: a server element used in a client chain,
//! and a client element used in a server chain (Go's `adapters` package).
//!
//! ```
//! use connect_runtime::adapters::ServerToClient;
//! use connect_runtime::{ClientChain, Passthrough};
//!
//! // A server-side element reused on the client side.
//! let chain = ClientChain::builder().with(ServerToClient(Passthrough)).build();
//! assert_eq!(chain.len(), 1);
//! ```

use tonic::Status;

use crate::Context;
use crate::chain::{BoxFuture, ClientElement, Next, ServerElement};
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;

/// Runs a [`ServerElement`] as a [`ClientElement`]; what it passes on goes to
/// the rest of the client chain.
#[derive(Clone, Debug, Default)]
pub struct ServerToClient<S>(pub S);

/// Runs a [`ClientElement`] as a [`ServerElement`]; what it passes on goes to
/// the rest of the server chain.
#[derive(Clone, Debug, Default)]
pub struct ClientToServer<C>(pub C);

impl<S: ServerElement> ClientElement for ServerToClient<S> {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        self.0.request(ctx, request, next)
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        self.0.close(ctx, connection, next)
    }
}

impl<C: ClientElement> ServerElement for ClientToServer<C> {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        self.0.request(ctx, request, next)
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        self.0.close(ctx, connection, next)
    }
}
