//! TLS session resumption under a SPIFFE identity, made safe.
//!
//! rustls does not verify a resumed peer again, which is why spiffe-rustls
//! turns resumption off. Here it is on, with two bounds:
//! - sessions belong to one revision of the X.509 source (its SVID and
//!   bundles): each revision starts an empty store, on both sides, so no
//!   session made under an earlier SVID or an earlier trust is resumed, and
//!   none while the source is not ready (handshakes fail closed then);
//! - a resumed peer's leaf, which the handshake did not verify, is checked
//!   again: still within its validity and still authorized.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::pki_types::CertificateDer;
use rustls::server::ServerSessionMemoryCache;
use rustls::{ClientConfig, CommonState, HandshakeKind, ServerConfig};
use spiffe_rustls::TlsStatus;

/// Sessions kept per revision (rustls's default store size).
const SESSIONS: usize = 256;
/// Tickets a server sends after each full handshake (rustls's default).
const TICKETS: usize = 2;

/// Whether a resumed peer's leaf certificate still passes: why not if not.
pub(crate) type Recheck = Arc<dyn Fn(&CertificateDer<'_>) -> Result<(), String> + Send + Sync>;

/// A rustls configuration that can start over with an empty session store.
pub(crate) trait Resumable: Sized {
    fn with_fresh_sessions(&self) -> Self;
}

impl Resumable for ClientConfig {
    fn with_fresh_sessions(&self) -> Self {
        let mut config = self.clone();
        config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(SESSIONS)));
        config
    }
}

impl Resumable for ServerConfig {
    fn with_fresh_sessions(&self) -> Self {
        let mut config = self.clone();
        config.session_storage = ServerSessionMemoryCache::new(SESSIONS);
        config.send_tls13_tickets = TICKETS;
        config
    }
}

/// The configuration for each new handshake: one with a session store of
/// the source's current revision, or, while the source is not ready, the
/// one without resumption.
pub(crate) struct Resuming<C> {
    status: TlsStatus,
    without: Arc<C>,
    current: Mutex<Option<(u64, Arc<C>)>>,
    recheck: Recheck,
}

impl<C: Resumable> Resuming<C> {
    pub(crate) fn new(status: TlsStatus, without: Arc<C>, recheck: Recheck) -> Self {
        Self {
            status,
            without,
            current: Mutex::new(None),
            recheck,
        }
    }

    /// What a handshake starting now uses.
    pub(crate) fn config(&self) -> Arc<C> {
        let now = self.status.current();
        if !now.available {
            return Arc::clone(&self.without);
        }
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some((revision, config)) if *revision == now.applied_revision => Arc::clone(config),
            _ => {
                let config = Arc::new(self.without.with_fresh_sessions());
                *current = Some((now.applied_revision, Arc::clone(&config)));
                config
            }
        }
    }

    /// Drops every session kept: the next handshakes are full ones.
    pub(crate) fn forget(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// `Ok` unless the handshake resumed a session whose peer no longer
    /// passes (its leaf expired, or is no longer authorized).
    pub(crate) fn check(&self, session: &CommonState) -> Result<(), String> {
        if session.handshake_kind() != Some(HandshakeKind::Resumed) {
            return Ok(());
        }
        let leaf = session.peer_certificates().and_then(|chain| chain.first());
        leaf.map_or(Ok(()), |leaf| (self.recheck)(leaf))
    }
}
