//! Watching a remote's health and closing the client when it dies (the
//! seed's "Monitoring": a client element using the gRPC health API and the
//! client's cancel handle).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use url::Url;

use crate::chain::{ClientCancel, Context};
use crate::transport::ClientConn;
use connect_macros::Element;

use crate::chain::Hooks;

/// Watches the remote's overall gRPC health (`grpc.health.v1.Health/Watch`
/// for service `""`) over the client's channel, and cancels the client
/// through its [`ClientCancel`] handle when the remote reports
/// `NOT_SERVING` or cannot be reached (the watch fails `UNAVAILABLE`). A
/// watch that ends after hearing from the remote (its connection was
/// recycled by a GOAWAY, or the remote restarted) is started again, on a
/// new connection if need be (a new connection that cannot be made closes
/// the client); so is one cut before the remote said anything, but not
/// twice in a row. Watches that end as soon as they begin are started again
/// after a pause that doubles, up to 5 s. Calls pass through it unchanged.
///
/// A remote that answers but will not be watched (no health service, a
/// refusal such as `PERMISSION_DENIED`, a watch ended without a word) is
/// not treated as dead: the monitor says so once in the log and stays
/// passive. Outside a `connect` client chain (no cancel handle in the
/// context) it also stays passive. The watch task stops when the client is
/// cancelled or the monitor is dropped.
///
/// ```
/// use connect_runtime::{ClientChain, Connect, Context, GrpcClient, Monitor};
///
/// let connect = Connect::new(|ctx: &Context, conn| {
///     ClientChain::builder()
///         .with(Monitor::new(ctx, conn.clone()))
///         .with(GrpcClient::new(conn))
///         .build()
/// });
/// # let _ = connect;
/// ```
#[derive(Debug, Element)]
#[element(client, name = "monitor")]
pub struct Monitor {
    _watch: Option<AbortOnDropHandle<()>>,
}

impl Monitor {
    /// Starts watching the remote behind `conn` on behalf of the client whose
    /// context `ctx` is (the one a [`ClientFactory`](crate::ClientFactory)
    /// is given).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the watch is a task spawned on it). A
    /// factory runs within one: connect builds clients as calls need them.
    pub fn new(ctx: &Context, conn: ClientConn) -> Self {
        let Some(cancel) = ctx.client_cancel().cloned() else {
            tracing::warn!(
                url = %conn.url(),
                "monitor outside a connect client chain: no cancel handle, not monitoring"
            );
            return Self { _watch: None };
        };
        let task = tokio::spawn(watch(conn, cancel));
        Self {
            _watch: Some(AbortOnDropHandle::new(task)),
        }
    }
}

impl Hooks for Monitor {}

/// A watch that ends sooner than this after it began makes the next one wait.
const QUICK_END: Duration = Duration::from_secs(1);
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

async fn watch(conn: ClientConn, cancel: ClientCancel) {
    let url: Url = conn.url().clone();
    let mut health = HealthClient::new(conn);
    // Whether the last watch was cut before it said anything.
    let mut cut_silent = false;
    // How long to wait before watching again after a watch that ended at
    // once: a remote that answers and then drops every connection would
    // otherwise have this loop dial as fast as it can.
    let mut pause = Duration::ZERO;
    loop {
        if !pause.is_zero() {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
        let began = Instant::now();
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let started = tokio::select! {
            () = cancel.cancelled() => return,
            started = health.watch(request) => started,
        };
        let mut stream = match started {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::Unavailable => {
                tracing::warn!(%url, error = %status.message(), "cannot reach the remote's health; closing the client");
                break;
            }
            Err(status) => {
                tracing::info!(%url, code = ?status.code(), error = %status.message(), "the remote's health cannot be watched; not monitoring it");
                return;
            }
        };
        let mut heard = false;
        let ended = loop {
            let message = tokio::select! {
                () = cancel.cancelled() => return,
                message = stream.message() => message,
            };
            match message {
                Ok(Some(update)) if update.status == ServingStatus::NotServing as i32 => {
                    tracing::warn!(%url, "the remote is not serving; closing the client");
                    cancel.cancel();
                    return;
                }
                Ok(Some(update)) if update.status == ServingStatus::Serving as i32 => heard = true,
                // Not a verdict: UNKNOWN before the remote has decided,
                // SERVICE_UNKNOWN from one that does not track its overall
                // health.
                Ok(Some(update)) => {
                    tracing::debug!(%url, status = update.status, "no verdict on the remote's health");
                    heard = true;
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        // A watch that said something before it ended (its connection was
        // recycled, say) is watched again. One cut in silence may have been
        // recycled before the remote answered: it is watched once more,
        // and the next watch fails to start if the remote is gone. No more
        // than that: a remote that drops every watch would spin this loop.
        pause = match began.elapsed() < QUICK_END {
            true => (pause * 2).clamp(FIRST_PAUSE, MAX_PAUSE),
            false => Duration::ZERO,
        };
        match ended {
            _ if heard => {
                cut_silent = false;
                tracing::debug!(%url, why = ?ended, "watching the remote's health again");
            }
            Some(status) if status.code() == Code::Unavailable && !cut_silent => {
                cut_silent = true;
                tracing::debug!(%url, error = %status.message(), "the health watch was cut before it said anything; watching again");
            }
            Some(status) if status.code() == Code::Unavailable => {
                tracing::warn!(%url, error = %status.message(), "the health watch broke; closing the client");
                break;
            }
            _ => {
                tracing::info!(%url, why = ?ended, "the remote ended the health watch at once; not monitoring it");
                return;
            }
        }
    }
    cancel.cancel();
}
