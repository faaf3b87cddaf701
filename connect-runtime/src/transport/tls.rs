//! TLS for both sides, on rustls (with the ring provider): PEM files in,
//! rustls configurations out, HTTP/2 negotiated by ALPN.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::sync::watch;

use super::resumption::{Era, Recheck, Resuming};

/// How long before a rotating certificate expires the connections made or
/// accepted under it are closed, once it has rotated: by default for
/// [`ConnectBuilder::expiry_margin`](crate::ConnectBuilder::expiry_margin)
/// and [`Serve::expiry_margin`](crate::Serve::expiry_margin).
pub const DEFAULT_EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// What ALPN must agree on: gRPC runs over HTTP/2 only.
const H2: &[u8] = b"h2";

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM input could not be read.
    #[error("reading the {what}: {source}")]
    Pem {
        /// Which input: "certificate chain", "private key" or "CA certificates".
        what: &'static str,
        /// The parser's error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM input held no certificate.
    #[error("the {what} holds no certificate")]
    NoCertificate {
        /// Which input.
        what: &'static str,
    },
    /// rustls refused the configuration (a key that does not match its
    /// certificate, a CA certificate it cannot use, ...). Said with what to
    /// do where the cause is a usual one.
    #[error("{}", explain(.0))]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA certificates.
    #[error("TLS client verification: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Not a DNS name or IP address to verify a server as.
    #[error("`{0}` is not a server name TLS can verify")]
    ServerName(String),
    /// A setting that rebuilds the rustls configuration, asked of one
    /// given as it is (`from_rustls`): set it in that configuration.
    #[error(
        "{0} cannot be changed on a configuration given with from_rustls; set it in the rustls configuration"
    )]
    FromRustls(&'static str),
}

/// rustls's refusal of a configuration, with the remedy for the causes
/// people meet: certificates made by plain `openssl x509 -req` (X.509 v1,
/// no subjectAltName), and a key from another certificate.
fn explain(err: &rustls::Error) -> String {
    let detail = format!("{err:?}");
    if matches!(err, rustls::Error::InconsistentKeys(_)) {
        "the private key does not match the certificate: give the key the certificate was \
         issued for"
            .into()
    } else if detail.contains("UnsupportedCertVersion") {
        "the certificate is X.509 v1; TLS needs v3 with a subjectAltName (DNS:name or \
         IP:address) naming where it is dialed: with openssl, sign it with -extfile holding \
         `subjectAltName=DNS:...,IP:...` (README: TLS certificates with openssl)"
            .into()
    } else {
        format!("TLS configuration: {err}")
    }
}

/// A dial's failed TLS handshake with `host`, said as whose certificate is
/// wrong and what to do; the error's kind is kept.
pub(crate) fn explain_handshake(err: std::io::Error, host: &str) -> std::io::Error {
    use rustls::CertificateError as Cert;
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return err;
    };
    let why = match tls {
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer) => {
            "the remote's certificate is not signed by the CA given to dial it: dial with \
             the CA that signed it"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(
            Cert::NotValidForName | Cert::NotValidForNameContext { .. },
        ) => format!(
            "the remote's certificate does not name `{host}`: it needs subjectAltName \
             DNS:{host} or IP:{host}"
        ),
        rustls::Error::InvalidCertificate(
            Cert::Expired
            | Cert::ExpiredContext { .. }
            | Cert::NotValidYet
            | Cert::NotValidYetContext { .. },
        ) => "the remote's certificate has expired or is not valid yet: renew it, or check \
              the clocks"
            .to_owned(),
        rustls::Error::AlertReceived(alert) => format!(
            "the remote refused this side's certificate ({alert:?}): it needs one signed by \
             the CA it trusts"
        ),
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            "the remote does not speak TLS: dial it without TLS".to_owned()
        }
        _ => return err,
    };
    std::io::Error::new(err.kind(), format!("{why} ({tls})"))
}

