//! [`ServerHandle`], a running server, and the [`ConnectionStats`] it
//! keeps.

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use url::Url;

use super::listener::SocketFile;

/// Counts of the transport connections a server has accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Connections accepted since the server started.
    pub accepted: u64,
    /// Connections open now.
    pub open: usize,
    /// The most connections open at once since the server started.
    pub peak_open: usize,
    /// Connections whose TLS handshake failed: no client certificate where
    /// one is required, an untrusted one, a peer that is not TLS. Each is
    /// logged at warn with its cause and what to do about it.
    pub refused: u64,
    /// Of those, callers that spoke plaintext to a TLS listener.
    pub plaintext: u64,
    /// Of those, callers with no client certificate where mutual TLS needs
    /// one.
    pub no_client_certificate: u64,
    /// Of those, callers whose certificate another CA signed, or that has
    /// expired or is not valid yet.
    pub untrusted_certificate: u64,
    /// Calls reset as malformed (HTTP/2 `PROTOCOL_ERROR`) before they
    /// reached the chain: a grpcio caller on a unix socket without
    /// `grpc.default_authority=localhost`, most often. Logged at warn once
    /// per connection.
    pub malformed_streams: u64,
    /// Connections closed because they had not finished TLS and sent the
    /// HTTP/2 preface and SETTINGS within the handshake timeout.
    pub timed_out: u64,
    /// Connections closed because their first bytes were not HTTP/2's.
    pub not_http2: u64,
    /// How many times the server stopped accepting because it served
    /// `max_connections` already (new ones waited in the listen backlog).
    pub at_limit: u64,
    /// Connections open under a server certificate that has since rotated:
    /// sent a graceful GOAWAY, they finish their calls and close, at the
    /// latest the expiry margin before that certificate expires.
    pub retired: usize,
}

/// A running server: where it listens, its connection counts and its
/// health.
///
/// As with tokio's `JoinHandle`, dropping the handle detaches the server: it
/// runs on until its shutdown token (see [`Serve::shutdown_on`](crate::Serve::shutdown_on))
/// is cancelled or the runtime ends. [`ServerHandle::shutdown`] stops it
/// gracefully and waits; [`ServerHandle::abort`] stops it at once.
pub struct ServerHandle {
    url: Url,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    stats: watch::Receiver<ConnectionStats>,
    health: HealthReporter,
    socket_file: Option<SocketFile>,
}

impl ServerHandle {
    pub(super) fn new(
        url: Url,
        shutdown: CancellationToken,
        hard_stop: CancellationToken,
        task: JoinHandle<()>,
        stats: watch::Receiver<ConnectionStats>,
        health: HealthReporter,
        socket_file: Option<SocketFile>,
    ) -> Self {
        Self {
            url,
            shutdown,
            hard_stop,
            task: Some(task),
            stats,
            health,
            socket_file,
        }
    }

    /// The URL the server listens on, with the port actually bound.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Connection counts now.
    pub fn connections(&self) -> ConnectionStats {
        *self.stats.borrow()
    }

    /// Waits until the connection counts satisfy `condition`, and returns
    /// them. Returns the last counts if the server stops first.
    pub async fn wait_connections(
        &self,
        condition: impl FnMut(&ConnectionStats) -> bool,
    ) -> ConnectionStats {
        let mut stats = self.stats.clone();
        let result = stats.wait_for(condition).await.map(|s| *s);
        result.unwrap_or_else(|_| *self.stats.borrow())
    }

    /// The health reporter, to mark services (not) serving.
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// Stops accepting, marks health `NOT_SERVING`, lets calls in flight
    /// finish (up to the grace period) and returns once every connection is
    /// closed.
    ///
    /// # Cancel safety
    ///
    /// The shutdown begins at the first poll; a future dropped after that
    /// leaves it going on, detached.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        self.join().await;
    }

    /// Stops at once: the listener and every connection are closed, calls in
    /// flight are cut off. Returns without waiting for the server's task to
    /// end.
    pub fn abort(mut self) {
        self.stop_now();
    }

    /// As [`ServerHandle::abort`], and waits for the server's task to end:
    /// a crashed remote, for tests (feature `test-util`).
    ///
    /// # Cancel safety
    ///
    /// The stop happens at the first poll; dropping the future afterwards
    /// only stops the wait.
    #[cfg(feature = "test-util")]
    pub async fn kill(mut self) {
        self.hard_stop.cancel();
        self.join().await;
    }

    /// Waits for the server to stop (after its shutdown token is cancelled).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the server running, detached.
    pub async fn stopped(mut self) {
        self.join().await;
    }

    async fn join(&mut self) {
        // Taken only once finished: a wait given up on leaves the task
        // running, detached.
        if let Some(task) = &mut self.task {
            let _ = task.await;
            self.task = None;
        }
    }

    fn stop_now(&mut self) {
        if let Some(task) = self.task.take() {
            // Every connection fails its next read or write, and ends.
            self.hard_stop.cancel();
            task.abort();
        }
        // The aborted task drops its listener later; the socket file goes now.
        if let Some(file) = &self.socket_file {
            file.remove();
        }
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("url", &self.url.as_str())
            .field("connections", &self.connections())
            .finish()
    }
}
