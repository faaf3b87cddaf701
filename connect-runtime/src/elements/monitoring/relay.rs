//! Watching a `connect` client's remote for its connections, one stream per
//! client, and relaying what it says.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tonic::{Code, Status};

use super::Hub;
use crate::chain::{ClientCancel, Context, Hooks, Next};
use crate::proto::connection::monitor_connection_client::MonitorConnectionClient;
use crate::proto::connection::{
    Connection, ConnectionEvent, ConnectionEventType, MonitorScopeSelector, PathSegment, State,
};
use crate::proto::networkservice::NetworkServiceRequest;
use crate::sync::lock;
use crate::transport::ClientConn;
use connect_macros::Element;

/// Watches the remote of one `connect` client with a single
/// `MonitorConnections` stream for all of its connections, and relays the
/// remote's word on them to the [`ConnectionMonitor`](super::ConnectionMonitor)
/// it came from: a DOWN (or a DELETE) there is DOWN here, and so is every
/// connection still bound to the client when the client goes away (its
/// monitor found the remote dead, or a dial failed).
///
/// The stream selects the connections that pass through this hop (a path
/// segment of this hop's name; NSM matches a selector's segments as one
/// contiguous run, so one selector cannot list many connections) and the
/// relay keeps those it forwarded. It opens with the client's first
/// connection, is opened again when it breaks while the client lives, and
/// ends with the client. A break alone reports nothing (Go's monitor
/// client reports DOWN for it), and, as in Go, a connection missing from
/// a stream's initial state is not taken for DOWN. A remote answering
/// `UNIMPLEMENTED` (or refusing the watch: `PERMISSION_DENIED`,
/// `UNAUTHENTICATED`) is not watched and nothing is reported of it (Go
/// reports every connection through such a remote DOWN). Made by
/// [`ConnectionMonitor::relay`](super::ConnectionMonitor::relay).
///
/// ```
/// use connect_runtime::{ClientChain, Connect, ConnectionMonitor, Context, GrpcClient};
///
/// let monitor = ConnectionMonitor::new();
/// let relays = monitor.clone();
/// let connect = Connect::new(move |ctx: &Context, conn| {
///     ClientChain::builder()
///         .with(relays.relay(ctx, conn.clone()))
///         .with(GrpcClient::new(conn))
///         .build()
/// });
/// # let _ = (connect, monitor);
/// ```
#[derive(Debug, Element)]
#[element(client, name = "monitorrelay")]
pub struct MonitorRelay {
    shared: Arc<Relay>,
    _watch: Option<AbortOnDropHandle<()>>,
}

#[derive(Debug)]
struct Relay {
    id: u64,
    hub: Arc<Hub>,
    /// This client's connections: id → the index of this hop's segment.
    bound: Mutex<HashMap<String, u32>>,
    /// This hop's name, from its first connection: what the stream selects.
    name: OnceLock<String>,
    first_bound: Notify,
}

impl MonitorRelay {
    pub(super) fn new(hub: Arc<Hub>, ctx: &Context, conn: ClientConn) -> Self {
        let shared = Arc::new(Relay {
            id: hub.id(),
            hub,
            bound: Mutex::default(),
            name: OnceLock::new(),
            first_bound: Notify::new(),
        });
        let watch = ctx.client_cancel().cloned().map(|cancel| {
            let task = tokio::spawn(Arc::clone(&shared).watch(conn, cancel));
            AbortOnDropHandle::new(task)
        });
        if watch.is_none() {
            tracing::warn!("monitor relay outside a connect client chain: not relaying");
        }
        Self {
            shared,
            _watch: watch,
        }
    }
}

// Not `async fn`s, which would keep their arguments (see `Hooks`).
impl Hooks for MonitorRelay {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'a {
        let call = next.request(ctx, request);
        async move {
            let connection = call.await?;
            self.shared.bind(&connection);
            Ok(connection)
        }
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        // First, so that the remote's DELETE for this close is not taken
        // for a failure. Before the close is polled: a close dropped
        // unpolled leaves what one dropped before it sent anything does.
        self.shared.unbind(&connection.id);
        next.close(ctx, connection)
    }
}

impl Drop for MonitorRelay {
    /// The client is gone: connections still bound to it (none once the
    /// last has closed) are DOWN until their next refresh.
    fn drop(&mut self) {
        let bound = std::mem::take(&mut *lock(&self.shared.bound));
        for id in bound.keys() {
            self.shared
                .hub
                .set_state(id, Some(self.shared.id), State::Down);
            self.shared.hub.unclaim(id, self.shared.id);
        }
    }
}

/// A stream that ends sooner than this after it opened makes the next wait.
const QUICK_END: Duration = Duration::from_secs(1);
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