/// A certificate chain and its private key, from PEM.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(chain: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Result<Self, TlsError> {
        let chain = certificates(chain.as_ref(), "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key.as_ref()).map_err(|source| TlsError::Pem {
            what: "private key",
            source,
        })?;
        Ok(Self { chain, key })
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn certificates(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

fn roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem, "CA certificates")? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// The common name (OID 2.5.4.3) in a DER-encoded X.509 name, if it has
/// one as a short UTF-8, printable or IA5 string: what a person calls a CA.
fn common_name(name: &[u8]) -> Option<String> {
    const CN: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = name.windows(CN.len()).position(|w| w == CN)? + CN.len();
    let (&tag, rest) = name.get(at..)?.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let value = rest.get(..usize::from(len)).filter(|_| len < 0x80)?;
    matches!(tag, 0x0c | 0x13 | 0x16).then(|| String::from_utf8_lossy(value).into_owned())
}

/// ring's suites with TLS 1.3's AES-128-GCM first, as Go's crypto/tls
/// clients order them where the CPU has AES instructions: its key
/// schedule is SHA-256, which ring runs on x86-64's SHA instructions, where
/// it has none for SHA-384. Servers keep rustls's default of following the
/// client's order.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// How to dial with TLS: the CA that signs the servers, optionally a client
/// identity (for mutual TLS), and the name to verify the server as.
///
/// Redials resume their TLS sessions, within bounds rustls does not keep
/// by itself: a session is resumed only under the certificate it was made
/// under (a [rotation](Self::rotating) starts over), and a resumed server
/// is verified again as a full handshake would verify it now; one that no
/// longer verifies (its certificate expired, say) is dialed in full.
/// TLS 1.3's AES-128-GCM is offered first, as Go's crypto/tls clients
/// offer it where the CPU has AES instructions.
///
/// ```no_run
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::tls::{ClientTls, Identity};
/// use connect_runtime::DialOptions;
///
/// let tls = ClientTls::new(std::fs::read("ca.pem")?)?
///     .identity(Identity::from_pem(std::fs::read("me.pem")?, std::fs::read("me.key")?)?)?
///     .server_name("nsmgr.example")?;
/// let options = DialOptions::new().tls(tls);
/// # let _ = options; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    roots: Option<Arc<RootCertStore>>,
    server_name: Option<ServerName<'static>>,
    rotation: Rotation,
    resuming: Option<Arc<Resuming<ClientConfig>>>,
}

/// The certificate a rotating TLS configuration presents in new handshakes:
/// which one, and until when it is valid.
///
/// A [`ClientTls`] that rotates (such as a SPIFFE identity's) publishes it;
/// [`Connect`](crate::Connect) retires a client whose connection was made
/// under an earlier one, and closes it before that one expires.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use connect_runtime::tls::Credential;
///
/// let credential = Credential {
///     serial: "01:ab".into(),
///     not_after: SystemTime::now() + Duration::from_secs(3600),
/// };
/// assert!(credential.not_after > SystemTime::now());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// The certificate's serial number, as colon-separated hex.
    pub serial: String,
    /// The end of the certificate's validity.
    pub not_after: SystemTime,
}

/// How a configuration's certificate rotates, if it does: the credential
/// new handshakes present and, for a SPIFFE identity, the status that shows
/// a switch to a new SVID under way.
#[derive(Clone, Default)]
pub(crate) struct Rotation {
    credential: Option<watch::Receiver<Credential>>,
    #[cfg(feature = "spiffe")]
    status: Option<spiffe_rustls::TlsStatus>,
}

