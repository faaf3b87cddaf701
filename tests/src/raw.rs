//! Raw HTTP/2 endpoints, for answers no gRPC server would give on its own:
//! canned replies on hyper's HTTP/2 server (exactly the status line,
//! headers, DATA frames and trailers a test asks for), and a peer that
//! refuses calls with a GOAWAY.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    headers_later: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const SETTINGS_ACK: [u8; 9] = [0, 0, 0, 4, 1, 0, 0, 0, 0];
const GOAWAY_NOTHING_PROCESSED: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const FRAME_HEADERS: u8 = 1;
const FRAME_SETTINGS: u8 = 4;
const PREFACE_LEN: usize = 24;

/// What a [`Refuser`] does with the connections after its first.
#[derive(Clone)]
enum Later {
    Refuse,
    Relay(String),
    /// Reads and never answers, not even SETTINGS; counts HEADERS frames.
    Silent,
}

impl Refuser {
    /// Refuses every call on every connection.
    pub async fn start() -> Self {
        Self::serve(Later::Refuse, false, Duration::ZERO).await
    }

    /// Refuses the calls on the first connection only, and relays every
    /// later connection to `remote`: a remote that restarted gracefully.
    pub async fn once_then(remote: &Url) -> Self {
        Self::serve(Later::Relay(addr_of(remote)), false, Duration::ZERO).await
    }

    /// As [`Refuser::once_then`], but the refusal comes `delay` after the
    /// call: a remote slow to say it is going away.
    pub async fn once_after_then(delay: Duration, remote: &Url) -> Self {
        Self::serve(Later::Relay(addr_of(remote)), false, delay).await
    }

    /// As [`Refuser::once_then`], but the first connection sends its GOAWAY
    /// right after its SETTINGS, before any call, and stays open: a remote
    /// that began draining while the client was idle.
    pub async fn draining_then(remote: &Url) -> Self {
        Self::serve(Later::Relay(addr_of(remote)), true, Duration::ZERO).await
    }

    /// Refuses the first connection's calls; later connections are read and
    /// never answered (no SETTINGS either): a remote that went away and
    /// whose address now leads somewhere that accepts and says nothing.
    pub async fn once_then_silent() -> Self {
        Self::serve(Later::Silent, false, Duration::ZERO).await
    }

