//! SPIFFE X.509 identities from the Workload API, for dial and serve
//! (feature `spiffe`), on the `spiffe` crate's X.509 source and
//! `spiffe-rustls`.
//!
//! The source follows the Workload API's rotations; every new TLS
//! handshake, on either side, uses the SVID current then. Peers are
//! authorized by SPIFFE ID: by default any workload of this workload's own
//! trust domain, or whatever a predicate accepts.
//!
//! Redials resume TLS sessions, on both sides, but never across a change
//! of the source (a rotated SVID, new bundles): each change starts over
//! with no sessions. A resumed peer's certificate, which the handshake does
//! not verify again, must still be valid and authorized, or the client
//! handshakes in full and the server refuses the connection.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use spiffe::X509Svid;
pub use spiffe::{SpiffeId, TrustDomain, X509Source};
pub use spiffe_rustls::TlsStatus;
use spiffe_rustls::{Authorizer, TrustDomainPolicy};
use tokio::sync::watch;

use rustls::pki_types::CertificateDer;

use super::resumption::Recheck;
use super::tls::{ClientTls, Credential, ServerTls};

/// Why a SPIFFE identity could not be had or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeError {
    /// No Workload API was named.
    #[error("SPIFFE_ENDPOINT_SOCKET is not set (it names the Workload API's socket)")]
    NoEndpoint,
    /// The Workload API could not be reached, or sent no usable SVID.
    #[error("SPIFFE Workload API: {0}")]
    Source(#[from] spiffe::X509SourceError),
    /// A TLS configuration could not be made from the identity.
    #[error("TLS from a SPIFFE identity: {0}")]
    Tls(#[from] spiffe_rustls::Error),
    /// The SVID's leaf certificate could not be read for its serial number
    /// and expiry.
    #[error("the SVID's certificate: {0}")]
    Certificate(String),
}

/// How long [`SpiffeIdentity::from_env`] and [`SpiffeIdentity::from_endpoint`]
/// wait for the Workload API's first SVID.
pub const WORKLOAD_API_TIMEOUT: Duration = Duration::from_secs(10);

/// Which peers to accept, by SPIFFE ID.
#[derive(Clone, Default)]
pub enum Authorize {
    /// Any workload of this workload's own trust domain.
    #[default]
    SameTrustDomain,
    /// Any peer the predicate accepts (its trust domain's bundle must be
    /// in the Workload API's bundle set, federated or not).
    Predicate(Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>),
}

impl Authorize {
    /// Accepts the peers `accept` returns `true` for.
    pub fn predicate(accept: impl Fn(&SpiffeId) -> bool + Send + Sync + 'static) -> Self {
        Self::Predicate(Arc::new(accept))
    }
}

impl fmt::Debug for Authorize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SameTrustDomain => f.write_str("SameTrustDomain"),
            Self::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// This workload's rotating X.509 identity, from the Workload API.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::spiffe::{Authorize, SpiffeIdentity};
/// use connect_runtime::{DialOptions, Passthrough, Serve, ServerChain};
///
/// let identity = SpiffeIdentity::from_env().await?; // SPIFFE_ENDPOINT_SOCKET
/// let dial = DialOptions::new().tls(identity.client_tls(Authorize::SameTrustDomain)?);
/// let server = Serve::new(ServerChain::builder().with(Passthrough).build())
///     .tls(identity.server_tls(Authorize::SameTrustDomain)?)
///     .bind("tcp://0.0.0.0:5002")
///     .await?;
/// # let _ = (dial, server); Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SpiffeIdentity {
    source: X509Source,
}

impl SpiffeIdentity {
    /// Reads the Workload API at `SPIFFE_ENDPOINT_SOCKET`, returning once it
    /// has sent an SVID (within [`WORKLOAD_API_TIMEOUT`]).
    pub async fn from_env() -> Result<Self, SpiffeError> {
        let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET");
        Self::from_endpoint(&endpoint.map_err(|_| SpiffeError::NoEndpoint)?).await
    }

    /// Reads the Workload API at `endpoint` (`unix:///run/spire/agent.sock`),
    /// returning once it has sent an SVID (within [`WORKLOAD_API_TIMEOUT`]).
    pub async fn from_endpoint(endpoint: &str) -> Result<Self, SpiffeError> {
        let source = X509Source::builder()
            .endpoint(endpoint)
            .initial_sync_timeout(WORKLOAD_API_TIMEOUT)
            .build()
            .await?;
        Ok(Self::from_source(source))
    }

    /// Uses an X.509 source made elsewhere.
    pub fn from_source(source: X509Source) -> Self {
        Self { source }
    }

    /// The source, to watch its updates or read the current SVID.
    pub fn source(&self) -> &X509Source {
        &self.source
    }

    /// This workload's SPIFFE ID now.
    pub fn spiffe_id(&self) -> Result<SpiffeId, SpiffeError> {
        Ok(self.source.svid()?.spiffe_id().clone())
    }

    /// The SVID's serial number and expiry now.
    pub fn credential(&self) -> Result<Credential, SpiffeError> {
        let svid = self.source.svid()?;
        credential_of(&svid)
    }

    /// Dials with the current SVID, verifying servers by SPIFFE ID. The
    /// configuration is [rotating](ClientTls::rotating): its credential
    /// changes once new handshakes present a new SVID, which is what
    /// [`Connect`](crate::Connect) retires clients by.
    pub fn client_tls(&self, authorize: Authorize) -> Result<ClientTls, SpiffeError> {
        Ok(self.client_tls_with_status(authorize)?.0)
    }

