//! A catalogue of bad input, sent over gRPC to a served passthrough: each
//! gets its exact status code and message, and leaves nothing behind.

use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{
    ClientChain, ClientConn, ClientUrl, Connect, Context, GrpcClient, ServerChain, ServerHandle,
    Target, serve,
};
use connect_tests::harness::assert_no_leaks;
use connect_tests::request;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use url::Url;

/// A passthrough forwarding to `to` (or with no clienturl at all), served
/// over gRPC, with a client for it.
struct Passthrough {
    connect: Connect,
    _server: ServerHandle,
    client: NetworkServiceClient<ClientConn>,
    conn: ClientConn,
}

impl Passthrough {
    async fn new(to: Option<&str>) -> Self {
        let connect = Connect::new(|_: &Context, conn| {
            ClientChain::builder().with(GrpcClient::new(conn)).build()
        });
        let mut chain = ServerChain::builder();
        if let Some(to) = to {
            chain = chain.with(ClientUrl::new(Url::parse(to).unwrap()));
        }
        let chain = chain.with(connect.clone()).build();
        let server = serve("tcp://127.0.0.1:0", chain, CancellationToken::new())
            .await
            .unwrap();
        let conn = connect_tests::harness::dial_patiently(server.url()).await;
        Self {
            connect,
            _server: server,
            client: NetworkServiceClient::new(conn.clone()),
            conn,
        }
    }

    /// Sends `bytes` as a call's message to `path`, which must fail.
    async fn raw(&self, path: &'static str, bytes: Vec<u8>) -> tonic::Status {
        self.raw_messages(path, vec![bytes]).await
    }

    /// Sends each of `messages` in one call to `path`, which must fail.
    async fn raw_messages(&self, path: &'static str, messages: Vec<Vec<u8>>) -> tonic::Status {
        let mut grpc = tonic::client::Grpc::new(self.conn.clone());
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(path);
        let messages = tokio_stream::iter(messages.into_iter().map(RawBytes));
        let call = grpc.client_streaming(tonic::Request::new(messages), path, RawCodec);
        call.await.unwrap_err()
    }

    async fn refuses(mut self, request: NetworkServiceRequest, code: Code, message: &str) {
        let err = self.client.request(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert_eq!(err.message(), message);
        assert_no_leaks(&self.connect, &[]).await;
    }
}

#[tokio::test]
async fn no_client_url() {
    Passthrough::new(None)
        .await
        .refuses(
            request("c1"),
            Code::InvalidArgument,
            "connect: no client URL for connection c1: put a clienturl element before connect",
        )
        .await;
}

#[tokio::test]
async fn an_unparseable_url() {
    // A URL that does not parse never reaches connect (a `Url` is parsed);
    // it is refused where it is read, with this status.
    let err = tonic::Status::from(Target::parse("tcp//127.0.0.1:1").unwrap_err());
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "invalid URL `tcp//127.0.0.1:1`: relative URL without a base"
    );
}

#[tokio::test]
async fn an_unsupported_scheme() {
    Passthrough::new(Some("http://127.0.0.1:9"))
        .await
        .refuses(
            request("c1"),
            Code::InvalidArgument,
            "connect: connection c1: invalid URL `http://127.0.0.1:9/`: unsupported scheme `http`: \
             expected tcp://host:port or unix:///path",
        )
        .await;
}

#[tokio::test]
async fn a_url_with_user_info_or_a_query() {
    Passthrough::new(Some("tcp://user:secret@127.0.0.1:9"))
        .await
        .refuses(
            request("c1"),
            Code::InvalidArgument,
            "connect: connection c1: invalid URL `tcp://user:secret@127.0.0.1:9`: user-info is not allowed",
        )
        .await;
    Passthrough::new(Some("tcp://127.0.0.1:9?pool=2"))
        .await
        .refuses(
            request("c1"),
            Code::InvalidArgument,
            "connect: connection c1: invalid URL `tcp://127.0.0.1:9?pool=2`: a query is not allowed",
        )
        .await;
}

#[tokio::test]
async fn an_empty_connection_id() {
    Passthrough::new(Some("tcp://127.0.0.1:9"))
        .await
        .refuses(
            request(""),
            Code::InvalidArgument,
            "connect: the request's connection has an empty id",
        )
        .await;
}

#[tokio::test]
async fn a_request_with_no_connection() {
    Passthrough::new(Some("tcp://127.0.0.1:9"))
        .await
        .refuses(
            NetworkServiceRequest::default(),
            Code::InvalidArgument,
            "connect: the request has no connection",
        )
        .await;
}

