//! The byte streams under both sides of the transport: TCP or unix sockets,
//! plain or TLS, with a switch that closes them from outside.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What a connection runs over.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// A TCP or unix stream, plain or under TLS.
pub(crate) type Stream = Box<dyn Transport>;

/// Connects to `host:port` with TCP_NODELAY set (gRPC calls are small
/// request/response exchanges).
pub(crate) async fn connect_tcp(host: &str, port: u16) -> io::Result<Stream> {
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(Box::new(stream))
}

/// Connects to the unix socket at `path`; an error names the path.
pub(crate) async fn connect_unix(path: &Path) -> io::Result<Stream> {
    match UnixStream::connect(path).await {
        Ok(stream) => Ok(Box::new(stream)),
        Err(err) => Err(io::Error::new(
            err.kind(),
            format!("{}: {err}", path.display()),
        )),
    }
}

/// An HTTP/2 frame header's type octet (after the 24-bit length), and the
/// type a server's first frame must have.
const FRAME_TYPE_OFFSET: usize = 3;
const FRAME_TYPE_SETTINGS: u8 = 0x4;

/// A stream that fails every operation once a token is cancelled, or once
/// a deadline passes before the peer's first bytes; that can report whether
/// those bytes were an HTTP/2 SETTINGS frame; and that carries `X` (what a
/// server keeps per connection) for as long as it lives.
pub(crate) struct Io<X = ()> {
    stream: Stream,
    close: Option<(CancellationToken, Pin<Box<WaitForCancellationFutureOwned>>)>,
    silence: Option<Pin<Box<Sleep>>>,
    settings: Option<oneshot::Sender<bool>>,
    pub(crate) extra: X,
}

impl Io {
    pub(crate) fn new(stream: Stream) -> Self {
        Self {
            stream,
            close: None,
            silence: None,
            settings: None,
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

    /// Closes the stream if the peer sends nothing by `deadline`.
    pub(crate) fn first_bytes_by(mut self, deadline: Instant) -> Self {
        self.silence = Some(Box::pin(tokio::time::sleep_until(deadline)));
        self
    }

    /// Whether the peer's first bytes were an HTTP/2 SETTINGS frame; the
    /// receiver fails if the stream ends before any arrive.
    pub(crate) fn settings(&mut self) -> oneshot::Receiver<bool> {
        let (sender, receiver) = oneshot::channel();
        self.settings = Some(sender);
        receiver
    }

    /// Keeps `extra` with the stream.
    pub(crate) fn with<Y>(self, extra: Y) -> Io<Y> {
        Io {
            stream: self.stream,
            close: self.close,
            silence: self.silence,
            settings: self.settings,
            extra,
        }
    }

    /// Runs one I/O operation unless the stream is closed; while it waits,
    /// waits for the close too.
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
        let polled = operation(Pin::new(&mut self.stream), cx);
        if polled.is_pending() {
            if let Some((_, cancelled)) = &mut self.close
                && cancelled.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(closed()));
            }
            if let Some(silence) = &mut self.silence
                && silence.as_mut().poll(cx).is_ready()
            {
                let silent = "the peer sent nothing within the handshake timeout";
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, silent)));
            }
        }
        polled
    }
}

impl<X: Unpin> AsyncRead for Io<X> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.guard(cx, |stream, cx| stream.poll_read(cx, buf));
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            self.silence = None;
            if let Some(settings) = self.settings.take() {
                let frame_type = buf.filled()[before..].get(FRAME_TYPE_OFFSET);
                let _ = settings.send(frame_type.is_none_or(|&t| t == FRAME_TYPE_SETTINGS));
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
        self.guard(cx, |stream, cx| stream.poll_write(cx, data))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.guard(cx, |stream, cx| stream.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
