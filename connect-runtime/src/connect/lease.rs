//! What an operation on one connection holds while it runs: the id's turn,
//! possibly a reference to a client, and the client call in flight. If the
//! operation's future is dropped half-way, the lease finishes the call and
//! undoes the operation in the background, still holding the turn.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use tonic::{Code, Status};

use super::client::ConnectClient;
use super::turns::Turn;
use super::{Record, Shared};
use crate::context::Context;
use crate::element::BoxFuture;
use crate::map::Instance;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;

/// Codes after which the remote may or may not have acted on a request.
pub(super) fn outcome_unknown(code: Code) -> bool {
    matches!(code, Code::DeadlineExceeded | Code::Cancelled)
}

/// One operation's hold on a connection id and, usually, on a client.
///
/// A lease either *owns* a reference to its client (a new connection, a
/// close, the old side of a move) or *borrows* the one a record owns (a
/// refresh). It ends by [`Lease::keep`] (success: a record owns the
/// reference) or [`Lease::release`] (the reference is given back).
///
/// Dropped before that — the caller's future was dropped at an `.await` —
/// it undoes the operation in a background task that holds the id's turn,
/// so that the remote never sees two calls for one id at once:
///
/// 1. a client call still in flight is run to completion (bounded by the
///    cleanup timeout) rather than cut off, since the remote may already be
///    acting on it;
/// 2. a connection the operation may have created on the remote is closed
///    there;
/// 3. the record it stored is forgotten and its reference released.
pub(super) struct Lease {
    shared: Arc<Shared>,
    instance: Instance,
    client: Arc<ConnectClient>,
    turn: Option<Turn>,
    /// Whether this lease holds a reference of its own.
    owns_reference: bool,
    /// The client call in flight, if any.
    pending: Pending,
    /// What to close on the remote if abandoned.
    remote: Remote,
    /// Whether this operation stored the id's record.
    recorded: bool,
    armed: bool,
}

enum Pending {
    Nothing,
    Request(BoxFuture<'static, Result<Connection, Status>>),
    Close(BoxFuture<'static, Result<(), Status>>),
}

/// Polls the call in `slot` to its end, then clears the slot. The call lives
/// in the lease rather than in the caller's future, so that a drop half-way
/// leaves it for [`Lease`]'s `Drop` to finish.
async fn run_pending<T>(
    slot: &mut Pending,
    call: impl Fn(&mut Pending) -> &mut BoxFuture<'static, Result<T, Status>>,
) -> Result<T, Status> {
    poll_fn(|cx| {
        let result = std::task::ready!(call(slot).as_mut().poll(cx));
        *slot = Pending::Nothing;
        Poll::Ready(result)
    })
    .await
}

/// What an abandoned operation may have left on the remote.
enum Remote {
    /// Nothing.
    Nothing,
    /// A connection with the lease's id, nothing more known.
    Id,
    /// The connection as the remote returned it.
    Connection(Box<Connection>),
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
            remote: Remote::Nothing,
            recorded: false,
            armed: true,
        }
    }

    /// Takes over the reference a record held (the record is already gone).
    pub(super) fn adopt(shared: Arc<Shared>, record: Record, turn: Turn) -> Self {
        Self::new(shared, record.instance, record.client, turn)
    }

    /// Uses the reference a record keeps, without taking it (a refresh).
    pub(super) fn borrow(shared: Arc<Shared>, record: &Record, turn: Turn) -> Self {
        let mut lease = Self::new(shared, record.instance, Arc::clone(&record.client), turn);
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
        self.pending =
            Pending::Request(Box::pin(async move { client.request(ctx, request).await }));
        run_pending(&mut self.pending, |pending| match pending {
            Pending::Request(call) => call,
            _ => unreachable!("the request is pending until it completes"),
        })
        .await
    }

    /// Sends a close for `connection` through the client, likewise run to
    /// its end if this lease is dropped meanwhile.
    pub(super) async fn close(
        &mut self,
        ctx: Context,
        connection: Connection,
    ) -> Result<(), Status> {
        let client = Arc::clone(&self.client);
        self.pending = Pending::Close(Box::pin(async move { client.close(ctx, connection).await }));
        run_pending(&mut self.pending, |pending| match pending {
            Pending::Close(call) => call,
            _ => unreachable!("the close is pending until it completes"),
        })
        .await
    }

    /// From now on the remote may hold a connection with this lease's id:
    /// `connection` as it returned it, or (with `None`) just the id.
    pub(super) fn may_exist_remotely(&mut self, connection: Option<Box<Connection>>) {
        self.remote = match connection {
            Some(connection) => Remote::Connection(connection),
            None => Remote::Id,
        };
    }

