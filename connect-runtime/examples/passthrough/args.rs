//! The command line, on clap: `--help` as every Rust CLI has it, and every
//! mistake a one-line error naming it.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, ValueEnum};
use url::Url;

use connect_runtime::Target;

const AFTER_HELP: &str = "\
With no options it runs the demo: two NSM endpoints and a passthrough on
loopback, --connections connections through it, and a report.

Each option but --connections may instead come from the environment variable
shown beside it; an option given on the command line wins.

URLs are tcp://host:port (port 0 picks one) or unix:///path. Durations are
like 100ms, 1.5s, 10m or 1h. --log-level sets the level (RUST_LOG's filter
if neither it nor NSM_LOG_LEVEL is set; default info). Each call that
succeeds is logged at debug, each that fails at warn.

Telemetry, as NSM components have it: with TELEMETRY=true spans and metrics
go by OTLP/gRPC to NSM_OPEN_TELEMETRY_ENDPOINT (host:port), one trace per
request across every hop that propagates W3C trace context; with
PROMETHEUS=true, /metrics is served on NSM_PROMETHEUS_LISTEN_ON. Without
either nothing is exported and nothing more listens.

TLS: with --tls-cert and --tls-key the listener serves that certificate; with
--tls-ca it requires client certificates signed by that CA, and a passthrough
dials --connect-to with the same identity, verifying the remote against it.
--spiffe instead takes this workload's SPIFFE identity from the Workload API
at SPIFFE_ENDPOINT_SOCKET (rotations followed), for both; peers must be of
the same trust domain (builds with the connect-runtime feature `spiffe`).";

/// Network Service Mesh's connect chain element: a passthrough forwarding
/// every request to one remote, a minimal NSM endpoint, or the demo.
#[derive(Debug, Parser)]
#[command(name = "passthrough", after_help = AFTER_HELP)]
struct Cli {
    /// Where to serve the NetworkService API and gRPC health.
    #[arg(long, env = "NSM_LISTEN_ON", value_name = "URL", value_parser = url)]
    listen: Option<Url>,
    /// Forward every request to this NSM server (a passthrough).
    #[arg(long, env = "NSM_CONNECT_TO", value_name = "URL", value_parser = url)]
    connect_to: Option<Url>,
    /// Serve a minimal NSM endpoint instead.
    #[arg(long, env = "NSM_ENDPOINT")]
    endpoint: bool,
    /// How long a dial to --connect-to may take (default 100ms).
    #[arg(long, env = "NSM_DIAL_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    dial_timeout: Option<Duration>,
    /// This hop's name in each connection's path (default: the host name,
    /// which in Kubernetes is the pod's).
    #[arg(long, env = "NSM_NAME", value_name = "NAME")]
    name: Option<String>,
    /// The latest this hop's path segment expires, from each request; and
    /// how long a connection whose caller set no expiry lives unrefreshed
    /// (default 10m).
    #[arg(long, env = "NSM_MAX_TOKEN_LIFETIME", value_name = "DURATION", value_parser = duration)]
    max_token_lifetime: Option<Duration>,
    /// Log lines as text or JSON (default text).
    #[arg(long, env = "NSM_LOG_FORMAT", value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// How many connections the demo drives (default 1000).
    #[arg(long, value_name = "N", value_parser = positive)]
    connections: Option<usize>,
    /// The listener's certificate chain (PEM).
    #[arg(long, env = "NSM_TLS_CERT", value_name = "FILE", help_heading = "TLS")]
    tls_cert: Option<PathBuf>,
    /// The listener's private key (PEM).
    #[arg(long, env = "NSM_TLS_KEY", value_name = "FILE", help_heading = "TLS")]
    tls_key: Option<PathBuf>,
    /// The CA that signs peers' certificates (PEM): mutual TLS.
    #[arg(long, env = "NSM_TLS_CA", value_name = "FILE", help_heading = "TLS")]
    tls_ca: Option<PathBuf>,
    /// This workload's SPIFFE identity, from the Workload API.
    #[arg(long, env = "NSM_SPIFFE", help_heading = "TLS")]
    spiffe: bool,
    /// Log level: trace, debug, info, warn or error (any case).
    #[arg(long, env = "NSM_LOG_LEVEL", value_name = "LEVEL", value_parser = level)]
    log_level: Option<tracing::Level>,
    /// Export spans and metrics by OTLP/gRPC.
    #[arg(long, env = "TELEMETRY", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = boolean, help_heading = "Telemetry")]
    telemetry: Option<bool>,
    /// Where the OpenTelemetry collector listens (host:port, or an http://
    /// URL).
    #[arg(long, env = "NSM_OPEN_TELEMETRY_ENDPOINT", value_name = "HOST:PORT",
          value_parser = otlp_endpoint, help_heading = "Telemetry")]
    open_telemetry_endpoint: Option<String>,
    /// How often metrics are exported by OTLP (default 10s).
    #[arg(long, env = "NSM_METRICS_EXPORT_INTERVAL", value_name = "DURATION",
          value_parser = duration, help_heading = "Telemetry")]
    metrics_export_interval: Option<Duration>,
    /// Serve Prometheus metrics on /metrics.
    #[arg(long, env = "PROMETHEUS", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = boolean, help_heading = "Telemetry")]
    prometheus: Option<bool>,
    /// Where /metrics listens (host:port, default :8081; an empty host is
    /// every interface).
    #[arg(long, env = "NSM_PROMETHEUS_LISTEN_ON", value_name = "HOST:PORT",
          value_parser = listen_address, help_heading = "Telemetry")]
    prometheus_listen_on: Option<SocketAddr>,
}

