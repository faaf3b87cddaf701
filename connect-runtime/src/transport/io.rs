//! The stream under both sides of the transport, TCP or unix, plain or
//! TLS: closed from outside by a token, failed if the peer's first bytes do
//! not come in time or are not HTTP/2's.

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::first_bytes::{
    Expect, FRAME_FLAGS_OFFSET, FRAME_HEADER_LEN, FRAME_TYPE_HEADERS, FRAME_TYPE_OFFSET,
    FirstBytes, Progress, Unanswered, payload_len,
};
use super::resets::Resets;
use super::socket::Stream;

/// A stream that fails every operation once a token is cancelled, or once
/// its peer's first bytes do not come in time (or, from a server, are not
/// HTTP/2); and that carries `X` (what a server keeps per connection) for
/// as long as it lives.
pub(crate) struct Io<X = ()> {
    stream: Stream,
    close: Option<(CancellationToken, Pin<Box<WaitForCancellationFutureOwned>>)>,
    first: Option<FirstBytes>,
    failed: Option<Unanswered>,
    resets: Option<Resets>,
    /// Whether writes gather (see [`Io::gather_writes`]), and if so whether
    /// the next lone HEADERS waits: spent by the wait, armed by each flush.
    gather: Option<bool>,
    pub(crate) extra: X,
}

impl Io {
    pub(crate) fn new(stream: Stream) -> Self {
        Self {
            stream,
            close: None,
            first: None,
            failed: None,
            resets: None,
            gather: None,
            extra: (),
        }
    }
}

impl<X> Io<X> {
    /// Closes the stream when `token` is cancelled.
    pub(crate) fn close_on(mut self, token: CancellationToken) -> Self {
        let cancelled = Box::pin(token.clone().cancelled_owned());
        self.close = Some((token, cancelled));
        self
    }

    /// Fails the stream unless the peer's first bytes are what `expect`
    /// says, all of them by `deadline` (whatever else it sent). The receiver
    /// hears how they went.
    pub(crate) fn first_bytes_by(
        &mut self,
        deadline: Instant,
        expect: Expect,
    ) -> oneshot::Receiver<Result<(), Unanswered>> {
        let (first, answered) = FirstBytes::new(deadline, expect);
        self.first = Some(first);
        answered
    }

    /// Watches what is written for streams reset as malformed (see
    /// [`Resets`]).
    pub(crate) fn watch_resets(&mut self, resets: Resets) {
        self.resets = Some(resets);
    }

    /// Lets a write of a request's HEADERS alone wait one turn of the
    /// scheduler, so that its DATA leaves in the same write. hyper's client
    /// queues a request's HEADERS at once, and its body from a task of its
    /// own only once the stream is open: without the wait, every call costs
    /// two writes, and its peer two wake-ups. Writes of anything else (a
    /// burst's many frames, a response's flow control) do not wait.
    pub(crate) fn gather_writes(mut self) -> Self {
        self.gather = Some(true);
        self
    }

    /// Whether to write `bufs` now: a write that should gather its body
    /// waits one turn instead (once per flush), waking this task to write
    /// after the tasks already ready.
    fn gathered(&mut self, cx: &mut TaskContext<'_>, bufs: &[io::IoSlice<'_>]) -> bool {
        match &mut self.gather {
            Some(armed @ true) if headers_alone(bufs) => {
                *armed = false;
                cx.waker().wake_by_ref();
                false
            }
            _ => true,
        }
    }

    /// Keeps `extra` with the stream.
    pub(crate) fn with<Y>(self, extra: Y) -> Io<Y> {
        Io {
            stream: self.stream,
            close: self.close,
            first: self.first,
            failed: self.failed,
            resets: self.resets,
            gather: self.gather,
            extra,
        }
    }

    fn fail(&mut self, why: Unanswered) -> io::Error {
        self.failed = Some(why);
        if let Some(answered) = self.first.take().and_then(|f| f.answered) {
            let _ = answered.send(Err(why));
        }
        why.error()
    }

    /// Runs one I/O operation unless the stream is closed or failed; while
    /// it waits, waits for the close and the first bytes' deadline too.
    fn guard<T>(
        &mut self,
        cx: &mut TaskContext<'_>,
        operation: impl FnOnce(Pin<&mut Stream>, &mut TaskContext<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let closed = || {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection was closed",
            )
        };
        if self
            .close
            .as_ref()
            .is_some_and(|(token, _)| token.is_cancelled())
        {
            return Poll::Ready(Err(closed()));
        }
        if let Some(why) = self.failed {
            return Poll::Ready(Err(why.error()));
        }
        let polled = operation(Pin::new(&mut self.stream), cx);
        if polled.is_pending() {
            if let Some((_, cancelled)) = &mut self.close
                && cancelled.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(closed()));
            }
            if let Some(first) = &mut self.first
                && first.by.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(self.fail(Unanswered::Silent)));
            }
        }
        polled
    }
}

