//! The tonic `NetworkService` that feeds incoming gRPC calls into a server
//! chain.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Extensions;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::Grpc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, Span};

use super::Peer;
use crate::chain::{Context, NextFuture, ServerChain};
use crate::deadline::deadline_from;
use crate::grpc_timeout;
use crate::proto::codec::NsmCodec;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use crate::proto::networkservice::network_service_server::{NetworkService, NetworkServiceServer};

/// Serves a [`ServerChain`] as the gRPC `networkservice.NetworkService`.
///
/// Each call runs in a span that continues the caller's trace (W3C
/// `traceparent`, through the global propagator; see
/// [`telemetry`](crate::telemetry)), with a fresh [`Context`] carrying the
/// call's metadata (and, over TLS, the caller's [`Peer`] as a
/// [value](Context::value)), whose deadline is the caller's
/// `grpc-timeout` and whose cancellation token is
/// cancelled when the caller goes away (tonic drops the handler) or the
/// deadline passes. The chain's future is dropped at the deadline, and the
/// caller sees `DeadlineExceeded`. tonic's server keeps a timer of its own
/// for the same header, which would answer `Cancelled`; the chain's deadline
/// counts from the moment the call reached [`ChainServer`], a timer tick
/// ahead of tonic's, so that it fires first.
///
/// [`serve`](crate::serve) registers this for you; use it directly to mount
/// the chain on a tonic server of your own:
///
/// ```
/// use connect_runtime::{ChainService, Passthrough, ServerChain};
///
/// let chain = ServerChain::builder().with(Passthrough).build();
/// let _router = tonic::transport::Server::builder()
///     .add_service(ChainService::new(chain).into_server());
/// ```
#[derive(Clone, Debug)]
pub struct ChainService {
    chain: ServerChain,
}

impl ChainService {
    /// Serves `chain`.
    pub fn new(chain: ServerChain) -> Self {
        Self { chain }
    }

    /// The tonic service to register with a server.
    pub fn into_server(self) -> ChainServer {
        // Message size limits stay tonic's defaults (4 MiB to decode).
        ChainServer::new(self)
    }
}

/// A [`ChainService`] as a tonic server registers it: it notes when each
/// call arrives, for the chain's deadline to count from, and hands the
/// chain's two methods to tonic's handler itself, reading each call's one
/// message as tonic's unary handler does.
#[derive(Clone, Debug)]
pub struct ChainServer {
    service: Arc<ChainService>,
    /// Answers what is not a chain's method, as generated.
    inner: NetworkServiceServer<ChainService>,
}

impl ChainServer {
    fn new(service: ChainService) -> Self {
        let service = Arc::new(service);
        Self {
            inner: NetworkServiceServer::from_arc(Arc::clone(&service)),
            service,
        }
    }
}

impl tonic::server::NamedService for ChainServer {
    const NAME: &'static str = crate::proto::NETWORK_SERVICE;
}

const REQUEST: &str = "/networkservice.NetworkService/Request";
const CLOSE: &str = "/networkservice.NetworkService/Close";

impl tower::Service<http::Request<Body>> for ChainServer {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        request.extensions_mut().insert(Arrival(Instant::now()));
        // tonic's unary handler keeps its decoding state's room for the
        // whole call, and the generated one boxes the method's future once
        // more; here tonic's handler for a stream of requests takes the
        // call, and the one message is read in a box freed before the chain
        // runs. The request waits in a box too: the block would keep its
        // room beside tonic's future, which keeps its own.
        let service = Arc::clone(&self.service);
        match request.uri().path() {
            REQUEST => {
                let request = Box::new(request);
                Box::pin(async move {
                    let method = Method(&service, ChainService::request_call);
                    Ok(Grpc::new(NsmCodec::default())
                        .client_streaming(method, *request)
                        .await)
                })
            }
            CLOSE => {
                let request = Box::new(request);
                Box::pin(async move {
                    let method = Method(&service, ChainService::close_call);
                    Ok(Grpc::new(NsmCodec::default())
                        .client_streaming(method, *request)
                        .await)
                })
            }
            _ => tower::Service::<http::Request<Body>>::call(&mut self.inner, request),
        }
    }
}

/// One of the chain's methods, as tonic's handler calls it: the chain's
/// call runs inline in the future it returns.
struct Method<'a, F>(&'a ChainService, F);

