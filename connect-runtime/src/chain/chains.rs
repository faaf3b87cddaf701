//! Chains: ordered, shareable lists of elements of one role, runnable on
//! their own or nested as one element of a larger chain of that role.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use tonic::Status;

use super::{BoxFuture, Context, Element, Next, NextFuture};
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;

/// Which side of the wire a chain runs on: [`Server`] or [`Client`].
/// Sealed: there are only these two.
pub trait Role: role::Sealed + Send + Sync + 'static {
    /// `"server"` or `"client"`, as spans and [`Next::role`] say it.
    const NAME: &'static str;
}

/// The role of the chain a gRPC server runs for each incoming call.
#[derive(Debug)]
pub enum Server {}

/// The role of the chain a call takes out to a remote.
#[derive(Debug)]
pub enum Client {}

impl Role for Server {
    const NAME: &'static str = "server";
}

impl Role for Client {
    const NAME: &'static str = "client";
}

mod role {
    pub trait Sealed {}
    impl Sealed for super::Server {}
    impl Sealed for super::Client {}
}

/// An [`Element`] that may join chains of role `R`: checked where it is
/// added. `#[derive(Element)]` implements it for both roles, or for the one
/// `#[element(server)]` or `#[element(client)]` names.
///
/// ```compile_fail
/// use connect_runtime::prelude::*;
///
/// #[derive(Element)]
/// #[element(server)]
/// struct ServerOnly;
///
/// impl Hooks for ServerOnly {}
///
/// let chain = ClientChain::builder().with(ServerOnly).build(); // not a client element
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot join a chain of role `{R}`",
    label = "not an element of this kind of chain",
    note = "an element derives `Element` and implements `Hooks`; one marked \
            `#[element(server)]` or `#[element(client)]` joins that kind of chain only"
)]
pub trait Joins<R: Role>: Element {}

/// An ordered list of elements of one role: [`ServerChain`] or
/// [`ClientChain`].
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
pub struct Chain<R: Role> {
    elements: Arc<[Arc<dyn Element>]>,
    role: PhantomData<fn() -> R>,
}

/// What a gRPC server runs for every incoming call; ends by answering with
/// the request's connection.
pub type ServerChain = Chain<Server>;

/// The path a call takes out to a remote server, usually ending in
/// [`GrpcClient`](crate::elements::GrpcClient).
pub type ClientChain = Chain<Client>;

/// Builds a [`Chain`] element by element.
pub struct ChainBuilder<R: Role> {
    elements: Vec<Arc<dyn Element>>,
    role: PhantomData<fn() -> R>,
}

impl<R: Role> Chain<R> {
    /// Starts a builder.
    pub fn builder() -> ChainBuilder<R> {
        ChainBuilder {
            elements: Vec::new(),
            role: PhantomData,
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
        Next::new(&self.elements, R::NAME, None).request(ctx, request)
    }

    /// Runs a `Close` through the chain.
    pub fn close(&self, ctx: Context, connection: Connection) -> NextFuture<'_, ()> {
        Next::new(&self.elements, R::NAME, None).close(ctx, connection)
    }

    /// What its elements hold per connection.
    pub fn stats(&self) -> ChainStats {
        let mut connection_entries = Vec::new();
        Element::connection_entries(self, &mut |name, entries| {
            connection_entries.push((name, entries));
        });
        ChainStats { connection_entries }
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
}

impl<R: Role> ChainBuilder<R> {
    /// Appends an element of this role.
    pub fn with(mut self, element: impl Joins<R>) -> Self {
        self.elements.push(Arc::new(element));
        self
    }

    /// Appends an element of this role that is already shared.
    pub fn with_arc<E: Joins<R>>(mut self, element: Arc<E>) -> Self {
        self.elements.push(element);
        self
    }

    /// Finishes the chain.
    pub fn build(self) -> Chain<R> {
        Chain {
            elements: self.elements.into(),
            role: PhantomData,
        }
    }
}

impl<R: Role> Element for Chain<R> {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        if let Some(nested) = next.nest(&self.elements) {
            return nested.request(ctx, request).into_boxed();
        }
        // Nested twice or more: the future keeps the enclosing `Next`.
        Box::pin(async move {
            Next::new(&self.elements, R::NAME, Some(&next))
                .request(ctx, request)
                .await
        })
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        if let Some(nested) = next.nest(&self.elements) {
            return nested.close(ctx, connection).into_boxed();
        }
        // Nested twice or more: the future keeps the enclosing `Next`.
        Box::pin(async move {
            Next::new(&self.elements, R::NAME, Some(&next))
                .close(ctx, connection)
                .await
        })
    }

    fn connection_entries(&self, f: &mut dyn FnMut(&'static str, usize)) {
        for element in self.elements.iter() {
            element.connection_entries(f);
        }
    }
}

/// What a chain's elements hold: see [`Chain::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChainStats {
    /// Each element that keeps state per connection (those of nested
    /// chains included), in chain order: its name, and the entries it
    /// holds (over all its state fields). A leak shows here as a number
    /// that only grows.
    pub connection_entries: Vec<(&'static str, usize)>,
}

impl ChainStats {
    /// The entries the element `name` holds (the first of that name), if
    /// it is in the chain.
    pub fn entries_of(&self, name: &str) -> Option<usize> {
        self.connection_entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, entries)| *entries)
    }
}

/// A chain nests in a chain of its own role.
impl<R: Role> Joins<R> for Chain<R> {}

/// A shared element joins the chains it would join itself.
impl<R: Role, E: Joins<R> + ?Sized> Joins<R> for Arc<E> {}

impl<R: Role> Clone for Chain<R> {
    fn clone(&self) -> Self {
        Self {
            elements: Arc::clone(&self.elements),
            role: PhantomData,
        }
    }
}

impl<R: Role> Default for Chain<R> {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl<R: Role> fmt::Debug for ChainBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainBuilder")
            .field("role", &R::NAME)
            .field("elements", &self.elements.len())
            .finish()
    }
}

impl<R: Role> fmt::Debug for Chain<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("role", &R::NAME)
            .field("elements", &self.elements.len())
            .finish()
    }
}