impl Rotation {
    /// Returns once a handshake can present the current certificate:
    /// spiffe-rustls fails handshakes closed (no certificate, no signature
    /// schemes) while a new SVID is not yet applied.
    pub(crate) async fn settled(&self) {
        #[cfg(feature = "spiffe")]
        if let Some(status) = &self.status {
            let mut status = status.clone();
            loop {
                let pending = status.current().error.is_some_and(|err| {
                    matches!(*err, spiffe_rustls::Error::PendingRevision { .. })
                });
                if !pending || status.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// Which certificate new handshakes use, if it rotates: it differs
    /// once a switch to a new one has begun.
    pub(crate) fn revision(&self) -> Option<u64> {
        #[cfg(feature = "spiffe")]
        if let Some(status) = &self.status {
            return Some(status.current().source_revision);
        }
        None
    }

    /// The era of the certificate and trust new handshakes use, whose
    /// sessions they may resume; none while a SPIFFE source is not ready.
    pub(crate) fn era(&self) -> Option<Era> {
        // A SPIFFE source's revision covers its credential, which follows.
        #[cfg(feature = "spiffe")]
        if let Some(status) = &self.status {
            let now = status.current();
            return now.available.then_some(Era {
                revision: Some(now.applied_revision),
                serial: None,
            });
        }
        Some(Era {
            revision: None,
            serial: self.credential.as_ref().map(|c| c.borrow().serial.clone()),
        })
    }
}

impl ClientTls {
    /// Verifies servers against the PEM CA certificates `ca`.
    pub fn new(ca: impl AsRef<[u8]>) -> Result<Self, TlsError> {
        let roots = roots(ca.as_ref())?;
        let config = Self::builder(&roots)?.with_no_client_auth();
        Self {
            config: with_alpn(config),
            roots: Some(roots),
            server_name: None,
            rotation: Rotation::default(),
            resuming: None,
        }
        .verified_on_resumption()
    }

    /// Resumes with stores of its own, checking a resumed server as a full
    /// handshake would verify it now (see `resumption`).
    fn verified_on_resumption(mut self) -> Result<Self, TlsError> {
        let Some(roots) = &self.roots else {
            return Ok(self);
        };
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(roots), provider()).build()?;
        let recheck: Recheck = Arc::new(move |leaf, intermediates, name| {
            let name = name.ok_or("no server name to verify it as")?;
            verifier
                .verify_server_cert(leaf, intermediates, name, &[], UnixTime::now())
                .map(drop)
                .map_err(|err| format!("it no longer verifies: {err}"))
        });
        self.resuming = Some(Arc::new(Resuming::new(
            Arc::clone(&self.config),
            Some(recheck),
        )));
        Ok(self)
    }

    fn builder(
        roots: &Arc<RootCertStore>,
    ) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsError>
    {
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(Arc::clone(roots)))
    }

    /// Presents `identity` to servers that ask for a client certificate.
    /// A configuration given [as it is](Self::from_rustls) cannot take one:
    /// [`TlsError::FromRustls`].
    pub fn identity(mut self, identity: Identity) -> Result<Self, TlsError> {
        let Some(roots) = &self.roots else {
            return Err(TlsError::FromRustls("the client identity"));
        };
        let config = Self::builder(roots)?.with_client_auth_cert(identity.chain, identity.key)?;
        self.config = with_alpn(config);
        self.verified_on_resumption()
    }

    /// Verifies the server as `name` rather than the dialed host (for
    /// `unix://` URLs, or servers reached by address).
    pub fn server_name(mut self, name: &str) -> Result<Self, TlsError> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::ServerName(name.to_owned()))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// Uses a rustls configuration as it is (ALPN is set to `h2`),
    /// resumption included: rustls neither checks a resumed server again
    /// nor scopes its sessions to a [rotation](Self::rotating). A
    /// configuration made by [`ClientTls::new`] does both.
    pub fn from_rustls(config: ClientConfig) -> Self {
        Self {
            config: with_alpn(config),
            roots: None,
            server_name: None,
            rotation: Rotation::default(),
            resuming: None,
        }
    }

    /// Declares that the configuration's certificate rotates: `credential`
    /// names the one new handshakes present, changing only once they
    /// present the new one.
    pub fn rotating(mut self, credential: watch::Receiver<Credential>) -> Self {
        self.rotation.credential = Some(credential);
        self
    }

    /// What [`ClientTls::rotating`] was given, if anything.
    pub fn credential(&self) -> Option<&watch::Receiver<Credential>> {
        self.rotation.credential.as_ref()
    }

    #[cfg(feature = "spiffe")]
    pub(crate) fn with_status(mut self, status: spiffe_rustls::TlsStatus) -> Self {
        self.rotation.status = Some(status);
        self
    }

    /// Resumes with stores of its own, checking a resumed server with
    /// `recheck` (see `resumption`).
    #[cfg(feature = "spiffe")]
    pub(crate) fn resuming(mut self, recheck: Recheck) -> Self {
        let base = Arc::clone(&self.config);
        self.resuming = Some(Arc::new(Resuming::new(base, Some(recheck))));
        self
    }

    pub(crate) fn rotation(&self) -> &Rotation {
        &self.rotation
    }

