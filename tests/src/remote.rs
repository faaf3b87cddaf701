//! Real servers for tests: NSM endpoints on loopback TCP and unix sockets,
//! and a black hole that accepts connections and never answers.

use std::path::Path;

use connect_runtime::{ServerChain, ServerHandle, serve};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Serves `chain` on a free loopback TCP port.
pub async fn start_tcp(chain: ServerChain) -> ServerHandle {
    let url: Url = "tcp://127.0.0.1:0".parse().unwrap();
    serve(&url, chain, CancellationToken::new())
        .await
        .expect("serving on loopback")
}

/// Serves `chain` on the TCP address `url` names (to restart a remote on the
/// port it had).
pub async fn start_at(url: &Url, chain: ServerChain) -> ServerHandle {
    serve(url, chain, CancellationToken::new())
        .await
        .expect("serving on the given URL")
}

/// Serves `chain` on a unix socket named `name` inside `dir`.
pub async fn start_unix(dir: &Path, name: &str, chain: ServerChain) -> ServerHandle {
    let url = unix_url(&dir.join(name));
    serve(&url, chain, CancellationToken::new())
        .await
        .expect("serving on a unix socket")
}

/// `unix://<path>`.
pub fn unix_url(path: &Path) -> Url {
    Url::parse(&format!("unix://{}", path.display())).unwrap()
}

/// A TCP listener that accepts connections, holds them open and never sends
/// a byte: what a hung process or a wrong port looks like.
pub struct BlackHole {
    url: Url,
    accepted: tokio::sync::watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
        let (counter, accepted) = tokio::sync::watch::channel(0);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
                counter.send_modify(|n| *n += 1);
            }
        });
        Self {
            url,
            accepted,
            task,
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    /// Waits (within the harness's patience) until it has accepted a
    /// connection.
    pub async fn first_accepted(&self) {
        let mut accepted = self.accepted.clone();
        let waited = crate::harness::settle("a connection", accepted.wait_for(|&n| n > 0)).await;
        waited.expect("the counts outlive the listener");
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}
