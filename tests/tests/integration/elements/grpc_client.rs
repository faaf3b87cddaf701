//! `GrpcClient`: its calls leave as tonic's generated client sends them.

use std::sync::{Arc, Mutex};

use connect_runtime::proto::connection::{Mechanism, Path, PathSegment};
use connect_runtime::{ClientChain, Context, GrpcClient, ServerChain};
use connect_tests::elements::Capture;
use connect_tests::harness::dial_patiently;
use connect_tests::remote::start_tcp;
use connect_tests::{connection, request_for};
use tonic::GrpcMethod;
use tower::ServiceBuilder;
use tower::util::MapRequestLayer;

/// Each call goes to its method's path with tonic's `GrpcMethod` extension,
/// for the layers under the client, and a close (sent boxed) arrives at the
/// server whole: path, mechanism, labels and all.
#[tokio::test]
async fn calls_leave_as_the_generated_client_sends_them() {
    let capture = Capture::new();
    let server = start_tcp(ServerChain::builder().with(capture.clone()).build()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = {
        let seen = Arc::clone(&seen);
        MapRequestLayer::new(move |call: http::Request<tonic::body::Body>| {
            let method = call
                .extensions()
                .get::<GrpcMethod<'_>>()
                .map(|m| format!("{}.{}", m.service(), m.method()));
            seen.lock()
                .unwrap()
                .push((call.uri().path().to_owned(), method));
            call
        })
    };
    let conn = dial_patiently(server.url()).await;
    let client = ClientChain::builder()
        .with(GrpcClient::new(
            ServiceBuilder::new().layer(record).service(conn),
        ))
        .build();

    let mut sent = connection("whole");
    sent.labels.insert("app".into(), "icmp".into());
    sent.mechanism = Some(Box::new(Mechanism {
        cls: "LOCAL".into(),
        r#type: "KERNEL".into(),
        ..Default::default()
    }));
    sent.path = Some(Box::new(Path {
        index: 0,
        path_segments: vec![PathSegment {
            name: "nsc".into(),
            id: "whole".into(),
            ..Default::default()
        }],
        ..Default::default()
    }));
    let reply = client
        .request(Context::new(), request_for(sent.clone()))
        .await
        .unwrap();
    assert_eq!(reply, sent, "the server's chain answers with what it got");
    client.close(Context::new(), reply).await.unwrap();

    assert_eq!(
        *seen.lock().unwrap(),
        [
            (
                "/networkservice.NetworkService/Request".to_owned(),
                Some("networkservice.NetworkService.Request".to_owned())
            ),
            (
                "/networkservice.NetworkService/Close".to_owned(),
                Some("networkservice.NetworkService.Close".to_owned())
            ),
        ]
    );
    assert_eq!(capture.seen().closed, Some(sent), "the close arrived whole");
    server.shutdown().await;
}
