//! The wire format: gRPC method paths and protobuf field numbers must be
//! NSM's (the api release in proto/api/UPSTREAM), or a Go NSM peer cannot
//! talk to us.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use connect_runtime::proto::connection::{Connection, Mechanism, State};
use connect_runtime::proto::connectioncontext::{ConnectionContext, Route};
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{ClientChain, Context, GrpcClient, ServerChain};
use connect_tests::elements::Capture;
use connect_tests::remote::start_tcp;
use connect_tests::request;
use prost::Message;
use tonic::Code;

/// A transport that records the path of each call and answers
/// `UNIMPLEMENTED`, to see exactly what the generated client sends.
#[derive(Clone, Default)]
struct RecordPaths(Arc<Mutex<Vec<String>>>);

impl tower_service::Service<http::Request<tonic::body::Body>> for RecordPaths {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.lock().unwrap().push(request.uri().path().to_owned());
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "12")
            .body(tonic::body::Body::empty())
            .unwrap();
        ready(Ok(response))
    }
}

#[tokio::test]
async fn the_generated_client_calls_nsm_method_paths() {
    let paths = RecordPaths::default();
    let mut client = NetworkServiceClient::new(paths.clone());

    let err = client.request(request("p")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    let err = client.close(Connection::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    assert_eq!(
        *paths.0.lock().unwrap(),
        [
            "/networkservice.NetworkService/Request",
            "/networkservice.NetworkService/Close"
        ]
    );
}

#[tokio::test]
async fn the_server_answers_at_nsm_method_paths() {
    let capture = Capture::new();
    let server = start_tcp(ServerChain::builder().with(capture.clone()).build()).await;
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    let mut grpc = tonic::client::Grpc::new(conn);

    grpc.ready().await.unwrap();
    let reply: Connection = grpc
        .unary(
            tonic::Request::new(request("by-path")),
            http::uri::PathAndQuery::from_static("/networkservice.NetworkService/Request"),
            tonic_prost::ProstCodec::<NetworkServiceRequest, Connection>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.id, "by-path");
    assert!(capture.request().is_some());

    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(reply),
        http::uri::PathAndQuery::from_static("/networkservice.NetworkService/Close"),
        tonic_prost::ProstCodec::<Connection, ()>::default(),
    )
    .await
    .unwrap();
    assert!(capture.request().is_none(), "the close reached the chain");

    grpc.ready().await.unwrap();
    let err = grpc
        .unary(
            tonic::Request::new(request("x")),
            http::uri::PathAndQuery::from_static("/networkservice.NetworkService/Nope"),
            tonic_prost::ProstCodec::<NetworkServiceRequest, Connection>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

/// Messages of every size cross the wire whole, both ways, through the
/// codec's encoders (each buffer reserved at its message's length) and
/// decoders: from empty, through the encoders' first buffer, to many times
/// the decoders', from the generated client and from connect's
/// `GrpcClient` on its own transport.
#[tokio::test]
async fn messages_of_every_size_travel_whole_both_ways() {
    let capture = Capture::new();
    let server = start_tcp(ServerChain::builder().with(capture.clone()).build()).await;
    let mut generated = connect_tests::caller::tonic_caller(server.url()).await;
    let conn = connect_tests::harness::dial_patiently(server.url()).await;
    let chain = ClientChain::builder().with(GrpcClient::new(conn)).build();
    for size in [0, 1, 50, 59, 60, 64, 200, 1_019, 1_024, 5_000, 100_000] {
        let sent = Connection {
            id: format!("{size}"),
            labels: HashMap::from([("fill".to_owned(), "x".repeat(size))]),
            ..Default::default()
        };
        let reply = generated
            .request(NetworkServiceRequest {
                connection: Some(Box::new(sent.clone())),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply, sent, "{size} bytes, generated client");
        assert_eq!(
            capture.request().unwrap().connection.as_deref(),
            Some(&sent)
        );
        generated.close(reply).await.unwrap();

        let request = NetworkServiceRequest {
            connection: Some(Box::new(sent.clone())),
            ..Default::default()
        };
        let reply = chain.request(Context::new(), request).await.unwrap();
        assert_eq!(reply, sent, "{size} bytes, GrpcClient");
        chain.close(Context::new(), reply).await.unwrap();
        assert!(
            capture.request().is_none(),
            "{size} bytes: the close arrived"
        );
    }
}

/// Protobuf key byte: field number << 3 | wire type (0 varint, 2 length-delimited).
fn key(field: u8, wire_type: u8) -> u8 {
    (field << 3) | wire_type
}

#[test]
fn connection_fields_have_nsm_numbers() {
    let conn = Connection {
        id: "i".into(),
        network_service: "n".into(),
        mechanism: Some(Box::new(Mechanism {
            cls: "c".into(),
            r#type: "t".into(),
            parameters: HashMap::new(),
            ..Default::default()
        })),
        context: Some(Box::new(ConnectionContext {
            mtu: 9,
            ..Default::default()
        })),
        network_service_endpoint_name: "e".into(),
        payload: "p".into(),
        state: State::Down as i32,
        ..Default::default()
    };
    let expected = [
        key(1, 2),
        1,
        b'i', // id = 1
        key(2, 2),
        1,
        b'n', // network_service = 2
        key(3, 2),
        6,
        key(1, 2),
        1,
        b'c',
        key(2, 2),
        1,
        b't', // mechanism = 3 {cls = 1, type = 2}
        key(4, 2),
        2,
        key(5, 0),
        9, // context = 4 {MTU = 5}
        key(7, 2),
        1,
        b'e', // network_service_endpoint_name = 7
        key(8, 2),
        1,
        b'p', // payload = 8
        key(9, 0),
        1, // state = 9, DOWN = 1
    ];
    assert_eq!(conn.encode_to_vec(), expected);
    assert_eq!(Connection::decode(&expected[..]).unwrap(), conn);
}

#[test]
fn request_and_context_fields_have_nsm_numbers() {
    let request = NetworkServiceRequest {
        connection: Some(Box::new(Connection {
            id: "i".into(),
            ..Default::default()
        })),
        mechanism_preferences: vec![Mechanism {
            cls: "c".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let expected = [
        key(1, 2),
        3,
        key(1, 2),
        1,
        b'i', // connection = 1
        key(2, 2),
        3,
        key(1, 2),
        1,
        b'c', // mechanism_preferences = 2
    ];
    assert_eq!(request.encode_to_vec(), expected);

    let route = Route {
        prefix: "p".into(),
        next_hop: "h".into(),
        ..Default::default()
    };
    assert_eq!(
        route.encode_to_vec(),
        [key(1, 2), 1, b'p', key(2, 2), 1, b'h']
    );

    let mut context = ConnectionContext::default();
    context.extra_context.insert("k".into(), "v".into());
    // extra_context = 4, a map entry {key = 1, value = 2}
    assert_eq!(
        context.encode_to_vec(),
        [key(4, 2), 6, key(1, 2), 1, b'k', key(2, 2), 1, b'v']
    );
}
