//! The element that ends a client chain by calling the remote.

use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::client::{Grpc, GrpcService};
use tonic::metadata::MetadataValue;
use tonic::{GrpcMethod, Status};

use crate::chain::{BoxFuture, Client, Context, Element, Joins, Next};
use crate::grpc_timeout;
use crate::outcome::not_sent;
use crate::proto::NETWORK_SERVICE;
use crate::proto::codec::NsmCodec;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use crate::transport::ClientConn;

/// How long after a call's deadline [`GrpcClient`] waits for the remote's
/// own answer (usually `DEADLINE_EXCEEDED`) before cutting the call off:
/// waiting for it means the remote's handler has ended, so nothing that
/// follows for the same connection can overlap it.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// Calls the remote `networkservice.NetworkService` through tonic's `Grpc`
/// client, as its generated client does (Go's
/// `networkservice.NewNetworkServiceClient(cc)`): the same paths, codec and
/// `GrpcMethod` extension, for the layers under it.
///
/// Each call carries the current span's trace context as W3C metadata
/// (see [`telemetry`](crate::telemetry)).
///
/// The channel is a [`ClientConn`] by default, or that channel wrapped in
/// tower layers or a tonic interceptor. The context's deadline goes out as
/// `grpc-timeout`, and the remote ends the call there; a remote that has not
/// answered [`DEADLINE_GRACE`] later is cut off here. The context's
/// cancellation token cuts the call at once. Being terminal, it never calls
/// `next`.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::{ClientChain, Context, DialOptions, GrpcClient, dial};
/// use connect_runtime::proto::networkservice::NetworkServiceRequest;
/// use tonic::service::interceptor::InterceptedService;
///
/// let conn = dial("unix:///run/nsm/nse.sock", &DialOptions::new()).await?;
/// // A per-call token, added by a tonic interceptor.
/// let with_token = InterceptedService::new(conn, |mut call: tonic::Request<()>| {
///     call.metadata_mut().insert("authorization", "Bearer t0ken".parse().unwrap());
///     Ok(call)
/// });
/// let chain = ClientChain::builder().with(GrpcClient::new(with_token)).build();
/// let reply = chain.request(Context::new(), NetworkServiceRequest::default()).await?;
/// # let _ = reply;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct GrpcClient<C = ClientConn> {
    grpc: Grpc<C>,
}

impl<C> GrpcClient<C>
where
    C: GrpcService<Body> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <C::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    /// Calls the remote behind `channel`.
    pub fn new(channel: C) -> Self {
        Self {
            grpc: Grpc::new(channel),
        }
    }

    /// The client and the request for one call, with the time left as
    /// `grpc-timeout`; `DeadlineExceeded` (sending nothing) if none is left.
    #[allow(clippy::result_large_err)]
    fn prepare<M>(
        &self,
        ctx: &Context,
        message: M,
    ) -> Result<(Grpc<C>, tonic::Request<M>), Status> {
        let mut request = tonic::Request::new(message);
        crate::telemetry::inject_current_trace(request.metadata_mut());
        if let Some(left) = ctx.remaining() {
            if left.is_zero() {
                let late =
                    Status::deadline_exceeded("the call's deadline passed before it was sent");
                return Err(not_sent(late));
            }
            let value =
                MetadataValue::try_from(grpc_timeout::text(left)).expect("digits and a letter");
            request.metadata_mut().insert(grpc_timeout::HEADER, value);
        }
        Ok((self.grpc.clone(), request))
    }
}

/// A method of `networkservice.NetworkService`: its path, and its name for
/// tonic's `GrpcMethod` extension.
struct Method {
    path: &'static str,
    name: &'static str,
}

const REQUEST: Method = Method {
    path: "/networkservice.NetworkService/Request",
    name: "Request",
};
const CLOSE: Method = Method {
    path: "/networkservice.NetworkService/Close",
    name: "Close",
};

