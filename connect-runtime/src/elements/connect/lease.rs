//! What an operation on one connection holds while it runs: the id's turn,
//! possibly a reference to a client, and the client call in flight. If the
//! operation's future is dropped half-way (or panics), the lease finishes
//! the call and undoes the operation in the background, still holding the
//! turn.

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;

use futures_util::FutureExt;
use tonic::{Code, Status};
use tracing::Instrument as _;
use url::Url;

use super::client::{ConnectClient, panic_message};
use super::state::{Record, Shared};
use crate::chain::BoxFuture;
use crate::chain::Context;
use crate::elements::last_known::LastKnown;
use crate::elements::turns::Turn;
use crate::map::Instance;
use crate::outcome::sent_nothing;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use crate::telemetry::CloseOrigin;

/// Whether the remote may have acted on a client call that failed with
/// `status`: the call went out and its outcome is unknown.
pub(super) fn may_have_acted(status: &Status) -> bool {
    !sent_nothing(status) && matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled)
}

/// One operation's hold on a connection id and, usually, on a client.
///
/// A lease either *owns* a reference to its client (a new connection, a
/// close, the old side of a move) or *borrows* the one a record owns (a
/// refresh). It ends by [`Lease::keep`] (success: a record owns the
/// reference) or [`Lease::release`] (the reference is given back).
///
/// Dropped before that — the caller's future was dropped at an `.await`, or
/// something under it panicked — it undoes the operation in a background
/// task that holds the id's turn, so that the remote never sees two calls
/// for one id at once:
///
/// 1. a client call still in flight is run to its end (bounded by the
///    cleanup timeout) rather than cut off, since the remote may already be
///    acting on it;
/// 2. what the operation may have created on the remote is closed there,
///    with the connection as last known;
/// 3. the record it stored is forgotten and its reference released, by a
///    guard, so that a panic in any of this leaks nothing.
pub(super) struct Lease {
    shared: Arc<Shared>,
    instance: Instance,
    client: Arc<ConnectClient>,
    turn: Option<Turn>,
    /// Whether this lease holds a reference of its own.
    owns_reference: bool,
    /// The client call in flight, if any.
    pending: Pending,
    /// What to close on the remote if abandoned: the connection as last known.
    remote: Option<Remote>,
    /// Whether this operation stored the id's record.
    recorded: bool,
    /// The context of the client call, whose values a cleanup close keeps.
    origin: Option<Context>,
    armed: bool,
}

/// A connection as the remote may hold it: whole (the one a close sends, a
/// reply an abandoned call got), or encoded (the caller's as sent, or the
/// reply the forgotten record held).
enum Remote {
    Whole(Arc<Connection>),
    Known(LastKnown),
}

impl Remote {
    fn connection(self) -> Connection {
        match self {
            Self::Whole(connection) => Arc::unwrap_or_clone(connection),
            Self::Known(known) => known.connection(),
        }
    }
}

