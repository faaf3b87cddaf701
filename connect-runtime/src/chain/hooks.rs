//! Writing an element: its [`Hooks`] as plain `async fn`s; the derive
//! turns them into an [`Element`](super::Element) whose calls each run in a
//! tracing span.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use tonic::Status;
use tracing::instrument::Instrumented;
use tracing::{Instrument, Span};

use super::{BoxFuture, Context, Next};
use crate::map::ConnectionState;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;

/// An element's `request` and `close` logic, as plain `async fn`s in an
/// ordinary `impl` block. Write only the hooks the element needs; the others
/// pass calls on unchanged. Derive [`Element`](macro@crate::Element) on the
/// type to make it a chain element: each call then runs in a `debug` span
/// named after the type, with fields `role`, `connection_id`, and, when the
/// call fails, `code` and `error_message`.
///
/// An `async fn` hook keeps its arguments in its future for as long as the
/// call runs, though it has passed them on (and a `Connection` twice, if it
/// borrows or changes it first). On a busy path, write the hook as a `fn`
/// that does its work, makes `next`'s future and returns it, or an
/// `async move` block holding it and only what is needed once it is done,
/// as connect's own elements do: every call in flight then holds a few
/// words where it held the call's arguments. That work runs when the call
/// is made, even if its future is dropped unpolled, so keep there only
/// what a call given up at once may leave done.
///
/// ```
/// use connect_runtime::prelude::*;
///
/// /// Refuses to close connections whose id starts with `keep-`.
/// #[derive(Element)]
/// struct KeepSome;
///
/// impl Hooks for KeepSome {
///     async fn close(&self, ctx: Context, conn: Connection, next: Next<'_>) -> Result<(), Status> {
///         if conn.id.starts_with("keep-") {
///             return Err(Status::failed_precondition(format!("{} is kept", conn.id)));
///         }
///         next.close(ctx, conn).await
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let chain = ClientChain::builder().with(KeepSome).build();
/// let kept = Connection { id: "keep-1".into(), ..Default::default() };
/// assert!(chain.close(Context::new(), kept).await.is_err());
/// let other = Connection { id: "2".into(), ..Default::default() };
/// assert!(chain.close(Context::new(), other).await.is_ok());
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no element hooks",
    label = "`{Self}` needs an `impl Hooks` to be a chain element",
    note = "add `impl connect_runtime::Hooks for {Self} {{ }}` with the hooks it needs; an empty block passes every call on"
)]
pub trait Hooks: Send + Sync + 'static {
    /// Handles a `Request`; the default passes it on.
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'a {
        next.request(ctx, request)
    }

    /// Handles a `Close`; the default passes it on.
    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        next.close(ctx, connection)
    }
}

/// A derived element's `request`: its hook, in the span `span` makes for
/// the chain's role and the connection's id. For the derive's expansion.
#[doc(hidden)]
pub fn request_in<'a, E: Hooks>(
    element: &'a E,
    span: fn(&'static str, &str) -> Span,
    ctx: Context,
    request: NetworkServiceRequest,
    next: Next<'a>,
) -> BoxFuture<'a, Result<Connection, Status>> {
    let span = span(next.role(), connection_id(&request));
    Box::pin(Recorded::new(
        Hooks::request(element, ctx, request, next),
        span,
    ))
}

/// A derived element's `close`, as [`request_in`].
#[doc(hidden)]
pub fn close_in<'a, E: Hooks>(
    element: &'a E,
    span: fn(&'static str, &str) -> Span,
    ctx: Context,
    connection: Connection,
    next: Next<'a>,
) -> BoxFuture<'a, Result<(), Status>> {
    let span = span(next.role(), &connection.id);
    Box::pin(Recorded::new(
        Hooks::close(element, ctx, connection, next),
        span,
    ))
}

/// The per-connection state of a derived element: its fields that implement
/// [`ConnectionState`]. For the derive's expansion.
#[doc(hidden)]
pub trait States {
    /// Calls `f` on each state field, in declaration order.
    fn each_state(&self, f: &mut dyn FnMut(&dyn ConnectionState));
}

