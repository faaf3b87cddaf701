//! One `connect` client: the lazily dialed channel to a remote URL and the
//! client chain the factory built over it (Go's `connectClient`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OnceCell, watch};
use tonic::Status;
use url::Url;

use crate::chain::BoxFuture;
use crate::chain::ClientChain;
use crate::chain::{ClientCancel, Context};
use crate::map::Instance;
use crate::outcome::not_sent;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use crate::sync::lock;
use crate::transport::tls::Credential;
use crate::transport::{ClientConn, DialOptions, dial};

/// Builds the client chain for a newly dialed remote (Go's `ClientFactory`).
///
/// Called once per client, with the client's own [`Context`] — its client URL
/// and its [`ClientCancel`] handle, for elements such as
/// [`Monitor`](crate::Monitor) — and the dialed channel. Any
/// `Fn(&Context, ClientConn) -> ClientChain` is a factory.
pub trait ClientFactory: Send + Sync + 'static {
    /// The chain requests to this client's remote go through.
    fn client(&self, ctx: &Context, conn: ClientConn) -> ClientChain;
}

impl<F> ClientFactory for F
where
    F: Fn(&Context, ClientConn) -> ClientChain + Send + Sync + 'static,
{
    fn client(&self, ctx: &Context, conn: ClientConn) -> ClientChain {
        self(ctx, conn)
    }
}

pub(crate) struct ConnectClient {
    url: Arc<Url>,
    /// Which of the URL's clients this is, in the map or retired.
    instance: Instance,
    cancel: ClientCancel,
    /// The context the factory sees: the client URL and the cancel handle.
    ctx: Context,
    factory: Arc<dyn ClientFactory>,
    dial_options: DialOptions,
    /// The outcome of the one dial this instance makes; a failure sticks.
    dialed: OnceCell<Result<(), Status>>,
    /// The chain and its channel, until the client is cancelled and lets go.
    chain: Mutex<Option<(ClientChain, ClientConn)>>,
    /// The rotating credential the dial presented, once it has begun.
    credential: watch::Sender<Option<Credential>>,
    /// Whether it has left the map for a client dialed under a newer
    /// credential (it lives on while connections use it).
    retired: AtomicBool,
    /// Counts the times its last connection left (with a linger, it stays
    /// that long in case another comes).
    unused: watch::Sender<u64>,
}

impl ConnectClient {
    pub(super) fn new(
        url: Arc<Url>,
        instance: Instance,
        cancel: ClientCancel,
        factory: Arc<dyn ClientFactory>,
        dial_options: DialOptions,
    ) -> Arc<Self> {
        let ctx = Context::new()
            .with_client_url(Arc::clone(&url))
            .with_client_cancel(cancel.clone())
            .with_cancellation_token(cancel.token().clone());
        Arc::new(Self {
            // Cancelling the client closes its connection, even while clones
            // of the channel live on in the chain; and the channel ending
            // for good (a new connection to the remote could not be made)
            // cancels the client, so that it leaves the map and the next
            // call for its connections dials afresh.
            dial_options: dial_options
                .close_on(cancel.token().clone())
                .on_end(cancel.token().clone()),
            url,
            instance,
            cancel,
            ctx,
            factory,
            dialed: OnceCell::new(),
            chain: Mutex::new(None),
            credential: watch::Sender::new(None),
            retired: AtomicBool::new(false),
            unused: watch::Sender::new(0),
        })
    }

    pub(super) fn url(&self) -> &Arc<Url> {
        &self.url
    }

    pub(super) fn instance(&self) -> Instance {
        self.instance
    }

    /// The credential its dial presented (`None` before the dial, or when
    /// the dial's TLS does not rotate), and its changes.
    pub(super) fn credential(&self) -> watch::Receiver<Option<Credential>> {
        self.credential.subscribe()
    }

    pub(super) fn credential_now(&self) -> Option<Credential> {
        self.credential.borrow().clone()
    }

    /// Its last connection left; it lingers.
    pub(super) fn went_unused(&self) {
        self.unused.send_modify(|times| *times += 1);
    }

