//! One `connect` client: the lazily dialed channel to a remote URL and the
//! client chain the factory built over it (Go's `connectClient`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::map::lock;

use tokio::sync::OnceCell;
use tonic::Status;
use url::Url;

use super::ClientFactory;
use crate::chain::ClientChain;
use crate::context::{ClientCancel, Context};
use crate::dial::{DialError, DialOptions, Readiness, open};
use crate::element::BoxFuture;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;

pub(super) struct ConnectClient {
    url: Arc<Url>,
    cancel: ClientCancel,
    /// The context the factory sees: the client URL and the cancel handle.
    ctx: Context,
    factory: Arc<dyn ClientFactory>,
    dial_options: DialOptions,
    /// The outcome of the one connect this instance makes; a failure sticks.
    dialed: OnceCell<Result<(), Status>>,
    /// Whether the remote has answered since; set with the chain.
    readiness: OnceLock<Readiness>,
    /// The remote did not answer (in time, or with HTTP/2): sticks too.
    unanswered: OnceLock<Status>,
    /// This client, for the task that watches its readiness.
    me: Weak<ConnectClient>,
    /// The chain, until the client is cancelled and lets go of it.
    chain: Mutex<Option<ClientChain>>,
    /// Calls sent before the remote's preface arrived.
    sent_early: AtomicUsize,
}

/// How many calls go out on a new connection before the remote's SETTINGS
/// arrive. hyper opens at most 100 streams until then (its
/// `initial_max_send_streams`) and queues the rest in its connection task,
/// which hands them out one at a time behind the first stream that could not
/// open; in a burst of a thousand new connections to one remote, letting
/// calls beyond the hundredth wait here for the SETTINGS instead cut the
/// median call of the burst from 21 to 6 ms and the burst itself by about
/// 4 % (BENCHMARKS.md, workload a, fifth round).
const PRE_SETTINGS_STREAMS: usize = 100;

impl ConnectClient {
    pub(super) fn new(
        url: Arc<Url>,
        cancel: ClientCancel,
        factory: Arc<dyn ClientFactory>,
        dial_options: &DialOptions,
    ) -> Arc<Self> {
        let ctx = Context::new()
            .with_client_url(Arc::clone(&url))
            .with_client_cancel(cancel.clone())
            .with_cancellation_token(cancel.token().clone());
        Arc::new_cyclic(|me| Self {
            // Cancelling the client closes its connection, even while clones
            // of the channel live on in the chain; and the connection ending
            // (the remote went away) cancels the client, so that it leaves
            // the map and the next request dials afresh.
            dial_options: dial_options
                .clone()
                .close_on(cancel.token().clone())
                .on_end(cancel.token().clone()),
            url,
            cancel,
            ctx,
            factory,
            dialed: OnceCell::new(),
            readiness: OnceLock::new(),
            unanswered: OnceLock::new(),
            me: me.clone(),
            chain: Mutex::new(None),
            sent_early: AtomicUsize::new(0),
        })
    }

    pub(super) fn url(&self) -> &Arc<Url> {
        &self.url
    }

