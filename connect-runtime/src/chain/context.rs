//! The per-call [`Context`]: what Go's `context.Context` carries through an NSM
//! chain, made explicit.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;
use tonic::metadata::MetadataMap;
use url::Url;

use crate::deadline::deadline_after;

/// Per-call state handed from element to element along a chain.
///
/// A context carries the *client URL* (where a `connect` element forwards the
/// call), the call's *deadline* (sent to remotes as `grpc-timeout`), an
/// optional *cancellation token* (cancelled when the caller goes away; calls
/// that came in over gRPC have one), and — inside a
/// client chain created by `connect` — the [`ClientCancel`] handle that tears
/// that client down. Arbitrary typed values ride along too.
///
/// Cloning is cheap (reference counts only), and every `with_*` method
/// returns a new context, leaving the original untouched, so an element can
/// change what the rest of the chain sees without affecting its caller.
///
/// ```
/// use std::time::Duration;
/// use connect_runtime::Context;
///
/// let url: url::Url = "tcp://127.0.0.1:5002".parse().unwrap();
/// let ctx = Context::new()
///     .with_client_url(url.clone())
///     .with_timeout(Duration::from_secs(1))
///     .with_value(42u32);
///
/// assert_eq!(ctx.client_url(), Some(&url));
/// assert!(ctx.remaining().unwrap() <= Duration::from_secs(1));
/// assert_eq!(ctx.value::<u32>(), Some(&42));
/// assert!(ctx.client_cancel().is_none());
/// ```
#[derive(Clone, Default)]
pub struct Context {
    client_url: Option<Arc<Url>>,
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
    client_cancel: Option<ClientCancel>,
    incoming_metadata: Option<Arc<MetadataMap>>,
    values: Option<Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>,
}

impl Context {
    /// A context with no client URL, no deadline and no cancellation token.
    pub fn new() -> Self {
        Self::default()
    }

    /// The URL a `connect` element forwards this call to, if one was set.
    pub fn client_url(&self) -> Option<&Url> {
        self.client_url.as_deref()
    }

    /// The client URL as a shared pointer, to keep it without copying.
    pub fn client_url_arc(&self) -> Option<&Arc<Url>> {
        self.client_url.as_ref()
    }

    /// Sets the client URL seen by the rest of the chain.
    pub fn with_client_url(mut self, url: impl Into<Arc<Url>>) -> Self {
        self.client_url = Some(url.into());
        self
    }

    /// Removes the client URL.
    pub fn without_client_url(mut self) -> Self {
        self.client_url = None;
        self
    }

