//! Chain elements and the [`Next`] cursor that links them.
//!
//! NSM endpoints are chains of small elements. Each sees `request` and
//! `close`, may change them, and passes them on through [`Next`]. The model is
//! reqwest-middleware's `Middleware`/`Next<'_>`: a chain is a slice of
//! `Arc<dyn ServerElement>` (or `ClientElement`) assembled at run time, and `Next` is a cursor over what
//! remains of it. Futures behind `dyn` are boxed, one allocation per hop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tonic::Status;

use crate::Context;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;

/// A boxed, `Send` future borrowing for `'a`: what `dyn` elements return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An element of a *server* chain: the chain a gRPC server runs for each
/// incoming `Request` and `Close`. The end of a server chain returns the
/// request's connection.
///
/// Both hooks default to passing the call on unchanged, so an element writes
/// only what it needs. Most elements get this from `#[derive(Element)]` and
/// an `impl` [`Hooks`](crate::Hooks) instead; write it by hand for an element
/// that needs no span, or that boxes its own futures.
///
/// ```
/// use std::sync::Arc;
/// use connect_runtime::{BoxFuture, Context, Next, ServerChain, ServerElement};
/// use connect_runtime::proto::{connection::Connection, networkservice::NetworkServiceRequest};
///
/// /// Labels every connection it sees.
/// struct Label;
///
/// impl ServerElement for Label {
///     fn request<'a>(
///         &'a self,
///         ctx: Context,
///         mut request: NetworkServiceRequest,
///         next: Next<'a>,
///     ) -> BoxFuture<'a, Result<Connection, tonic::Status>> {
///         if let Some(conn) = request.connection.as_mut() {
///             conn.labels.insert("seen-by".into(), "label".into());
///         }
///         Box::pin(next.request(ctx, request))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let chain = ServerChain::new([Arc::new(Label) as Arc<dyn ServerElement>]);
/// let request = NetworkServiceRequest {
///     connection: Some(Box::new(Connection { id: "1".into(), ..Default::default() })),
///     ..Default::default()
/// };
/// let conn = chain.request(Context::new(), request).await.unwrap();
/// assert_eq!(conn.labels["seen-by"], "label");
/// # }
/// ```
pub trait ServerElement: Send + Sync + 'static {
    /// Handles a `Request`; call `next.request` to continue down the chain.
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        Box::pin(next.request(ctx, request))
    }

    /// Handles a `Close`; call `next.close` to continue down the chain.
    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        Box::pin(next.close(ctx, connection))
    }
}

/// An element of a *client* chain: the chain a call takes on its way out to a
/// remote NSM server. A client chain usually ends in
/// [`GrpcClient`](crate::GrpcClient), which makes the gRPC call.
///
/// Same shape as [`ServerElement`]; the two are kept apart so that a chain's
/// type says which side of the wire it runs on. [`adapters`](crate::adapters)
/// turn one into the other.
pub trait ClientElement: Send + Sync + 'static {
    /// Handles a `Request`; call `next.request` to continue down the chain.
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        Box::pin(next.request(ctx, request))
    }

    /// Handles a `Close`; call `next.close` to continue down the chain.
    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        Box::pin(next.close(ctx, connection))
    }
}

/// The rest of the chain after the current element.
///
/// `Next` is `Copy`: an element may call it more than once (a retry element)
/// or not at all (a terminal element, or one that fails early). When nothing
/// is left, `request` returns the request's connection (a default one if the
/// request had none) and `close` returns `Ok(())`, as Go's tail elements do.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    rest: Rest<'a>,
    then: Option<&'a (dyn Continuation + 'a)>,
}

#[derive(Clone, Copy)]
enum Rest<'a> {
    Server(&'a [Arc<dyn ServerElement>]),
    Client(&'a [Arc<dyn ClientElement>]),
}

/// What runs once a nested chain is exhausted: the enclosing chain's `Next`.
trait Continuation: Sync {
    fn request(&self, ctx: Context, request: NetworkServiceRequest) -> NextFuture<'_, Connection>;
    fn close(&self, ctx: Context, connection: Connection) -> NextFuture<'_, ()>;
}

impl Continuation for Next<'_> {
    fn request(&self, ctx: Context, request: NetworkServiceRequest) -> NextFuture<'_, Connection> {
        Next::request(*self, ctx, request)
    }

    fn close(&self, ctx: Context, connection: Connection) -> NextFuture<'_, ()> {
        Next::close(*self, ctx, connection)
    }
}

impl<'a> Next<'a> {
    /// A cursor over a server chain's elements; once they are done it
    /// continues into `then` (the enclosing chain of a nested chain) or, with
    /// no `then`, answers as the end of a chain does.
    pub(crate) fn server(
        elements: &'a [Arc<dyn ServerElement>],
        then: Option<&'a Next<'a>>,
    ) -> Self {
        Self {
            rest: Rest::Server(elements),
            then: then.map(|n| n as &dyn Continuation),
        }
    }

