//! The URLs connect can listen on and dial: `tcp://host:port` and
//! `unix:///absolute/path`, checked before anything touches the network.

use std::borrow::Cow;
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
///
/// ```
/// use connect_runtime::{Target, transport::UrlProblem};
///
/// let err = Target::parse("tcp://127.0.0.1").unwrap_err();
/// assert_eq!(err.problem, UrlProblem::MissingPort);
/// assert_eq!(err.to_string(), "invalid URL `tcp://127.0.0.1`: missing port");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid URL `{url}`: {problem}")]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub problem: UrlProblem,
}

/// What is wrong with a URL connect cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlProblem {
    /// It does not parse as a URL.
    #[error(transparent)]
    Parse(#[from] url::ParseError),
    /// No `scheme://`; for what looks like `host:port`, the `tcp://` URL
    /// that was probably meant.
    #[error("{}", no_scheme(.0.as_deref()))]
    NoScheme(Option<String>),
    /// A scheme other than `tcp` or `unix`.
    #[error("unsupported scheme `{0}`: expected tcp://host:port or unix:///path")]
    Scheme(String),
    /// `user:password@` is given.
    #[error("user-info is not allowed")]
    UserInfo,
    /// `?query` is given.
    #[error("a query is not allowed")]
    Query,
    /// `#fragment` is given.
    #[error("a fragment is not allowed")]
    Fragment,
    /// A `tcp` URL without a host.
    #[error("missing host")]
    MissingHost,
    /// A `tcp` URL without a port.
    #[error("missing port")]
    MissingPort,
    /// A `tcp` URL with a path.
    #[error("a tcp URL has no path")]
    TcpPath,
    /// A `unix` URL with a host or port.
    #[error("a unix URL names no host: use unix:///absolute/path")]
    UnixHost,
    /// A `unix` URL whose path is not absolute, or is `/`.
    #[error("a unix URL needs an absolute socket path")]
    UnixPath,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path")]
    PercentEncoding,
    /// A path whose decoded bytes are not UTF-8.
    #[error("path is not UTF-8")]
    NotUtf8,
    /// The host and port do not form an HTTP `:authority`.
    #[error("`{0}` is not an HTTP authority")]
    Authority(String),
}

fn no_scheme(meant: Option<&str>) -> String {
    match meant {
        Some(url) => format!("no scheme: did you mean {url}?"),
        None => "no scheme: expected tcp://host:port or unix:///path".to_owned(),
    }
}

impl UrlError {
    pub(crate) fn new(url: impl fmt::Display, problem: UrlProblem) -> Self {
        Self {
            url: url.to_string(),
            problem,
        }
    }
}

