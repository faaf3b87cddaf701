//! The accept loop: it counts connections, bounds them, handshakes them
//! (TLS, the HTTP/2 preface and SETTINGS) within the handshake timeout, and
//! hands each to the tonic server of the certificate it was accepted under.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::handle::ConnectionStats;
use super::listener::Listener;
use super::refusal::Refusal;
use crate::deadline::deadline_after;
use crate::transport::first_bytes::{Expect, Unanswered};
use crate::transport::io::Io;
use crate::transport::resets::Resets;
use crate::transport::socket::Stream;
use crate::transport::tls::{Credential, ServerTls};

/// Who is on the other end of a served connection: in every request's
/// extensions (`request.extensions().get::<Peer>()`).
#[derive(Clone, Debug)]
pub struct Peer {
    addr: Option<SocketAddr>,
    certificates: Option<Arc<[CertificateDer<'static>]>>,
    resumed: bool,
}

impl Peer {
    /// The peer's address, for TCP.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The certificate chain the peer presented over TLS, leaf first (in
    /// the handshake that made the session, if this one
    /// [resumed](Self::resumed) it).
    pub fn certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.certificates.as_deref()
    }

    /// Whether its TLS handshake resumed an earlier session rather than
    /// verify certificates afresh.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The SPIFFE ID the peer's certificate names, if it presented one that
    /// names one.
    #[cfg(feature = "spiffe")]
    pub fn spiffe_id(&self) -> Option<crate::transport::spiffe::SpiffeId> {
        crate::transport::spiffe::spiffe_id_of(self.certificates()?.first()?)
    }
}

/// What a served connection keeps while it lives.
pub(super) struct Accepted {
    peer: Peer,
    _open: OpenConnection,
}

impl Connected for Io<Accepted> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.extra.peer.clone()
    }
}

/// Counts a connection open for as long as it lives, and holds its slot
/// under the connection limit.
struct OpenConnection {
    stats: watch::Sender<ConnectionStats>,
    counts: Arc<GenerationCounts>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.send_modify(|s| {
            s.open -= 1;
            self.counts.open.fetch_sub(1, Ordering::Relaxed);
            if self.counts.retired.is_cancelled() {
                s.retired -= 1;
            }
        });
    }
}

/// A server at work: it accepts connections, counts them, handshakes them
/// (concurrently, each within the handshake timeout) and hands each to the
/// generation of the server certificate it was accepted under.
pub(super) struct AcceptLoop {
    /// Starts a tonic server for the connections the receiver yields.
    start: Start,
    /// The TLS configuration accepted with.
    tls: Option<ServerTls>,
    handshake_timeout: Duration,
    /// One permit per connection served, if their number is limited.
    slots: Option<Arc<Semaphore>>,
    expiry_margin: Duration,
    hard_stop: CancellationToken,
    stats: watch::Sender<ConnectionStats>,
    generations: JoinSet<()>,
    /// Handshakes under way; a failed one says who the caller was.
    handshakes: JoinSet<Result<(), (Option<SocketAddr>, io::Error)>>,
}

/// What [`Serve::bind`] gives its serving task: tonic's server for a
/// stream of connections, draining gracefully once the stream ends.
pub(super) type Start =
    Box<dyn FnMut(mpsc::UnboundedReceiver<Io<Accepted>>) -> ServerFuture + Send>;
type ServerFuture = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

