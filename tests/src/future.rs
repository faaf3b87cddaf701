//! Peers from a newer API version: a caller and an endpoint built from
//! `tests/proto/future` (NSM's messages with fields no release has), on
//! tonic's own client and server. They decode with plain prost, so what they
//! see of the extra fields is independent of connect-proto.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use url::Url;

use crate::caller::tonic_uri;
use crate::generated::future::connection::{Connection, Mechanism, Path, PathSegment};
use crate::generated::future::connectioncontext::{
    ConnectionContext, FutureDetail, IpContext, PolicyRoute, Route,
};
use crate::generated::future::networkservice::NetworkServiceRequest;
use crate::generated::future::networkservice::network_service_client::NetworkServiceClient;
use crate::generated::future::networkservice::network_service_server::{
    NetworkService, NetworkServiceServer,
};

/// A request for `id` with every field set, today's and the future's, at
/// every depth: what a newer NSC sends.
pub fn full_request(id: &str) -> NetworkServiceRequest {
    let route = |prefix: &str| Route {
        prefix: prefix.into(),
        next_hop: "10.0.0.1".into(),
        future_route_note: format!("route note for {prefix}"),
    };
    let ip_context = IpContext {
        src_ip_addrs: vec!["10.0.0.2/32".into()],
        dst_ip_addrs: vec!["10.0.0.1/32".into()],
        src_ip_required: true,
        src_routes: vec![route("10.1.0.0/16")],
        policies: vec![PolicyRoute {
            from: "10.0.0.2/32".into(),
            proto: "6".into(),
            dst_port: "80-8080".into(),
            src_port: "1024".into(),
            routes: vec![route("172.16.0.0/12")],
            future_priority: -7,
        }],
        future_ip_note: "ip note".into(),
        future_ip_detail: Some(detail("ip detail")),
        ..Default::default()
    };
    let connection = Connection {
        id: id.into(),
        network_service: "ns".into(),
        mechanism: Some(Mechanism {
            cls: "LOCAL".into(),
            r#type: "KERNEL".into(),
            parameters: HashMap::from([("name".into(), "nsm-1".into())]),
            future_flag: true,
        }),
        context: Some(ConnectionContext {
            ip_context: Some(ip_context),
            extra_context: HashMap::from([("k".into(), "v".into())]),
            mtu: 1450,
            future_context_fixed: 0xfeed,
            ..Default::default()
        }),
        labels: HashMap::from([("app".into(), "nsc".into())]),
        path: Some(Path {
            index: 0,
            path_segments: vec![PathSegment {
                name: "nsc".into(),
                id: id.into(),
                token: "token".into(),
                expires: Some(prost_types::Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 5,
                }),
                future_stamp: 0x0123_4567_89ab_cdef,
                ..Default::default()
            }],
            future_path_note: "path note".into(),
        }),
        payload: "ETHERNET".into(),
        state: 9, // FUTURE_STATE: a value today's enum does not name
        future_note: "note".into(),
        future_count: u64::MAX,
        future_fixed32: 0xdead_beef,
        future_double: -1.5,
        future_detail: Some(detail("top detail")),
        future_tags: vec!["a".into(), "b".into()],
        future_packed: vec![-1, 0, i32::MAX, i32::MIN],
        future_map: HashMap::from([("m".into(), -3)]),
        ..Default::default()
    };
    NetworkServiceRequest {
        connection: Some(connection),
        mechanism_preferences: vec![Mechanism {
            cls: "REMOTE".into(),
            future_flag: true,
            ..Default::default()
        }],
        future_request_note: "request note".into(),
        future_request_numbers: vec![1, -1, i64::MAX],
    }
}

fn detail(note: &str) -> FutureDetail {
    FutureDetail {
        note: note.into(),
        counts: vec![1, 2, 3],
        inner: Some(Box::new(FutureDetail {
            note: format!("{note}, inner"),
            ..Default::default()
        })),
    }
}

