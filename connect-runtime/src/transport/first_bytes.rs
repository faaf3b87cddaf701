//! A peer's first bytes, checked as they are read: a server's first frame
//! must be SETTINGS; a client's first bytes the HTTP/2 connection preface
//! and a whole SETTINGS frame.

use std::io;
use std::pin::Pin;

use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// A frame header's length (24 bits) and type octet, the type the first
/// frame each way must have, and the client's connection preface.
pub(super) const FRAME_HEADER_LEN: usize = 9;
pub(super) const FRAME_TYPE_OFFSET: usize = 3;
pub(super) const FRAME_FLAGS_OFFSET: usize = 4;
pub(super) const FRAME_TYPE_HEADERS: u8 = 0x1;
pub(super) const FRAME_TYPE_SETTINGS: u8 = 0x4;
pub(super) const CLIENT_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A frame's payload length: the first three octets of its header.
pub(super) fn payload_len(header: &[u8]) -> usize {
    usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2])
}
/// The largest first SETTINGS frame a peer may send (HTTP/2's initial
/// maximum frame size).
const MAX_FIRST_FRAME: usize = 16_384;

/// What a peer's first bytes must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A server's: a frame whose type is SETTINGS.
    ServerSettings,
    /// A client's: the connection preface, then a whole SETTINGS frame.
    ClientPreface,
}

impl Expect {
    /// Where the first frame's header starts.
    fn header_at(self) -> usize {
        match self {
            Self::ServerSettings => 0,
            Self::ClientPreface => CLIENT_PREFACE.len(),
        }
    }
}

/// Why a peer's first bytes failed a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unanswered {
    /// Not enough came by the deadline.
    Silent,
    /// The first bytes were not HTTP/2's (the preface and a SETTINGS frame).
    NotHttp2,
}

impl Unanswered {
    fn kind_and_text(self) -> (io::ErrorKind, &'static str) {
        match self {
            Self::Silent => (io::ErrorKind::TimedOut, "the peer sent nothing in time"),
            Self::NotHttp2 => (io::ErrorKind::InvalidData, "the peer does not speak HTTP/2"),
        }
    }

    pub(super) fn error(self) -> io::Error {
        let (kind, text) = self.kind_and_text();
        io::Error::new(kind, text)
    }

    /// Why `err` failed a stream, if this was it. (h2 keeps an I/O error's
    /// kind and text only, so they are what is matched.)
    pub(crate) fn of(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut source = Some(err);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<io::Error>() {
                return [Self::Silent, Self::NotHttp2].into_iter().find(|why| {
                    let (kind, text) = why.kind_and_text();
                    io.kind() == kind && io.to_string() == text
                });
            }
            source = cause.source();
        }
        None
    }
}

/// What the peer's first bytes must be, and by when.
pub(super) struct FirstBytes {
    /// The deadline.
    pub(super) by: Pin<Box<Sleep>>,
    expect: Expect,
    /// Bytes read so far.
    seen: usize,
    /// The first frame's header, as far as it has come.
    header: [u8; FRAME_HEADER_LEN],
    /// How many bytes make the whole of what is expected, once known.
    whole: Option<usize>,
    /// Who hears how they went.
    pub(super) answered: Option<oneshot::Sender<Result<(), Unanswered>>>,
}

/// How the first bytes stand after a read.
pub(super) enum Progress {
    More,
    Done,
    Wrong,
}

impl FirstBytes {
    /// Expects `expect` by `deadline`; the receiver hears how it went.
    pub(super) fn new(
        deadline: Instant,
        expect: Expect,
    ) -> (Self, oneshot::Receiver<Result<(), Unanswered>>) {
        let (sender, receiver) = oneshot::channel();
        let first = Self {
            by: Box::pin(tokio::time::sleep_until(deadline)),
            expect,
            seen: 0,
            header: [0; FRAME_HEADER_LEN],
            whole: None,
            answered: Some(sender),
        };
        (first, receiver)
    }

    /// Takes in the next bytes the peer sent.
    pub(super) fn feed(&mut self, read: &[u8]) -> Progress {
        let header_at = self.expect.header_at();
        for &byte in read {
            let at = self.seen;
            self.seen += 1;
            if at < header_at {
                if byte != CLIENT_PREFACE[at] {
                    return Progress::Wrong;
                }
                continue;
            }
            let in_header = at - header_at;
            if in_header < FRAME_HEADER_LEN {
                self.header[in_header] = byte;
            }
            if in_header == FRAME_TYPE_OFFSET {
                if byte != FRAME_TYPE_SETTINGS {
                    return Progress::Wrong;
                }
                if self.expect == Expect::ServerSettings {
                    return Progress::Done;
                }
            }
            if in_header + 1 == FRAME_HEADER_LEN {
                let len = payload_len(&self.header);
                if len > MAX_FIRST_FRAME {
                    return Progress::Wrong;
                }
                self.whole = Some(header_at + FRAME_HEADER_LEN + len);
            }
            if self.whole.is_some_and(|whole| self.seen >= whole) {
                return Progress::Done;
            }
        }
        Progress::More
    }
}