/// As [`request_in`], for an element with per-connection state: a request
/// for an id that had no entry in a state field, and that fails or is given
/// up, leaves none there.
#[doc(hidden)]
pub fn request_tracked<'a, E: Hooks + States>(
    element: &'a E,
    span: fn(&'static str, &str) -> Span,
    ctx: Context,
    request: NetworkServiceRequest,
    next: Next<'a>,
) -> BoxFuture<'a, Result<Connection, Status>> {
    let id = connection_id(&request);
    let span = span(next.role(), id);
    let (mut fresh, mut field) = (0u64, 0);
    element.each_state(&mut |state| {
        if field < u64::BITS && !state.contains(id) {
            fresh |= 1 << field;
        }
        field += 1;
    });
    let release = Release::new(element, id, fresh);
    // Made here, not in the block, which would keep its arguments too.
    let call = Hooks::request(element, ctx, request, next);
    Box::pin(Recorded::new(
        async move {
            // Moved in whole, so that it drops with the call.
            let mut release = release;
            let result = call.await;
            if result.is_ok() {
                release.fields = 0;
            }
            result
        },
        span,
    ))
}

/// As [`close_in`], for an element with per-connection state: the
/// connection's entries are removed once the close has run through the
/// element (or was given up).
#[doc(hidden)]
pub fn close_tracked<'a, E: Hooks + States>(
    element: &'a E,
    span: fn(&'static str, &str) -> Span,
    ctx: Context,
    connection: Connection,
    next: Next<'a>,
) -> BoxFuture<'a, Result<(), Status>> {
    let span = span(next.role(), &connection.id);
    let release = Release::new(element, &connection.id, u64::MAX);
    let call = Hooks::close(element, ctx, connection, next);
    Box::pin(Recorded::new(
        async move {
            let _release = release;
            call.await
        },
        span,
    ))
}

/// The total of a derived element's state entries, for
/// [`Element::connection_entries`](super::Element::connection_entries).
#[doc(hidden)]
pub fn entries<E: States>(element: &E) -> usize {
    let mut total = 0;
    element.each_state(&mut |state| total += state.len());
    total
}

/// Removes an id's entry from the state fields whose bits are set, when
/// dropped: after the call, or with it if its caller gives it up.
struct Release<'a, E: States> {
    element: &'a E,
    /// Copied only if there is something to release (not for a refresh).
    id: Option<Box<str>>,
    fields: u64,
}

impl<'a, E: States> Release<'a, E> {
    fn new(element: &'a E, id: &str, fields: u64) -> Self {
        Self {
            element,
            id: (fields != 0).then(|| id.into()),
            fields,
        }
    }
}

impl<E: States> Drop for Release<'_, E> {
    fn drop(&mut self) {
        let Some(id) = self.id.as_deref().filter(|_| self.fields != 0) else {
            return;
        };
        let mut field = 0;
        self.element.each_state(&mut |state| {
            if field >= u64::BITS || self.fields & (1 << field) != 0 {
                state.release(id);
            }
            field += 1;
        });
    }
}

/// The id of a request's connection, for spans; empty if it has none.
pub(crate) fn connection_id(request: &NetworkServiceRequest) -> &str {
    request.connection.as_deref().map_or("", |c| c.id.as_str())
}

pin_project_lite::pin_project! {
    /// A call running in its span, which records the call's status
    /// (`code`, `error_message`) when it fails.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Recorded<F> {
        #[pin]
        inner: Instrumented<F>,
    }
}

impl<F> Recorded<F> {
    /// Runs `future` in `span`.
    pub fn new(future: F, span: Span) -> Self {
        Self {
            inner: future.instrument(span),
        }
    }
}

impl<T, F: Future<Output = Result<T, Status>>> Future for Recorded<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let mut inner = self.project().inner;
        let output = ready!(inner.as_mut().poll(cx));
        if let Err(status) = &output {
            let span = inner.as_ref().get_ref().span();
            span.record("code", tracing::field::debug(status.code()));
            span.record("error_message", status.message());
        }
        Poll::Ready(output)
    }
}
