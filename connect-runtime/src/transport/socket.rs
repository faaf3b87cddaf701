//! The byte streams under both sides of the transport: TCP or unix sockets,
//! optionally under TLS, with a switch that closes them from outside and an
//! observer of the peer's first bytes.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context as TaskContext, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A connected TCP or unix stream, plain or under TLS.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::TlsStream<Stream>>),
}

macro_rules! on_stream {
    ($self:expr, $s:ident => $body:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $body,
            Stream::Unix($s) => $body,
            Stream::Tls($s) => $body,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_stream!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, s => Pin::new(s).poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Connects to `host:port` with TCP_NODELAY set (gRPC calls are small
/// request/response exchanges).
pub(crate) async fn connect_tcp(host: &str, port: u16) -> io::Result<Stream> {
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(Stream::Tcp(stream))
}

/// Connects to the unix socket at `path`; an error names the path.
pub(crate) async fn connect_unix(path: &Path) -> io::Result<Stream> {
    match UnixStream::connect(path).await {
        Ok(stream) => Ok(Stream::Unix(stream)),
        Err(err) => Err(io::Error::new(
            err.kind(),
            format!("{}: {err}", path.display()),
        )),
    }
}

/// What the peer's first bytes must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// An HTTP/2 server opens with a SETTINGS frame.
    Http2Settings,
    /// Anything: the peer is there.
    AnyBytes,
}

/// Set when the peer's first bytes arrive.
pub(crate) struct FirstBytes {
    expect: Expect,
    state: AtomicU8,
    notify: Notify,
}

const WAITING: u8 = 0;
const ANSWERED: u8 = 1;
const NOT_HTTP2: u8 = 2;

/// An HTTP/2 frame header's type octet sits after the 24-bit length.
const FRAME_TYPE_OFFSET: usize = 3;
const FRAME_TYPE_SETTINGS: u8 = 0x4;

impl FirstBytes {
    pub(crate) fn new(expect: Expect) -> Arc<Self> {
        Arc::new(Self {
            expect,
            state: AtomicU8::new(WAITING),
            notify: Notify::new(),
        })
    }

    fn observe(&self, first: &[u8]) {
        let verdict = match (self.expect, first.get(FRAME_TYPE_OFFSET)) {
            (Expect::Http2Settings, Some(&kind)) if kind != FRAME_TYPE_SETTINGS => NOT_HTTP2,
            _ => ANSWERED,
        };
        self.state.store(verdict, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn arrived(&self) -> bool {
        self.state.load(Ordering::Acquire) != WAITING
    }

    /// Waits for the first bytes; `false` if they were not what was expected.
    pub(crate) async fn wait(&self) -> bool {
        loop {
            // Registered before the state is read, so a notification between
            // the two cannot be missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.state.load(Ordering::Acquire) {
                WAITING => notified.await,
                state => return state == ANSWERED,
            }
        }
    }
}

/// A stream with a close switch and, until they arrive, an observer of the
/// peer's first bytes; and whatever must live exactly as long as the
/// connection (a server's count of open connections).
pub(crate) struct Io {
    stream: Stream,
    first_bytes: Option<Arc<FirstBytes>>,
    closer: Option<Closer>,
    _lifetime: Option<Box<dyn Send + Sync>>,
}

impl Io {
    pub(crate) fn new(stream: Stream) -> Self {
        Self {
            stream,
            first_bytes: None,
            closer: None,
            _lifetime: None,
        }
    }

    /// Reports the peer's first bytes to `first_bytes`.
    pub(crate) fn observe(mut self, first_bytes: Arc<FirstBytes>) -> Self {
        self.first_bytes = Some(first_bytes);
        self
    }

    /// Fails every operation once `token` is cancelled, or once `deadline`
    /// passes without the observed first bytes.
    pub(crate) fn close_on(mut self, token: CancellationToken, deadline: Option<Instant>) -> Self {
        let first = self.first_bytes.clone().zip(deadline);
        self.closer = Some(Closer::watch(token, first));
        self
    }

    /// Keeps `value` until the connection is dropped.
    pub(crate) fn keep(mut self, value: impl Send + Sync + 'static) -> Self {
        self._lifetime = Some(Box::new(value));
        self
    }

    /// Runs one I/O operation unless the stream has been closed, arranging
    /// to be woken if it is closed while the operation waits.
    fn guard<T>(
        &mut self,
        cx: &mut TaskContext<'_>,
        operation: impl FnOnce(Pin<&mut Stream>, &mut TaskContext<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let signal = self.closer.as_ref().map(|c| &*c.signal);
        if signal.is_some_and(|s| s.closed.load(Ordering::Acquire)) {
            return Poll::Ready(Err(closed()));
        }
        let polled = operation(Pin::new(&mut self.stream), cx);
        if polled.is_pending()
            && let Some(signal) = signal
        {
            signal.waker.register(cx.waker());
            if signal.closed.load(Ordering::Acquire) {
                return Poll::Ready(Err(closed()));
            }
        }
        polled
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the connection was closed",
    )
}

/// Closes a stream when a token is cancelled (or a first-bytes deadline
/// passes): an atomic load on every read and write, a waker registration
/// only when the stream has to wait, and a small task watching the token,
/// which ends with the token or the stream.
struct Closer {
    signal: Arc<CloseSignal>,
    /// Dropped with the stream, ending the watching task.
    _stream_gone: oneshot::Sender<()>,
}

#[derive(Default)]
struct CloseSignal {
    closed: AtomicBool,
    waker: AtomicWaker,
}

impl Closer {
    fn watch(token: CancellationToken, first: Option<(Arc<FirstBytes>, Instant)>) -> Self {
        let signal = Arc::new(CloseSignal::default());
        let (stream_gone, gone) = oneshot::channel::<()>();
        let watched = Arc::clone(&signal);
        tokio::spawn(async move {
            let silent = async {
                match first {
                    Some((first, deadline)) => {
                        let _ = tokio::time::timeout_at(deadline, first.wait()).await;
                        if first.arrived() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = token.cancelled() => {}
                () = silent => {}
                _ = gone => return,
            }
            watched.closed.store(true, Ordering::Release);
            watched.waker.wake();
        });
        Self {
            signal,
            _stream_gone: stream_gone,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.guard(cx, |stream, cx| stream.poll_read(cx, buf));
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
            && let Some(first) = self.first_bytes.take()
        {
            first.observe(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Io {
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
