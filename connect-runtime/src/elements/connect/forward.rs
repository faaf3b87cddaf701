//! A request's and a close's way through `connect`: take the id's turn,
//! find or make the client under a lease, call the remote, then the rest of
//! the chain, and record or undo what happened.

use std::sync::Arc;

use tonic::Status;
use url::Url;

use super::client::ConnectClient;
use super::lease::{Lease, may_have_acted};
use super::state::{Record, Shared};
use crate::chain::{Context, Next};
use crate::elements::last_known::LastKnown;
use crate::elements::turns::Turn;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use crate::telemetry::{CallKind, CloseOrigin};
use crate::transport::Target;

/// The context a client call runs with: the caller's deadline (sent to the
/// remote, which ends the call there), without its cancellation token (an
/// abandoned call is finished by its lease, bounded by the cleanup
/// timeout), with the client's cancel handle.
fn client_context(ctx: &Context, client: &ConnectClient) -> Context {
    ctx.clone()
        .without_cancellation_token()
        .with_client_cancel(client.cancel_handle().clone())
}

/// What a client call sends: the caller's connection, moved out of
/// `request` (whose copy the reply replaces before it goes on), with a copy
/// of the rest.
fn outgoing(request: &mut NetworkServiceRequest) -> NetworkServiceRequest {
    let connection = request.connection.take();
    let mut outgoing = request.clone();
    outgoing.connection = connection;
    outgoing
}

/// A request's connection id and the remote it goes to, or why it cannot
/// be forwarded.
fn routing(ctx: &Context, request: &NetworkServiceRequest) -> Result<(Arc<str>, Arc<Url>), Status> {
    let Some(connection) = request.connection.as_deref() else {
        return Err(Status::invalid_argument(
            "connect: the request has no connection",
        ));
    };
    if connection.id.is_empty() {
        return Err(Status::invalid_argument(
            "connect: the request's connection has an empty id",
        ));
    }
    let id: Arc<str> = Arc::from(connection.id.as_str());
    let Some(url) = ctx.client_url_arc().cloned() else {
        return Err(Status::invalid_argument(format!(
            "connect: no client URL for connection {id}: put a clienturl element before connect"
        )));
    };
    if let Err(err) = Target::check(&url) {
        return Err(Status::invalid_argument(format!(
            "connect: connection {id}: {err}"
        )));
    }
    Ok((id, url))
}

fn in_context(status: Status, what: &str, id: &str, url: &Url) -> Status {
    Status::new(
        status.code(),
        format!(
            "connect: {what} of connection {id} via {url}: {}",
            status.message()
        ),
    )
}

