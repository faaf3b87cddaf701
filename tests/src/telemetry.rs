//! Real receivers for connect's telemetry: an OTLP collector (a tonic
//! server of OpenTelemetry's collector services) and Prometheus text,
//! from a registry or a program's `/metrics`, parsed by a Prometheus
//! parser.

use std::sync::{Arc, Mutex};

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::harness::settle;

/// A meter whose metrics are read as Prometheus text, as the program's
/// `/metrics` serves them.
pub struct PrometheusMeter {
    provider: SdkMeterProvider,
    registry: Registry,
}

impl PrometheusMeter {
    pub fn new() -> Self {
        let registry = Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .expect("a Prometheus exporter");
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        Self { provider, registry }
    }

    /// The meter connect and the server record on.
    pub fn meter(&self) -> Meter {
        self.meter_named(connect_runtime::telemetry::METER_NAME)
    }

    /// A meter of this provider named `name` (Prometheus's
    /// `otel_scope_name`).
    pub fn meter_named(&self, name: &'static str) -> Meter {
        self.provider.meter(name)
    }

    /// The metrics now, as a scrape would read them.
    pub fn scrape(&self) -> Scrape {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .expect("Prometheus text");
        Scrape::parse(&String::from_utf8(text).expect("UTF-8"))
    }
}

impl Default for PrometheusMeter {
    fn default() -> Self {
        Self::new()
    }
}

/// Prometheus text exposition, parsed.
#[derive(Debug)]
pub struct Scrape {
    samples: Vec<prometheus_parse::Sample>,
    pub text: String,
}

impl Scrape {
    /// Parses `text`, panicking (with it) if it is not Prometheus text.
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines)
            .unwrap_or_else(|e| panic!("not Prometheus text ({e}): {text}"));
        Self {
            samples: scrape.samples,
            text: text.to_owned(),
        }
    }

    /// The sum of the counter, gauge or untyped samples named `name` whose
    /// labels include `labels`; `None` if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for sample in &self.samples {
            if sample.metric != name
                || !labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v))
            {
                continue;
            }
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            *found.get_or_insert(0.0) += value;
        }
        found
    }

    /// As [`Scrape::value`], 0 when absent (a counter never incremented
    /// for those labels).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.value(name, labels).unwrap_or(0.0) as u64
    }

    /// Whether a metric family named `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.metric == name)
    }
}

/// Fetches `url` (`http://host:port/path`) over HTTP/1.1 with hyper.
pub async fn http_get(url: &str) -> (http::StatusCode, String) {
    get(url, None)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Fetches `url` (`https://…`) over TLS, trusting `ca_pem` and presenting
/// `client`'s certificate if given.
pub async fn https_get(
    url: &str,
    ca_pem: &str,
    client: Option<&crate::pki::Issued>,
) -> Result<(http::StatusCode, String), String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(issued) => {
            let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    https_get_with(url, &config).await
}

/// Fetches `url` (`https://…`) over TLS as `config` (a copy with ALPN
/// `http/1.1`) says: a SPIFFE identity's, say.
pub async fn https_get_with(
    url: &str,
    config: &rustls::ClientConfig,
) -> Result<(http::StatusCode, String), String> {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    get(url, Some(Arc::new(config))).await
}

async fn get(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(http::StatusCode, String), String> {
    use http_body_util::BodyExt as _;
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let authority = uri.authority().ok_or("no host and port")?.clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let request = http::Request::get(uri.path())
        .header(http::header::HOST, authority.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = match tls {
        None => send(stream, request).await?,
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(authority.host().to_owned())
                .map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(stream, request).await?
        }
    };
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn send<S>(
    stream: S,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("no answer: {e}"))
}

/// One span as a collector received it.
#[derive(Clone)]
pub struct ReceivedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root.
    pub parent_span_id: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Debug for ReceivedSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} trace {} span {} parent {}",
            self.service,
            self.name,
            hex(&self.trace_id),
            hex(&self.span_id),
            hex(&self.parent_span_id)
        )
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    /// Metric names, with the exporting process's `service.name`.
    metrics: Vec<(String, String)>,
}

/// An OTLP/gRPC collector on loopback: OpenTelemetry's trace and metrics
/// collector services, keeping what they receive.
pub struct Collector {
    received: Arc<Mutex<Received>>,
    changed: watch::Receiver<usize>,
    endpoint: String,
    stop: CancellationToken,
}

#[derive(Clone)]
struct Receiver {
    received: Arc<Mutex<Received>>,
    changed: Arc<watch::Sender<usize>>,
}

fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .into_iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map_or_else(String::new, |v| match v {
            AnyValue::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = Vec::new();
        for resource in request.into_inner().resource_spans {
            let service = service_name(resource.resource.as_ref());
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                    });
                }
            }
        }
        self.received.lock().unwrap().spans.extend(spans);
        self.changed.send_modify(|n| *n += 1);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = Vec::new();
        for resource in request.into_inner().resource_metrics {
            let service = service_name(resource.resource.as_ref());
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    names.push((service.clone(), metric.name));
                }
            }
        }
        self.received.lock().unwrap().metrics.extend(names);
        self.changed.send_modify(|n| *n += 1);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    /// Starts one on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (changed_tx, changed) = watch::channel(0);
        let received = Arc::new(Mutex::new(Received::default()));
        let receiver = Receiver {
            received: Arc::clone(&received),
            changed: Arc::new(changed_tx),
        };
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .add_service(MetricsServiceServer::new(receiver))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stopped.cancelled_owned(),
                ),
        );
        Self {
            received,
            changed,
            endpoint,
            stop,
        }
    }

    /// Where it listens, as `NSM_OPEN_TELEMETRY_ENDPOINT` takes it.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().unwrap().spans.clone()
    }

    /// The metric names received so far, with their service.
    pub fn metric_names(&self) -> Vec<(String, String)> {
        self.received.lock().unwrap().metrics.clone()
    }

    /// Waits until `condition` holds of what was received.
    pub async fn until(&self, what: &str, condition: impl Fn(&Collector) -> bool) {
        let mut changed = self.changed.clone();
        settle(what, async {
            loop {
                if condition(self) {
                    return;
                }
                changed.changed().await.expect("the collector runs");
            }
        })
        .await;
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