impl From<UrlError> for Status {
    fn from(err: UrlError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

/// What [`dial`](crate::dial), [`serve`](crate::serve) and
/// [`Serve::bind`](crate::Serve::bind) take as where to go: a `&str` or
/// `String` (`"tcp://127.0.0.1:5002"`, `"unix:///run/nsm/nse.sock"`), or a
/// [`Url`], owned or borrowed. Sealed: it has no methods of its own to
/// implement.
///
/// ```
/// use connect_runtime::transport::IntoUrl;
///
/// fn takes(url: impl IntoUrl) {}
/// takes("tcp://127.0.0.1:5002");
/// takes(url::Url::parse("unix:///run/nsm/nse.sock").unwrap());
/// ```
pub trait IntoUrl: into_url::Sealed {}

mod into_url {
    use url::Url;

    use super::UrlError;

    pub trait Sealed {
        /// The URL, parsed but not yet checked.
        fn into_url(self) -> Result<Url, UrlError>;
    }

    impl Sealed for &str {
        fn into_url(self) -> Result<Url, UrlError> {
            super::parse(self)
        }
    }

    impl Sealed for String {
        fn into_url(self) -> Result<Url, UrlError> {
            self.as_str().into_url()
        }
    }

    impl Sealed for &String {
        fn into_url(self) -> Result<Url, UrlError> {
            self.as_str().into_url()
        }
    }

    impl Sealed for Url {
        fn into_url(self) -> Result<Url, UrlError> {
            Ok(self)
        }
    }

    impl Sealed for &Url {
        fn into_url(self) -> Result<Url, UrlError> {
            Ok(self.clone())
        }
    }
}

impl IntoUrl for &str {}
impl IntoUrl for String {}
impl IntoUrl for &String {}
impl IntoUrl for Url {}
impl IntoUrl for &Url {}

/// Parses `text` as a URL; text with no `scheme://` (which every URL we
/// take has) gets a hint instead of the parser's error, or instead of
/// `host` read as the scheme of `host:port`.
fn parse(text: &str) -> Result<Url, UrlError> {
    let host_port = !text.contains('/')
        && text
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    let no_scheme = || {
        let meant = host_port.then(|| format!("tcp://{text}"));
        UrlError::new(text, UrlProblem::NoScheme(meant))
    };
    match Url::parse(text) {
        // `localhost:5002` parses, with `localhost` as its scheme.
        Ok(url) if host_port && !matches!(url.scheme(), "tcp" | "unix") => Err(no_scheme()),
        Ok(url) => Ok(url),
        Err(_) if !text.contains(':') || host_port => Err(no_scheme()),
        Err(e) => Err(UrlError::new(text, UrlProblem::Parse(e))),
    }
}

/// The URL `url` names, checked as a [`Target`].
pub(crate) fn checked(url: impl IntoUrl) -> Result<(Url, Target), UrlError> {
    let url = into_url::Sealed::into_url(url)?;
    let target = Target::from_url(&url)?;
    Ok((url, target))
}

impl Target {
    /// Parses and validates a URL string.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        Self::from_url(&parse(url)?)
    }

    /// Validates a parsed URL: `tcp://host:port` or `unix:///path`, with no
    /// user-info, query or fragment.
    pub fn from_url(url: &Url) -> Result<Self, UrlError> {
        Ok(match Valid::of(url)? {
            Valid::Tcp(host, port) => Target::Tcp {
                host: match host {
                    url::Host::Domain(name) => name.to_owned(),
                    url::Host::Ipv4(ip) => ip.to_string(),
                    url::Host::Ipv6(ip) => ip.to_string(),
                },
                port,
            },
            Valid::Unix(path) => Target::Unix {
                path: PathBuf::from(path.into_owned()),
            },
        })
    }

    /// Validates a URL as [`Target::from_url`] does, without building the
    /// target (for a check on every call).
    pub(crate) fn check(url: &Url) -> Result<(), UrlError> {
        Valid::of(url).map(drop)
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

/// A valid URL's target, borrowed from it.
enum Valid<'a> {
    Tcp(url::Host<&'a str>, u16),
    Unix(Cow<'a, str>),
}

impl<'a> Valid<'a> {
    fn of(url: &'a Url) -> Result<Self, UrlError> {
        let fail = |problem| UrlError::new(url, problem);
        if !url.username().is_empty() || url.password().is_some() {
            return Err(fail(UrlProblem::UserInfo));
        }
        if url.query().is_some() {
            return Err(fail(UrlProblem::Query));
        }
        if url.fragment().is_some() {
            return Err(fail(UrlProblem::Fragment));
        }
        match url.scheme() {
            "tcp" => {
                let host = match url.host() {
                    Some(url::Host::Domain("")) | None => {
                        return Err(fail(UrlProblem::MissingHost));
                    }
                    Some(host) => host,
                };
                let port = url.port().ok_or_else(|| fail(UrlProblem::MissingPort))?;
                if !matches!(url.path(), "" | "/") {
                    return Err(fail(UrlProblem::TcpPath));
                }
                Ok(Valid::Tcp(host, port))
            }
            "unix" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) || url.port().is_some() {
                    return Err(fail(UrlProblem::UnixHost));
                }
                let path = url.path();
                if !path.starts_with('/') || path == "/" {
                    return Err(fail(UrlProblem::UnixPath));
                }
                percent_decode(path).map(Valid::Unix).map_err(fail)
            }
            other => Err(fail(UrlProblem::Scheme(other.to_owned()))),
        }
    }
}

/// Undoes the URL's percent-encoding of a path (spaces and the like).
///
/// Every `%` must start an escape of exactly two hex digits: a malformed one
/// such as `%+f` or `%2` is an error, not a literal `%` nor a guess.
fn percent_decode(path: &str) -> Result<Cow<'_, str>, UrlProblem> {
    let bytes = path.as_bytes();
    let malformed = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err(UrlProblem::PercentEncoding);
    }
    percent_encoding::percent_decode(bytes)
        .decode_utf8()
        .map_err(|_| UrlProblem::NotUtf8)
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
            Target::parse("unix:///tmp/%41%2b%25%C3%A9.sock").unwrap(),
            Target::Unix {
                path: "/tmp/A+%\u{e9}.sock".into()
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
            (
                "not a url",
                "no scheme: expected tcp://host:port or unix:///path",
            ),
            (
                "127.0.0.1:5002",
                "no scheme: did you mean tcp://127.0.0.1:5002?",
            ),
            (
                "localhost:5002",
                "no scheme: did you mean tcp://localhost:5002?",
            ),
            ("/run/nse.sock", "no scheme: expected"),
            ("unix:///tmp/%+f.sock", "malformed percent-encoding"),
            ("unix:///tmp/%-1.sock", "malformed percent-encoding"),
            ("unix:///tmp/%zz.sock", "malformed percent-encoding"),
            ("unix:///tmp/%2", "malformed percent-encoding"),
            ("unix:///tmp/x%", "malformed percent-encoding"),
            ("unix:///tmp/%ff.sock", "not UTF-8"),
        ];
        for (url, reason) in cases {
            let err = Target::parse(url).unwrap_err();
            assert!(err.to_string().contains(reason), "{url}: {err}");
            assert!(err.to_string().contains(url), "{url}: {err}");
            // The per-call check says the same as building the target.
            if let Some(parsed) = Url::parse(url).ok().filter(|_| url.contains("://")) {
                let checked = Target::check(&parsed).unwrap_err();
                assert_eq!(checked.to_string(), err.to_string());
            }
            assert_eq!(Status::from(err).code(), tonic::Code::InvalidArgument);
        }
        for url in ["tcp://[::1]:7", "tcp://h:1", "unix:///tmp/a%20b.sock"] {
            assert!(Target::check(&Url::parse(url).unwrap()).is_ok(), "{url}");
        }
    }
}
