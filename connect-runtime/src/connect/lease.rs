//! A client reference held by an operation in flight, which cleans up after
//! that operation if its future is dropped half-way.

use std::sync::Arc;

use tonic::Status;

use super::client::ConnectClient;
use super::turns::Turn;
use super::{Record, Shared};
use crate::context::Context;
use crate::map::Instance;
use crate::proto::connection::Connection;

/// One reference to a client in `Shared::clients`, owned by an operation
/// until it either hands it to a connection record ([`Lease::keep`]) or
/// gives it back.
///
/// Dropped while still armed — the caller's future was dropped at an
/// `.await` — it undoes what the operation did: it forgets the record it
/// stored, closes on the remote whatever the operation may have created
/// there, and releases the reference. The close runs in a task that keeps
/// the connection id's turn, so a later call for the same id cannot overtake
/// it.
pub(super) struct Lease {
    shared: Arc<Shared>,
    instance: Instance,
    client: Arc<ConnectClient>,
    turn: Option<Turn>,
    /// What to close on the remote if dropped armed.
    remote: Remote,
    /// Whether this operation stored the id's record (forgotten if dropped
    /// armed).
    recorded: bool,
    armed: bool,
}

impl Lease {
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
            remote: Remote::Nothing,
            recorded: false,
            armed: true,
        }
    }

    /// Takes over the reference a record held (the record is already gone).
    pub(super) fn adopt(shared: Arc<Shared>, record: Record, turn: Turn) -> Self {
        Self::new(shared, record.instance, record.client, turn)
    }

    pub(super) fn client(&self) -> &Arc<ConnectClient> {
        &self.client
    }

    fn turn(&self) -> &Turn {
        self.turn
            .as_ref()
            .expect("a lease holds its turn until it ends")
    }

    /// From now on the remote may hold `connection`: close it there if the
    /// operation is abandoned.
    pub(super) fn may_exist_remotely(&mut self, connection: Option<Box<Connection>>) {
        self.remote = match connection {
            Some(connection) => Remote::Connection(connection),
            None => Remote::Id,
        };
    }

    /// The connection the remote may hold, taken back to close it.
    pub(super) fn take_remote(&mut self) -> Connection {
        match std::mem::replace(&mut self.remote, Remote::Nothing) {
            Remote::Connection(connection) => *connection,
            Remote::Id | Remote::Nothing => self.bare_connection(),
        }
    }

    /// A connection carrying only this lease's id: all a remote needs to
    /// find what to close.
    fn bare_connection(&self) -> Connection {
        Connection {
            id: self.turn().id().to_owned(),
            ..Default::default()
        }
    }

    /// Stores the record for `id` (the turn's id), which will own the
    /// reference once the operation succeeds.
    pub(super) fn record(&mut self, id: Arc<str>) {
        debug_assert_eq!(&*id, self.turn().id());
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
        self.forget_record();
        self.armed = false;
        self.shared.release(self.client.url(), self.instance);
        self.turn
            .take()
            .expect("a lease holds its turn until it ends")
    }

    /// Closes `connection` through the client, then forgets the record and
    /// releases the reference. Returns the close's outcome and the turn. If
    /// dropped during the close, the close is finished in the background.
    pub(super) async fn close_and_release(
        mut self,
        ctx: Context,
        connection: Connection,
    ) -> (Result<(), Status>, Turn) {
        // If dropped mid-close, close again by id in the background.
        self.remote = Remote::Id;
        let result = self.client.close(ctx, connection).await;
        self.remote = Remote::Nothing;
        (result, self.release())
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
        let remote = match std::mem::replace(&mut self.remote, Remote::Nothing) {
            Remote::Nothing => None,
            Remote::Id => Some(self.bare_connection()),
            Remote::Connection(connection) => Some(*connection),
        };
        let runtime = tokio::runtime::Handle::try_current();
        match (remote, runtime) {
            (Some(connection), Ok(runtime)) => {
                let shared = Arc::clone(&self.shared);
                let client = Arc::clone(&self.client);
                let (instance, turn) = (self.instance, self.turn.take());
                tracing::debug!(
                    connection_id = %connection.id,
                    url = %client.url(),
                    "call abandoned; closing what it may have created"
                );
                runtime.spawn(async move {
                    let ctx = shared.cleanup_context(&client);
                    if let Err(status) = client.close(ctx, connection).await {
                        tracing::debug!(error = %status.message(), "cleanup close failed");
                    }
                    // The id's next call may go once the remote has the close;
                    // releasing after that keeps the client for it if it
                    // wants the same remote.
                    drop(turn);
                    shared.release(client.url(), instance);
                });
            }
            _ => self.shared.release(self.client.url(), self.instance),
        }
    }
}

/// What an abandoned operation may have left on the remote.
enum Remote {
    /// Nothing yet.
    Nothing,
    /// A connection with the lease's id, nothing more known.
    Id,
    /// The connection as the remote returned it.
    Connection(Box<Connection>),
}
