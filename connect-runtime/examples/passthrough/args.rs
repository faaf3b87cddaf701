//! Command-line parsing: small enough to do by hand, strict enough that every
//! mistake gets a one-line error naming it.

use std::path::PathBuf;
use std::time::Duration;

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
        tls: Option<TlsFiles>,
    },
    Endpoint {
        listen: Url,
        log: LogFormat,
        tls: Option<TlsFiles>,
    },
    Help,
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

pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Mode, String> {
    let mut listen = None;
    let mut connect_to = None;
    let mut dial_timeout = None;
    let mut log = None;
    let mut endpoint = false;
    let mut connections = None;
    let (mut cert, mut key, mut ca) = (None, None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Mode::Help),
            "--endpoint" => endpoint = true,
            "--listen" => listen = Some(url(&value("--listen")?)?),
            "--connect-to" => connect_to = Some(url(&value("--connect-to")?)?),
            "--dial-timeout" => dial_timeout = Some(duration(&value("--dial-timeout")?)?),
            "--tls-cert" => cert = Some(PathBuf::from(value("--tls-cert")?)),
            "--tls-key" => key = Some(PathBuf::from(value("--tls-key")?)),
            "--tls-ca" => ca = Some(PathBuf::from(value("--tls-ca")?)),
            "--log-format" => {
                log = Some(match value("--log-format")?.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => return Err(format!("--log-format is text or json, not `{other}`")),
                })
            }
            "--connections" => {
                let text = value("--connections")?;
                connections = Some(text.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(
                    || format!("--connections takes a positive number, not `{text}`"),
                )?)
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
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
        (false, None, None) if dial_timeout.is_none() => Ok(Mode::Demo {
            connections: connections.unwrap_or(1000),
        }),
        _ => Err("--connections is for the demo; --dial-timeout for --listen".into()),
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
