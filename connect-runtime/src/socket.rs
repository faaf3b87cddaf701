//! One byte-stream type for both transports, so the server and the dialer
//! handle TCP and unix sockets alike.

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use std::net::SocketAddr;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A connected TCP or unix stream.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

macro_rules! on_stream {
    ($self:expr, $s:ident => $body:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $body,
            Stream::Unix($s) => $body,
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Connects to `host:port` with TCP_NODELAY set, trying each address the
/// host resolves to.
pub(crate) async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match connect_tcp_addr(addr).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    }))
}

async fn connect_tcp_addr(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = stream_socket(Domain::for_address(addr))?;
    // gRPC calls are small request/response exchanges.
    socket.set_tcp_nodelay(true)?;
    let pending = start_connect(&socket, &addr.into())?;
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    // A non-blocking connect to a nearby peer has usually finished by the
    // time the call returns; waiting for the runtime to report writability
    // would cost a trip through the I/O driver for nothing.
    if pending && stream.peer_addr().is_err() {
        stream.writable().await?;
        if let Some(err) = stream.take_error()? {
            return Err(err);
        }
    }
    Ok(stream)
}

/// Connects to the unix socket at `path`.
pub(crate) async fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    let socket = stream_socket(Domain::UNIX)?;
    let pending = start_connect(&socket, &SockAddr::unix(path)?)?;
    let stream = UnixStream::from_std(std::os::unix::net::UnixStream::from(socket))?;
    if pending && stream.peer_addr().is_err() {
        stream.writable().await?;
        if let Some(err) = stream.take_error()? {
            return Err(err);
        }
    }
    Ok(stream)
}

/// A non-blocking stream socket; on Linux made so by `socket(2)` itself,
/// saving the two `fcntl` calls of setting the flag afterwards.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn stream_socket(domain: Domain) -> io::Result<Socket> {
    Socket::new(
        domain,
        Type::from(libc::SOCK_STREAM | libc::SOCK_NONBLOCK),
        None,
    )
}

/// A non-blocking stream socket.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn stream_socket(domain: Domain) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Starts a non-blocking connect; `true` if it is still in progress.
fn start_connect(socket: &Socket, addr: &SockAddr) -> io::Result<bool> {
    match socket.connect(addr) {
        Ok(()) => Ok(false),
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(err) => Err(err),
    }
}