    /// `Ok` unless the handshake resumed a session whose server no longer
    /// passes; the sessions kept are then dropped, so that the next
    /// handshake is a full one.
    pub(crate) fn check_resumed(
        &self,
        session: &rustls::CommonState,
        name: &ServerName<'_>,
    ) -> Result<(), String> {
        match &self.resuming {
            Some(resuming) => resuming
                .check(session, Some(name))
                .inspect_err(|_| resuming.forget()),
            None => Ok(()),
        }
    }

    /// The rustls configuration it dials with (ALPN `h2`), for other
    /// clients of the same identity: a copy with ALPN `http/1.1` scrapes a
    /// metrics endpoint served over the same (mutual, or SPIFFE) TLS, say.
    /// Its session store is rustls's (a SPIFFE identity's resumes none);
    /// dials resume with stores of their own, as above.
    ///
    /// ```
    /// # fn demo(tls: connect_runtime::tls::ClientTls) {
    /// let mut config = (*tls.rustls_config()).clone();
    /// config.alpn_protocols = vec![b"http/1.1".to_vec()];
    /// let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    /// # let _ = connector; }
    /// ```
    pub fn rustls_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(match &self.resuming {
            Some(resuming) => resuming.config(self.rotation.era()),
            None => Arc::clone(&self.config),
        })
    }

    /// The name to verify the server as: the one set, else `host`.
    pub(crate) fn name_for(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.to_owned())
                .map_err(|_| TlsError::ServerName(host.to_owned())),
        }
    }
}

fn with_alpn(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![H2.to_vec()];
    Arc::new(config)
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field(
                "client_auth",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .field("credential", &self.credential().map(|c| c.borrow().clone()))
            .finish()
    }
}

/// How to serve with TLS: the server's identity and, for mutual TLS, the CA
/// that client certificates must be signed by.
///
/// Clients resume their sessions only under the certificate the session
/// was made under (a [rotation](Self::rotating) starts over); with mutual
/// TLS, a resumed client is verified again as a full handshake would verify
/// it now, and refused if it no longer verifies.
///
/// ```no_run
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use connect_runtime::tls::{Identity, ServerTls};
///
/// let identity = Identity::from_pem(std::fs::read("server.pem")?, std::fs::read("server.key")?)?;
/// let tls = ServerTls::new(identity.clone())?; // any client
/// let mutual = ServerTls::new(identity)?.client_ca(std::fs::read("ca.pem")?)?; // certified clients only
/// # let _ = (tls, mutual); Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    identity: Option<Identity>,
    rotation: Rotation,
    security: Arc<str>,
    resuming: Option<Arc<Resuming<ServerConfig>>>,
}

impl ServerTls {
    /// Serves as `identity`; clients are not asked for certificates.
    pub fn new(identity: Identity) -> Result<Self, TlsError> {
        let config = server_alpn(
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(identity.chain.clone(), identity.key.clone_key())?,
        );
        Ok(Self {
            resuming: Some(Arc::new(Resuming::new(Arc::clone(&config), None))),
            config,
            identity: Some(identity),
            rotation: Rotation::default(),
            security: "TLS, any client".into(),
        })
    }

