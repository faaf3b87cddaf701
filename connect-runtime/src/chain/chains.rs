//! Chains: ordered, shareable lists of elements, runnable on their own or
//! nested as one element of a larger chain.

use std::fmt;
use std::sync::Arc;

use tonic::Status;

use crate::Context;
use crate::chain::{BoxFuture, ClientElement, Next, NextFuture, ServerElement};
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;

/// An ordered list of elements of one role: [`ServerChain`] or [`ClientChain`].
///
/// Cheap to clone (one reference count). A chain is itself an element of its
/// role: nested in another chain, it runs its elements and then continues
/// with whatever follows it there.
///
/// ```
/// use connect_runtime::{Context, Passthrough, ServerChain};
/// use connect_runtime::proto::{connection::Connection, networkservice::NetworkServiceRequest};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let chain = ServerChain::builder().with(Passthrough).with(Passthrough).build();
/// assert_eq!(chain.len(), 2);
///
/// let request = NetworkServiceRequest {
///     connection: Some(Box::new(Connection { id: "c1".into(), ..Default::default() })),
///     ..Default::default()
/// };
/// let conn = chain.request(Context::new(), request).await.unwrap();
/// assert_eq!(conn.id, "c1");
/// chain.close(Context::new(), conn).await.unwrap();
/// # }
/// ```
pub struct Chain<E: ?Sized + Role> {
    elements: Arc<[Arc<E>]>,
}

/// What a gRPC server runs for every incoming call; ends by answering with
/// the request's connection.
pub type ServerChain = Chain<dyn ServerElement>;

/// The path a call takes out to a remote server, usually ending in
/// [`GrpcClient`](crate::GrpcClient).
pub type ClientChain = Chain<dyn ClientElement>;

/// Builds a [`Chain`] element by element.
pub struct ChainBuilder<E: ?Sized + Role> {
    elements: Vec<Arc<E>>,
}

/// The two element roles, `dyn ServerElement` and `dyn ClientElement`.
/// Sealed: chains exist only for these.
pub trait Role: role::Sealed + Send + Sync + 'static {
    #[doc(hidden)]
    fn cursor<'a>(elements: &'a [Arc<Self>], then: Option<&'a Next<'a>>) -> Next<'a>;
}

/// Turns an element into the shared form a chain of role `E` stores.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot join a chain of `{E}`",
    label = "not an element of this kind of chain",
    note = "an element derives `Element` and implements `Hooks`; one marked \
            `#[element(server)]` or `#[element(client)]` joins that kind of chain only"
)]
pub trait IntoElement<E: ?Sized + Role> {
    /// Wraps `self` for a chain.
    fn into_element(self) -> Arc<E>;
}

mod role {
    pub trait Sealed {}
    impl Sealed for dyn super::ServerElement {}
    impl Sealed for dyn super::ClientElement {}
}

impl Role for dyn ServerElement {
    fn cursor<'a>(elements: &'a [Arc<Self>], then: Option<&'a Next<'a>>) -> Next<'a> {
        Next::server(elements, then)
    }
}

impl Role for dyn ClientElement {
    fn cursor<'a>(elements: &'a [Arc<Self>], then: Option<&'a Next<'a>>) -> Next<'a> {
        Next::client(elements, then)
    }
}

impl<T: ServerElement> IntoElement<dyn ServerElement> for T {
    fn into_element(self) -> Arc<dyn ServerElement> {
        Arc::new(self)
    }
}

impl<T: ClientElement> IntoElement<dyn ClientElement> for T {
    fn into_element(self) -> Arc<dyn ClientElement> {
        Arc::new(self)
    }
}

impl<E: ?Sized + Role> Chain<E> {
    /// A chain of the given elements, run in order.
    pub fn new(elements: impl IntoIterator<Item = Arc<E>>) -> Self {
        Self {
            elements: elements.into_iter().collect(),
        }
    }

    /// Starts a builder.
    pub fn builder() -> ChainBuilder<E> {
        ChainBuilder {
            elements: Vec::new(),
        }
    }

    /// Runs a `Request` through the chain. Returns the first element's
    /// future itself, so that whatever awaits it holds a few words rather
    /// than a copy of the call's arguments.
    pub fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
    ) -> NextFuture<'_, Connection> {
        E::cursor(&self.elements, None).request(ctx, request)
    }

    /// Runs a `Close` through the chain.
    pub fn close(&self, ctx: Context, connection: Connection) -> NextFuture<'_, ()> {
        E::cursor(&self.elements, None).close(ctx, connection)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether the chain has no elements (it then just answers with the
    /// request's connection).
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    fn nested_request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        Box::pin(async move {
            E::cursor(&self.elements, Some(&next))
                .request(ctx, request)
                .await
        })
    }

    fn nested_close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        Box::pin(async move {
            E::cursor(&self.elements, Some(&next))
                .close(ctx, connection)
                .await
        })
    }
}

impl<E: ?Sized + Role> ChainBuilder<E> {
    /// Appends an element.
    pub fn with(mut self, element: impl IntoElement<E>) -> Self {
        self.elements.push(element.into_element());
        self
    }

    /// Appends an element that is already shared.
    pub fn with_arc(mut self, element: Arc<E>) -> Self {
        self.elements.push(element);
        self
    }

    /// Finishes the chain.
    pub fn build(self) -> Chain<E> {
        Chain::new(self.elements)
    }
}

impl ServerElement for ServerChain {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        self.nested_request(ctx, request, next)
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        self.nested_close(ctx, connection, next)
    }
}

impl ClientElement for ClientChain {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        self.nested_request(ctx, request, next)
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        self.nested_close(ctx, connection, next)
    }
}

impl<E: ?Sized + Role> Clone for Chain<E> {
    fn clone(&self) -> Self {
        Self {
            elements: Arc::clone(&self.elements),
        }
    }
}

impl<E: ?Sized + Role> Default for Chain<E> {
    fn default() -> Self {
        Self::new([])
    }
}

impl<E: ?Sized + Role> fmt::Debug for ChainBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainBuilder")
            .field("elements", &self.elements.len())
            .finish()
    }
}

impl<E: ?Sized + Role> fmt::Debug for Chain<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("elements", &self.elements.len())
            .finish()
    }
}