    /// When the call must be finished by, if it has a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (zero once it has passed), if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Sets a deadline. As with Go's `context.WithDeadline`, a context never
    /// gets more time than it already had: the earlier deadline wins.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(match self.deadline {
            Some(current) if current < deadline => current,
            _ => deadline,
        });
        self
    }

    /// Sets a deadline `timeout` from now (the earlier deadline wins). A
    /// timeout too large to add to the clock saturates (about thirty years).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.with_deadline(deadline_after(timeout))
    }

    /// Replaces the deadline outright, even with a later one (or none).
    ///
    /// For work that must outlive the call's own deadline, such as the
    /// cleanup `connect` runs after a failure.
    pub fn with_fresh_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The token cancelled when the caller gives up on this call, if the
    /// call has one. Calls served by [`ChainService`](crate::ChainService)
    /// always do; a context made with [`Context::new`] has none until
    /// [`Context::with_cancellation_token`] gives it one.
    pub fn cancellation_token(&self) -> Option<&CancellationToken> {
        self.cancel.as_ref()
    }

    /// Sets the cancellation token.
    pub fn with_cancellation_token(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Removes the cancellation token: for work that must not be cut off
    /// when the caller goes away, such as a call `connect` finishes on an
    /// abandoned caller's behalf.
    pub fn without_cancellation_token(mut self) -> Self {
        self.cancel = None;
        self
    }

    /// The handle that cancels the `connect` client whose chain this call is
    /// running in (Go's `cancelctx`). Present only inside such client chains.
    pub fn client_cancel(&self) -> Option<&ClientCancel> {
        self.client_cancel.as_ref()
    }

    /// Attaches a client cancel handle; `connect` does this for its clients.
    pub fn with_client_cancel(mut self, handle: ClientCancel) -> Self {
        self.client_cancel = Some(handle);
        self
    }

    /// The gRPC metadata the call arrived with, when it came in over gRPC
    /// (tokens, tracing headers). Outgoing calls do not forward it.
    pub fn incoming_metadata(&self) -> Option<&MetadataMap> {
        self.incoming_metadata.as_deref()
    }

    /// Attaches the metadata of an incoming call; [`ChainService`] does this.
    ///
    /// [`ChainService`]: crate::ChainService
    pub fn with_incoming_metadata(mut self, metadata: MetadataMap) -> Self {
        self.incoming_metadata = Some(Arc::new(metadata));
        self
    }

    /// A typed value previously stored with [`Context::with_value`].
    pub fn value<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.values
            .as_ref()?
            .get(&TypeId::of::<T>())?
            .downcast_ref::<T>()
    }

    /// Stores a typed value, replacing any value of the same type. Contexts
    /// cloned earlier keep seeing what they saw.
    pub fn with_value<T: Any + Send + Sync>(mut self, value: T) -> Self {
        let values = self.values.get_or_insert_with(Default::default);
        Arc::make_mut(values).insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// Runs `work` within this context's limits: if the deadline passes first
    /// the result is `DeadlineExceeded`, if the token is cancelled first it is
    /// `Cancelled`; either way `work` is dropped.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use connect_runtime::Context;
    ///
    /// let ctx = Context::new().with_timeout(Duration::from_millis(10));
    /// let status = ctx
    ///     .run(std::future::pending::<Result<(), tonic::Status>>())
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    /// # }
    /// ```
    pub fn run<T, F>(&self, work: F) -> Bounded<F>
    where
        F: Future<Output = Result<T, Status>>,
    {
        self.run_until(self.deadline, work)
    }

    /// As [`Context::run`], but cut off at `deadline` rather than the
    /// context's own.
    pub(crate) fn run_until<T, F>(&self, deadline: Option<Instant>, work: F) -> Bounded<F>
    where
        F: Future<Output = Result<T, Status>>,
    {
        Bounded {
            work,
            // Registered with the token only if `work` ever has to wait.
            cancelled: self.cancel.clone().map(|t| Box::pin(t.cancelled_owned())),
            deadline: deadline.map(|at| Box::pin(Timer::At { at })),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`Context::run`]: `work`, cut short by the
    /// context's cancellation or deadline.
    ///
    /// Polls `work` first, so a result that is ready wins; the cancellation
    /// token and the timer are only registered when `work` has to wait (so
    /// it can be made outside a runtime). The work itself is kept inline (no
    /// allocation); the cancellation and timer futures, when there are any,
    /// are boxed to keep this future small.
    #[must_use = "futures do nothing unless polled"]
    pub struct Bounded<F> {
        #[pin]
        work: F,
        cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        deadline: Option<Pin<Box<Timer>>>,
    }
}

pin_project_lite::pin_project! {
    /// A [`Bounded`] call's deadline, whose timer is made the first time
    /// the call waits.
    #[project = TimerProj]
    enum Timer {
        At { at: Instant },
        Running {
            #[pin]
            sleep: tokio::time::Sleep,
        },
    }
}

impl<T, F> Future for Bounded<F>
where
    F: Future<Output = Result<T, Status>>,
{
    type Output = Result<T, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.work.poll(cx) {
            return Poll::Ready(result);
        }
        if let Some(cancelled) = this.cancelled.as_mut()
            && cancelled.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(Status::cancelled("the call was cancelled")));
        }
        if let Some(timer) = this.deadline.as_mut() {
            if let TimerProj::At { at } = timer.as_mut().project() {
                let sleep = tokio::time::sleep_until(*at);
                timer.set(Timer::Running { sleep });
            }
            if let TimerProj::Running { sleep } = timer.as_mut().project()
                && sleep.poll(cx).is_ready()
            {
                return Poll::Ready(Err(Status::deadline_exceeded("the call's deadline passed")));
            }
        }
        Poll::Pending
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("client_url", &self.client_url.as_ref().map(|u| u.as_str()))
            .field("remaining", &self.remaining())
            .field(
                "cancelled",
                &self.cancel.as_ref().map(CancellationToken::is_cancelled),
            )
            .field("client_cancel", &self.client_cancel)
            .field("values", &self.values.as_ref().map_or(0, |v| v.len()))
            .finish()
    }
}

/// Cancels one `connect` client: its channel, its tasks and its streams are
/// dropped and it is removed from `connect`'s client map at once.
///
/// `connect` puts this handle in the context its client chain runs with
/// (see [`Context::client_cancel`]); a monitor or heal element calls
/// [`ClientCancel::cancel`] when it sees that the remote is gone. Connections
/// still bound to the cancelled client keep their records; their next
/// request or close goes through the URL's current client, dialing one if
/// there is none.
///
/// ```
/// use connect_runtime::ClientCancel;
///
/// let handle = ClientCancel::new();
/// let seen_by_monitor = handle.clone();
/// seen_by_monitor.cancel();
/// assert!(handle.is_cancelled());
/// ```
#[derive(Clone, Debug, Default)]
pub struct ClientCancel {
    // Shared behind an `Arc`: every call through a client carries a copy,
    // and cloning a token itself takes a lock.
    token: Arc<CancellationToken>,
}

impl ClientCancel {
    /// A new, uncancelled handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle cancelled together with `token` (and by its own `cancel`).
    pub fn from_token(token: CancellationToken) -> Self {
        Self {
            token: Arc::new(token),
        }
    }

    /// Cancels the client. Idempotent.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Whether the client has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the client is cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// The underlying token, to derive child tokens for the client's tasks.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bounded future can be made outside a runtime (as a chain's call
    /// can) and run in one later.
    #[test]
    fn a_bounded_future_made_outside_a_runtime_runs_in_one() {
        let ctx = Context::new()
            .with_timeout(Duration::from_secs(60))
            .with_cancellation_token(CancellationToken::new());
        let bounded = ctx.run(async {
            tokio::task::yield_now().await;
            Ok::<_, Status>(7)
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        assert_eq!(runtime.block_on(bounded).unwrap(), 7);
    }
}
