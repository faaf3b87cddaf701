//! Command-line parsing, on `lexopt`: strict enough that every mistake gets a
//! one-line error naming it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use lexopt::Arg;
use url::Url;

use connect_runtime::Target;

pub(crate) const USAGE: &str = "\
usage:
  passthrough                                   run the demo on loopback and report
  passthrough --connections N                   the demo with N connections (default 1000)
  passthrough --listen URL --connect-to URL     forward every request to URL
              [--dial-timeout DURATION] [--log-format text|json] [TLS]
  passthrough --endpoint --listen URL           a minimal NSM endpoint
              [--log-format text|json] [TLS]

TLS: --tls-cert FILE --tls-key FILE [--tls-ca FILE]
  The listener serves with that certificate and key (PEM); with a CA it
  requires client certificates signed by it. A passthrough dials
  --connect-to with the same identity and verifies the remote against the
  CA, which it then needs.
 or --spiffe
  Mutual TLS with this workload's SPIFFE identity, from the Workload API at
  SPIFFE_ENDPOINT_SOCKET (rotations followed), for the listener and for
  --connect-to; peers must be of the same trust domain. (Builds with the
  connect-runtime feature `spiffe`.)

URLs are tcp://host:port (port 0 picks one) or unix:///path. Durations are
like 100ms, 2s or 1.5s. RUST_LOG sets the log level (default info).";

#[derive(Debug)]
pub(crate) enum Mode {
    Demo {
        connections: usize,
    },
    Passthrough {
        listen: Url,
        connect_to: Url,
        dial_timeout: Duration,
        log: LogFormat,
        tls: Option<TlsSource>,
    },
    Endpoint {
        listen: Url,
        log: LogFormat,
        tls: Option<TlsSource>,
    },
    Help,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Mode, String> {
    let mut listen = None;
    let mut connect_to = None;
    let mut dial_timeout = None;
    let mut log = None;
    let mut endpoint = false;
    let mut connections = None;
    let (mut cert, mut key, mut ca) = (None, None, None);
    let mut spiffe = false;
    let mut seen = Vec::new();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(message)? {
        let flag = match arg {
            Arg::Short(c) => format!("-{c}"),
            Arg::Long(name) => format!("--{name}"),
            Arg::Value(value) => {
                return Err(format!(
                    "unknown argument `{}` (see --help)",
                    value.display()
                ));
            }
        };
        if seen.contains(&flag) {
            return Err(format!("{flag} is given twice"));
        }
        seen.push(flag.clone());
        let mut value = || parser.value().map_err(|_| format!("{flag} needs a value"));
        let text = |value: OsString| {
            value
                .into_string()
                .map_err(|value| format!("{flag} takes text, not `{}`", value.display()))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Mode::Help),
            "--endpoint" => endpoint = true,
            "--listen" => listen = Some(url(&text(value()?)?)?),
            "--connect-to" => connect_to = Some(url(&text(value()?)?)?),
            "--dial-timeout" => dial_timeout = Some(duration(&text(value()?)?)?),
            "--tls-cert" => cert = Some(PathBuf::from(value()?)),
            "--tls-key" => key = Some(PathBuf::from(value()?)),
            "--tls-ca" => ca = Some(PathBuf::from(value()?)),
            "--spiffe" => spiffe = true,
            "--log-format" => {
                log = Some(match text(value()?)?.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => return Err(format!("--log-format is text or json, not `{other}`")),
                })
            }
            "--connections" => {
                let text = text(value()?)?;
                connections = Some(text.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(
                    || format!("--connections takes a positive number, not `{text}`"),
                )?)
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    let log_format = log.is_some();
    let log = log.unwrap_or(LogFormat::Text);
    let tls = match (cert, key, ca) {
        (Some(cert), Some(key), ca) => Some(TlsFiles { cert, key, ca }),
        (None, None, None) => None,
        (None, None, Some(_)) => return Err("--tls-ca needs --tls-cert and --tls-key".into()),
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    if connect_to.is_some() && tls.as_ref().is_some_and(|t| t.ca.is_none()) {
        return Err("--tls-ca is needed to verify the remote --connect-to names".into());
    }
    let tls = match (tls, spiffe) {
        (Some(_), true) => return Err("--spiffe and the --tls-* files are alternatives".into()),
        (Some(files), false) => Some(TlsSource::Files(files)),
        (None, true) => Some(TlsSource::Spiffe),
        (None, false) => None,
    };
    if listen.is_none() && tls.is_some() {
        return Err("the TLS options are for --listen".into());
    }
    match (endpoint, listen, connect_to) {
        (true, Some(listen), None) if dial_timeout.is_none() && connections.is_none() => {
            Ok(Mode::Endpoint { listen, log, tls })
        }
        (true, None, _) => Err("--endpoint needs --listen URL".into()),
        (true, Some(_), _) => {
            Err("--endpoint takes only --listen, --log-format and the TLS options".into())
        }
        (false, Some(listen), Some(connect_to)) if connections.is_none() => Ok(Mode::Passthrough {
            listen,
            connect_to,
            dial_timeout: dial_timeout.unwrap_or(connect_runtime::DEFAULT_DIAL_TIMEOUT),
            log,
            tls,
        }),
        (false, Some(_), None) => Err("--connect-to URL is required with --listen".into()),
        (false, None, Some(_)) => Err("--listen URL is required with --connect-to".into()),
        (false, None, None) if dial_timeout.is_none() && !log_format => Ok(Mode::Demo {
            connections: connections.unwrap_or(1000),
        }),
        _ => Err(
            "--connections is for the demo; --dial-timeout and --log-format for --listen".into(),
        ),
    }
}

/// The parser's own errors, worded like ours.
fn message(err: lexopt::Error) -> String {
    match err {
        lexopt::Error::UnexpectedValue { option, value } => {
            format!("{option} takes no value, not `{}`", value.display())
        }
        other => other.to_string(),
    }
}

/// A URL the program can listen on or dial, checked up front.
fn url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    Target::from_url(&url).map_err(|e| e.to_string())?;
    Ok(url)
}

pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration like 100ms, 2s or 1.5s");
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
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(bad)
}
