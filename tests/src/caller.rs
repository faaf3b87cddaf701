//! Callers independent of this repository's transport: tonic's own channel,
//! as any tonic user would dial a connect server.

use std::time::Duration;

use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use tonic::transport::{Channel, Endpoint};
use url::Url;

/// tonic's `Endpoint` URI for a `tcp://` or `unix://` URL. For unix sockets
/// tonic sends `localhost` as `:authority`, as grpc-go does.
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

/// A tonic client of the `NetworkService` at `url`, on tonic's channel.
pub async fn tonic_caller(url: &Url) -> NetworkServiceClient<Channel> {
    let channel = Endpoint::from_shared(tonic_uri(url))
        .expect("a valid endpoint URI")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|err| panic!("tonic could not connect to {url}: {err}"));
    NetworkServiceClient::new(channel)
}