// `fn`s returning `async move` blocks, not `async fn`s, on the hot path: an
// `async fn` keeps its arguments twice in its future (as passed, and moved
// into its body), and these futures are boxed once per call.
#[allow(clippy::manual_async_fn)]
impl Shared {
    /// A request as new, a refresh or a move, by its record.
    pub(super) fn request<'a>(
        self: &'a Arc<Self>,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'a {
        // One block, with its metrics inside: each nested block would keep
        // its own copy of the arguments' room for the whole call.
        async move {
            let mut recorded = self.metrics.request();
            let result = 'routed: {
                let (id, url) = match routing(&ctx, &request) {
                    Ok(routing) => routing,
                    Err(status) => break 'routed Err(status),
                };
                let turn = self.turns.take(&id).await;
                let turn = match self.records.client(&id) {
                    Some(client) if *client.url() == url => {
                        recorded.set_kind(CallKind::Refresh);
                        break 'routed self.refresh(ctx, request, next, client, turn).await;
                    }
                    // The URL changed: close at the old remote, then proceed as new.
                    // Boxed: a cold path that would otherwise swell every request.
                    Some(_) => {
                        recorded.set_kind(CallKind::Move);
                        Box::pin(self.leave(&ctx, &id, turn)).await
                    }
                    None => turn,
                };
                self.establish(ctx, request, next, url, id, turn).await
            };
            recorded.finish(&result);
            result
        }
    }

    /// Closes `id` at the remote its record names and forgets the record,
    /// before the connection moves elsewhere. A failure is only logged.
    pub(super) async fn leave(
        self: &Arc<Self>,
        origin: &Context,
        id: &Arc<str>,
        turn: Turn,
    ) -> Turn {
        // Under the id's turn, the record found before is still there.
        let Some(record) = self.records.load_and_delete(id) else {
            return turn;
        };
        let old_url = Arc::clone(record.client.url());
        let closing = Arc::new(record.connection.connection());
        let closed = match Lease::reaching(self, record, turn) {
            Ok(mut lease) => {
                let ctx = self.cleanup_context(origin, lease.client());
                let closed = lease.close(ctx, closing).await;
                self.metrics.closed(CloseOrigin::Cleanup, &closed);
                (closed, lease.release())
            }
            Err((refused, turn)) => (Err(refused), turn),
        };
        if let Err(status) = closed.0 {
            tracing::warn!(
                connection_id = %id,
                url = %old_url,
                error = %status.message(),
                "closing at the previous remote failed"
            );
        }
        closed.1
    }

    pub(super) fn refresh<'a>(
        self: &'a Arc<Self>,
        ctx: Context,
        mut request: NetworkServiceRequest,
        next: Next<'a>,
        client: Arc<ConnectClient>,
        turn: Turn,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'a {
        async move {
            if client.is_retired() || client.is_cancelled() {
                // Its client was retired by a rotation, or closed (its remote
                // could not be reached, or stopped serving): the refresh goes
                // through the URL's current client, dialing one if need be.
                // Boxed: a cold path.
                return Box::pin(self.migrate(ctx, request, next, client, turn)).await;
            }
            let mut lease = Lease::borrow(Arc::clone(self), &client, turn);
            let client_ctx = client_context(&ctx, &client);
            let reply = match lease.request(client_ctx, outgoing(&mut request)).await {
                Ok(reply) => reply,
                Err(status) => {
                    // The record stays: if the client was closed meanwhile,
                    // the next refresh goes through a new one.
                    let status = in_context(status, "refresh", lease.id(), client.url());
                    drop(lease.keep());
                    return Err(status);
                }
            };
            let turn = lease.keep();
            self.records.store(Record {
                connection: LastKnown::filed(turn.id(), &reply),
                client,
            });
            request.connection = Some(Box::new(reply));
            next.request(ctx, request).await
        }
    }

    /// Refreshes a connection bound to a retired or closed client through
    /// the URL's current client (one dial for a burst of them), which then
    /// holds the connection's reference in its stead. The remote sees a
    /// refresh; if it fails (the remote is still unreachable, say), the
    /// connection stays where it was and moves on its next refresh.
    async fn migrate(
        self: &Arc<Self>,
        ctx: Context,
        mut request: NetworkServiceRequest,
        next: Next<'_>,
        previous: Arc<ConnectClient>,
        turn: Turn,
    ) -> Result<Connection, Status> {
        let url = Arc::clone(previous.url());
        let id: Arc<str> = Arc::from(turn.id());
        let mut lease = self.acquire(&url, turn).map_err(|(status, _)| status)?;
        let client_ctx = client_context(&ctx, lease.client());
        let reply = match lease.request(client_ctx, outgoing(&mut request)).await {
            Ok(reply) => reply,
            Err(status) => {
                lease.release();
                return Err(in_context(status, "refresh", &id, &url));
            }
        };
        lease.record(LastKnown::filed(&id, &reply));
        // Held through `next`, as a refresh holds it: a close for the id
        // waits until the rest of the chain has the refresh.
        let _turn = lease.keep();
        self.release(&url, previous.instance());
        request.connection = Some(Box::new(reply));
        next.request(ctx, request).await
    }

    pub(super) fn establish<'a>(
        self: &'a Arc<Self>,
        ctx: Context,
        mut request: NetworkServiceRequest,
        next: Next<'a>,
        url: Arc<Url>,
        id: Arc<str>,
        turn: Turn,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'a {
        async move {
            let mut lease = self.acquire(&url, turn).map_err(|(status, _)| status)?;
            let client = Arc::clone(lease.client());
            // From here the remote may have the connection: if this call is
            // abandoned, the lease closes it there, as sent.
            let sent = match request.connection.as_deref() {
                Some(connection) => LastKnown::new(connection),
                None => LastKnown::new(&Connection::default()),
            };
            lease.may_exist_remotely(sent);
            let client_ctx = client_context(&ctx, &client);
            let reply = match lease.request(client_ctx, outgoing(&mut request)).await {
                Ok(reply) => Box::new(reply),
                Err(status) => {
                    if may_have_acted(&status) {
                        // The remote may have it: dropping the armed lease closes
                        // it there in the background, then releases.
                        drop(lease);
                    } else {
                        lease.release();
                    }
                    return Err(in_context(status, "request", &id, &url));
                }
            };
            // One encoding: the record's, and a close's if abandoned.
            lease.record(LastKnown::filed(&id, &reply));
            request.connection = Some(reply);
            // Taken apart before the undo's await, so that the future does
            // not keep the whole result (a `Connection`) across it.
            let status = match next.request(ctx, request).await {
                Ok(connection) => {
                    drop(lease.keep());
                    return Ok(connection);
                }
                Err(status) => status,
            };
            // Undo, with a deadline of its own: the caller's may be gone.
            let (closed, turn) = Box::pin(lease.undo()).await;
            if let Err(close) = closed {
                tracing::warn!(
                    connection_id = %turn.id(),
                    url = %url,
                    error = %close.message(),
                    "closing after the rest of the chain failed also failed"
                );
            }
            Err(status)
        }
    }

    /// Closes `id` at the remote its record names, under its turn, and
    /// forgets the record. A function of its own, so that the close's
    /// future keeps the lease alone while the remote answers, not the
    /// record and the lease's first places besides.
    async fn close_remote(
        self: &Arc<Self>,
        ctx: &Context,
        id: &str,
        turn: Turn,
        connection: &Arc<Connection>,
    ) -> (Result<(), Status>, Turn) {
        let mut lease = match self.lease_to_close(id, turn) {
            Ok(lease) => lease,
            Err(refused) => return refused,
        };
        let client_ctx = client_context(ctx, lease.client());
        let result = lease.close(client_ctx, Arc::clone(connection)).await;
        let result = result.map_err(|s| in_context(s, "close", id, lease.client().url()));
        (result, lease.release())
    }

    /// The lease a close reaches `id`'s remote with; the record is
    /// forgotten.
    fn lease_to_close(
        self: &Arc<Self>,
        id: &str,
        turn: Turn,
    ) -> Result<Lease, (Result<(), Status>, Turn)> {
        let Some(record) = self.records.load_and_delete(id) else {
            let missing =
                Status::not_found(format!("connect: no client found for connection {id}"));
            return Err((Err(missing), turn));
        };
        let url = Arc::clone(record.client.url());
        Lease::reaching(self, record, turn)
            .map_err(|(refused, turn)| (Err(in_context(refused, "close", id, &url)), turn))
    }

    pub(super) fn close<'a>(
        self: &'a Arc<Self>,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        // Shared with the lease, which keeps it to close again if abandoned;
        // a pointer, taken before the future, also keeps the future small.
        let connection = Arc::new(connection);
        async move {
            let id: Arc<str> = Arc::from(connection.id.as_str());
            let turn = self.turns.take(&id).await;
            let (client_result, _turn) = self.close_remote(&ctx, &id, turn, &connection).await;
            self.metrics.closed(CloseOrigin::Caller, &client_result);
            // The lease has let go of it by now: unwrapped, not copied.
            let next_result = next.close(ctx, Arc::unwrap_or_clone(connection)).await;
            match (client_result, next_result) {
                (Ok(()), next_result) => next_result,
                (Err(client), Ok(())) => Err(client),
                (Err(client), Err(next)) => Err(Status::new(
                    next.code(),
                    format!("{} (and {})", next.message(), client.message()),
                )),
            }
        }
    }
}
