//! `--telemetry`: connect recording with exporters on, as the program runs
//! with `TELEMETRY=true PROMETHEUS=true`: metrics into a Prometheus
//! registry and, with `--otlp-endpoint`, spans and metrics by OTLP/gRPC;
//! and `collect`, a collector for them in a process of its own.

use std::path::PathBuf;

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The providers installed; shut down (exporting what is left) on drop.
pub(crate) struct Installed {
    meter: SdkMeterProvider,
    tracer: Option<SdkTracerProvider>,
    /// What a scrape would read: kept so that its reader stays registered.
    _registry: prometheus::Registry,
}

/// Installs the global meter provider (a Prometheus registry, and OTLP to
/// `otlp` if given) and, with `otlp`, a tracer whose spans go there.
pub(crate) fn install(otlp: Option<&str>) -> Result<Installed, String> {
    let registry = prometheus::Registry::new();
    let prometheus = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let mut meter = SdkMeterProvider::builder().with_reader(prometheus);
    let mut tracer = None;
    if let Some(endpoint) = otlp {
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| e.to_string())?;
        meter = meter.with_reader(PeriodicReader::builder(metrics).build());
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| e.to_string())?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .build();
        global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("connect-bench"))
                    .with_filter(EnvFilter::new("info,connect_runtime=debug")),
            )
            .try_init()
            .map_err(|e| e.to_string())?;
        tracer = Some(provider);
    }
    let meter = meter.build();
    global::set_meter_provider(meter.clone());
    Ok(Installed {
        meter,
        tracer,
        _registry: registry,
    })
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(tracer) = &self.tracer {
            let _ = tracer.shutdown();
        }
        let _ = self.meter.shutdown();
    }
}

/// `collect`: an OTLP collector on loopback until killed; its endpoint
/// goes to `addr_file`.
pub(crate) async fn collect(addr_file: PathBuf) -> Result<(), String> {
    let collector = connect_tests::telemetry::Collector::start().await;
    std::fs::write(&addr_file, collector.endpoint())
        .map_err(|e| format!("writing {}: {e}", addr_file.display()))?;
    eprintln!("collecting at {}", collector.endpoint());
    std::future::pending::<()>().await;
    Ok(())
}
