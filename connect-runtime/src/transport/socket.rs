//! Connecting the byte streams under the transport: TCP or unix sockets.

use std::io;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// What a connection runs over.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// A TCP or unix stream, plain or under TLS.
pub(crate) type Stream = Box<dyn Transport>;

/// Connects to `host:port` with TCP_NODELAY set (gRPC calls are small
/// request/response exchanges), trying each address the host resolves to.
pub(crate) async fn connect_tcp(host: &str, port: u16) -> io::Result<Stream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{host} resolves to no address"),
    );
    for addr in tokio::net::lookup_host((host, port)).await? {
        match connect_addr(addr).await {
            Ok(stream) => return Ok(Box::new(stream)),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// A non-blocking connect to a nearby peer has usually finished when the
/// call returns: then the stream is used at once, rather than after a trip
/// through the I/O driver to learn it is writable (see BENCHMARKS.md).
async fn connect_addr(addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    let pending = match socket.connect(&addr.into()) {
        Ok(()) => false,
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => true,
        Err(err) => return Err(err),
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    if pending && stream.peer_addr().is_err() {
        stream.writable().await?;
        if let Some(err) = stream.take_error()? {
            return Err(err);
        }
    }
    Ok(stream)
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
