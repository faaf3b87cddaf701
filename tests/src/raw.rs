//! Raw HTTP/2 endpoints, for answers no gRPC server would give on its own:
//! canned replies on hyper's HTTP/2 server (exactly the status line,
//! headers, DATA frames and trailers a test asks for), and a peer that
//! refuses calls with a GOAWAY.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use connect_runtime::ConnectionStats;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use url::Url;

use crate::harness::settle;

type AnswerBody =
    StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// One canned answer: status line, headers, then DATA frames and trailers.
#[derive(Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
    pub data: Vec<Bytes>,
    pub trailers: Option<Vec<(&'static str, &'static str)>>,
}

impl Answer {
    /// A well-formed reply carrying `message`, in `pieces` DATA frames.
    pub fn ok(message: &impl Message, pieces: usize) -> Self {
        let framed = framed(&message.encode_to_vec());
        let step = framed.len().div_ceil(pieces);
        let data = (0..framed.len())
            .step_by(step)
            .map(|at| framed.slice(at..(at + step).min(framed.len())))
            .collect();
        Self {
            status: 200,
            headers: vec![("content-type", "application/grpc")],
            data,
            trailers: Some(vec![("grpc-status", "0")]),
        }
    }

    fn response(&self) -> http::Response<AnswerBody> {
        let mut frames: Vec<_> = self.data.iter().cloned().map(Frame::data).collect();
        if let Some(trailers) = &self.trailers {
            let mut map = http::HeaderMap::new();
            for (name, value) in trailers {
                map.insert(*name, value.parse().unwrap());
            }
            frames.push(Frame::trailers(map));
        }
        let mut response = http::Response::builder().status(self.status);
        for (name, value) in &self.headers {
            response = response.header(*name, *value);
        }
        let frames: Vec<_> = frames.into_iter().map(Ok).collect();
        let body = StreamBody::new(tokio_stream::iter(frames));
        response.body(body).unwrap()
    }
}

/// A gRPC message's framing: an uncompressed flag and a 32-bit length.
pub fn framed(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.extend_from_slice(message);
    frame.freeze()
}

/// What the endpoint saw of one call.
pub struct Seen {
    pub head: http::request::Parts,
    pub body: Bytes,
}

/// An HTTP/2 endpoint on loopback that gives every call the same answer,
/// keeps what it was sent, and counts its connections.
pub struct RawRemote {
    url: Url,
    seen: Arc<Mutex<Vec<Seen>>>,
    stats: watch::Receiver<ConnectionStats>,
    task: JoinHandle<()>,
}

impl RawRemote {
    pub async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stats_tx, stats) = watch::channel(ConnectionStats::default());
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (answer, log) = (answer.clone(), Arc::clone(&log));
                let service = hyper::service::service_fn(move |call: http::Request<Incoming>| {
                    let (answer, log) = (answer.clone(), Arc::clone(&log));
                    async move {
                        let (head, body) = call.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        log.lock().unwrap().push(Seen { head, body });
                        Ok::<_, Infallible>(answer.response())
                    }
                });
                stats_tx.send_modify(|s| {
                    s.accepted += 1;
                    s.open += 1;
                });
                let stats = stats_tx.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                    stats.send_modify(|s| s.open -= 1);
                });
            }
        });
        Self {
            url,
            seen,
            stats,
            task,
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The calls it was sent, in order.
    pub fn seen(&self) -> std::sync::MutexGuard<'_, Vec<Seen>> {
        self.seen.lock().unwrap()
    }

    /// Waits until the connection counts satisfy `condition`.
    pub async fn wait_connections(
        &self,
        condition: impl FnMut(&ConnectionStats) -> bool,
    ) -> ConnectionStats {
        let mut stats = self.stats.clone();
        let waited = settle("the endpoint's connections", stats.wait_for(condition)).await;
        *waited.unwrap()
    }
}

impl Drop for RawRemote {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/2 peer that answers every call with a GOAWAY whose last stream
/// is 0: the call was refused unprocessed, as a server going away refuses
/// the streams past the last one it will handle. It speaks just enough
/// HTTP/2 for that.
pub struct Refuser {
    url: Url,
    task: JoinHandle<()>,
}

const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const SETTINGS_ACK: [u8; 9] = [0, 0, 0, 4, 1, 0, 0, 0, 0];
const GOAWAY_NOTHING_PROCESSED: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const FRAME_HEADERS: u8 = 1;
const FRAME_SETTINGS: u8 = 4;
const PREFACE_LEN: usize = 24;

impl Refuser {
    /// Refuses every call on every connection.
    pub async fn start() -> Self {
        Self::serve(None, false).await
    }

    /// Refuses the calls on the first connection only, and relays every
    /// later connection to `remote`: a remote that restarted gracefully.
    pub async fn once_then(remote: &Url) -> Self {
        Self::serve(Some(remote.clone()), false).await
    }

    /// As [`Refuser::once_then`], but the first connection sends its GOAWAY
    /// right after its SETTINGS, before any call, and stays open: a remote
    /// that began draining while the client was idle.
    pub async fn draining_then(remote: &Url) -> Self {
        Self::serve(Some(remote.clone()), true).await
    }

    async fn serve(then: Option<Url>, at_once: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
        let task = tokio::spawn(async move {
            let mut first = true;
            while let Ok((socket, _)) = listener.accept().await {
                let relay_to = then
                    .as_ref()
                    .filter(|_| !first)
                    .map(|url| format!("{}:{}", url.host_str().unwrap(), url.port().unwrap()));
                first = false;
                tokio::spawn(async move {
                    match relay_to {
                        Some(addr) => relay(socket, &addr).await,
                        None => refuse(socket, at_once).await,
                    }
                });
            }
        });
        Self { url, task }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }
}

/// Answers the HTTP/2 preface, then the first call (or, `at_once`, the
/// preface itself) with a GOAWAY saying nothing was processed.
async fn refuse(mut socket: tokio::net::TcpStream, at_once: bool) -> std::io::Result<()> {
    let mut preface = [0u8; PREFACE_LEN];
    socket.read_exact(&mut preface).await?;
    socket.write_all(&SETTINGS).await?;
    if at_once {
        socket.write_all(&GOAWAY_NOTHING_PROCESSED).await?;
    }
    loop {
        let mut header = [0u8; 9];
        socket.read_exact(&mut header).await?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        socket.read_exact(&mut payload).await?;
        match header[3] {
            FRAME_SETTINGS if header[4] & 1 == 0 => socket.write_all(&SETTINGS_ACK).await?,
            FRAME_HEADERS => {
                socket.write_all(&GOAWAY_NOTHING_PROCESSED).await?;
                // Held open until the client lets go.
                let mut rest = Vec::new();
                let _ = socket.read_to_end(&mut rest).await;
                return Ok(());
            }
            _ => {}
        }
    }
}

async fn relay(mut socket: tokio::net::TcpStream, addr: &str) -> std::io::Result<()> {
    let mut remote = tokio::net::TcpStream::connect(addr).await?;
    tokio::io::copy_bidirectional(&mut socket, &mut remote).await?;
    Ok(())
}

impl Drop for Refuser {
    fn drop(&mut self) {
        self.task.abort();
    }
}