    /// Requires every client to present a certificate signed by one of the
    /// PEM CA certificates `ca`; others fail the handshake. A configuration
    /// given [as it is](Self::from_rustls) cannot take one:
    /// [`TlsError::FromRustls`].
    pub fn client_ca(mut self, ca: impl AsRef<[u8]>) -> Result<Self, TlsError> {
        let Some(identity) = &self.identity else {
            return Err(TlsError::FromRustls("client certificate verification"));
        };
        let roots = roots(ca.as_ref())?;
        let names: Vec<String> = roots
            .roots
            .iter()
            .map(|anchor| common_name(&anchor.subject).unwrap_or_else(|| "(no CN)".into()))
            .collect();
        self.security = format!("mutual TLS, clients certified by CA {}", names.join(", ")).into();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::clone(&verifier))
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
        self.config = server_alpn(config);
        // A resumed client is verified again, as a full handshake would
        // verify it now (see `resumption`).
        let recheck: Recheck = Arc::new(move |leaf, intermediates, _| {
            verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .map(drop)
                .map_err(|err| format!("it no longer verifies: {err}"))
        });
        let base = Arc::clone(&self.config);
        self.resuming = Some(Arc::new(Resuming::new(base, Some(recheck))));
        Ok(self)
    }

    /// Uses a rustls configuration as it is (ALPN is set to `h2`),
    /// resumption included, as [`ClientTls::from_rustls`] does.
    pub fn from_rustls(config: ServerConfig) -> Self {
        Self {
            config: server_alpn(config),
            identity: None,
            rotation: Rotation::default(),
            security: "TLS (a rustls configuration)".into(),
            resuming: None,
        }
    }

    /// What callers must bring, in words: `TLS, any client`, `mutual TLS,
    /// clients certified by CA <its CN>`, or (from a SPIFFE identity)
    /// `SPIFFE mutual TLS as <SPIFFE ID>`. The server says it when it starts.
    pub fn security(&self) -> &str {
        &self.security
    }

    #[cfg(feature = "spiffe")]
    pub(crate) fn described(mut self, security: String) -> Self {
        self.security = security.into();
        self
    }

    /// Declares that the configuration's certificate rotates, as
    /// [`ClientTls::rotating`]: [`Serve`](crate::Serve) drains the
    /// connections accepted under an earlier one.
    pub fn rotating(mut self, credential: watch::Receiver<Credential>) -> Self {
        self.rotation.credential = Some(credential);
        self
    }

    /// What [`ServerTls::rotating`] was given, if anything.
    pub fn credential(&self) -> Option<&watch::Receiver<Credential>> {
        self.rotation.credential.as_ref()
    }

    #[cfg(feature = "spiffe")]
    pub(crate) fn with_status(mut self, status: spiffe_rustls::TlsStatus) -> Self {
        self.rotation.status = Some(status);
        self
    }

    /// Resumes with stores of its own, checking a resumed client with
    /// `recheck` (see `resumption`).
    #[cfg(feature = "spiffe")]
    pub(crate) fn resuming(mut self, recheck: Recheck) -> Self {
        let base = Arc::clone(&self.config);
        self.resuming = Some(Arc::new(Resuming::new(base, Some(recheck))));
        self
    }

    pub(crate) fn rotation(&self) -> &Rotation {
        &self.rotation
    }

    /// `Ok` unless the handshake resumed a session whose client no longer
    /// passes (the connection is then refused).
    pub(crate) fn check_resumed(&self, session: &rustls::CommonState) -> Result<(), String> {
        match &self.resuming {
            Some(resuming) => resuming.check(session, None),
            None => Ok(()),
        }
    }

    /// The rustls configuration it serves with (ALPN `h2`), for another
    /// listener of the same identity: a copy with other ALPN protocols
    /// serves a metrics endpoint over the same TLS, say. Its session store
    /// is rustls's (a SPIFFE identity's resumes none); `Serve` resumes with
    /// stores of its own.
    ///
    /// ```
    /// # fn demo(tls: connect_runtime::tls::ServerTls) {
    /// let mut config = (*tls.rustls_config()).clone();
    /// config.alpn_protocols = vec![b"http/1.1".to_vec()];
    /// let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    /// # let _ = acceptor; }
    /// ```
    pub fn rustls_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(match &self.resuming {
            Some(resuming) => resuming.config(self.rotation.era()),
            None => Arc::clone(&self.config),
        })
    }
}

fn server_alpn(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.alpn_protocols = vec![H2.to_vec()];
    Arc::new(config)
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("credential", &self.credential().map(|c| c.borrow().clone()))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::common_name;

    #[test]
    fn a_names_common_name_is_found() {
        // SEQUENCE { SET { SEQUENCE { O = "NSM" } }, SET { SEQUENCE { CN = "test CA" } } }
        let name = [
            0x30, 0x21, 0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x03, b'N',
            b'S', b'M', 0x31, 0x11, 0x30, 0x0f, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x07, b't',
            b'e', b's', b't', b' ', b'C', b'A',
        ];
        assert_eq!(common_name(&name).as_deref(), Some("test CA"));
        assert_eq!(common_name(&name[..12]), None);
        assert_eq!(common_name(&[]), None);
    }
}
