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
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;

/// An element's `request` and `close` logic, as plain `async fn`s in an
/// ordinary `impl` block. Write only the hooks the element needs; the others
/// pass calls on unchanged. Derive [`Element`](macro@crate::Element) on the
/// type to make it a chain element: each call then runs in a `debug` span
/// named after the type, with fields `role`, `connection_id`, and, when the
/// call fails, `code` and `error_message`.
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
