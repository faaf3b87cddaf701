//! Why a dial failed, and how errors are rendered into a status.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use tonic::Status;

use super::target::UrlError;
use super::tls::TlsError;

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The URL is not one connect can dial.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The TLS options cannot dial this target (no name to verify, say).
    #[error("cannot dial {url}: {source}")]
    Tls {
        /// Where the dial was going.
        url: String,
        /// What is wrong.
        #[source]
        source: TlsError,
    },
    /// No answer from the remote within the dial timeout.
    #[error("dialing {url}: no answer from the remote within {timeout:?}")]
    Timeout {
        /// Where the dial was going.
        url: String,
        /// The dial timeout.
        timeout: Duration,
    },
    /// Connecting failed: refused, no such socket, the TLS or HTTP/2
    /// handshake, the connection closed before the remote answered.
    #[error("dialing {url}: {source}")]
    Connect {
        /// Where the dial was going.
        url: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The remote answered, but not with HTTP/2.
    #[error("dialing {url}: the remote does not speak HTTP/2")]
    NotHttp2 {
        /// Where the dial was going.
        url: String,
    },
}

impl From<DialError> for Status {
    fn from(err: DialError) -> Self {
        match err {
            DialError::Url(err) => err.into(),
            err @ DialError::Tls { .. } => Status::invalid_argument(error_chain(&err)),
            err => Status::unavailable(error_chain(&err)),
        }
    }
}

/// Renders an error and its causes, `outer: inner: innermost`, skipping a
/// cause the text already ends with.
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The first error of type `E` in `err`'s chain of causes, `err` included.
pub(crate) fn source_of<'a, E: StdError + 'static>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a E> {
    let mut source = Some(err);
    while let Some(cause) = source {
        if let Some(found) = cause.downcast_ref::<E>() {
            return Some(found);
        }
        source = cause.source();
    }
    None
}