    /// As [`Next::server`], over a client chain's elements.
    pub(crate) fn client(
        elements: &'a [Arc<dyn ClientElement>],
        then: Option<&'a Next<'a>>,
    ) -> Self {
        Self {
            rest: Rest::Client(elements),
            then: then.map(|n| n as &dyn Continuation),
        }
    }

    /// Passes a `Request` to the rest of the chain.
    pub fn request(
        self,
        ctx: Context,
        request: NetworkServiceRequest,
    ) -> NextFuture<'a, Connection> {
        match self.rest {
            Rest::Server([head, rest @ ..]) => NextFuture::boxed(head.request(
                ctx,
                request,
                Next {
                    rest: Rest::Server(rest),
                    then: self.then,
                },
            )),
            Rest::Client([head, rest @ ..]) => NextFuture::boxed(ClientElement::request(
                &**head,
                ctx,
                request,
                Next {
                    rest: Rest::Client(rest),
                    then: self.then,
                },
            )),
            _ => match self.then {
                Some(then) => then.request(ctx, request),
                None => NextFuture::ready(Ok(request.connection.unwrap_or_default())),
            },
        }
    }

    /// Passes a `Close` to the rest of the chain.
    pub fn close(self, ctx: Context, connection: Connection) -> NextFuture<'a, ()> {
        match self.rest {
            Rest::Server([head, rest @ ..]) => NextFuture::boxed(head.close(
                ctx,
                connection,
                Next {
                    rest: Rest::Server(rest),
                    then: self.then,
                },
            )),
            Rest::Client([head, rest @ ..]) => NextFuture::boxed(ClientElement::close(
                &**head,
                ctx,
                connection,
                Next {
                    rest: Rest::Client(rest),
                    then: self.then,
                },
            )),
            _ => match self.then {
                Some(then) => then.close(ctx, connection),
                None => NextFuture::ready(Ok(Box::new(()))),
            },
        }
    }

    /// How many elements of this chain are still to run (not counting any
    /// enclosing chain).
    pub fn remaining(&self) -> usize {
        match self.rest {
            Rest::Server(rest) => rest.len(),
            Rest::Client(rest) => rest.len(),
        }
    }
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("remaining", &self.remaining())
            .field("nested", &self.then.is_some())
            .finish()
    }
}

/// The future returned by [`Next::request`] and [`Next::close`].
///
/// The end of a chain answers without allocating; every other hop is the
/// element's own boxed future.
#[must_use = "futures do nothing unless polled"]
pub struct NextFuture<'a, T> {
    inner: NextInner<'a, T>,
}

enum NextInner<'a, T> {
    Boxed(BoxFuture<'a, Result<T, Status>>),
    /// Boxed, so that a `NextFuture<Connection>` is a pointer's size, not a
    /// `Connection`'s (nearly 300 bytes), in every future that awaits one.
    /// The request's connection is boxed already; `()` needs no allocation.
    Ready(Option<Result<Box<T>, Status>>),
}

impl<'a, T> NextFuture<'a, T> {
    fn boxed(future: BoxFuture<'a, Result<T, Status>>) -> Self {
        Self {
            inner: NextInner::Boxed(future),
        }
    }

    fn ready(result: Result<Box<T>, Status>) -> Self {
        Self {
            inner: NextInner::Ready(Some(result)),
        }
    }
}

impl<T> std::fmt::Debug for NextFuture<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.inner {
            NextInner::Boxed(_) => "running",
            NextInner::Ready(Some(_)) => "ready",
            NextInner::Ready(None) => "done",
        };
        f.debug_struct("NextFuture").field("state", &state).finish()
    }
}

// Neither variant is self-referential: the boxed future is pinned on the heap
// and the ready value is moved out, so moving a `NextFuture` is sound.
impl<T> Unpin for NextFuture<'_, T> {}

impl<T> Future for NextFuture<'_, T> {
    type Output = Result<T, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            NextInner::Boxed(future) => future.as_mut().poll(cx),
            NextInner::Ready(result) => {
                let result = result.take().expect("NextFuture polled after it completed");
                Poll::Ready(result.map(|value| *value))
            }
        }
    }
}

// Shared elements: the same instance may sit in several chains (a capture
// element a test inspects, say), or in both a server and a client chain.
impl<T: ServerElement + ?Sized> ServerElement for Arc<T> {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        (**self).request(ctx, request, next)
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        (**self).close(ctx, connection, next)
    }
}

impl<T: ClientElement + ?Sized> ClientElement for Arc<T> {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        (**self).request(ctx, request, next)
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        (**self).close(ctx, connection, next)
    }
}