#[tokio::test]
async fn an_oversized_request() {
    let mut passthrough = Passthrough::new(Some("tcp://127.0.0.1:9")).await;
    let mut big = request("big");
    big.connection
        .as_mut()
        .unwrap()
        .labels
        .insert("padding".into(), "x".repeat(5 * 1024 * 1024));

    let err = passthrough.client.request(big).await.unwrap_err();

    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message()
            .starts_with("Error, decoded message length too large: found 524"),
        "{err:?}"
    );
    assert!(
        err.message().ends_with("the limit is: 4194304 bytes"),
        "{err:?}"
    );
    assert_no_leaks(&passthrough.connect, &[]).await;
}

#[tokio::test]
async fn a_unix_socket_that_does_not_exist() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("nobody-home.sock");
    let url = format!("unix://{}", path.display());
    let mut passthrough = Passthrough::new(Some(&url)).await;

    let err = passthrough.client.request(request("c1")).await.unwrap_err();

    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let prefix = format!("connect: request of connection c1 via {url}: dialing {url}: ");
    assert!(err.message().starts_with(&prefix), "{err:?}");
    assert!(
        err.message().ends_with(&format!(
            "{}: No such file or directory (os error 2)",
            path.display()
        )),
        "{err:?}"
    );
    assert_no_leaks(&passthrough.connect, &[]).await;
}

#[tokio::test]
async fn a_malformed_grpc_timeout() {
    let mut passthrough = Passthrough::new(Some("tcp://127.0.0.1:9")).await;
    let mut call = tonic::Request::new(request("c1"));
    call.metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());

    let err = passthrough.client.request(call).await.unwrap_err();

    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert_eq!(
        err.message(),
        "malformed grpc-timeout header \"soon\": expected up to 8 digits and a unit (H, M, S, m, u, n)"
    );
    assert_no_leaks(&passthrough.connect, &[]).await;
}

#[tokio::test]
async fn bytes_that_are_not_a_request() {
    let passthrough = Passthrough::new(Some("tcp://127.0.0.1:9")).await;

    // A `Connection` sent where a request is expected decodes (protobuf is
    // forgiving); bytes that are not protobuf at all do not.
    let err = passthrough
        .raw(
            "/networkservice.NetworkService/Request",
            vec![0xff, 0xff, 0xff],
        )
        .await;

    assert_not_protobuf(&err);
    assert_no_leaks(&passthrough.connect, &[]).await;
}

#[tokio::test]
async fn a_call_with_no_message() {
    let passthrough = Passthrough::new(Some("tcp://127.0.0.1:9")).await;

    for path in [
        "/networkservice.NetworkService/Request",
        "/networkservice.NetworkService/Close",
    ] {
        let err = passthrough.raw_messages(path, Vec::new()).await;

        // As tonic's unary handler answers it.
        assert_eq!(err.code(), Code::Internal, "{path}: {err:?}");
        assert_eq!(err.message(), "Missing request message.", "{path}");
    }
    assert_no_leaks(&passthrough.connect, &[]).await;
}

#[tokio::test]
async fn a_second_message_that_is_not_a_request() {
    use prost::Message;
    let passthrough = Passthrough::new(Some("tcp://127.0.0.1:9")).await;

    // The whole body is read before the chain runs, as tonic's unary
    // handler reads it: the first message is not forwarded on its own.
    let first = request("second").encode_to_vec();
    let err = passthrough
        .raw_messages(
            "/networkservice.NetworkService/Request",
            vec![first, vec![0xff, 0xff, 0xff]],
        )
        .await;

    assert_not_protobuf(&err);
    assert_no_leaks(&passthrough.connect, &[]).await;
}

#[tokio::test]
async fn a_method_the_service_does_not_have() {
    let passthrough = Passthrough::new(Some("tcp://127.0.0.1:9")).await;

    // The chain's server answers its two methods itself and hands any
    // other path of the service to the generated one.
    let err = passthrough
        .raw("/networkservice.NetworkService/Renew", Vec::new())
        .await;

    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert_no_leaks(&passthrough.connect, &[]).await;
}

/// The status of a message that is not protobuf at all.
fn assert_not_protobuf(err: &tonic::Status) {
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert_eq!(
        err.message(),
        "failed to decode Protobuf message: invalid varint"
    );
}

/// Raw bytes as a gRPC message, to send what no well-behaved client would.
#[derive(Debug)]
struct RawBytes(Vec<u8>);

#[derive(Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = RawBytes;
    type Decode = RawBytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = RawBytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: RawBytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item.0);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = RawBytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<RawBytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(RawBytes(src.copy_to_bytes(src.remaining()).to_vec())))
    }
}
