//! The element that ends a client chain by calling the remote.

use std::time::Duration;

use prost::Message;
use tonic::Status;

use crate::Context;
use crate::dial::ClientConn;
use crate::element::{BoxFuture, ClientElement, Next};
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use crate::unary;

/// Calls the remote `networkservice.NetworkService` over a dialed channel
/// (Go's `networkservice.NewNetworkServiceClient(cc)`).
///
/// The context's deadline goes out as `grpc-timeout` and is also enforced
/// here, as is its cancellation. Being terminal, it never calls `next`.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::{ClientChain, Context, DialOptions, GrpcClient, dial};
/// use connect_runtime::proto::networkservice::NetworkServiceRequest;
///
/// let conn = dial(&"unix:///run/nsm/nse.sock".parse()?, &DialOptions::new()).await?;
/// let chain = ClientChain::builder().with(GrpcClient::new(conn)).build();
/// let reply = chain.request(Context::new(), NetworkServiceRequest::default()).await?;
/// # let _ = reply;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct GrpcClient {
    conn: ClientConn,
}

impl GrpcClient {
    /// Calls the remote behind `conn`.
    pub fn new(conn: ClientConn) -> Self {
        Self { conn }
    }
}

/// The time the context has left, to go out as `grpc-timeout`, or
/// `DeadlineExceeded` if none is left.
fn remaining(ctx: &Context) -> Result<Option<Duration>, Status> {
    match ctx.remaining() {
        Some(remaining) if remaining.is_zero() => Err(Status::deadline_exceeded(
            "the call's deadline passed before it was sent",
        )),
        remaining => Ok(remaining),
    }
}

/// Under TLS the call goes through tonic's channel, which enforces
/// `grpc-timeout` itself and reports expiry as `Cancelled`; to the caller it
/// is its deadline passing.
fn deadline_status(status: Status) -> Status {
    let mut source = std::error::Error::source(&status);
    while let Some(cause) = source {
        if cause.is::<tonic::TimeoutExpired>() {
            return Status::deadline_exceeded("the call's deadline passed");
        }
        source = cause.source();
    }
    status
}

impl GrpcClient {
    /// One unary call of `method` carrying `message`, bounded by `ctx`.
    fn call<R: Message + Default + 'static>(
        &self,
        ctx: Context,
        method: &http::Uri,
        message: &impl Message,
    ) -> BoxFuture<'static, Result<R, Status>> {
        let outgoing = match remaining(&ctx) {
            Ok(timeout) => unary::encode(method, message, timeout),
            Err(status) => return Box::pin(std::future::ready(Err(status))),
        };
        let conn = self.conn.clone();
        Box::pin(ctx.run(async move { unary::call(conn, outgoing).await.map_err(deadline_status) }))
    }
}

impl ClientElement for GrpcClient {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        _next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        self.call(ctx, &unary::REQUEST, &request)
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        _next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        self.call(ctx, &unary::CLOSE, &connection)
    }
}