/// What the endpoint adds to each reply: future fields of its own, at the
/// top and three levels down.
pub fn endpoint_marks(connection: &mut Connection) {
    connection.future_note = "set by the endpoint".into();
    let ip = connection
        .context
        .get_or_insert_with(Default::default)
        .ip_context
        .get_or_insert_with(Default::default);
    ip.future_ip_note = "endpoint ip note".into();
    ip.policies.push(PolicyRoute {
        from: "10.0.0.9/32".into(),
        future_priority: 42,
        ..Default::default()
    });
}

/// What a [`FutureEndpoint`] has received.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Received {
    pub requests: Vec<NetworkServiceRequest>,
    pub closes: Vec<Connection>,
}

#[derive(Clone)]
struct Recorder(Arc<watch::Sender<Received>>);

#[tonic::async_trait]
impl NetworkService for Recorder {
    async fn request(
        &self,
        request: Request<NetworkServiceRequest>,
    ) -> Result<Response<Connection>, Status> {
        let request = request.into_inner();
        let mut reply = request.connection.clone().unwrap_or_default();
        endpoint_marks(&mut reply);
        self.0.send_modify(|r| r.requests.push(request));
        Ok(Response::new(reply))
    }

    async fn close(&self, request: Request<Connection>) -> Result<Response<()>, Status> {
        let connection = request.into_inner();
        self.0.send_modify(|r| r.closes.push(connection));
        Ok(Response::new(()))
    }
}

/// An NSM endpoint of the newer API, on tonic's server: it records what it
/// receives and answers each request with the connection it was sent plus
/// [`endpoint_marks`].
pub struct FutureEndpoint {
    url: Url,
    received: watch::Receiver<Received>,
    open: watch::Receiver<usize>,
    stop: CancellationToken,
}

impl FutureEndpoint {
    /// Starts one on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
        let (record, received) = watch::channel(Received::default());
        let (opened, open) = watch::channel(0usize);
        let opened = Arc::new(opened);
        // Counts open TCP connections: each stream carries a guard that
        // counts it down when tonic drops it.
        let incoming = TcpListenerStream::new(listener).map(move |stream| {
            stream.map(|stream| {
                opened.send_modify(|n| *n += 1);
                Counted {
                    stream,
                    _guard: OpenGuard(Arc::clone(&opened)),
                }
            })
        });
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(
            Server::builder()
                .add_service(NetworkServiceServer::new(Recorder(Arc::new(record))))
                .serve_with_incoming_shutdown(incoming, stopped.cancelled_owned()),
        );
        Self {
            url,
            received,
            open,
            stop,
        }
    }

    /// Where it listens.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Everything received so far.
    pub fn received(&self) -> Received {
        self.received.borrow().clone()
    }

    /// Waits until what it received satisfies `done`.
    pub async fn until(&self, mut done: impl FnMut(&Received) -> bool) -> Received {
        let mut received = self.received.clone();
        received.wait_for(|r| done(r)).await.unwrap().clone()
    }

    /// Waits until no TCP connection to it is open.
    pub async fn all_closed(&self) {
        let mut open = self.open.clone();
        open.wait_for(|n| *n == 0).await.unwrap();
    }
}

impl Drop for FutureEndpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct OpenGuard(Arc<watch::Sender<usize>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

pin_project_lite::pin_project! {
    /// A TCP stream that counts itself open until dropped.
    struct Counted {
        #[pin]
        stream: tokio::net::TcpStream,
        _guard: OpenGuard,
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().stream.poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// A tonic client of the newer API, on tonic's own channel.
pub async fn future_caller(url: &Url) -> NetworkServiceClient<Channel> {
    let channel = Endpoint::from_shared(tonic_uri(url))
        .expect("a valid endpoint URI")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|err| panic!("tonic could not connect to {url}: {err}"));
    NetworkServiceClient::new(channel)
}
