//! A SPIFFE Workload API server for tests: X.509 SVIDs issued on the spot
//! by a CA of its own, with lifetimes of seconds, served over a unix socket
//! and rotated on demand. Clients are the `spiffe` crate's (what SPIRE's
//! agent serves, the X.509 half).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tokio_stream::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::generated::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use crate::generated::workload::{
    X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest, X509svidResponse,
};
use tempfile::TempDir;

/// The metadata every Workload API call must carry (SPIFFE's guard against
/// a server-side request forgery reaching the API).
const SECURITY_HEADER: &str = "workload.spiffe.io";

/// A trust domain's CA.
pub struct Authority {
    trust_domain: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// One X.509 SVID as issued.
#[derive(Clone, Debug)]
pub struct Svid {
    pub spiffe_id: String,
    /// The leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// Its private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The certificate's serial number; each rotation's is one more.
    pub serial: u64,
}

impl Svid {
    /// The serial number as the certificate encodes it, in colon-separated
    /// hex: what connect's client stats show.
    pub fn serial_text(&self) -> String {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.cert_der)
            .expect("an SVID this server issued parses");
        cert.raw_serial_as_string()
    }

    /// The end of the certificate's validity.
    pub fn not_after(&self) -> SystemTime {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.cert_der)
            .expect("an SVID this server issued parses");
        let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or_default();
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }
}

impl Authority {
    /// A CA for `trust_domain` (`example.org`).
    pub fn new(trust_domain: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let uri = format!("spiffe://{trust_domain}").try_into().unwrap();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate, DER: the trust domain's bundle.
    pub fn bundle_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// An SVID for `spiffe://<trust domain><path>`, valid from a minute ago
    /// (clock skew) until `lifetime` from now.
    pub fn issue(&self, path: &str, serial: u64, lifetime: Duration) -> Svid {
        let spiffe_id = format!("spiffe://{}{path}", self.trust_domain);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::ExplicitNoCa;
        params.subject_alt_names = vec![SanType::URI(spiffe_id.clone().try_into().unwrap())];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + lifetime).into();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Svid {
            spiffe_id,
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            serial,
        }
    }
}

/// A tower layer for a test server: calls `seen` with the leaf client
/// certificate (DER) of every call's connection, as it arrives.
pub fn client_certificates(
    seen: impl Fn(&[u8]) + Clone + Send + Sync + 'static,
) -> tower::util::MapRequestLayer<
    impl Fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> + Clone,
> {
    tower::util::MapRequestLayer::new(move |call: http::Request<tonic::body::Body>| {
        let peer = call
            .extensions()
            .get::<connect_runtime::Peer>()
            .expect("a served call has its Peer");
        seen(&peer.certificates().expect("a client certificate")[0]);
        call
    })
}

/// A running Workload API server for one workload identity.
pub struct WorkloadApi {
    authority: Arc<Authority>,
    path: String,
    lifetime: Duration,
    current: watch::Sender<Arc<Svid>>,
    endpoint: String,
    stop: CancellationToken,
    _dir: TempDir,
}

impl WorkloadApi {
    /// Serves SVIDs for `spiffe://<trust domain><path>`, each valid for
    /// `lifetime`, on a unix socket of its own.
    pub async fn start(authority: Arc<Authority>, path: &str, lifetime: Duration) -> Self {
        Self::federated(authority, path, lifetime, &[]).await
    }

    /// As [`WorkloadApi::start`], also sending the bundles of `federated`
    /// trust domains.
    pub async fn federated(
        authority: Arc<Authority>,
        path: &str,
        lifetime: Duration,
        federated: &[&Authority],
    ) -> Self {
        let federated: Vec<(String, Vec<u8>)> = federated
            .iter()
            .map(|a| (a.trust_domain.clone(), a.bundle_der()))
            .collect();
        let first = authority.issue(path, 1, lifetime);
        let (current, watching) = watch::channel(Arc::new(first));
        let dir = TempDir::new().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let stop = CancellationToken::new();
        let service = Service {
            authority: Arc::clone(&authority),
            current: watching,
            federated: Arc::new(federated),
        };
        let serving = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(service))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(async move {
            if let Err(err) = serving.await {
                panic!("the Workload API server failed: {err}");
            }
        });
        Self {
            authority,
            path: path.to_owned(),
            lifetime,
            current,
            endpoint: format!("unix://{}", socket.display()),
            stop,
            _dir: dir,
        }
    }

    /// The address for `SPIFFE_ENDPOINT_SOCKET`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The SVID served now.
    pub fn current(&self) -> Arc<Svid> {
        Arc::clone(&self.current.borrow())
    }

    /// Issues the next SVID (serial one more, a new key) and sends it to
    /// every watching client; returns it.
    pub fn rotate(&self) -> Arc<Svid> {
        self.rotate_for(self.lifetime)
    }

    /// As [`WorkloadApi::rotate`], the new SVID valid for `lifetime`.
    pub fn rotate_for(&self, lifetime: Duration) -> Arc<Svid> {
        let serial = self.current().serial + 1;
        let next = Arc::new(self.authority.issue(&self.path, serial, lifetime));
        self.current.send_replace(Arc::clone(&next));
        next
    }
}

impl Drop for WorkloadApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct Service {
    authority: Arc<Authority>,
    current: watch::Receiver<Arc<Svid>>,
    federated: Arc<Vec<(String, Vec<u8>)>>,
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn guarded<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(value) if value == "true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = Streamed<X509svidResponse>;
    type FetchX509BundlesStream = Streamed<X509BundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        guarded(&request)?;
        let bundle = self.authority.bundle_der();
        let federated = Arc::clone(&self.federated);
        let updates = WatchStream::new(self.current.clone()).map(move |svid| {
            Ok(X509svidResponse {
                svids: vec![X509svid {
                    spiffe_id: svid.spiffe_id.clone(),
                    x509_svid: svid.cert_der.clone(),
                    x509_svid_key: svid.key_der.clone(),
                    bundle: bundle.clone(),
                    hint: String::new(),
                }],
                federated_bundles: federated.iter().cloned().collect(),
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(updates)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        guarded(&request)?;
        let bundles = [(
            self.authority.trust_domain.clone(),
            self.authority.bundle_der(),
        )];
        let response = X509BundlesResponse {
            bundles: bundles.into_iter().collect(),
            ..Default::default()
        };
        // One message, then held open as a real agent holds it.
        let held = tokio_stream::once(Ok(response)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(held)))
    }
}
