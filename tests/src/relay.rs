//! A TCP relay between a client and a server that can freeze (drop what
//! either side sends, answering nothing, as a peer that stopped) or hang up
//! on its callers without a GOAWAY.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use url::Url;

/// A TCP relay to a server that can stop passing bytes (both ways) without
/// closing anything, or hang up on its callers with a plain FIN: no GOAWAY,
/// no TLS `close_notify`, as a proxy or a peer's kernel does.
pub struct Relay {
    pub url: Url,
    frozen: Arc<AtomicBool>,
    /// Cancelled to hang up on the connections open now.
    hang_up: Arc<Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(to: &Url) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
        let backend = format!("{}:{}", to.host_str().unwrap(), to.port().unwrap());
        let frozen = Arc::new(AtomicBool::new(false));
        let hang_up = Arc::new(Mutex::new(CancellationToken::new()));
        let (gate, hanging_up) = (Arc::clone(&frozen), Arc::clone(&hang_up));
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let outbound = tokio::net::TcpStream::connect(&backend).await.unwrap();
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                let hang_up = hanging_up.lock().unwrap().clone();
                let up = pump(in_read, out_write, Arc::clone(&gate), hang_up.clone());
                let down = pump(out_read, in_write, Arc::clone(&gate), hang_up.clone());
                tokio::spawn(up);
                tokio::spawn(async move {
                    tokio::select! {
                        () = down => {}
                        () = hang_up.cancelled() => {}
                    }
                });
            }
        });
        Self {
            url,
            frozen,
            hang_up,
            task,
        }
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Sends a FIN to every caller connected now, and from then on drops
    /// what they send (reading it, so that closing sends no reset).
    pub fn hang_up(&self) {
        let mut token = self.hang_up.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }
}

/// Copies `from` to `to` until `from` ends (then `to` gets a FIN); while
/// frozen or hung up, reads and drops what arrives.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
    hang_up: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) || hang_up.is_cancelled() {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
