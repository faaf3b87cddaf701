//! Why the served side refused a caller's TLS handshake, in words the
//! caller's operator can act on: what went wrong, and what to do.

use std::io;

use rustls::{CertificateError, InvalidMessage};

use super::handle::ConnectionStats;

/// A failed handshake, by cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not done within the handshake timeout (counted, logged at debug: a
    /// flood of these is an attack, not a misconfiguration).
    TimedOut,
    /// The caller spoke plaintext to a TLS listener.
    Plaintext,
    /// Mutual TLS, and the caller presented no certificate.
    NoCertificate,
    /// The caller's certificate is not signed by the CA this server trusts.
    UnknownCa,
    /// The caller's certificate has expired, or is not valid yet.
    Expired,
    /// The caller refused this server's certificate, with this alert.
    RefusedUs(String),
    /// Anything else, as TLS said it.
    Other(String),
}

impl Refusal {
    pub(crate) fn of(err: &io::Error) -> Self {
        if err.kind() == io::ErrorKind::TimedOut {
            return Self::TimedOut;
        }
        let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return Self::Other(err.to_string());
        };
        match tls {
            rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType) => Self::Plaintext,
            rustls::Error::NoCertificatesPresented => Self::NoCertificate,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Self::UnknownCa,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => Self::Expired,
            rustls::Error::AlertReceived(alert) => Self::RefusedUs(format!("{alert:?}")),
            other => Self::Other(other.to_string()),
        }
    }

    /// What happened and what to do about it, on one line.
    pub(crate) fn explain(&self) -> String {
        match self {
            Self::TimedOut => {
                "the TLS handshake did not finish within the handshake timeout".into()
            }
            Self::Plaintext => {
                "the caller spoke plaintext to this TLS listener: dial it with TLS, \
                 or serve without TLS"
                    .into()
            }
            Self::NoCertificate => "the caller presented no client certificate: this listener \
                 requires one (mutual TLS) signed by its CA"
                .into(),
            Self::UnknownCa => "the caller's certificate is not signed by the CA this listener \
                 trusts: issue it from that CA, or give the listener the caller's CA"
                .into(),
            Self::Expired => "the caller's certificate has expired or is not valid yet: renew \
                 it, or check the clocks"
                .into(),
            Self::RefusedUs(alert) => format!(
                "the caller refused this listener's certificate ({alert}): it must trust the CA \
                 that signed it, and the certificate must name the host or address it dialed"
            ),
            Self::Other(why) => format!("the TLS handshake failed: {why}"),
        }
    }

    /// Counts it in `stats`.
    pub(crate) fn count(&self, stats: &mut ConnectionStats) {
        match self {
            Self::TimedOut => stats.timed_out += 1,
            other => {
                stats.refused += 1;
                match other {
                    Self::Plaintext => stats.plaintext += 1,
                    Self::NoCertificate => stats.no_client_certificate += 1,
                    Self::UnknownCa | Self::Expired => stats.untrusted_certificate += 1,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(err: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn each_cause_is_named_with_what_to_do() {
        let cases = [
            (
                io(rustls::Error::InvalidMessage(
                    InvalidMessage::InvalidContentType,
                )),
                "plaintext",
            ),
            (
                io(rustls::Error::NoCertificatesPresented),
                "no client certificate",
            ),
            (
                io(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
                "not signed by the CA",
            ),
            (
                io(rustls::Error::InvalidCertificate(CertificateError::Expired)),
                "expired",
            ),
            (
                io(rustls::Error::AlertReceived(
                    rustls::AlertDescription::UnknownCA,
                )),
                "refused this listener's certificate (UnknownCA)",
            ),
            (
                io::Error::new(io::ErrorKind::TimedOut, "slow"),
                "handshake timeout",
            ),
            (io::Error::other("reset"), "the TLS handshake failed: reset"),
        ];
        for (err, said) in cases {
            let explained = Refusal::of(&err).explain();
            assert!(explained.contains(said), "{explained}");
        }
    }

    #[test]
    fn each_cause_has_its_counter() {
        let mut stats = ConnectionStats::default();
        for refusal in [
            Refusal::Plaintext,
            Refusal::NoCertificate,
            Refusal::UnknownCa,
            Refusal::Expired,
            Refusal::RefusedUs("x".into()),
            Refusal::TimedOut,
        ] {
            refusal.count(&mut stats);
        }
        assert_eq!(stats.refused, 5);
        assert_eq!(stats.timed_out, 1);
        assert_eq!(
            (
                stats.plaintext,
                stats.no_client_certificate,
                stats.untrusted_certificate
            ),
            (1, 1, 2)
        );
    }
}