    pub(super) fn cancel_handle(&self) -> &ClientCancel {
        &self.cancel
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Cancels the client and drops its chain (the chain's elements own the
    /// channel clones, monitor tasks and streams).
    pub(super) fn shut(&self) {
        self.cancel.cancel();
        let chain = lock(&self.chain).take();
        drop(chain);
    }

    /// Whether the remote has spoken HTTP/2 on this client's connection:
    /// before that it cannot have acted on any call.
    pub(super) fn has_answered(&self) -> bool {
        self.readiness.get().is_some_and(|r| r.is_ready())
    }

    /// Whether the dial has completed successfully.
    pub(super) fn is_dialed(&self) -> bool {
        matches!(self.dialed.get(), Some(Ok(())))
    }

    pub(super) async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
    ) -> Result<Connection, Status> {
        let chain = self.chain(&ctx).await?;
        self.answered(chain.request(ctx, request)).await
    }

    pub(super) async fn close(&self, ctx: Context, connection: Connection) -> Result<(), Status> {
        let chain = self.chain(&ctx).await?;
        self.answered(chain.close(ctx, connection)).await
    }

    /// The client chain, dialing on first use; the caller's deadline bounds
    /// the dial too, not only the call.
    async fn chain(&self, ctx: &Context) -> Result<ClientChain, Status> {
        match self.ready_chain() {
            Some(chain) => Ok(chain),
            // Boxed: inline, the long way's future would swell the future of
            // every call, ready chain or not.
            None => {
                let long_way: BoxFuture<'_, _> = Box::pin(ctx.run(self.chain_the_long_way()));
                long_way.await
            }
        }
    }

    /// The chain, if it can be used at once: the usual case, and the only
    /// one with nothing to await. Only a successful dial stores a chain, and
    /// `shut` (also run when the remote never answered) takes it away after
    /// cancelling, so a stored chain on a live client was dialed; it is
    /// used at once when the remote has also answered.
    fn ready_chain(&self) -> Option<ClientChain> {
        if self.is_cancelled() || !self.readiness.get().is_some_and(Readiness::is_ready) {
            return None;
        }
        lock(&self.chain).clone()
    }

    /// Runs a call. The first calls go out before the remote's preface has
    /// arrived (see [`crate::dial::open`]); if the remote then fails to
    /// answer within the dial timeout, the readiness watcher closes the
    /// client, the call fails, and the caller gets the dial's error.
    async fn answered<T>(
        &self,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let result = call.await;
        match (&result, self.unanswered.get()) {
            (Err(_), Some(unanswered)) => Err(unanswered.clone()),
            _ => result,
        }
    }

    /// The remote did not answer in time: the failure sticks to this client,
    /// which closes at once (calls in flight fail now, not at their own
    /// deadlines) and so leaves the map.
    fn unanswered(&self, failure: DialError) {
        let status = Status::from(failure);
        tracing::warn!(url = %self.url, error = %status.message(), "the remote did not answer");
        let _ = self.unanswered.set(status);
        self.shut();
    }

    /// The client chain when it is not ready: dialing, or waiting for the
    /// remote's SETTINGS, or failing as the client has failed.
    async fn chain_the_long_way(&self) -> Result<ClientChain, Status> {
        if self.is_cancelled() {
            return Err(self.cancelled());
        }
        if let Some(status) = self.unanswered.get() {
            return Err(status.clone());
        }
        let dialed = match self.dialed.get() {
            Some(dialed) => dialed,
            // The dial's future is large and runs once per client: boxed, it
            // does not swell the future of every call that takes the long
            // way (those before the remote's SETTINGS, too).
            None => self.dialed.get_or_init(|| Box::pin(self.connect())).await,
        };
        dialed.clone()?;
        if let Some(readiness) = self.readiness.get()
            && !readiness.is_ready()
            && self.sent_early.fetch_add(1, Ordering::Relaxed) >= PRE_SETTINGS_STREAMS
        {
            readiness.wait().await?;
        }
        lock(&self.chain).clone().ok_or_else(|| self.cancelled())
    }

    async fn connect(&self) -> Result<(), Status> {
        let conn = tokio::select! {
            biased;
            () = self.cancel.cancelled() => return Err(self.cancelled()),
            opened = open(&self.url, &self.dial_options) => opened?,
        };
        let (conn, readiness) = conn;
        // One watcher per dial, not a race per call: it ends when the remote
        // answers, or at the dial deadline.
        let me = self.me.clone();
        let watched = readiness.clone();
        tokio::spawn(async move {
            if let Err(failure) = watched.wait().await
                && let Some(client) = me.upgrade()
            {
                client.unanswered(failure);
            }
        });
        let _ = self.readiness.set(readiness);
        let factory = AssertUnwindSafe(|| self.factory.client(&self.ctx, conn));
        let chain = std::panic::catch_unwind(factory).map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".to_owned());
            tracing::error!(url = %self.url, panic = %what, "the client factory panicked");
            Status::internal(format!(
                "the client factory panicked building the client for {}: {what}",
                self.url
            ))
        })?;
        let mut slot = lock(&self.chain);
        if self.is_cancelled() {
            // Cancelled while dialing: `shut` has run already.
            return Err(self.cancelled());
        }
        *slot = Some(chain);
        Ok(())
    }

    fn cancelled(&self) -> Status {
        Status::unavailable(format!(
            "the client for {} was closed; the next request dials afresh",
            self.url
        ))
    }
}