    /// Serves with the current SVID, requiring client SVIDs that `authorize`
    /// accepts. The configuration is [rotating](ServerTls::rotating), so
    /// [`Serve`](crate::Serve) drains the connections accepted under an
    /// earlier SVID.
    pub fn server_tls(&self, authorize: Authorize) -> Result<ServerTls, SpiffeError> {
        Ok(self.server_tls_with_status(authorize)?.0)
    }

    /// As [`SpiffeIdentity::client_tls`], with the configuration's status:
    /// after a rotation, handshakes fail until the new SVID is applied
    /// (`spiffe-rustls` fails closed meanwhile), which the status shows.
    pub fn client_tls_with_status(
        &self,
        authorize: Authorize,
    ) -> Result<(ClientTls, TlsStatus), SpiffeError> {
        let recheck = self.recheck(&authorize)?;
        let (policy, authorizer) = self.policy(authorize)?;
        let (config, status) = spiffe_rustls::mtls_client(self.source.clone())
            .trust_domain_policy(policy)
            .authorize(authorizer)
            .build_with_status()?;
        let credential = self.follow(status.clone())?;
        let tls = ClientTls::from_rustls(config)
            .rotating(credential)
            .with_status(status.clone())
            .resuming(recheck);
        Ok((tls, status))
    }

    /// As [`SpiffeIdentity::server_tls`], with the configuration's status.
    pub fn server_tls_with_status(
        &self,
        authorize: Authorize,
    ) -> Result<(ServerTls, TlsStatus), SpiffeError> {
        let recheck = self.recheck(&authorize)?;
        let (policy, authorizer) = self.policy(authorize)?;
        let (config, status) = spiffe_rustls::mtls_server(self.source.clone())
            .trust_domain_policy(policy)
            .authorize(authorizer)
            .build_with_status()?;
        let credential = self.follow(status.clone())?;
        let tls = ServerTls::from_rustls(config)
            .rotating(credential)
            .described(format!("SPIFFE mutual TLS as {}", self.spiffe_id()?))
            .with_status(status.clone())
            .resuming(recheck);
        Ok((tls, status))
    }

    /// The credential handshakes under `status` present: updated when a new
    /// SVID has been applied (before that, they fail closed), by a task
    /// that ends with the last receiver.
    fn follow(&self, mut status: TlsStatus) -> Result<watch::Receiver<Credential>, SpiffeError> {
        let source = self.source.clone();
        let (sender, receiver) = watch::channel(self.credential()?);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = status.changed() => if changed.is_err() { return },
                    () = sender.closed() => return,
                }
                let Ok(svid) = source.svid() else { continue };
                let snapshot = status.current();
                if !snapshot.available || snapshot.applied_revision != snapshot.source_revision {
                    continue;
                }
                match credential_of(&svid) {
                    Ok(now) => {
                        sender.send_if_modified(|old| {
                            let changed = *old != now;
                            *old = now;
                            changed
                        });
                    }
                    Err(err) => tracing::warn!(error = %err, "a rotated SVID"),
                }
            }
        });
        Ok(receiver)
    }

    /// What a resumed peer's leaf must still be, as the handshake that made
    /// the session verified it: within its validity, and authorized. (Its
    /// chain needs no second look: a new bundle starts a new session store.)
    fn recheck(&self, authorize: &Authorize) -> Result<Recheck, SpiffeError> {
        let domain = self.spiffe_id()?.trust_domain().clone();
        let authorize = authorize.clone();
        Ok(Arc::new(
            move |leaf: &CertificateDer<'_>, _: &[CertificateDer<'_>], _| {
                let (_, cert) = x509_parser::parse_x509_certificate(leaf)
                    .map_err(|err| format!("its certificate cannot be read: {err}"))?;
                if !cert.validity().is_valid() {
                    let not_after = cert.validity().not_after;
                    return Err(format!(
                        "its certificate is not valid now (not after {not_after})"
                    ));
                }
                let id = spiffe_id_of(leaf).ok_or("its certificate names no SPIFFE ID")?;
                let authorized = match &authorize {
                    Authorize::SameTrustDomain => *id.trust_domain() == domain,
                    Authorize::Predicate(accept) => accept(&id),
                };
                if authorized {
                    Ok(())
                } else {
                    Err(format!("{id} is no longer authorized"))
                }
            },
        ))
    }

    /// The trust domains whose bundles verify peers, and who passes.
    fn policy(
        &self,
        authorize: Authorize,
    ) -> Result<(TrustDomainPolicy, Arc<dyn Authorizer>), SpiffeError> {
        Ok(match authorize {
            Authorize::SameTrustDomain => {
                let domain = self.spiffe_id()?.trust_domain().clone();
                let any = spiffe_rustls::authorizer::any();
                (TrustDomainPolicy::LocalOnly(domain), Arc::new(any))
            }
            Authorize::Predicate(accept) => {
                let accept = move |id: &SpiffeId| accept(id);
                (TrustDomainPolicy::AnyInBundleSet, Arc::new(accept))
            }
        })
    }
}

/// The serial number and expiry of an SVID's leaf certificate.
fn credential_of(svid: &X509Svid) -> Result<Credential, SpiffeError> {
    let (_, leaf) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes())
        .map_err(|err| SpiffeError::Certificate(err.to_string()))?;
    let expiry = u64::try_from(leaf.validity().not_after.timestamp()).unwrap_or_default();
    Ok(Credential {
        serial: leaf.raw_serial_as_string(),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(expiry),
    })
}

/// The SPIFFE ID a certificate (DER) names in its URI subject alternative
/// names, if any.
pub(crate) fn spiffe_id_of(der: &[u8]) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let names = cert.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => SpiffeId::new(uri).ok(),
            _ => None,
        })
}
