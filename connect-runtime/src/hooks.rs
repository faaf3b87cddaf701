//! The hooks an element writes, which [`Element`](crate::Element) turns into
//! its `ServerElement` / `ClientElement` implementations.

use std::future::Future;

use tonic::Status;

use crate::Context;
use crate::element::Next;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;

/// An element's `request` and `close` logic, as plain `async` code.
///
/// Write it with [`hooks`](crate::hooks) on an impl block containing only
/// the hooks the element needs; the others pass calls on unchanged. Derive
/// [`Element`](crate::Element) on the struct to make it a chain element.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no element hooks",
    label = "`{Self}` needs hooks to be a chain element",
    note = "add `#[connect_runtime::hooks] impl {Self} {{ }}` with the hooks it needs; an empty block passes every call on"
)]
pub trait Hooks: Send + Sync + 'static {
    /// Handles a `Request`; the default passes it on.
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'a {
        next.request(ctx, request)
    }

    /// Handles a `Close`; the default passes it on.
    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        next.close(ctx, connection)
    }
}