impl<'a, M, R, F, C> tonic::server::ClientStreamingService<M> for Method<'a, F>
where
    M: Send + 'static,
    F: Fn(&'a ChainService, Request<M>) -> Result<C, Status> + Copy + Send + Sync + 'a,
    C: Future<Output = Result<Response<R>, Status>> + Send + 'a,
{
    type Response = R;
    type Future = Call<'a, R>;

    fn call(&mut self, request: Request<Streaming<M>>) -> Self::Future {
        let Method(service, method) = *self;
        let message = Box::pin(crate::unary::request(request));
        Box::pin(async move {
            // Separate statements: a temporary of one would be kept, in
            // the future, across the chain's await.
            let request = message.await?;
            let call = method(service, request)?;
            call.await
        })
    }
}

/// When a call arrived: noted before its request is read, as soon after
/// tonic's server started its own timer for the call's `grpc-timeout` as
/// the call can be seen.
#[derive(Clone, Copy)]
struct Arrival(Instant);

/// tokio's timer resolution: deadlines a tick apart can fire together.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// A call's future, boxed as the generated trait wants it.
type Call<'a, T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send + 'a>>;

impl NetworkService for ChainService {
    fn request<'s, 'f>(&'s self, request: Request<NetworkServiceRequest>) -> Call<'f, Connection>
    where
        's: 'f,
        Self: 'f,
    {
        boxed(self.request_call(request))
    }

    fn close<'s, 'f>(&'s self, request: Request<Connection>) -> Call<'f, ()>
    where
        's: 'f,
        Self: 'f,
    {
        boxed(self.close_call(request))
    }
}

/// A chain's call as the generated trait returns it: boxed, or its refusal.
fn boxed<'a, T: Send + 'a>(
    call: Result<impl Future<Output = Result<Response<T>, Status>> + Send + 'a, Status>,
) -> Call<'a, T> {
    match call {
        Ok(call) => Box::pin(call),
        Err(status) => Box::pin(std::future::ready(Err(status))),
    }
}

// Written out rather than with `async_trait`: what a call needs is taken
// from its request before its future is made, so that the future holds the
// chain's call, not the request besides (about 1 KB for a close).
impl ChainService {
    fn request_call(
        &self,
        request: Request<NetworkServiceRequest>,
    ) -> Result<impl Future<Output = Result<Response<Connection>, Status>> + Send + '_, Status>
    {
        let (metadata, extensions, request) = request.into_parts();
        let span = tracing::debug_span!(
            "request",
            connection_id = crate::chain::connection_id(&request)
        );
        crate::telemetry::adopt_caller_trace(&span, &metadata);
        let (ctx, cancel_on_drop) = incoming_context(metadata, &extensions)?;
        // Made in the span: each element's span is made with its future.
        let chain = span.in_scope(|| self.chain.request(ctx.clone(), request));
        Ok(running(&ctx, cancel_on_drop, chain, span))
    }

    fn close_call(
        &self,
        request: Request<Connection>,
    ) -> Result<impl Future<Output = Result<Response<()>, Status>> + Send + '_, Status> {
        let (metadata, extensions, connection) = request.into_parts();
        let span = tracing::debug_span!("close", connection_id = connection.id.as_str());
        crate::telemetry::adopt_caller_trace(&span, &metadata);
        let (ctx, cancel_on_drop) = incoming_context(metadata, &extensions)?;
        let chain = span.in_scope(|| self.chain.close(ctx.clone(), connection));
        Ok(running(&ctx, cancel_on_drop, chain, span))
    }
}

/// The chain's call, cut short at the context's limits and run in `span`;
/// the guard cancels the call's token once it ends or is dropped.
fn running<'a, T: Send + 'a>(
    ctx: &Context,
    cancel_on_drop: DropGuard,
    chain: NextFuture<'a, T>,
    span: Span,
) -> impl Future<Output = Result<Response<T>, Status>> + Send + use<'a, T> {
    let call = ctx.run(chain).instrument(span);
    async move {
        let _cancel_on_drop = cancel_on_drop;
        call.await.map(Response::new)
    }
}

/// The context of an incoming call, and the guard that cancels its token
/// when the handler finishes or is dropped.
fn incoming_context(
    metadata: MetadataMap,
    extensions: &Extensions,
) -> Result<(Context, DropGuard), Status> {
    let token = CancellationToken::new();
    let timeout = grpc_timeout(&metadata)?;
    let mut ctx = Context::new()
        .with_cancellation_token(token.clone())
        .with_incoming_metadata(metadata);
    // Over TLS, who called: elements that authorize by identity need it
    // (plaintext calls pay nothing for it).
    if let Some(peer) = extensions.get::<Peer>()
        && peer.certificates().is_some()
    {
        ctx = ctx.with_value(peer.clone());
    }
    if let Some(timeout) = timeout {
        // A tick early, so that tonic's timer, started a moment before,
        // never fires first.
        let start = extensions
            .get::<Arrival>()
            .map_or_else(Instant::now, |a| a.0);
        ctx = ctx.with_deadline(deadline_from(start, timeout.saturating_sub(TIMER_TICK)));
    }
    Ok((ctx, token.drop_guard()))
}

/// Parses the caller's `grpc-timeout` header, per the gRPC HTTP/2 protocol.
pub(crate) fn grpc_timeout(metadata: &MetadataMap) -> Result<Option<Duration>, Status> {
    let Some(value) = metadata.get(grpc_timeout::HEADER) else {
        return Ok(None);
    };
    // grpc-go's servers answer a malformed one with `Internal` too.
    let timeout = grpc_timeout::parse(value.as_bytes()).ok_or_else(|| {
        Status::internal(format!(
            "malformed grpc-timeout header {value:?}: expected up to 8 digits and a unit (H, M, S, m, u, n)"
        ))
    })?;
    Ok(Some(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Option<Duration>, Status> {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&metadata)
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("2H").unwrap(), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M").unwrap(), Some(Duration::from_secs(180)));
        assert_eq!(parse("4S").unwrap(), Some(Duration::from_secs(4)));
        assert_eq!(parse("250m").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(
            parse("99999999u").unwrap(),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse("7n").unwrap(), Some(Duration::from_nanos(7)));
        assert_eq!(grpc_timeout(&MetadataMap::new()).unwrap(), None);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "m", "100", "123456789m", "10x", "-1S", "1.5S"] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Internal, "{bad}");
            assert!(err.message().contains("grpc-timeout"), "{bad}");
        }
    }
}