impl Relay {
    fn bind(&self, connection: &Connection) {
        let index = connection.path.as_ref().map_or(0, |p| p.index);
        if let Some(segment) = connection
            .path
            .as_ref()
            .and_then(|p| p.path_segments.get(index as usize))
        {
            self.name.get_or_init(|| segment.name.clone());
        }
        self.hub.claim(&connection.id, self.id);
        let first = {
            let mut bound = lock(&self.bound);
            bound.insert(connection.id.clone(), index);
            bound.len() == 1
        };
        if first {
            self.first_bound.notify_one();
        }
    }

    fn unbind(&self, id: &str) {
        if lock(&self.bound).remove(id).is_some() {
            self.hub.unclaim(id, self.id);
        }
    }

    fn selector(&self) -> MonitorScopeSelector {
        let name = self.name.get().cloned().unwrap_or_default();
        MonitorScopeSelector {
            path_segments: vec![PathSegment {
                name,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// What the remote said of connections bound here, in this hop's terms.
    fn heard(&self, event: &ConnectionEvent) {
        let deleted = event.r#type == ConnectionEventType::Delete as i32;
        let mut states = Vec::new();
        {
            let bound = lock(&self.bound);
            for remote in event.connections.values() {
                let Some(path) = &remote.path else { continue };
                // The remote's connection holds ours at our index, which is
                // its current index or the one before.
                let at = path.index as usize;
                let ours = [at.checked_sub(1), Some(at)]
                    .into_iter()
                    .flatten()
                    .filter_map(|i| Some((i, path.path_segments.get(i)?)))
                    .find(|(i, segment)| bound.get(&segment.id) == Some(&(*i as u32)));
                let Some((_, segment)) = ours else { continue };
                let state = match deleted {
                    true => State::Down,
                    false => State::try_from(remote.state).unwrap_or(State::Down),
                };
                states.push((segment.id.clone(), state));
            }
        }
        for (id, state) in states {
            self.hub.set_state(&id, Some(self.id), state);
        }
    }

    /// Keeps one stream open to the remote while connections are bound.
    async fn watch(self: Arc<Self>, conn: ClientConn, cancel: ClientCancel) {
        let url = conn.url().clone();
        let mut client = MonitorConnectionClient::new(conn);
        let mut pause = Duration::ZERO;
        loop {
            let waiting = self.first_bound.notified();
            if lock(&self.bound).is_empty() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = waiting => {}
                }
            }
            if !pause.is_zero() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            let opened = Instant::now();
            let started = tokio::select! {
                () = cancel.cancelled() => return,
                started = client.monitor_connections(self.selector()) => started,
            };
            let ended = match started {
                Ok(stream) => {
                    self.hub.count(|s| s.relay_opens += 1);
                    let _open = Gauge::new(&self.hub, |s| &mut s.relayed_streams);
                    let mut stream = stream.into_inner();
                    loop {
                        let message = tokio::select! {
                            () = cancel.cancelled() => return,
                            message = stream.message() => message,
                        };
                        match message {
                            Ok(Some(event)) => self.heard(&event),
                            Ok(None) => break None,
                            Err(status) => break Some(status),
                        }
                    }
                }
                Err(status) => Some(status),
            };
            if let Some(status) = &ended {
                let why = match status.code() {
                    Code::Unimplemented => Some("the remote does not serve MonitorConnections"),
                    // Asking again would be refused again (a policy that
                    // wants other selectors, say): not a failure of the
                    // connections.
                    Code::PermissionDenied | Code::Unauthenticated => {
                        Some("the remote refuses to be watched")
                    }
                    _ => None,
                };
                if let Some(why) = why {
                    tracing::info!(%url, code = ?status.code(), error = %status.message(), "{why}; not monitoring its connections");
                    let _passive = Gauge::new(&self.hub, |s| &mut s.unmonitored);
                    cancel.cancelled().await;
                    return;
                }
            }
            tracing::debug!(%url, why = ?ended, "the remote's monitor stream ended; opening it again");
            pause = match opened.elapsed() < QUICK_END {
                true => (pause * 2).clamp(FIRST_PAUSE, MAX_PAUSE),
                false => Duration::ZERO,
            };
        }
    }
}

/// Counts one in a [`MonitorStats`](super::MonitorStats) gauge while it
/// lives (the task holding it may be aborted at any await).
struct Gauge<'a> {
    hub: &'a Hub,
    field: fn(&mut super::MonitorStats) -> &mut usize,
}

impl<'a> Gauge<'a> {
    fn new(hub: &'a Hub, field: fn(&mut super::MonitorStats) -> &mut usize) -> Self {
        hub.count(|s| *field(s) += 1);
        Self { hub, field }
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.hub.count(|s| *(self.field)(s) -= 1);
    }
}