/// NSM's default collector, in the observability namespace.
const DEFAULT_OTLP_ENDPOINT: &str = "http://otel-collector.observability.svc.cluster.local:4317";

/// Telemetry and logging: the NSM variables (and their flags).
#[derive(Clone, Debug)]
pub(crate) struct Observe {
    /// `--log-level`; `None` leaves RUST_LOG's filter.
    pub(crate) log_level: Option<tracing::Level>,
    /// The collector's URL, with `TELEMETRY`.
    pub(crate) otlp: Option<String>,
    pub(crate) export_interval: Duration,
    /// Where /metrics listens, with `PROMETHEUS`.
    pub(crate) prometheus: Option<SocketAddr>,
}

/// What the program was asked to do.
#[derive(Debug)]
pub(crate) enum Mode {
    Demo {
        connections: usize,
    },
    Passthrough {
        listen: Url,
        connect_to: Url,
        dial_timeout: Duration,
        hop: Hop,
        log: LogFormat,
        tls: Option<TlsSource>,
        observe: Observe,
    },
    Endpoint {
        listen: Url,
        hop: Hop,
        log: LogFormat,
        tls: Option<TlsSource>,
        observe: Observe,
    },
    /// `--help`: what to print.
    Help(String),
}

/// This hop in connections' paths: `--name` and `--max-token-lifetime`.
#[derive(Clone, Debug)]
pub(crate) struct Hop {
    pub(crate) name: String,
    pub(crate) max_lifetime: Duration,
}

/// Where the TLS identity comes from.
#[derive(Clone, Debug)]
pub(crate) enum TlsSource {
    Files(TlsFiles),
    /// The SPIFFE Workload API (`--spiffe`).
    Spiffe,
}

/// The PEM files `--tls-cert`, `--tls-key` and `--tls-ca` name.
#[derive(Clone, Debug)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// The mode `args` (without the program's name) ask for, or a one-line
/// error naming the mistake.
pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Mode, String> {
    let args: Vec<OsString> = std::iter::once(OsString::from("passthrough"))
        .chain(args)
        .collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) if err.kind() == clap::error::ErrorKind::DisplayHelp => {
            return Ok(Mode::Help(err.render().to_string()));
        }
        Err(err) => return Err(one_line(&err, &args)),
    };
    cli.mode()
}

/// The environment variable a bad value came from: the option's, when the
/// command line does not give the option.
fn from_environment(err: &clap::Error, args: &[OsString]) -> Option<String> {
    let clap::error::ContextValue::String(arg) = err.get(clap::error::ContextKind::InvalidArg)?
    else {
        return None;
    };
    let long = arg.split([' ', '=']).next()?.strip_prefix("--")?;
    let command = Cli::command();
    let option = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?;
    let given = args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
    });
    let var = option.get_env()?.to_str()?;
    (!given && std::env::var_os(var).is_some()).then(|| var.to_owned())
}

/// clap's error on one line: its message, the environment variable it
/// came from, and its hints after a `;`.
fn one_line(err: &clap::Error, args: &[OsString]) -> String {
    let rendered = err.render().to_string();
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .collect();
    let text = lines.join("; ");
    let text = text.strip_prefix("error: ").unwrap_or(&text).to_owned();
    match from_environment(err, args) {
        Some(var) => format!("{var}: {text} (see --help)"),
        None => format!("{text} (see --help)"),
    }
}

