//! The one trait chains hold, [`Element`], and the [`Next`] cursor that
//! links elements.
//!
//! NSM endpoints are chains of small elements. Each sees `request` and
//! `close`, may change them, and passes them on through [`Next`]. The model is
//! reqwest-middleware's `Middleware`/`Next<'_>`: a chain is a slice of
//! `Arc<dyn Element>` assembled at run time, and `Next` is a cursor over what
//! remains of it. Futures behind `dyn` are boxed, one allocation per hop.
//! Which chains an element may join is a compile-time matter, checked where
//! it is added (see [`Joins`](super::Joins)).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tonic::Status;

use super::Context;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;

/// A boxed, `Send` future borrowing for `'a`: what `dyn` elements return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A chain element, as chains hold it: object-safe, its futures boxed.
///
/// Most elements get this from `#[derive(Element)]` and an `impl`
/// [`Hooks`](super::Hooks), which also runs each call in a `tracing` span.
/// Write it by hand for an element that needs no span or boxes its own
/// futures; then implement [`Joins`](super::Joins) for the chains it may
/// join. Both hooks default to passing the call on unchanged.
///
/// ```
/// use connect_runtime::chain::{BoxFuture, Element, Joins, Server};
/// use connect_runtime::{Context, Next, ServerChain};
/// use connect_runtime::proto::{connection::Connection, networkservice::NetworkServiceRequest};
///
/// /// Labels every connection it sees.
/// struct Label;
///
/// impl Element for Label {
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
/// impl Joins<Server> for Label {}
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let chain = ServerChain::builder().with(Label).build();
/// let request = NetworkServiceRequest {
///     connection: Some(Box::new(Connection { id: "1".into(), ..Default::default() })),
///     ..Default::default()
/// };
/// let conn = chain.request(Context::new(), request).await.unwrap();
/// assert_eq!(conn.labels["seen-by"], "label");
/// # }
/// ```
pub trait Element: Send + Sync + 'static {
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

    /// Tells `f` how many per-connection entries this element holds, as
    /// `f(name, entries)`, and does the same for any element it contains
    /// (a nested chain's). What [`Chain::stats`](super::Chain::stats)
    /// reports. The default reports nothing; derived elements report their
    /// [`PerConnection`](crate::PerConnection) fields.
    fn connection_entries(&self, f: &mut dyn FnMut(&'static str, usize)) {
        let _ = f;
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
    rest: &'a [Arc<dyn Element>],
    role: &'static str,
    then: Then<'a>,
}

/// What follows a chain's elements.
#[derive(Clone, Copy)]
enum Then<'a> {
    /// Nothing: the chain answers as a chain's end does.
    End,
    /// The rest of an enclosing chain that is not itself nested: held as
    /// it is, so that a nested chain's call needs no future of its own.
    Rest(&'a [Arc<dyn Element>]),
    /// An enclosing chain's `Next`, kept by the nested chain's future.
    Outer(&'a (dyn Continuation + 'a)),
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
    /// A cursor over a chain's elements, for chains of `role`; once they are
    /// done it continues into `then` (the enclosing chain of a nested chain)
    /// or, with no `then`, answers as the end of a chain does.
    pub(crate) fn new(
        elements: &'a [Arc<dyn Element>],
        role: &'static str,
        then: Option<&'a Next<'a>>,
    ) -> Self {
        Self {
            rest: elements,
            role,
            then: then.map_or(Then::End, |n| Then::Outer(n as &dyn Continuation)),
        }
    }

    /// A cursor over a nested chain's `elements` that continues into this
    /// one, if that needs no reference to this `Next` (this chain is not
    /// nested itself).
    pub(crate) fn nest(self, elements: &'a [Arc<dyn Element>]) -> Option<Self> {
        matches!(self.then, Then::End).then_some(Self {
            rest: elements,
            role: self.role,
            then: Then::Rest(self.rest),
        })
    }

    /// The role of the chain being run: `"server"` or `"client"`.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// Passes a `Request` to the rest of the chain.
    pub fn request(
        self,
        ctx: Context,
        request: NetworkServiceRequest,
    ) -> NextFuture<'a, Connection> {
        match self.rest {
            [head, rest @ ..] => NextFuture::boxed(head.request(
                ctx,
                request,
                Next {
                    rest,
                    role: self.role,
                    then: self.then,
                },
            )),
            [] => match self.then {
                Then::End => NextFuture::ready(Ok(request.connection.unwrap_or_default())),
                Then::Rest(rest) => self.continued(rest).request(ctx, request),
                Then::Outer(then) => then.request(ctx, request),
            },
        }
    }

    /// Passes a `Close` to the rest of the chain.
    pub fn close(self, ctx: Context, connection: Connection) -> NextFuture<'a, ()> {
        match self.rest {
            [head, rest @ ..] => NextFuture::boxed(head.close(
                ctx,
                connection,
                Next {
                    rest,
                    role: self.role,
                    then: self.then,
                },
            )),
            [] => match self.then {
                Then::End => NextFuture::ready(Ok(Box::new(()))),
                Then::Rest(rest) => self.continued(rest).close(ctx, connection),
                Then::Outer(then) => then.close(ctx, connection),
            },
        }
    }

    /// How many elements of this chain are still to run (not counting any
    /// enclosing chain).
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The enclosing chain's `rest`, which ends as a chain does.
    fn continued(self, rest: &'a [Arc<dyn Element>]) -> Self {
        Self {
            rest,
            role: self.role,
            then: Then::End,
        }
    }
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("role", &self.role)
            .field("remaining", &self.remaining())
            .field("nested", &!matches!(self.then, Then::End))
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

impl<'a, T: Send + 'a> NextFuture<'a, T> {
    /// As the boxed future an element returns: the element's own box, not
    /// a box around it.
    pub(crate) fn into_boxed(self) -> BoxFuture<'a, Result<T, Status>> {
        match self.inner {
            NextInner::Boxed(future) => future,
            NextInner::Ready(result) => Box::pin(Self {
                inner: NextInner::Ready(result),
            }),
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
impl<T: Element + ?Sized> Element for Arc<T> {
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

    fn connection_entries(&self, f: &mut dyn FnMut(&'static str, usize)) {
        (**self).connection_entries(f);
    }
}
