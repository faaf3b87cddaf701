//! [`Services`], what a [`Serve`](crate::Serve) server answers calls with:
//! its chain called directly, every other service through tonic's router.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::Either;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tower::Service;

use super::service::ChainServer;

/// The services of a [`Serve`](crate::Serve) server, as one tower service:
/// calls to `networkservice.NetworkService` go straight to the chain, and
/// the rest (health, and whatever [`Serve::add_service`](crate::Serve::add_service)
/// added) through tonic's router, which answers `UNIMPLEMENTED` for a
/// service it does not have.
///
/// The chain's calls skip the router because they are nearly all the calls
/// a hop serves, and the router's path match, URL parameters and boxed
/// route cost allocations on each of them. Layers added with
/// [`Serve::layer`](crate::Serve::layer) wrap this service, so they see
/// every call, whichever way it goes.
///
/// [`Serve`](crate::Serve) builds one for you; on a tonic server of your
/// own it serves as a router would:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::{ChainService, Passthrough, ServerChain, Services};
///
/// let chain = ChainService::new(ServerChain::builder().with(Passthrough).build());
/// let (_, health) = tonic_health::server::health_reporter();
/// let services = Services::new(chain.into_server(), tonic::service::Routes::new(health));
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
/// let stop = std::future::ready(()); // stops at once, here
/// tonic::transport::Server::builder()
///     .serve_with_incoming_shutdown(services, incoming, stop)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Services {
    chain: ChainServer,
    others: Routes,
}

impl Services {
    /// `chain`'s calls served directly, `others`' through their router.
    pub fn new(chain: ChainServer, others: Routes) -> Self {
        // What tonic's own `Router` does before it serves: axum then skips
        // per-call work for state it does not have.
        Self {
            chain,
            others: others.prepare(),
        }
    }

    /// Whether `path` (`/package.Service/Method`) names a method of the
    /// chain's service.
    fn is_chain(path: &str) -> bool {
        path.strip_prefix('/')
            .and_then(|path| path.strip_prefix(ChainServer::NAME))
            .is_some_and(|method| method.starts_with('/'))
    }
}

impl Service<http::Request<Body>> for Services {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<
        <ChainServer as Service<http::Request<Body>>>::Future,
        <Routes as Service<http::Request<Body>>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Either may take the next call; both are always ready, as it is.
        match Service::<http::Request<Body>>::poll_ready(&mut self.chain, cx) {
            Poll::Ready(Ok(())) => Service::<http::Request<Body>>::poll_ready(&mut self.others, cx),
            pending_or_failed => pending_or_failed,
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if Self::is_chain(request.uri().path()) {
            Either::Left(self.chain.call(request))
        } else {
            Either::Right(self.others.call(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_chains_own_methods_go_to_the_chain() {
        assert!(Services::is_chain("/networkservice.NetworkService/Request"));
        assert!(Services::is_chain("/networkservice.NetworkService/Close"));
        // An unknown method of the chain's service: the chain's own server
        // answers it UNIMPLEMENTED, as the router would.
        assert!(Services::is_chain("/networkservice.NetworkService/Other"));
        for other in [
            "/grpc.health.v1.Health/Check",
            "/networkservice.NetworkServiceV2/Request",
            "/networkservice.NetworkService",
            "networkservice.NetworkService/Request",
            "/connection.MonitorConnection/MonitorConnections",
            "/",
            "",
        ] {
            assert!(!Services::is_chain(other), "{other}");
        }
    }
}
