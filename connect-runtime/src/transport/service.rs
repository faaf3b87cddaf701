//! The tonic `NetworkService` that feeds incoming gRPC calls into a server
//! chain.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Extensions;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tower::util::{MapRequest, MapRequestLayer};
use tracing::Instrument;

use crate::Context;
use crate::chain::ServerChain;
use crate::deadline::deadline_from;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use crate::proto::networkservice::network_service_server::{NetworkService, NetworkServiceServer};

/// Serves a [`ServerChain`] as the gRPC `networkservice.NetworkService`.
///
/// Each call gets a fresh [`Context`] carrying the call's metadata, whose
/// deadline is the caller's `grpc-timeout` and whose cancellation token is
/// cancelled when the caller goes away (tonic drops the handler) or the
/// deadline passes. The chain's future is dropped at the deadline, and the
/// caller sees `DeadlineExceeded`. tonic's server keeps a timer of its own
/// for the same header, which would answer `Cancelled`; the chain's deadline
/// counts from when the [arrival layer](ChainService::arrival_layer) saw the
/// call, a timer tick ahead of tonic's, so that it fires first.
///
/// [`serve`](crate::serve) registers this for you; use it directly to mount
/// the chain on a tonic server of your own:
///
/// ```
/// use connect_runtime::{ChainService, Passthrough, ServerChain};
///
/// let chain = ServerChain::builder().with(Passthrough).build();
/// let service = ChainService::new(chain).into_server();
/// let _router = tonic::transport::Server::builder()
///     .layer(ChainService::arrival_layer())
///     .add_service(service);
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
    pub fn into_server(self) -> NetworkServiceServer<Self> {
        // Message size limits stay tonic's defaults (4 MiB to decode).
        NetworkServiceServer::new(self)
    }

    /// The tower layer that notes when each call arrives, for the chain's
    /// deadline to count from; add it (last) to a tonic server of your own.
    pub fn arrival_layer() -> ArrivalLayer {
        MapRequestLayer::new(arrived as Stamp)
    }
}

/// See [`ChainService::arrival_layer`].
pub type ArrivalLayer = MapRequestLayer<Stamp>;

/// A service wrapped in the [`ArrivalLayer`].
pub(crate) type Arrived<S> = MapRequest<S, Stamp>;

type Stamp = fn(http::Request<Body>) -> http::Request<Body>;

/// When a call arrived: noted as tonic's server starts its own timer for
/// the call's `grpc-timeout`, before the request is read.
#[derive(Clone, Copy)]
struct Arrival(Instant);

fn arrived(mut request: http::Request<Body>) -> http::Request<Body> {
    request.extensions_mut().insert(Arrival(Instant::now()));
    request
}

/// tokio's timer resolution: deadlines a tick apart can fire together.
const TIMER_TICK: Duration = Duration::from_millis(1);

#[tonic::async_trait]
impl NetworkService for ChainService {
    async fn request(
        &self,
        request: Request<NetworkServiceRequest>,
    ) -> Result<Response<Connection>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let (ctx, _cancel_on_drop) = incoming_context(metadata, &extensions)?;
        let span = tracing::debug_span!(
            "request",
            connection_id = crate::chain::connection_id(&request)
        );
        let chain = self.chain.request(ctx.clone(), request);
        ctx.run(chain).instrument(span).await.map(Response::new)
    }

    async fn close(&self, request: Request<Connection>) -> Result<Response<()>, Status> {
        let (metadata, extensions, connection) = request.into_parts();
        let (ctx, _cancel_on_drop) = incoming_context(metadata, &extensions)?;
        let span = tracing::debug_span!("close", connection_id = connection.id.as_str());
        let chain = self.chain.close(ctx.clone(), connection);
        ctx.run(chain).instrument(span).await.map(Response::new)
    }
}

/// The context of an incoming call, and the guard that cancels its token
/// when the handler finishes or is dropped.
fn incoming_context(
    metadata: MetadataMap,
    extensions: &Extensions,
) -> Result<(Context, tokio_util::sync::DropGuard), Status> {
    let token = CancellationToken::new();
    let timeout = grpc_timeout(&metadata)?;
    let mut ctx = Context::new()
        .with_cancellation_token(token.clone())
        .with_incoming_metadata(metadata);
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

/// Parses the caller's `grpc-timeout` header: at most eight digits and a
/// unit (`H`, `M`, `S`, `m`, `u`, `n`), per the gRPC HTTP/2 protocol.
pub(crate) fn grpc_timeout(metadata: &MetadataMap) -> Result<Option<Duration>, Status> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    // grpc-go's servers answer a malformed one with `Internal` too.
    let malformed = || {
        Status::internal(format!(
            "malformed grpc-timeout header {:?}: expected up to 8 digits and a unit (H, M, S, m, u, n)",
            value
        ))
    };
    let text = value.to_str().map_err(|_| malformed())?;
    if text.len() < 2 || text.len() > 9 {
        return Err(malformed());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let amount: u64 = digits.parse().map_err(|_| malformed())?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(malformed()),
    };
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
