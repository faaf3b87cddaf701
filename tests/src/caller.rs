//! Callers independent of this repository's transport: tonic's own channel,
//! as any tonic user would dial a connect server.

use std::time::Duration;

use connect_runtime::proto::connection::monitor_connection_client::MonitorConnectionClient;
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use tonic::transport::{Channel, Endpoint};
use url::Url;

/// tonic's `Endpoint` URI for a `tcp://` or `unix://` URL.
pub fn tonic_uri(url: &Url) -> String {
    match url.scheme() {
        "unix" => format!("unix://{}", url.path()),
        _ => format!(
            "http://{}:{}",
            url.host_str().expect("a tcp URL has a host"),
            url.port().expect("a tcp URL has a port")
        ),
    }
}

/// tonic's own channel to `url`.
pub async fn tonic_channel(url: &Url) -> Channel {
    Endpoint::from_shared(tonic_uri(url))
        .expect("a valid endpoint URI")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|err| panic!("tonic could not connect to {url}: {err}"))
}

/// A tonic client of the `NetworkService` at `url`, on tonic's channel.
pub async fn tonic_caller(url: &Url) -> NetworkServiceClient<Channel> {
    NetworkServiceClient::new(tonic_channel(url).await)
}

/// A tonic client of the `MonitorConnection` service at `url`, on tonic's
/// channel.
pub async fn monitor_caller(url: &Url) -> MonitorConnectionClient<Channel> {
    MonitorConnectionClient::new(tonic_channel(url).await)
}

/// A tonic client over a unix socket whose calls carry `localhost` as
/// `:authority`, as grpc-go's do (tonic's own unix channel sends `tonic`).
pub async fn golike_unix_caller(path: &std::path::Path) -> NetworkServiceClient<GoLikeUnix> {
    let stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    NetworkServiceClient::new(GoLikeUnix { send })
}

/// The channel [`golike_unix_caller`] calls through.
#[derive(Clone)]
pub struct GoLikeUnix {
    send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
}

type Response = http::Response<hyper::body::Incoming>;

impl tower_service::Service<http::Request<tonic::body::Body>> for GoLikeUnix {
    type Response = Response;
    type Error = hyper::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, hyper::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path().to_owned();
        *request.uri_mut() = format!("http://localhost{path}").parse().unwrap();
        Box::pin(self.send.send_request(request))
    }
}