/// One unary call, as the generated client makes it, but for two things:
/// a close sends its connection boxed (tonic's call keeps its request at
/// every level of its future, and a `Connection` is over 300 bytes), and
/// the call's future is tonic's streaming one, the reply read in a box of
/// its own once it comes ([`unary`](crate::unary)).
#[allow(clippy::manual_async_fn)]
fn unary<C, M, R>(
    mut grpc: Grpc<C>,
    mut request: tonic::Request<M>,
    method: Method,
) -> impl Future<Output = Result<R, Status>> + Send
where
    C: GrpcService<Body> + Send + 'static,
    C::Future: Send,
    C::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <C::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
    M: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    request
        .extensions_mut()
        .insert(GrpcMethod::new(NETWORK_SERVICE, method.name));
    let request = request.map(tokio_stream::once);
    async move {
        grpc.ready()
            .await
            .map_err(|e| Status::unknown(format!("Service was not ready: {}", e.into())))?;
        let path = http::uri::PathAndQuery::from_static(method.path);
        let reply = grpc
            .streaming(request, path, NsmCodec::<M, R>::default())
            .await?;
        Box::pin(crate::unary::reply(reply)).await
    }
}

impl<C> Element for GrpcClient<C>
where
    C: GrpcService<Body> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <C::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        _next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        let (grpc, request) = match self.prepare(&ctx, request) {
            Ok(prepared) => prepared,
            Err(status) => return Box::pin(std::future::ready(Err(status))),
        };
        let deadline = ctx.deadline();
        // The tonic call is boxed where it is made: its future is large,
        // and kept inline it would be copied with every move of this one.
        let call = ctx.run_until(backstop(deadline), Box::pin(unary(grpc, request, REQUEST)));
        // Mapped, not awaited in an `async` block, which would hold the call
        // twice (as captured, and as awaited).
        Box::pin(call.map(move |answer| past_deadline(deadline, answer)))
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        _next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        let (grpc, request) = match self.prepare(&ctx, Box::new(connection)) {
            Ok(prepared) => prepared,
            Err(status) => return Box::pin(std::future::ready(Err(status))),
        };
        let deadline = ctx.deadline();
        let call = ctx.run_until(
            backstop(deadline),
            Box::pin(unary::<_, _, ()>(grpc, request, CLOSE)),
        );
        Box::pin(call.map(move |answer| past_deadline(deadline, answer)))
    }
}

/// The end of a client chain.
impl<C> Joins<Client> for GrpcClient<C>
where
    C: GrpcService<Body> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <C::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
}

/// When a call is cut off here, besides the context's token: its deadline
/// plus [`DEADLINE_GRACE`].
fn backstop(deadline: Option<Instant>) -> Option<Instant> {
    deadline.map(|d| d.checked_add(DEADLINE_GRACE).unwrap_or(d))
}

/// A call cancelled once its deadline has passed failed by the deadline, as
/// grpc-go's clients report it: tonic's server answers a `grpc-timeout`
/// that runs out with `Cancelled`.
fn past_deadline<T>(deadline: Option<Instant>, answer: Result<T, Status>) -> Result<T, Status> {
    match answer {
        Err(status)
            if status.code() == tonic::Code::Cancelled
                && deadline.is_some_and(|d| d <= Instant::now()) =>
        {
            Err(Status::deadline_exceeded(format!(
                "the call's deadline passed (the remote answered: {})",
                status.message()
            )))
        }
        answer => answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_at_the_end_of_the_clock_has_a_backstop() {
        // The latest instant the clock can hold.
        let (mut last, mut step) = (Instant::now(), Duration::MAX);
        while !step.is_zero() {
            match last.checked_add(step) {
                Some(later) => last = later,
                None => step /= 2,
            }
        }
        assert_eq!(backstop(Some(last)), Some(last));
        let soon = Instant::now();
        assert_eq!(backstop(Some(soon)), Some(soon + DEADLINE_GRACE));
    }
}
