//! The element that chooses where `connect` forwards a call.

use std::future::Future;
use std::sync::Arc;

use tonic::Status;
use url::Url;

use crate::chain::Next;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use connect_macros::Element;

use crate::chain::{Context, Hooks};

/// Sets the client URL for everything after it (Go's `clienturl.NewServer`).
///
/// Put it in front of [`Connect`](crate::Connect) to forward every call to
/// one remote. The URL is not checked here; `connect` rejects a URL it cannot
/// dial with `InvalidArgument`.
///
/// ```
/// use connect_runtime::{ClientUrl, Context, ServerChain};
/// use connect_runtime::proto::{connection::Connection, networkservice::NetworkServiceRequest};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let url: url::Url = "unix:///run/nsm/remote.sock".parse().unwrap();
/// let chain = ServerChain::builder().with(ClientUrl::new(url)).build();
/// let conn = chain
///     .request(Context::new(), NetworkServiceRequest::default())
///     .await
///     .unwrap();
/// assert_eq!(conn, Connection::default());
/// # }
/// ```
#[derive(Clone, Debug, Element)]
#[element(name = "clienturl")]
pub struct ClientUrl {
    url: Arc<Url>,
}

impl ClientUrl {
    /// An element that sets `url` as the client URL.
    pub fn new(url: impl Into<Arc<Url>>) -> Self {
        Self { url: url.into() }
    }

    /// The URL this element sets.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

// Not `async fn`s, which would keep their arguments (see `Hooks`): the
// rest of the chain's future is the whole call.
impl Hooks for ClientUrl {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'a {
        next.request(ctx.with_client_url(Arc::clone(&self.url)), request)
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        next.close(ctx.with_client_url(Arc::clone(&self.url)), connection)
    }
}