    /// The times its last connection left, and their changes.
    pub(super) fn unused(&self) -> watch::Receiver<u64> {
        self.unused.subscribe()
    }

    pub(super) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Marks it retired; `false` if it already was.
    pub(super) fn retire(&self) -> bool {
        !self.retired.swap(true, Ordering::AcqRel)
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

    /// Whether the dial has completed successfully.
    pub(super) fn is_dialed(&self) -> bool {
        matches!(self.dialed.get(), Some(Ok(())))
    }

    /// Connections made to the remote: the first dial and each one after
    /// the remote ended a connection.
    pub(super) fn dials(&self) -> u64 {
        lock(&self.chain)
            .as_ref()
            .map_or(0, |(_, conn)| conn.dials())
    }

    /// Its connections that have ended.
    pub(super) fn ended_connections(&self) -> u64 {
        lock(&self.chain)
            .as_ref()
            .map_or(0, |(_, conn)| conn.ended_connections())
    }

    // Owning their client, these futures are the call a lease boxes, with
    // no wrapper around them holding second copies of the arguments: `fn`s
    // returning `async move` blocks, since an `async fn` that borrows its
    // arguments keeps them twice.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn request(
        self: Arc<Self>,
        ctx: Context,
        request: NetworkServiceRequest,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'static {
        async move {
            let chain = self.chain(&ctx).await?;
            chain.request(ctx, request).await
        }
    }

    #[allow(clippy::manual_async_fn)]
    pub(super) fn close(
        self: Arc<Self>,
        ctx: Context,
        connection: Connection,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'static {
        async move {
            let chain = self.chain(&ctx).await?;
            chain.close(ctx, connection).await
        }
    }

    /// The client chain, dialing on first use; the caller's deadline bounds
    /// the dial too. A failure here sent nothing.
    async fn chain(&self, ctx: &Context) -> Result<ClientChain, Status> {
        if let Some((chain, _)) = lock(&self.chain).as_ref()
            && !self.is_cancelled()
        {
            return Ok(chain.clone());
        }
        // Boxed: the dial's future is large and runs once per client.
        let long_way: BoxFuture<'_, _> = Box::pin(ctx.run(self.chain_the_long_way()));
        long_way.await.map_err(not_sent)
    }

    async fn chain_the_long_way(&self) -> Result<ClientChain, Status> {
        if self.is_cancelled() {
            return Err(self.cancelled());
        }
        self.dialed.get_or_init(|| self.connect()).await.clone()?;
        let chain = lock(&self.chain).as_ref().map(|(chain, _)| chain.clone());
        chain.ok_or_else(|| self.cancelled())
    }

    async fn connect(&self) -> Result<(), Status> {
        // Calls wait for the remote's SETTINGS: a burst sent ahead of them
        // queues inside hyper's connection task, slowly (BENCHMARKS.md).
        // The dial's own failure, when there is one, says more than the
        // cancellation it causes. The credential is read before the
        // handshake: a rotation meanwhile can only make the tag older than
        // the certificate, which retires the client early, never late.
        if let Some(credential) = self.dial_options.credential() {
            let now = credential.borrow().clone();
            self.credential.send_replace(Some(now));
        }
        let conn = tokio::select! {
            biased;
            dialed = dial(&*self.url, &self.dial_options) => match dialed {
                Ok(conn) => conn,
                Err(err) => {
                    // The calls that shared this dial fail with it; the
                    // client closes, so that a later call dials afresh
                    // rather than meet the same failure.
                    self.cancel.cancel();
                    return Err(err.into());
                }
            },
            () = self.cancel.cancelled() => return Err(self.cancelled()),
        };
        let factory = AssertUnwindSafe(|| self.factory.client(&self.ctx, conn.clone()));
        let chain = std::panic::catch_unwind(factory).map_err(|panic| {
            let what = panic_message(&*panic);
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
        *slot = Some((chain, conn));
        Ok(())
    }

    fn cancelled(&self) -> Status {
        Status::unavailable(format!(
            "the client for {} was closed; the next call dials afresh",
            self.url
        ))
    }
}

/// What a panic said, if it said it as a string.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned())
}