/// Whether `bufs` hold one HTTP/2 HEADERS frame, whole, that does not end
/// its stream: a request whose body is still to come.
fn headers_alone(bufs: &[io::IoSlice<'_>]) -> bool {
    const END_STREAM: u8 = 0x1;
    let Some(header) = bufs.first().and_then(|first| first.get(..FRAME_HEADER_LEN)) else {
        return false;
    };
    let len = payload_len(header);
    let total: usize = bufs.iter().map(|buf| buf.len()).sum();
    header[FRAME_TYPE_OFFSET] == FRAME_TYPE_HEADERS
        && header[FRAME_FLAGS_OFFSET] & END_STREAM == 0
        && total == FRAME_HEADER_LEN + len
}

impl<X: Unpin> AsyncRead for Io<X> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = match self.guard(cx, |stream, cx| stream.poll_read(cx, buf)) {
            // A TLS peer that closes without close_notify (rustls's error)
            // has ended the stream as a TCP peer would: HTTP/2 frames its
            // own ends, so h2 still tells a truncated stream from a closed
            // one, and a close after a GOAWAY stays graceful.
            Poll::Ready(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            polled => polled,
        };
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
            && let Some(mut first) = self.first.take()
        {
            match first.feed(&buf.filled()[before..]) {
                Progress::More => self.first = Some(first),
                Progress::Wrong => {
                    self.first = Some(first);
                    return Poll::Ready(Err(self.fail(Unanswered::NotHttp2)));
                }
                Progress::Done => {
                    if let Some(answered) = first.answered {
                        let _ = answered.send(Ok(()));
                    }
                }
            }
        }
        polled
    }
}
impl<X: Unpin> AsyncWrite for Io<X> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.gathered(cx, &[io::IoSlice::new(data)]) {
            return Poll::Pending;
        }
        let polled = self.guard(cx, |stream, cx| stream.poll_write(cx, data));
        if let (Poll::Ready(Ok(n)), Some(resets)) = (&polled, &mut self.resets) {
            resets.written(&data[..*n]);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.gathered(cx, bufs) {
            return Poll::Pending;
        }
        let polled = self.guard(cx, |stream, cx| stream.poll_write_vectored(cx, bufs));
        if let (Poll::Ready(Ok(n)), Some(resets)) = (&polled, &mut self.resets) {
            let mut left = *n;
            for buf in bufs {
                let taken = left.min(buf.len());
                resets.written(&buf[..taken]);
                left -= taken;
                if left == 0 {
                    break;
                }
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let polled = self.guard(cx, |stream, cx| stream.poll_flush(cx));
        if let (Poll::Ready(Ok(())), Some(armed)) = (&polled, &mut self.gather) {
            *armed = true;
        }
        polled
    }

    /// Guarded too: under TLS a shutdown writes (close_notify), and a peer
    /// that reads nothing more would hold it forever.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.guard(cx, |stream, cx| stream.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::transport::first_bytes::{CLIENT_PREFACE, FRAME_TYPE_SETTINGS};

    /// Runs `operation` on `io` until it waits, then cancels `token`; the
    /// operation's error.
    async fn cancelled_while_waiting<F>(
        io: Io,
        token: CancellationToken,
        operation: impl FnOnce(Io) -> F + Send + 'static,
    ) -> io::Error
    where
        F: Future<Output = io::Result<()>> + Send + 'static,
    {
        let (waiting, waits) = oneshot::channel();
        let running = tokio::spawn(async move {
            let mut operation = std::pin::pin!(operation(io));
            let polled = std::future::poll_fn(|cx| Poll::Ready(operation.as_mut().poll(cx))).await;
            let _ = waiting.send(polled.is_pending());
            operation.await
        });
        assert!(waits.await.unwrap(), "the operation waits");
        token.cancel();
        // Bounded only so that a cancel that never wakes it fails.
        let woken = tokio::time::timeout(std::time::Duration::from_secs(10), running).await;
        let ended = woken.expect("the cancel woke the operation").unwrap();
        ended.unwrap_err()
    }

    #[tokio::test]
    async fn a_read_waiting_when_the_token_is_cancelled_fails() {
        let (ours, _peer) = tokio::io::duplex(64);
        let token = CancellationToken::new();
        let io = Io::new(Box::new(ours)).close_on(token.clone());
        let read = |mut io: Io| async move { io.read(&mut [0; 8]).await.map(drop) };
        let err = cancelled_while_waiting(io, token, read).await;
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn every_operation_after_the_cancel_fails_even_one_that_could_go_on() {
        let (ours, mut peer) = tokio::io::duplex(64);
        let token = CancellationToken::new();
        let mut io = Io::new(Box::new(ours)).close_on(token.clone());
        io.write_all(b"before").await.unwrap();
        peer.write_all(b"ready to read").await.unwrap();
        token.cancel();
        let read = io.read(&mut [0; 8]).await.unwrap_err();
        let write = io.write_all(b"after").await.unwrap_err();
        assert_eq!(read.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(write.kind(), io::ErrorKind::ConnectionAborted);
    }

    /// A peer that takes nothing: every write, and so a TLS shutdown's
    /// close_notify, waits forever.
    struct Stuck;

    impl AsyncRead for Stuck {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_shutdown_stuck_on_its_peer_fails_when_the_token_is_cancelled() {
        let token = CancellationToken::new();
        let io = Io::new(Box::new(Stuck)).close_on(token.clone());
        let shutdown = |mut io: Io| async move { io.shutdown().await };
        let err = cancelled_while_waiting(io, token, shutdown).await;
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn a_servers_first_frame_type_is_checked_however_its_bytes_are_split() {
        for (frame_type, http2) in [(FRAME_TYPE_SETTINGS, true), (0x7, false)] {
            let (ours, mut peer) = tokio::io::duplex(64);
            let mut io = Io::new(Box::new(ours));
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            let mut answered = io.first_bytes_by(deadline, Expect::ServerSettings);
            let mut buf = [0; 16];
            peer.write_all(&[0, 0]).await.unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 2);
            assert!(answered.try_recv().is_err(), "no verdict before the type");
            peer.write_all(&[0, frame_type, 0]).await.unwrap();
            let read = io.read(&mut buf).await;
            if http2 {
                assert_eq!(read.unwrap(), 3);
                assert_eq!(answered.await.unwrap(), Ok(()));
            } else {
                assert_eq!(read.unwrap_err().kind(), io::ErrorKind::InvalidData);
                assert_eq!(answered.await.unwrap(), Err(Unanswered::NotHttp2));
            }
        }
    }

    /// The client's preface and a SETTINGS frame, `len` bytes of payload.
    fn client_hello(len: usize) -> Vec<u8> {
        let mut hello = CLIENT_PREFACE.to_vec();
        hello.extend_from_slice(&[
            0,
            (len >> 8) as u8,
            len as u8,
            FRAME_TYPE_SETTINGS,
            0,
            0,
            0,
            0,
            0,
        ]);
        hello.extend(std::iter::repeat_n(0, len));
        hello
    }

    #[tokio::test]
    async fn a_clients_preface_and_settings_answer_whole_however_split() {
        let hello = client_hello(12);
        for at in 1..hello.len() {
            let (ours, mut peer) = tokio::io::duplex(256);
            let mut io = Io::new(Box::new(ours));
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            let mut answered = io.first_bytes_by(deadline, Expect::ClientPreface);
            let mut buf = [0; 256];
            peer.write_all(&hello[..at]).await.unwrap();
            let _ = io.read(&mut buf).await.unwrap();
            assert!(answered.try_recv().is_err(), "answered after {at} bytes");
            peer.write_all(&hello[at..]).await.unwrap();
            while answered.try_recv().is_err() {
                let _ = io.read(&mut buf).await.unwrap();
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_inside_its_preface_or_settings_is_cut_at_the_deadline() {
        let hello = client_hello(12);
        for sent in [1, 23, 24, 30, hello.len() - 1] {
            let (ours, mut peer) = tokio::io::duplex(256);
            let mut io = Io::new(Box::new(ours));
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            let answered = io.first_bytes_by(deadline, Expect::ClientPreface);
            peer.write_all(&hello[..sent]).await.unwrap();
            let mut buf = [0; 256];
            let err = loop {
                match io.read(&mut buf).await {
                    Ok(_) => continue,
                    Err(err) => break err,
                }
            };
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "after {sent} bytes");
            assert_eq!(answered.await.unwrap(), Err(Unanswered::Silent));
        }
    }

    #[tokio::test]
    async fn a_client_that_is_not_http2_is_cut_at_once() {
        let mut wrong_frame = client_hello(0);
        wrong_frame[24 + FRAME_TYPE_OFFSET] = 0x1;
        let mut huge = client_hello(0);
        huge[24] = 1; // a first frame of 64 KiB
        for bytes in [b"GET / HTTP/1.1\r\n".to_vec(), wrong_frame, huge] {
            let (ours, mut peer) = tokio::io::duplex(256);
            let mut io = Io::new(Box::new(ours));
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            let answered = io.first_bytes_by(deadline, Expect::ClientPreface);
            peer.write_all(&bytes).await.unwrap();
            let mut buf = [0; 256];
            let err = loop {
                match io.read(&mut buf).await {
                    Ok(_) => continue,
                    Err(err) => break err,
                }
            };
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert_eq!(answered.await.unwrap(), Err(Unanswered::NotHttp2));
        }
    }

    #[tokio::test]
    async fn a_token_cancelled_before_the_stream_closes_it_at_once() {
        let (ours, _peer) = tokio::io::duplex(64);
        let token = CancellationToken::new();
        token.cancel();
        let mut io = Io::new(Box::new(ours)).close_on(token);
        let err = io.write_all(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }

    /// A stream that keeps each write it is given, as the syscall would
    /// send it.
    struct Recording {
        stream: tokio::io::DuplexStream,
        writes: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    }

    impl AsyncRead for Recording {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recording {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let polled = Pin::new(&mut self.stream).poll_write(cx, data);
            if let Poll::Ready(Ok(n)) = polled {
                self.writes.lock().unwrap().push(data[..n].to_vec());
            }
            polled
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_shutdown(cx)
        }
    }

    /// For each write, the (type, stream) of each HTTP/2 frame that starts
    /// in it, after the client's preface.
    fn frames_by_write(writes: &[Vec<u8>]) -> Vec<Vec<(u8, u32)>> {
        let all = writes.concat();
        let mut by_write = vec![Vec::new(); writes.len()];
        let mut at = CLIENT_PREFACE.len();
        while at + FRAME_HEADER_LEN <= all.len() {
            let header = &all[at..at + FRAME_HEADER_LEN];
            let len = payload_len(header);
            let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
            let mut write = 0;
            let mut end = writes[0].len();
            while end <= at {
                write += 1;
                end += writes[write].len();
            }
            by_write[write].push((header[FRAME_TYPE_OFFSET], stream & 0x7fff_ffff));
            at += FRAME_HEADER_LEN + len;
        }
        by_write
    }

    /// The writes a request with a body makes from hyper's HTTP/2 client
    /// over `io` to a hyper server, once answered.
    async fn request_writes(gather: bool) -> Vec<Vec<(u8, u32)>> {
        use http_body_util::{BodyExt as _, Full};
        use hyper_util::rt::{TokioExecutor, TokioIo};

        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let writes = std::sync::Arc::default();
        let recording = Recording {
            stream: ours,
            writes: std::sync::Arc::clone(&writes),
        };
        let mut io = Io::new(Box::new(recording));
        if gather {
            io = io.gather_writes();
        }
        let answer =
            hyper::service::service_fn(|call: http::Request<hyper::body::Incoming>| async {
                let body = call.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(http::Response::new(Full::new(body)))
            });
        tokio::spawn(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(theirs), answer),
        );
        let (mut send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(connection);
        let call = http::Request::post("http://remote/call")
            .body(Full::new(bytes::Bytes::from_static(b"the body")))
            .unwrap();
        let answered = send.send_request(call).await.unwrap();
        let body = answered.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"the body");
        frames_by_write(&writes.lock().unwrap())
    }

    const FRAME_TYPE_DATA: u8 = 0x0;

    #[tokio::test]
    async fn a_gathering_client_sends_a_requests_headers_and_body_in_one_write() {
        let headers = (FRAME_TYPE_HEADERS, 1);
        let data = (FRAME_TYPE_DATA, 1);
        let gathered = request_writes(true).await;
        let write = gathered.iter().find(|frames| frames.contains(&headers));
        assert!(
            write.is_some_and(|frames| frames.contains(&data)),
            "HEADERS and DATA in one write: {gathered:?}"
        );
        // What it is for: hyper alone opens the stream, and so sends its
        // body, only after the write with the HEADERS.
        let apart = request_writes(false).await;
        let write = apart.iter().find(|frames| frames.contains(&headers));
        assert!(
            write.is_some_and(|frames| !frames.contains(&data)),
            "without gathering, HEADERS and DATA apart: {apart:?}"
        );
    }
}
