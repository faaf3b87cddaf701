//! The listening socket: TCP, or a unix socket whose file is replaced when
//! stale and removed once when the server is done with it.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};

use tokio::net::{TcpListener, UnixListener, UnixStream};

use crate::transport::socket::Stream;

/// The socket file a unix listener created; its clones (the listener's and
/// the handle's) remove it once between them.
#[derive(Clone)]
pub(super) struct SocketFile {
    path: PathBuf,
    inode: u64,
    removed: Arc<AtomicBool>,
}

impl SocketFile {
    pub(super) fn new(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            inode: std::fs::metadata(path)?.ino(),
            removed: Arc::default(),
        })
    }

    /// Removes the file, unless it was removed already or a newer server
    /// has replaced it. (Once removed, the inode number may be reused for
    /// a newer server's file.)
    pub(super) fn remove(&self) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a unix socket, replacing a stale socket file nobody listens on.
pub(super) async fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("directory {} does not exist", dir.display()),
        ));
    }
    match UnixListener::bind(path) {
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
            let meta = std::fs::symlink_metadata(path)?;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            // Stale only if refused: a full backlog or no permission to
            // connect says nothing of whether someone listens.
            let in_use = |why: String| io::Error::new(io::ErrorKind::AddrInUse, why);
            match UnixStream::connect(path).await {
                Ok(_) => {
                    let why = format!("another server is listening on {}", path.display());
                    return Err(in_use(why));
                }
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(err) => {
                    let why = format!("{} is in use (connecting to it: {err})", path.display());
                    return Err(in_use(why));
                }
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        result => result,
    }
}

pub(super) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

impl Listener {
    pub(super) fn poll_accept(
        &self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<io::Result<(Stream, Option<SocketAddr>)>> {
        match self {
            Listener::Tcp(listener) => listener.poll_accept(cx).map(|accepted| {
                let (stream, addr) = accepted?;
                stream.set_nodelay(true)?;
                Ok((Box::new(stream) as Stream, Some(addr)))
            }),
            Listener::Unix(listener, _) => listener
                .poll_accept(cx)
                .map_ok(|(stream, _)| (Box::new(stream) as Stream, None)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, file) = self {
            file.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_file_is_removed_once_even_if_its_inode_number_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let file = SocketFile::new(&path).unwrap();
        let handles = file.clone();
        file.remove();
        drop(listener);
        assert!(!path.exists());

        let _newer = UnixListener::bind(&path).unwrap();
        // As a filesystem that reuses inode numbers may give it.
        let inode = std::fs::metadata(&path).unwrap().ino();
        SocketFile { inode, ..handles }.remove();
        assert!(path.exists(), "the newer server's file stays");
    }

    #[tokio::test]
    async fn a_socket_whose_backlog_is_full_is_not_taken_for_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let socket =
            socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&socket2::SockAddr::unix(&path).unwrap())
            .unwrap();
        socket.listen(0).unwrap();
        // Never accepted: connections queue until the backlog is full.
        let mut queued = Vec::new();
        let full = loop {
            match UnixStream::connect(&path).await {
                Ok(stream) if queued.len() < 1024 => queued.push(stream),
                Ok(_) => panic!("the backlog never filled"),
                Err(err) => break err,
            }
        };
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock, "{full}");

        let inode = std::fs::metadata(&path).unwrap().ino();
        let err = bind_unix(&path).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("is in use"), "{err}");
        let now = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(now, inode, "the file is still the listener's");
        drop(queued);
    }
}
