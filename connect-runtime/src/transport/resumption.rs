//! TLS session resumption, made safe.
//!
//! rustls does not verify a resumed peer again, and keeps one session
//! store for as long as its configuration lives. The configurations made
//! here (from PEM files, or a SPIFFE identity) resume with two bounds:
//! - sessions belong to one era of the configuration's rotation (a SPIFFE
//!   source's revision: its SVID and bundles; a rotating certificate's
//!   serial): each era starts an empty store, on both sides, so no session
//!   made under an earlier certificate or an earlier trust is resumed, and
//!   none while a SPIFFE source is not ready (handshakes fail closed then);
//! - a resumed peer's certificate, which the handshake did not verify, is
//!   checked again: still valid now (Go's crypto/tls checks that much), and
//!   still what a full handshake would accept.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::ServerSessionMemoryCache;
use rustls::{ClientConfig, CommonState, HandshakeKind, ServerConfig};

/// Sessions kept per era (rustls's default store size).
const SESSIONS: usize = 256;
/// Tickets a server sends after each full handshake (rustls's default).
const TICKETS: usize = 2;

/// Whether a resumed peer's leaf certificate, with the intermediates it
/// sent, still passes for the server name dialed (none on the server's
/// side): why not if not.
pub(crate) type Recheck = Arc<
    dyn Fn(
            &CertificateDer<'_>,
            &[CertificateDer<'_>],
            Option<&ServerName<'_>>,
        ) -> Result<(), String>
        + Send
        + Sync,
>;

/// Which certificate and trust handshakes use now: sessions made in one era
/// are resumed in that era only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Era {
    /// A SPIFFE source's applied revision.
    pub(crate) revision: Option<u64>,
    /// A rotating certificate's serial.
    pub(crate) serial: Option<String>,
}

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
/// the current era, or, while there is none (a SPIFFE source not ready),
/// the base one.
pub(crate) struct Resuming<C> {
    base: Arc<C>,
    current: Mutex<Option<(Era, Arc<C>)>>,
    recheck: Option<Recheck>,
}

impl<C: Resumable> Resuming<C> {
    /// Resumes over `base`, checking a resumed peer with `recheck`; without
    /// one, the peer presents no certificate to check (a server that asks
    /// for none).
    pub(crate) fn new(base: Arc<C>, recheck: Option<Recheck>) -> Self {
        Self {
            base,
            current: Mutex::new(None),
            recheck,
        }
    }

    /// What a handshake starting now, in `era`, uses.
    pub(crate) fn config(&self, era: Option<Era>) -> Arc<C> {
        let Some(era) = era else {
            return Arc::clone(&self.base);
        };
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some((made_in, config)) if *made_in == era => Arc::clone(config),
            _ => {
                let config = Arc::new(self.base.with_fresh_sessions());
                *current = Some((era, Arc::clone(&config)));
                config
            }
        }
    }

    /// Drops every session kept: the next handshakes are full ones.
    pub(crate) fn forget(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// `Ok` unless the handshake resumed a session whose peer no longer
    /// passes (its certificate expired, or is no longer accepted).
    pub(crate) fn check(
        &self,
        session: &CommonState,
        name: Option<&ServerName<'_>>,
    ) -> Result<(), String> {
        if session.handshake_kind() != Some(HandshakeKind::Resumed) {
            return Ok(());
        }
        let chain = session.peer_certificates().and_then(<[_]>::split_first);
        match (&self.recheck, chain) {
            (Some(recheck), Some((leaf, intermediates))) => recheck(leaf, intermediates, name),
            _ => Ok(()),
        }
    }
}