impl AcceptLoop {
    pub(super) fn new(
        start: Start,
        tls: Option<&ServerTls>,
        handshake_timeout: Duration,
        max_connections: Option<usize>,
        expiry_margin: Duration,
        hard_stop: CancellationToken,
        stats: watch::Sender<ConnectionStats>,
    ) -> Self {
        Self {
            start,
            tls: tls.cloned(),
            handshake_timeout,
            slots: max_connections
                .map(|max| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))),
            expiry_margin,
            hard_stop,
            stats,
            generations: JoinSet::new(),
            handshakes: JoinSet::new(),
        }
    }

    pub(super) async fn run(
        mut self,
        listener: Listener,
        mut credential: Option<watch::Receiver<Credential>>,
        shutdown: CancellationToken,
        grace: Duration,
        health: HealthReporter,
    ) {
        let first = credential.as_mut().map(|c| c.borrow_and_update().clone());
        let mut current = self.generation(first);
        // The slot the next connection takes, when their number is limited.
        let mut slot: Option<OwnedSemaphorePermit> = None;
        let mut warned: Option<tokio::time::Instant> = None;
        loop {
            let limited = self.slots.clone();
            if slot.is_none()
                && let Some(slots) = &limited
            {
                match Arc::clone(slots).try_acquire_owned() {
                    Ok(permit) => slot = Some(permit),
                    Err(_) => {
                        // Said once a minute at most: a flood hits it often.
                        if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                            tracing::warn!(
                                "at the connection limit; new connections wait until one closes"
                            );
                            warned = Some(tokio::time::Instant::now());
                        }
                        self.stats.send_modify(|s| s.at_limit += 1);
                    }
                }
            }
            let waiting = slot.is_none() && limited.is_some();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.hard_stop.cancelled() => return,
                Some(joined) = self.handshakes.join_next() => {
                    let failed = match joined {
                        Ok(result) => result.err(),
                        Err(panicked) => Some((None, panicked.into())),
                    };
                    if let Some((peer, err)) = failed {
                        let refusal = Refusal::of(&err);
                        let peer = peer.map(tracing::field::display);
                        match refusal {
                            Refusal::TimedOut => tracing::debug!(peer, error = %err, "TLS handshake timed out"),
                            _ => tracing::warn!(peer, "refused a connection: {}", refusal.explain()),
                        }
                        self.stats.send_modify(|s| refusal.count(s));
                    }
                }
                rotated = rotation(&mut credential) => match rotated {
                    Some(next) if current.serial.as_ref() != Some(&next.serial) => {
                        tracing::info!(serial = %next.serial, "server certificate rotated; draining older connections");
                        current.retire(&self.stats);
                        current = self.generation(Some(next));
                        // Reap the servers that have finished draining.
                        while self.generations.try_join_next().is_some() {}
                    }
                    Some(_) => {}
                    None => credential = None,
                },
                permit = async { limited.expect("waiting only when limited").acquire_owned().await }, if waiting => {
                    slot = permit.ok();
                }
                accepted = std::future::poll_fn(|cx| listener.poll_accept(cx)), if !waiting => match accepted {
                    Ok((stream, addr)) => self.accepted(stream, addr, &current, slot.take()),
                    Err(err) => {
                        // Out of file descriptors, say: a pause, not a spin.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
        drop(listener);
        // Health watchers hear first, so that clients let go before GOAWAY.
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(crate::proto::NETWORK_SERVICE, ServingStatus::NotServing)
            .await;
        self.handshakes.abort_all();
        drop(current);
        let (mut generations, stop) = (self.generations, self.hard_stop);
        let drained = async { while generations.join_next().await.is_some() {} };
        tokio::select! {
            () = drained => tracing::info!("shut down"),
            () = tokio::time::sleep(grace) => {
                tracing::warn!("grace period over; closing connections");
                stop.cancel();
                while generations.join_next().await.is_some() {}
            }
            () = stop.cancelled() => tracing::info!("stopped"),
        }
    }

    /// Starts a tonic server for the connections accepted under
    /// `credential`. Once retired and left by every handshake started under
    /// it, it sends its connections a graceful GOAWAY; those still open
    /// `expiry_margin` before `credential` expires are closed.
    fn generation(&mut self, credential: Option<Credential>) -> Generation {
        let (sender, receiver) = mpsc::unbounded_channel();
        let generation = Generation {
            serial: credential.as_ref().map(|c| c.serial.clone()),
            connections: sender,
            close: self.hard_stop.child_token(),
            counts: Arc::default(),
        };
        let serving = (self.start)(receiver);
        let close = generation.close.clone();
        let retired = generation.counts.retired.clone();
        let closing_at = credential.map(|c| c.not_after.checked_sub(self.expiry_margin));
        let expiring = async move {
            let Some(at) = closing_at else {
                return std::future::pending().await;
            };
            retired.cancelled().await;
            let left = at.and_then(|at| at.duration_since(SystemTime::now()).ok());
            tokio::time::sleep(left.unwrap_or_default()).await;
        };
        self.generations.spawn(async move {
            tokio::pin!(serving);
            let outcome = tokio::select! {
                outcome = &mut serving => outcome,
                () = expiring => {
                    tracing::info!("closing connections before their certificate expires");
                    close.cancel();
                    serving.await
                }
            };
            if let Err(err) = outcome {
                tracing::warn!(error = %err, "serving failed");
            }
        });
        generation
    }

    fn accepted(
        &mut self,
        stream: Stream,
        addr: Option<SocketAddr>,
        generation: &Generation,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        let counts = Arc::clone(&generation.counts);
        self.stats.send_modify(|s| {
            s.accepted += 1;
            s.open += 1;
            s.peak_open = s.peak_open.max(s.open);
            counts.open.fetch_add(1, Ordering::Relaxed);
            if counts.retired.is_cancelled() {
                s.retired += 1;
            }
        });
        let open = OpenConnection {
            stats: self.stats.clone(),
            counts,
            _slot: slot,
        };
        // One deadline for TLS, the preface and SETTINGS together.
        let deadline = deadline_after(self.handshake_timeout);
        let close = generation.close.clone();
        let stats = self.stats.clone();
        let served = move |stream, certificates, resumed| {
            let mut io = Io::new(stream).close_on(close);
            io.watch_resets(malformed_streams(stats.clone(), addr));
            let answered = io.first_bytes_by(deadline, Expect::ClientPreface);
            tokio::spawn(count_unanswered(answered, stats));
            let peer = Peer {
                addr,
                certificates,
                resumed,
            };
            io.with(Accepted { peer, _open: open })
        };
        let Some(tls) = self.tls.clone() else {
            let _ = generation.connections.send(served(stream, None, false));
            return;
        };
        // Holding the generation keeps its server accepting until the
        // handshake is done, even if it is retired meanwhile.
        let generation = generation.clone();
        self.handshakes.spawn(async move {
            let handshake = async {
                tls.rotation().settled().await;
                tls.acceptor().accept(stream).await
            };
            let handshake = tokio::time::timeout_at(deadline, handshake).await;
            let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out");
            let tls_stream = handshake
                .map_err(|_| timed_out())
                .and_then(|accepted| accepted)
                .map_err(|err| (addr, err))?;
            let session = tls_stream.get_ref().1;
            if let Err(why) = tls.check_resumed(session) {
                let why = format!("a resumed session's client no longer passes: {why}");
                return Err((addr, io::Error::new(io::ErrorKind::PermissionDenied, why)));
            }
            let chain = session.peer_certificates();
            let certificates =
                chain.map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
            let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let _ =
                generation
                    .connections
                    .send(served(Box::new(tls_stream), certificates, resumed));
            Ok(())
        });
    }
}

/// Counts the streams a connection's caller sent that h2 reset as
/// malformed, and says why once per connection: the usual cause is
/// grpcio on a unix socket, whose `:authority` h2 refuses.
fn malformed_streams(stats: watch::Sender<ConnectionStats>, peer: Option<SocketAddr>) -> Resets {
    let mut warned = false;
    Resets::new(move || {
        stats.send_modify(|s| s.malformed_streams += 1);
        if !std::mem::replace(&mut warned, true) {
            let peer = peer.map(tracing::field::display);
            tracing::warn!(
                peer,
                "reset a caller's call as malformed (HTTP/2 PROTOCOL_ERROR), before it reached \
                 the chain: grpcio on a unix socket sends the socket path as :authority, which \
                 is refused; give it the channel option grpc.default_authority=localhost"
            );
        }
    })
}

/// Counts a served connection closed for its first bytes: too slow, or
/// not HTTP/2.
async fn count_unanswered(
    answered: oneshot::Receiver<Result<(), Unanswered>>,
    stats: watch::Sender<ConnectionStats>,
) {
    if let Ok(Err(why)) = answered.await {
        tracing::debug!(
            ?why,
            "closing a connection that did not begin HTTP/2 in time"
        );
        stats.send_modify(|s| match why {
            Unanswered::Silent => s.timed_out += 1,
            Unanswered::NotHttp2 => s.not_http2 += 1,
        });
    }
}

/// The next credential of a rotating server certificate; `None` once it
/// can no longer change, and never if it does not rotate.
async fn rotation(credential: &mut Option<watch::Receiver<Credential>>) -> Option<Credential> {
    match credential {
        Some(credential) => match credential.changed().await {
            Ok(()) => Some(credential.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

/// The connections served under one server certificate (all of them, if
/// it does not rotate), by one tonic server.
#[derive(Clone)]
struct Generation {
    /// The certificate's serial, if it rotates.
    serial: Option<String>,
    connections: mpsc::UnboundedSender<Io<Accepted>>,
    /// Closes every one of its connections.
    close: CancellationToken,
    counts: Arc<GenerationCounts>,
}

impl Generation {
    /// Marks it retired: its server drains once the last handshake started
    /// under it is done, as it holds the last other sender.
    fn retire(self, stats: &watch::Sender<ConnectionStats>) {
        stats.send_modify(|s| {
            self.counts.retired.cancel();
            s.retired += self.counts.open.load(Ordering::Relaxed);
        });
    }
}

/// A generation's open connections, and whether its certificate has
/// rotated: both changed only inside `send_modify` on the server's stats,
/// so in step with them.
#[derive(Default)]
struct GenerationCounts {
    open: AtomicUsize,
    retired: CancellationToken,
}