    async fn serve(later: Later, at_once: bool, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
        let headers_later = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&headers_later);
        let task = tokio::spawn(async move {
            let mut first = true;
            while let Ok((socket, _)) = listener.accept().await {
                let later = match first {
                    true => Later::Refuse,
                    false => later.clone(),
                };
                first = false;
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    match later {
                        Later::Relay(addr) => relay(socket, &addr).await,
                        Later::Refuse => refuse(socket, at_once, delay).await,
                        Later::Silent => listen(socket, &counted).await,
                    }
                });
            }
        });
        Self {
            url,
            headers_later,
            task,
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// HEADERS frames (calls) the connections after the first have sent,
    /// with [`Refuser::once_then_silent`].
    pub fn calls_after_the_first_connection(&self) -> usize {
        self.headers_later.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn addr_of(url: &Url) -> String {
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
}

/// Answers the HTTP/2 preface, then the first call (or, `at_once`, the
/// preface itself) with a GOAWAY saying nothing was processed, `delay`
/// after it came.
async fn refuse(
    mut socket: tokio::net::TcpStream,
    at_once: bool,
    delay: Duration,
) -> std::io::Result<()> {
    let mut preface = [0u8; PREFACE_LEN];
    socket.read_exact(&mut preface).await?;
    socket.write_all(&SETTINGS).await?;
    if at_once {
        socket.write_all(&GOAWAY_NOTHING_PROCESSED).await?;
    }
    loop {
        let (header, _) = read_frame(&mut socket).await?;
        match header[3] {
            FRAME_SETTINGS if header[4] & 1 == 0 => socket.write_all(&SETTINGS_ACK).await?,
            FRAME_HEADERS => {
                tokio::time::sleep(delay).await;
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

/// Reads the preface and every frame, answering nothing; counts HEADERS.
async fn listen(
    mut socket: tokio::net::TcpStream,
    headers: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    let mut preface = [0u8; PREFACE_LEN];
    socket.read_exact(&mut preface).await?;
    loop {
        let (header, _) = read_frame(&mut socket).await?;
        if header[3] == FRAME_HEADERS {
            headers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

async fn read_frame(socket: &mut tokio::net::TcpStream) -> std::io::Result<([u8; 9], Vec<u8>)> {
    let mut header = [0u8; 9];
    socket.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    socket.read_exact(&mut payload).await?;
    Ok((header, payload))
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

/// How a [`GoAwayRelay`] ends a connection after its GOAWAY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// A FIN: the connection closes.
    Close,
    /// A TCP reset (what a remote that gives up on draining may do).
    Reset,
}

/// A relay in front of an HTTP/2 server that ends the connections open now
/// as grpc-go's servers end theirs: a GOAWAY with an error code and debug
/// data (`ENHANCE_YOUR_CALM` and `too_many_pings`, say), then a close or a
/// reset. It forwards whole frames, so that the GOAWAY lands between two.
/// Later connections are relayed as usual.
pub struct GoAwayRelay {
    url: Url,
    go_away: tokio::sync::broadcast::Sender<(u32, &'static str, After)>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

/// HTTP/2 error codes a [`GoAwayRelay`] may send.
pub const NO_ERROR: u32 = 0x0;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

impl GoAwayRelay {
    pub async fn start(to: &Url) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
        let backend = addr_of(to);
        let (go_away, _) = tokio::sync::broadcast::channel(4);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (commands, counted) = (go_away.clone(), Arc::clone(&accepted));
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(outbound) = tokio::net::TcpStream::connect(&backend).await else {
                    continue;
                };
                tokio::spawn(relay_frames(inbound, outbound, commands.subscribe()));
            }
        });
        Self {
            url,
            go_away,
            accepted,
            task,
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Ends every connection open now: a GOAWAY with `code` and `debug`
    /// (its last stream the last the client opened), then `after`.
    pub fn go_away(&self, code: u32, debug: &'static str, after: After) {
        let _ = self.go_away.send((code, debug, after));
    }
}

impl Drop for GoAwayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Complete frames out of a byte stream.
#[derive(Default)]
struct Frames {
    buf: BytesMut,
}

impl Frames {
    /// The next whole frame, if it has come.
    fn next(&mut self) -> Option<Bytes> {
        if self.buf.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
        (self.buf.len() >= 9 + len).then(|| self.buf.split_to(9 + len).freeze())
    }
}

async fn relay_frames(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    mut go_away: tokio::sync::broadcast::Receiver<(u32, &'static str, After)>,
) {
    let last_stream = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    // Client to server: the preface, then frames; the last stream opened
    // is noted.
    let noted = Arc::clone(&last_stream);
    let up = tokio::spawn(async move {
        let mut preface = [0u8; PREFACE_LEN];
        in_read.read_exact(&mut preface).await?;
        out_write.write_all(&preface).await?;
        let mut frames = Frames::default();
        loop {
            while let Some(frame) = frames.next() {
                if frame[3] == FRAME_HEADERS {
                    let id =
                        u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
                    noted.fetch_max(id, std::sync::atomic::Ordering::SeqCst);
                }
                out_write.write_all(&frame).await?;
            }
            if in_read.read_buf(&mut frames.buf).await? == 0 {
                return Ok::<_, std::io::Error>(());
            }
        }
    });
    // Server to client: whole frames, and the GOAWAY between two.
    let mut frames = Frames::default();
    let (code, debug, after) = loop {
        while let Some(frame) = frames.next() {
            if in_write.write_all(&frame).await.is_err() {
                up.abort();
                return;
            }
        }
        tokio::select! {
            read = out_read.read_buf(&mut frames.buf) => match read {
                Ok(0) | Err(_) => {
                    up.abort();
                    return;
                }
                Ok(_) => {}
            },
            command = go_away.recv() => match command {
                Ok(command) => break command,
                Err(_) => {
                    up.abort();
                    return;
                }
            },
        }
    };
    let mut frame = BytesMut::new();
    frame.put_uint(8 + debug.len() as u64, 3);
    frame.put_u8(7); // GOAWAY
    frame.put_u8(0);
    frame.put_u32(0);
    frame.put_u32(last_stream.load(std::sync::atomic::Ordering::SeqCst));
    frame.put_u32(code);
    frame.extend_from_slice(debug.as_bytes());
    let _ = in_write.write_all(&frame).await;
    up.abort();
    let _ = up.await;
    match after {
        After::Close => {
            let _ = in_write.shutdown().await;
        }
        After::Reset => {
            let stream: &tokio::net::TcpStream = in_write.as_ref();
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
    }
    drop(in_write);
}
