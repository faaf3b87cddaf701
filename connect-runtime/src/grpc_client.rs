//! The element that ends a client chain by calling the remote.

use tonic::{Request, Status};

use crate::Context;
use crate::dial::ClientConn;
use crate::element::{BoxFuture, ClientElement, Next};
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use crate::proto::networkservice::network_service_client::NetworkServiceClient;

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
    client: NetworkServiceClient<ClientConn>,
}

impl GrpcClient {
    /// Calls the remote behind `conn`.
    pub fn new(conn: ClientConn) -> Self {
        Self {
            client: NetworkServiceClient::new(conn),
        }
    }
}

/// Builds the outgoing gRPC request: the message plus the context's deadline
/// as `grpc-timeout`, or `DeadlineExceeded` if no time is left.
fn outgoing<T>(ctx: &Context, message: T) -> Result<Request<T>, Status> {
    let mut request = Request::new(message);
    if let Some(remaining) = ctx.remaining() {
        if remaining.is_zero() {
            return Err(Status::deadline_exceeded(
                "the call's deadline passed before it was sent",
            ));
        }
        request.set_timeout(remaining);
    }
    Ok(request)
}

/// tonic's channel enforces `grpc-timeout` itself and reports expiry as
/// `Cancelled`; to the caller it is its deadline passing.
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

impl ClientElement for GrpcClient {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        _next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        let request = match outgoing(&ctx, request) {
            Ok(request) => request,
            Err(status) => return Box::pin(std::future::ready(Err(status))),
        };
        let mut client = self.client.clone();
        // One box, holding tonic's call future directly: no further layers
        // of async state to move around on every call.
        Box::pin(ctx.run(async move {
            match client.request(request).await {
                Ok(reply) => Ok(reply.into_inner()),
                Err(status) => Err(deadline_status(status)),
            }
        }))
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        _next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        let request = match outgoing(&ctx, connection) {
            Ok(request) => request,
            Err(status) => return Box::pin(std::future::ready(Err(status))),
        };
        let mut client = self.client.clone();
        Box::pin(ctx.run(async move {
            match client.close(request).await {
                Ok(_) => Ok(()),
                Err(status) => Err(deadline_status(status)),
            }
        }))
    }
}
