//! Watching the HTTP/2 frames a server writes for the streams it resets
//! as malformed (`RST_STREAM` with `PROTOCOL_ERROR`): h2 refuses such a
//! stream itself, before any of our code sees it, and says so only at
//! debug. A caller whose every call fails that way (grpcio on a unix
//! socket, sending the socket path as `:authority`) deserves a warning.

use super::first_bytes::{FRAME_HEADER_LEN as HEADER, FRAME_TYPE_OFFSET, payload_len};

/// `RST_STREAM`'s frame type, and the `PROTOCOL_ERROR` code.
const RST_STREAM: u8 = 0x3;
const PROTOCOL_ERROR: u32 = 0x1;

/// A parser of the outbound frame stream, fed each chunk as it is
/// written; calls `malformed` for each stream reset with `PROTOCOL_ERROR`.
pub(crate) struct Resets {
    header: [u8; HEADER],
    filled: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// The error code of an `RST_STREAM` being read, and its bytes so far.
    code: Option<(u32, usize)>,
    malformed: Box<dyn FnMut() + Send + Sync>,
}

impl Resets {
    pub(crate) fn new(malformed: impl FnMut() + Send + Sync + 'static) -> Self {
        Self {
            header: [0; HEADER],
            filled: 0,
            payload_left: 0,
            code: None,
            malformed: Box::new(malformed),
        }
    }

    /// Reads bytes the server has written.
    pub(crate) fn written(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                if let Some((code, read)) = &mut self.code {
                    for &byte in &bytes[..n] {
                        if *read < 4 {
                            *code = (*code << 8) | u32::from(byte);
                            *read += 1;
                        }
                    }
                }
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            let n = (HEADER - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == HEADER {
                self.filled = 0;
                let length = payload_len(&self.header);
                self.code = (self.header[FRAME_TYPE_OFFSET] == RST_STREAM).then_some((0, 0));
                self.payload_left = length;
                if length == 0 {
                    self.frame_done();
                }
            }
        }
    }

    fn frame_done(&mut self) {
        if let Some((code, 4)) = self.code.take()
            && code == PROTOCOL_ERROR
        {
            (self.malformed)();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn protocol_error_resets_are_heard_however_the_bytes_are_split() {
        let mut written = Vec::new();
        written.extend(frame(0x4, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        written.extend(frame(0x4, 0, &[])); // SETTINGS ack, empty
        written.extend(frame(RST_STREAM, 1, &1u32.to_be_bytes())); // PROTOCOL_ERROR
        written.extend(frame(0x0, 3, b"data with \x03 in it")); // DATA
        written.extend(frame(RST_STREAM, 5, &8u32.to_be_bytes())); // CANCEL: not counted
        written.extend(frame(RST_STREAM, 7, &1u32.to_be_bytes()));
        for chunk in [1, 2, 5, 9, 13, written.len()] {
            let heard = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&heard);
            let mut resets = Resets::new(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            });
            for piece in written.chunks(chunk) {
                resets.written(piece);
            }
            assert_eq!(heard.load(Ordering::Relaxed), 2, "in chunks of {chunk}");
        }
    }
}