enum Pending {
    Nothing,
    Request(BoxFuture<'static, Result<Connection, Status>>),
    Close(BoxFuture<'static, Result<(), Status>>),
}

/// Polls the call in `slot` to its end, then clears the slot. The call lives
/// in the lease rather than in the caller's future, so that a drop half-way
/// leaves it for [`Lease`]'s `Drop` to finish; a call that panics is cleared
/// before the panic goes on, so that nobody polls it again.
async fn run_pending<T>(
    slot: &mut Pending,
    call: impl Fn(&mut Pending) -> &mut BoxFuture<'static, Result<T, Status>>,
) -> Result<T, Status> {
    poll_fn(|cx| {
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| call(slot).as_mut().poll(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => {
                *slot = Pending::Nothing;
                Poll::Ready(result)
            }
            Err(panic) => {
                *slot = Pending::Nothing;
                std::panic::resume_unwind(panic)
            }
        }
    })
    .await
}

impl Lease {
    /// A lease holding a new reference to `client`.
    pub(super) fn new(
        shared: Arc<Shared>,
        instance: Instance,
        client: Arc<ConnectClient>,
        turn: Turn,
    ) -> Self {
        Self {
            shared,
            instance,
            client,
            turn: Some(turn),
            owns_reference: true,
            pending: Pending::Nothing,
            remote: None,
            recorded: false,
            origin: None,
            armed: true,
        }
    }

    /// Takes over the reference a record held (the record is already gone).
    pub(super) fn adopt(shared: Arc<Shared>, record: Record, turn: Turn) -> Self {
        Self::new(shared, record.instance(), record.client, turn)
    }

    /// A lease on a client that can reach the remote a record (already
    /// gone) names, to close the connection there: the record's own client,
    /// or, if that one has closed (retired and drained, or its remote was
    /// unreachable for a while), the URL's current client, whose reference
    /// replaces the record's.
    pub(super) fn reaching(
        shared: &Arc<Shared>,
        record: Record,
        turn: Turn,
    ) -> Result<Self, (Status, Turn)> {
        if record.client.is_cancelled() {
            shared.release(record.client.url(), record.instance());
            return shared.acquire(record.client.url(), turn);
        }
        Ok(Self::adopt(Arc::clone(shared), record, turn))
    }

    /// Uses the reference a record keeps on `client`, without taking it (a
    /// refresh).
    pub(super) fn borrow(shared: Arc<Shared>, client: &Arc<ConnectClient>, turn: Turn) -> Self {
        let mut lease = Self::new(shared, client.instance(), Arc::clone(client), turn);
        lease.owns_reference = false;
        lease
    }

    pub(super) fn client(&self) -> &Arc<ConnectClient> {
        &self.client
    }

    pub(super) fn id(&self) -> &str {
        self.turn().id()
    }

    fn turn(&self) -> &Turn {
        self.turn
            .as_ref()
            .expect("a lease holds its turn until it ends")
    }

    /// Sends `request` through the client. If this lease is dropped while
    /// the call is in flight, the call still runs to its end.
    pub(super) async fn request(
        &mut self,
        ctx: Context,
        request: NetworkServiceRequest,
    ) -> Result<Connection, Status> {
        let client = Arc::clone(&self.client);
        self.origin = Some(ctx.clone());
        self.pending = Pending::Request(Box::pin(client.request(ctx, request)));
        run_pending(&mut self.pending, |pending| match pending {
            Pending::Request(call) => call,
            _ => unreachable!("the request is pending until it completes"),
        })
        .await
    }

    /// Sends a close for `connection` through the client, likewise run to
    /// its end if this lease is dropped meanwhile (and sent again, as it is,
    /// if its outcome is then unknown).
    pub(super) async fn close(
        &mut self,
        ctx: Context,
        connection: Arc<Connection>,
    ) -> Result<(), Status> {
        let sent = Connection::clone(&connection);
        self.remote = Some(Remote::Whole(connection));
        let client = Arc::clone(&self.client);
        self.origin = Some(ctx.clone());
        self.pending = Pending::Close(Box::pin(client.close(ctx, sent)));
        let result = run_pending(&mut self.pending, |pending| match pending {
            Pending::Close(call) => call,
            _ => unreachable!("the close is pending until it completes"),
        })
        .await;
        self.remote = None;
        result
    }

    /// From now on the remote may hold `connection` (as last known) under
    /// this lease's id.
    pub(super) fn may_exist_remotely(&mut self, connection: LastKnown) {
        self.remote = Some(Remote::Known(connection));
    }

    /// Stores the record for `connection`, filed under the turn's id,
    /// which will own the reference once the operation succeeds. The
    /// remote holds what the record now does: if the operation is undone,
    /// the record it forgets gives the connection to close.
    pub(super) fn record(&mut self, connection: LastKnown) {
        debug_assert_eq!(connection.key(), self.id());
        self.shared.records.store(Record {
            client: Arc::clone(&self.client),
            connection,
        });
        self.recorded = true;
        self.remote = None;
    }

    /// Success: the record keeps the reference. Returns the turn.
    pub(super) fn keep(mut self) -> Turn {
        self.armed = false;
        self.turn
            .take()
            .expect("a lease holds its turn until it ends")
    }

    /// Failure before anything needs closing: forgets the record (if any)
    /// and releases the reference. Returns the turn.
    pub(super) fn release(mut self) -> Turn {
        self.armed = false;
        self.forget_record();
        if self.owns_reference {
            self.shared.release(self.client.url(), self.instance);
        }
        self.turn
            .take()
            .expect("a lease holds its turn until it ends")
    }

    /// Closes what the operation created on the remote (the connection as
    /// last known), then forgets the record and releases the reference.
    /// The close has a deadline of its own and the values of the call's
    /// context. Returns the close's outcome and the turn.
    pub(super) async fn undo(mut self) -> (Result<(), Status>, Turn) {
        self.forget_record();
        let origin = self.origin.take().unwrap_or_default();
        let ctx = self.shared.cleanup_context(&origin, &self.client);
        let connection = match self.remote.take() {
            Some(Remote::Whole(connection)) => connection,
            Some(Remote::Known(known)) => Arc::new(known.connection()),
            None => Arc::new(Connection {
                id: self.id().to_owned(),
                ..Default::default()
            }),
        };
        let result = self.close(ctx, connection).await;
        self.shared.metrics.closed(CloseOrigin::Cleanup, &result);
        (result, self.release())
    }

    /// Forgets the record this operation stored, if any; what it held is
    /// then what the remote may hold.
    fn forget_record(&mut self) {
        if std::mem::take(&mut self.recorded) {
            let instance = self.instance;
            let id = self.turn().id();
            let forgotten = self
                .shared
                .records
                .take_if(id, |record| record.instance() == instance);
            // Only this operation changes the id's record while it holds
            // the turn.
            debug_assert!(
                forgotten.is_some() || std::thread::panicking(),
                "a stored record is there until forgotten"
            );
            if let Some(record) = forgotten {
                self.remote = Some(Remote::Known(record.connection));
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.forget_record();
        let held = Held {
            shared: Arc::clone(&self.shared),
            client: Arc::clone(&self.client),
            instance: self.instance,
            owns_reference: self.owns_reference,
            turn: self.turn.take(),
        };
        let pending = std::mem::replace(&mut self.pending, Pending::Nothing);
        let remote = self.remote.take();
        let origin = self.origin.take().unwrap_or_default();
        if matches!(pending, Pending::Nothing) && remote.is_none() {
            // Nothing on the remote to wait for or undo.
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left to finish it on: let go (`held` releases).
            return;
        };
        tracing::debug!(
            connection_id = %held.turn.as_ref().map_or("", |t| t.id()),
            url = %self.client.url(),
            "call abandoned; finishing it and undoing what it did"
        );
        // In the trace of the call that was abandoned: the current span is
        // the one dropping it.
        let span = tracing::debug_span!(
            "cleanup",
            connection_id = %held.turn.as_ref().map_or("", |t| t.id())
        );
        runtime.spawn(finish(held, pending, remote, origin).instrument(span));
    }
}

/// What an abandoned operation holds until its cleanup ends: released by
/// `Drop`, so that a panic during the cleanup leaks nothing either. The
/// reference goes before the turn, so that whoever sees the id free also
/// sees the reference gone.
struct Held {
    shared: Arc<Shared>,
    client: Arc<ConnectClient>,
    instance: Instance,
    owns_reference: bool,
    turn: Option<Turn>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.owns_reference {
            self.shared.release(self.client.url(), self.instance);
        }
        drop(self.turn.take());
    }
}

/// The background half of an abandoned operation: the call in flight run
/// to its end, then a close of what it may have left at the remote.
async fn finish(held: Held, pending: Pending, mut remote: Option<Remote>, origin: Context) {
    let limit = held.shared.cleanup_timeout;
    let outcome = |result: Result<Result<Result<(), Status>, _>, _>| match result {
        Ok(Ok(Ok(()))) => Some(Ok(())),
        Ok(Ok(Err(status))) => Some(Err(status)),
        // No answer in time.
        Err(_) => None,
        Ok(Err(panic)) => {
            let panic: Box<dyn std::any::Any + Send> = panic;
            tracing::error!(panic = %panic_message(&*panic), "a client call panicked");
            None
        }
    };
    match pending {
        Pending::Nothing => {}
        Pending::Request(call) => {
            let mut reply = None;
            let ran = tokio::time::timeout(
                limit,
                AssertUnwindSafe(call.map(|r| r.map(|c| reply = Some(c)))).catch_unwind(),
            )
            .await;
            match outcome(ran) {
                // The remote made the connection: close that one (a refresh
                // has nothing to undo).
                Some(Ok(())) if remote.is_some() => {
                    remote = reply.map(|c| Remote::Whole(Arc::new(c)));
                }
                // The remote refused it, or nothing was sent: nothing to close.
                Some(Err(status)) if !may_have_acted(&status) => remote = None,
                // Unknown: close as last known.
                _ => {}
            }
        }
        Pending::Close(call) => {
            let ran = tokio::time::timeout(limit, AssertUnwindSafe(call).catch_unwind()).await;
            match outcome(ran) {
                // A close that ran its course is all the remote needs.
                Some(Ok(())) => remote = None,
                Some(Err(status)) if !may_have_acted(&status) => remote = None,
                // Cut off, or no answer in time: close again.
                _ => {}
            }
        }
    }
    if let Some(connection) = remote {
        let ctx = held.shared.cleanup_context(&origin, &held.client);
        let connection = connection.connection();
        let close =
            AssertUnwindSafe(Arc::clone(&held.client).close(ctx, connection)).catch_unwind();
        let result = match close.await {
            Ok(result) => result,
            Err(panic) => {
                let panic = panic_message(&*panic);
                tracing::error!(%panic, "a cleanup close panicked");
                Err(Status::internal(format!(
                    "the cleanup close panicked: {panic}"
                )))
            }
        };
        held.shared.metrics.closed(CloseOrigin::Cleanup, &result);
        if let Err(status) = result {
            tracing::debug!(error = %status.message(), "cleanup close failed");
        }
    }
    drop(held);
}

impl Shared {
    /// One reference to the client for `url`, creating the client if there
    /// is none. A client found cancelled but not yet evicted is evicted and
    /// replaced.
    /// After shutdown every new client is born cancelled: the request is
    /// refused at once rather than retried (the turn comes back with the
    /// refusal).
    pub(super) fn acquire(
        self: &Arc<Self>,
        url: &Arc<Url>,
        turn: Turn,
    ) -> Result<Lease, (Status, Turn)> {
        self.follow_rotation();
        loop {
            if self.root.is_cancelled() {
                return Err((Status::unavailable("connect is shut down"), turn));
            }
            let acquired = self.clients.acquire(Arc::clone(url), |instance| {
                self.new_client(Arc::clone(url), instance)
            });
            if acquired.value.is_cancelled() {
                self.release(url, acquired.instance);
                if self.clients.evict(url, acquired.instance).is_some() {
                    acquired.value.shut();
                    self.clients_changed.notify();
                }
                continue;
            }
            return Ok(Lease::new(
                Arc::clone(self),
                acquired.instance,
                acquired.value,
                turn,
            ));
        }
    }
}