impl Cli {
    fn mode(self) -> Result<Mode, String> {
        let log_format = self.log_format.is_some();
        let log = self.log_format.unwrap_or(LogFormat::Text);
        let tls = match (self.tls_cert, self.tls_key, self.tls_ca) {
            (Some(cert), Some(key), ca) => Some(TlsFiles { cert, key, ca }),
            (None, None, None) => None,
            (None, None, Some(_)) => return Err("--tls-ca needs --tls-cert and --tls-key".into()),
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        if self.connect_to.is_some() && tls.as_ref().is_some_and(|t| t.ca.is_none()) {
            return Err(
                "a passthrough with TLS checks the remote it dials against a CA: add --tls-ca FILE"
                    .into(),
            );
        }
        let tls = match (tls, self.spiffe) {
            (Some(_), true) => {
                return Err("--spiffe and the --tls-* files are alternatives".into());
            }
            (Some(files), false) => Some(TlsSource::Files(files)),
            (None, true) => Some(TlsSource::Spiffe),
            (None, false) => None,
        };
        if self.listen.is_none() && tls.is_some() {
            return Err("the TLS options are for --listen".into());
        }
        if self.listen.is_none() && (self.name.is_some() || self.max_token_lifetime.is_some()) {
            return Err("--name and --max-token-lifetime are for --listen".into());
        }
        let observe = Observe {
            log_level: self.log_level,
            otlp: self.telemetry.unwrap_or(false).then(|| {
                self.open_telemetry_endpoint
                    .unwrap_or_else(|| DEFAULT_OTLP_ENDPOINT.to_owned())
            }),
            export_interval: self
                .metrics_export_interval
                .unwrap_or(Duration::from_secs(10)),
            prometheus: self.prometheus.unwrap_or(false).then(|| {
                self.prometheus_listen_on
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8081)))
            }),
        };
        let hop = Hop {
            name: match self.name {
                Some(name) if name.is_empty() => return Err("--name must not be empty".into()),
                Some(name) => name,
                None => host_name(),
            },
            max_lifetime: self
                .max_token_lifetime
                .unwrap_or(connect_runtime::DEFAULT_MAX_TOKEN_LIFETIME),
        };
        match (self.endpoint, self.listen, self.connect_to) {
            (true, Some(listen), None)
                if self.dial_timeout.is_none() && self.connections.is_none() =>
            {
                Ok(Mode::Endpoint {
                    listen,
                    hop,
                    log,
                    tls,
                    observe,
                })
            }
            (true, None, _) => Err("--endpoint needs --listen URL".into()),
            (true, Some(_), _) => {
                Err("--endpoint takes only --listen, --name, --max-token-lifetime, --log-format and the TLS options".into())
            }
            (false, Some(listen), Some(connect_to)) if self.connections.is_none() => {
                Ok(Mode::Passthrough {
                    listen,
                    connect_to,
                    dial_timeout: self
                        .dial_timeout
                        .unwrap_or(connect_runtime::DEFAULT_DIAL_TIMEOUT),
                    hop,
                    log,
                    tls,
                    observe,
                })
            }
            (false, Some(_), None) => Err("--connect-to URL is required with --listen".into()),
            (false, None, Some(_)) => Err("--listen URL is required with --connect-to".into()),
            (false, None, None) if self.dial_timeout.is_none() && !log_format => Ok(Mode::Demo {
                connections: self.connections.unwrap_or(1000),
            }),
            _ => Err(
                "--connections is for the demo; --dial-timeout and --log-format for --listen"
                    .into(),
            ),
        }
    }
}

/// This machine's name: the pod's in Kubernetes, as NSM's `NSM_NAME` is.
fn host_name() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "passthrough".to_owned())
}

/// A URL the program can listen on or dial, checked up front.
fn url(text: &str) -> Result<Url, String> {
    Target::parse(text).map_err(|e| e.to_string())?;
    Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))
}

fn positive(text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("a positive number is needed, not `{text}`"))
}

pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration like 100ms, 1.5s, 10m or 1h");
    // The unit is the trailing letters, so that `1e3s` is a number of seconds.
    let at = text
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .len();
    let (number, unit) = text.split_at(at);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(bad)
}

fn level(text: &str) -> Result<tracing::Level, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not a log level: expected trace, debug, info, warn or error")
    })
}

fn boolean(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(format!("`{text}` is not true or false")),
    }
}

/// The collector: `host:port` as NSM gives it, or an `http://` URL.
fn otlp_endpoint(text: &str) -> Result<String, String> {
    let url = match text.contains("://") {
        true => text.to_owned(),
        false => format!("http://{text}"),
    };
    match Url::parse(&url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.port().is_some() => {
            Ok(url)
        }
        _ => Err(format!(
            "`{text}` is not a collector address like otel-collector:4317"
        )),
    }
}

/// `host:port` or `:port` (every interface), as Go's listeners take it.
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    let bad = || format!("`{text}` is not an address like :8081 or 127.0.0.1:8081");
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.replace("localhost:", "127.0.0.1:"),
    };
    full.parse().map_err(|_| bad())
}
