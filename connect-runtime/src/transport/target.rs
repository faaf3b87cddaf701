//! The URLs connect can listen on and dial: `tcp://host:port` and
//! `unix:///absolute/path`, checked before anything touches the network.

use std::fmt;
use std::path::{Path, PathBuf};

use tonic::Status;
use url::Url;

/// A validated place to listen on or dial.
///
/// ```
/// use connect_runtime::Target;
///
/// let tcp = Target::parse("tcp://127.0.0.1:5002").unwrap();
/// assert_eq!(tcp.authority(), "127.0.0.1:5002");
///
/// let unix = Target::parse("unix:///run/nsm/nsm.sock").unwrap();
/// assert_eq!(unix.unix_path().unwrap().to_str(), Some("/run/nsm/nsm.sock"));
///
/// let err = Target::parse("http://example.com").unwrap_err();
/// assert!(err.to_string().contains("unsupported scheme `http`"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A TCP address; `host` is a name or an IP address (IPv6 without brackets).
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port; 0 asks the system for a free one when listening.
        port: u16,
    },
    /// A unix domain socket at an absolute path.
    Unix {
        /// The socket file.
        path: PathBuf,
    },
}

/// A URL that connect cannot use, and why.
///
/// As a gRPC status it is `InvalidArgument` (see the `From` impl), since the
/// URL came from the caller or its configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid URL `{url}`: {reason}")]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl UrlError {
    fn new(url: impl fmt::Display, reason: impl Into<String>) -> Self {
        Self {
            url: url.to_string(),
            reason: reason.into(),
        }
    }
}

impl From<UrlError> for Status {
    fn from(err: UrlError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

impl Target {
    /// Parses and validates a URL string.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let parsed = Url::parse(url).map_err(|e| UrlError::new(url, e.to_string()))?;
        Self::from_url(&parsed)
    }

    /// Validates a parsed URL: `tcp://host:port` or `unix:///path`, with no
    /// user-info, query or fragment.
    pub fn from_url(url: &Url) -> Result<Self, UrlError> {
        let fail = |reason: &str| UrlError::new(url, reason);
        if !url.username().is_empty() || url.password().is_some() {
            return Err(fail("user-info is not allowed"));
        }
        if url.query().is_some() {
            return Err(fail("a query is not allowed"));
        }
        if url.fragment().is_some() {
            return Err(fail("a fragment is not allowed"));
        }
        match url.scheme() {
            "tcp" => {
                let host = match url.host() {
                    Some(url::Host::Domain("")) | None => return Err(fail("missing host")),
                    Some(url::Host::Domain(name)) => name.to_owned(),
                    Some(url::Host::Ipv4(ip)) => ip.to_string(),
                    Some(url::Host::Ipv6(ip)) => ip.to_string(),
                };
                let port = url.port().ok_or_else(|| fail("missing port"))?;
                if !matches!(url.path(), "" | "/") {
                    return Err(fail("a tcp URL has no path"));
                }
                Ok(Target::Tcp { host, port })
            }
            "unix" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) || url.port().is_some() {
                    return Err(fail("a unix URL names no host: use unix:///absolute/path"));
                }
                let path = url.path();
                if !path.starts_with('/') || path == "/" {
                    return Err(fail("a unix URL needs an absolute socket path"));
                }
                let decoded = percent_decode(path).map_err(|reason| fail(&reason))?;
                Ok(Target::Unix {
                    path: PathBuf::from(decoded),
                })
            }
            other => Err(fail(&format!(
                "unsupported scheme `{other}`: expected tcp://host:port or unix:///path"
            ))),
        }
    }

    /// The HTTP/2 `:authority` for calls to this target: `host:port`, or
    /// `localhost` for unix sockets (as grpc-go sends).
    pub fn authority(&self) -> String {
        match self {
            Target::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Target::Tcp { host, port } => format!("{host}:{port}"),
            Target::Unix { .. } => "localhost".to_owned(),
        }
    }

    /// The socket path, for a unix target.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Target::Unix { path } => Some(path),
            Target::Tcp { .. } => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { .. } => write!(f, "tcp://{}", self.authority()),
            Target::Unix { path } => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Undoes the URL's percent-encoding of a path (spaces and the like).
fn percent_decode(path: &str) -> Result<String, String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "malformed percent-encoding in path".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "path is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_tcp_and_unix() {
        assert_eq!(
            Target::parse("tcp://[::1]:0").unwrap(),
            Target::Tcp {
                host: "::1".into(),
                port: 0
            }
        );
        assert_eq!(
            Target::parse("tcp://[::1]:7").unwrap().authority(),
            "[::1]:7"
        );
        assert_eq!(
            Target::parse("unix:///tmp/a%20b.sock").unwrap(),
            Target::Unix {
                path: "/tmp/a b.sock".into()
            }
        );
        assert_eq!(
            Target::parse("unix:/tmp/x.sock").unwrap().to_string(),
            "unix:///tmp/x.sock"
        );
    }

    #[test]
    fn rejects_what_it_cannot_use() {
        let cases = [
            ("http://h:1", "unsupported scheme `http`"),
            ("tcp://h", "missing port"),
            ("tcp://u:p@h:1", "user-info"),
            ("tcp://h:1?x=1", "query"),
            ("tcp://h:1#f", "fragment"),
            ("tcp://h:1/p", "no path"),
            ("unix://host/tmp/x", "names no host"),
            ("unix:///", "absolute socket path"),
            ("not a url", "relative URL without a base"),
        ];
        for (url, reason) in cases {
            let err = Target::parse(url).unwrap_err();
            assert!(err.to_string().contains(reason), "{url}: {err}");
            assert!(err.to_string().contains(url), "{url}: {err}");
            assert_eq!(Status::from(err).code(), tonic::Code::InvalidArgument);
        }
    }
}
