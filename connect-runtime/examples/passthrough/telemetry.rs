//! Logging and telemetry as NSM components set them up: OTLP/gRPC spans
//! and metrics with `TELEMETRY`, a Prometheus `/metrics` with
//! `PROMETHEUS`, W3C trace context across hops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use connect_runtime::CancellationToken;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus::{Encoder as _, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::args::{LogFormat, Observe};

/// What the spans exported by OTLP include: connect's and this program's
/// call spans, at debug, whatever the log level.
const SPANS: &str = "info,connect_runtime=debug,passthrough=debug";

/// The installed providers: flushed and shut down by [`Telemetry::shutdown`].
pub(crate) struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    /// What `/metrics` serves, with `PROMETHEUS`.
    pub(crate) prometheus: Option<Scraped>,
}

/// Where `/metrics` listens, and the registry it serves.
pub(crate) type Scraped = (SocketAddr, Registry);

/// Logs to stderr at `observe`'s level (else RUST_LOG's filter, else
/// `default`); with `TELEMETRY`, exports spans and metrics by OTLP; with
/// `PROMETHEUS`, keeps the metrics for `/metrics`. Runs inside the tokio
/// runtime: tonic's exporter channel lives on it.
pub(crate) fn install(
    observe: Option<&Observe>,
    format: LogFormat,
    default: &str,
    service: &str,
) -> Result<Telemetry, String> {
    let filter = match observe.and_then(|o| o.log_level) {
        Some(level) => EnvFilter::new(level.as_str().to_ascii_lowercase()),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    // Colour only for a person at a terminal, and never under NO_COLOR
    // (no-color.org: set and not empty).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let resource = || {
        Resource::builder()
            .with_service_name(service.to_owned())
            .build()
    };
    let otlp = observe.and_then(|o| o.otlp.as_deref());
    let tracer = match otlp {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| format!("NSM_OPEN_TELEMETRY_ENDPOINT: {e}"))?;
            global::set_text_map_propagator(TraceContextPropagator::new());
            Some(
                SdkTracerProvider::builder()
                    .with_resource(resource())
                    .with_batch_exporter(exporter)
                    .build(),
            )
        }
        None => None,
    };
    let spans = tracer.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("connect"))
            .with_filter(EnvFilter::new(SPANS))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(spans)
        .init();

    let prometheus = observe
        .and_then(|o| o.prometheus)
        .map(|at| (at, Registry::new()));
    let meter = if otlp.is_some() || prometheus.is_some() {
        let mut builder = SdkMeterProvider::builder().with_resource(resource());
        if let (Some(endpoint), Some(observe)) = (otlp, observe) {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| format!("NSM_OPEN_TELEMETRY_ENDPOINT: {e}"))?;
            builder = builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(observe.export_interval)
                    .build(),
            );
        }
        if let Some((_, registry)) = &prometheus {
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .map_err(|e| format!("the Prometheus exporter: {e}"))?;
            builder = builder.with_reader(exporter);
        }
        let provider = builder.build();
        global::set_meter_provider(provider.clone());
        Some(provider)
    } else {
        None
    };
    Ok(Telemetry {
        tracer,
        meter,
        prometheus,
    })
}

impl Telemetry {
    /// Exports what is still buffered, then stops the exporters.
    pub(crate) fn shutdown(self) {
        if let Some(tracer) = self.tracer
            && let Err(err) = tracer.shutdown()
        {
            eprintln!("passthrough: exporting the last spans: {err}");
        }
        if let Some(meter) = self.meter
            && let Err(err) = meter.shutdown()
        {
            eprintln!("passthrough: exporting the last metrics: {err}");
        }
    }
}

/// Serves `registry` as Prometheus text on `GET /metrics` at `at` until
/// `stop`, over `tls` if given (HTTP/1.1, as Prometheus scrapes); returns
/// the address bound.
pub(crate) async fn serve_metrics(
    at: SocketAddr,
    registry: Registry,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) -> Result<SocketAddr, String> {
    let tls = tls.map(|config| {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .map_err(|e| format!("NSM_PROMETHEUS_LISTEN_ON {at}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("NSM_PROMETHEUS_LISTEN_ON {at}: {e}"))?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::warn!(error = %err, "accepting a metrics scrape failed");
                        continue;
                    }
                },
            };
            let registry = registry.clone();
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    std::future::ready(Ok::<_, Infallible>(answer(&registry, &request)))
                });
            let (stop, tls) = (stop.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => scrape(stream, service, stop).await,
                    // A handshake is bounded as the gRPC listener bounds it.
                    Some(tls) => {
                        let handshake = tls.accept(stream);
                        let timeout = connect_runtime::DEFAULT_HANDSHAKE_TIMEOUT;
                        match tokio::time::timeout(timeout, handshake).await {
                            Ok(Ok(stream)) => scrape(stream, service, stop).await,
                            Ok(Err(err)) => {
                                tracing::warn!(error = %err, "a metrics scrape's TLS handshake failed");
                            }
                            Err(_) => tracing::warn!("a metrics scrape's TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    });
    Ok(bound)
}

/// One scraper's connection, until it closes or `stop`.
async fn scrape<S, F>(stream: S, service: F, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: hyper::service::Service<Request<hyper::body::Incoming>, Response = Response<Full<Bytes>>>,
    F::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = stop.cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

fn answer<B>(registry: &Registry, request: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status, body: Vec<u8>, kind: &str| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, kind)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            b"try /metrics\n".to_vec(),
            "text/plain",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, Vec::new(), "text/plain");
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => reply(StatusCode::OK, body, encoder.format_type()),
        Err(err) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            err.to_string().into_bytes(),
            "text/plain",
        ),
    }
}