    /// Stores the record for `id` (the turn's id), which will own the
    /// reference once the operation succeeds.
    pub(super) fn record(&mut self, id: Arc<str>) {
        debug_assert_eq!(&*id, self.id());
        self.shared.records.store(
            id,
            Record {
                instance: self.instance,
                client: Arc::clone(&self.client),
            },
        );
        self.recorded = true;
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

    /// Closes what the operation created on the remote (the connection it
    /// returned), then forgets the record and releases the reference.
    /// Returns the close's outcome and the turn.
    pub(super) async fn undo(mut self, ctx: Context) -> (Result<(), Status>, Turn) {
        let connection = match std::mem::replace(&mut self.remote, Remote::Nothing) {
            Remote::Connection(connection) => *connection,
            Remote::Id | Remote::Nothing => self.bare_connection(),
        };
        let result = self.close(ctx, connection).await;
        (result, self.release())
    }

    fn bare_connection(&self) -> Connection {
        bare_connection(&self.turn)
    }

    fn forget_record(&mut self) {
        if std::mem::take(&mut self.recorded) {
            let instance = self.instance;
            let id = self.turn().id();
            self.shared
                .records
                .delete_if(id, |record| record.instance == instance);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.forget_record();
        let mut pending = std::mem::replace(&mut self.pending, Pending::Nothing);
        if !self.client.is_dialed() {
            // Still dialing: nothing of this call has left, so there is
            // nothing to finish or undo at the remote. (Once connected, a
            // call goes out before the remote's preface arrives, so even a
            // remote that has not answered yet may be acting on it.)
            pending = Pending::Nothing;
            self.remote = Remote::Nothing;
        }
        let remote = match std::mem::replace(&mut self.remote, Remote::Nothing) {
            Remote::Nothing => None,
            Remote::Id => Some(self.bare_connection()),
            Remote::Connection(connection) => Some(*connection),
        };
        let nothing_to_finish = matches!(pending, Pending::Nothing) && remote.is_none();
        let runtime = tokio::runtime::Handle::try_current();
        let (Ok(runtime), false) = (runtime, nothing_to_finish) else {
            // Nothing on the remote to wait for or undo (or no runtime left
            // to do it on): just let go.
            if self.owns_reference {
                self.shared.release(self.client.url(), self.instance);
            }
            return;
        };
        let abandoned = Abandoned {
            shared: Arc::clone(&self.shared),
            client: Arc::clone(&self.client),
            instance: self.instance,
            owns_reference: self.owns_reference,
            turn: self.turn.take(),
            pending,
            remote,
        };
        tracing::debug!(
            connection_id = %abandoned.turn.as_ref().map_or("", |t| t.id()),
            url = %self.client.url(),
            "call abandoned; finishing it and undoing what it did"
        );
        runtime.spawn(abandoned.finish());
    }
}

/// A connection carrying only the turn's id: all a remote needs to find
/// what to close.
fn bare_connection(turn: &Option<Turn>) -> Connection {
    Connection {
        id: turn
            .as_ref()
            .map_or_else(String::new, |t| t.id().to_owned()),
        ..Default::default()
    }
}

/// The background half of an abandoned operation.
struct Abandoned {
    shared: Arc<Shared>,
    client: Arc<ConnectClient>,
    instance: Instance,
    owns_reference: bool,
    turn: Option<Turn>,
    pending: Pending,
    remote: Option<Connection>,
}

impl Abandoned {
    async fn finish(self) {
        let Abandoned {
            shared,
            client,
            instance,
            owns_reference,
            turn,
            pending,
            mut remote,
        } = self;
        let limit = shared.cleanup_timeout;
        match pending {
            Pending::Nothing => {}
            Pending::Request(call) => match tokio::time::timeout(limit, call).await {
                // The remote made the connection: close that one (a refresh
                // has nothing to undo).
                Ok(Ok(reply)) if remote.is_some() => remote = Some(reply),
                Ok(Ok(_)) => {}
                // The remote refused it: nothing to close.
                Ok(Err(status)) if !outcome_unknown(status.code()) => remote = None,
                // Unknown: close by id, as prepared.
                _ => {}
            },
            Pending::Close(call) => match tokio::time::timeout(limit, call).await {
                // A close that ran its course is all the remote needs.
                Ok(Ok(())) => remote = None,
                Ok(Err(status)) if !outcome_unknown(status.code()) => remote = None,
                // Cut off, or no answer in time: close again, by id.
                _ => remote = remote.or_else(|| Some(bare_connection(&turn))),
            },
        }
        // A remote that never answered acted on nothing.
        if let Some(connection) = remote.filter(|_| client.has_answered()) {
            let ctx = shared.cleanup_context(&client);
            if let Err(status) = client.close(ctx, connection).await {
                tracing::debug!(error = %status.message(), "cleanup close failed");
            }
        }
        // Released before the turn ends, so that whoever sees the id free
        // also sees the reference gone.
        if owns_reference {
            shared.release(client.url(), instance);
        }
        drop(turn);
    }
}
