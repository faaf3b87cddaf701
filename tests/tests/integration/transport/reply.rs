//! Replies as grpc-go's clients read them (`transport::reply`): every kind
//! of failed answer gets its gRPC code, a malformed status is `Internal`, a
//! reply that is not gRPC is `Unknown`; nothing leaks on the served path.

use bytes::Bytes;
use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::{ClientChain, Context, GrpcClient};
use connect_tests::harness::{Front, assert_no_leaks, grpc_only};
use connect_tests::raw::{Answer, RawRemote, framed};
use connect_tests::{connection, request};
use prost::Message;
use std::time::Duration;
use tonic::Code;
use url::Url;

/// An endpoint that gives every call `answer`, and what it was sent.
async fn answering(answer: Answer) -> (Url, RawRemote) {
    let remote = RawRemote::start(answer).await;
    (remote.url().clone(), remote)
}

async fn client(url: &Url) -> ClientChain {
    let conn = connect_tests::harness::dial_patiently(url).await;
    ClientChain::builder().with(GrpcClient::new(conn)).build()
}

#[tokio::test]
async fn requests_go_out_as_grpc_unary_calls() {
    let sent = request("wire");
    let (url, seen) = answering(Answer::ok(sent.connection.as_deref().unwrap(), 1)).await;
    let client = client(&url).await;

    let ctx = Context::new().with_timeout(Duration::from_secs(30));
    let reply = client.request(ctx, sent.clone()).await.unwrap();
    assert_eq!(reply.id, "wire");
    // Close's reply is Empty: the canned Connection's fields are unknown
    // fields there, which protobuf skips.
    client.close(Context::new(), reply).await.unwrap();

    let seen = seen.seen();
    let request = &seen[0];
    assert_eq!(request.head.method, http::Method::POST);
    assert_eq!(
        request.head.uri.path(),
        "/networkservice.NetworkService/Request"
    );
    assert_eq!(request.head.headers["content-type"], "application/grpc");
    assert_eq!(request.head.headers["te"], "trailers");
    let timeout = request.head.headers["grpc-timeout"].to_str().unwrap();
    let (digits, unit) = timeout.split_at(timeout.len() - 1);
    assert!(
        digits.len() <= 8 && digits.parse::<u64>().is_ok(),
        "{timeout}"
    );
    assert!("HMSmun".contains(unit), "{timeout}");
    assert_eq!(request.body[0], 0, "uncompressed");
    let len = u32::from_be_bytes(request.body[1..5].try_into().unwrap()) as usize;
    assert_eq!(len, request.body.len() - 5);
    assert_eq!(
        NetworkServiceRequest::decode(&request.body[5..]).unwrap(),
        sent
    );

    let close = &seen[1];
    assert_eq!(
        close.head.uri.path(),
        "/networkservice.NetworkService/Close"
    );
    assert!(
        !close.head.headers.contains_key("grpc-timeout"),
        "no deadline, no grpc-timeout"
    );
    assert_eq!(Connection::decode(&close.body[5..]).unwrap().id, "wire");
}

#[tokio::test]
async fn a_reply_split_across_data_frames_is_read_whole() {
    let mut reply = connection("split");
    reply.network_service = "x".repeat(40_000); // more than one HTTP/2 frame
    let (url, _remote) = answering(Answer::ok(&reply, 7)).await;

    let got = client(&url)
        .await
        .request(Context::new(), request("split"))
        .await
        .unwrap();
    assert_eq!(got, reply);
}

#[tokio::test]
async fn every_kind_of_failed_answer_gets_the_grpc_code() {
    let message = framed(&connection("m").encode_to_vec());
    let grpc = ("content-type", "application/grpc");
    let cases = [
        (
            "HTTP 404, no grpc-status",
            Answer {
                status: 404,
                ..Default::default()
            },
            Code::Unimplemented,
            "HTTP status code 404",
        ),
        (
            "HTTP 503 from a proxy",
            Answer {
                status: 503,
                ..Default::default()
            },
            Code::Unavailable,
            "HTTP status code 503",
        ),
        (
            "HTTP 503 from a proxy, with a page of its own",
            Answer {
                status: 503,
                headers: vec![("content-type", "text/plain")],
                data: vec![Bytes::from_static(b"no healthy upstream")],
                trailers: None,
            },
            Code::Unavailable,
            "HTTP status code 503",
        ),
        (
            "HTTP 403 with an HTML page",
            Answer {
                status: 403,
                headers: vec![("content-type", "text/html")],
                data: vec![Bytes::from_static(b"<html><body>no</body></html>")],
                trailers: None,
            },
            Code::PermissionDenied,
            "HTTP status code 403",
        ),
        (
            "HTTP 500",
            Answer {
                status: 500,
                ..Default::default()
            },
            Code::Unknown,
            "HTTP status code 500",
        ),
        (
            "trailers-only failure",
            Answer {
                status: 200,
                headers: vec![grpc, ("grpc-status", "7"), ("grpc-message", "go%20away")],
                ..Default::default()
            },
            Code::PermissionDenied,
            "go away",
        ),
        (
            "trailers-only OK, no message",
            Answer {
                status: 200,
                headers: vec![grpc, ("grpc-status", "0")],
                ..Default::default()
            },
            Code::Internal,
            "Missing response message",
        ),
        (
            "a failure after the message",
            Answer {
                status: 200,
                headers: vec![grpc],
                data: vec![message.clone()],
                trailers: Some(vec![("grpc-status", "13"), ("grpc-message", "late")]),
            },
            Code::Internal,
            "late",
        ),
        (
            "no trailers at all",
            Answer {
                status: 200,
                headers: vec![grpc],
                data: vec![message.clone()],
                trailers: None,
            },
            Code::Unknown,
            "missing grpc-status trailer",
        ),
        (
            "a compressed reply nobody asked for",
            Answer {
                status: 200,
                headers: vec![grpc, ("grpc-encoding", "gzip")],
                data: vec![message.clone()],
                trailers: Some(vec![("grpc-status", "0")]),
            },
            Code::Unimplemented,
            "`gzip`",
        ),
        (
            "an HTML page with HTTP 200",
            Answer {
                status: 200,
                headers: vec![("content-type", "text/html")],
                data: vec![Bytes::from_static(b"<html><body>hello</body></html>")],
                trailers: None,
            },
            Code::Unknown,
            "content-type text/html, not gRPC",
        ),
        (
            "gRPC-Web, which is not gRPC",
            Answer {
                status: 200,
                headers: vec![("content-type", "application/grpc-web")],
                data: vec![message.clone()],
                trailers: None,
            },
            Code::Unknown,
            "content-type application/grpc-web, not gRPC",
        ),
        (
            "gRPC with a subtype and a parameter",
            Answer {
                status: 200,
                headers: vec![("content-type", "application/grpc+proto; charset=utf-8")],
                data: vec![message.clone()],
                trailers: Some(vec![("grpc-status", "5"), ("grpc-message", "gone")]),
            },
            Code::NotFound,
            "gone",
        ),
        (
            "a trailers-only status with details that are not base64",
            Answer {
                status: 200,
                headers: vec![
                    grpc,
                    ("grpc-status", "13"),
                    ("grpc-status-details-bin", "%%% not base64 %%%"),
                ],
                ..Default::default()
            },
            Code::Internal,
            "(grpc-status 13) has malformed grpc-status-details-bin",
        ),
        (
            "a status in trailers with details that are not base64",
            Answer {
                status: 200,
                headers: vec![grpc],
                data: vec![message.clone()],
                trailers: Some(vec![
                    ("grpc-status", "5"),
                    ("grpc-status-details-bin", "!!"),
                ]),
            },
            Code::Internal,
            "(grpc-status 5) has malformed grpc-status-details-bin",
        ),
        (
            "a reply that is not protobuf",
            Answer {
                status: 200,
                headers: vec![grpc],
                data: vec![framed(&[0xff, 0xff, 0xff])],
                trailers: Some(vec![("grpc-status", "0")]),
            },
            Code::Internal,
            "failed to decode Protobuf message",
        ),
    ];
    for (what, answer, code, says) in cases {
        let (url, _remote) = answering(answer).await;
        let err = client(&url)
            .await
            .request(Context::new(), request("x"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(
            err.message().contains(says),
            "{what}: {err:?} should say {says:?}"
        );
    }
}

/// A failure met reading the reply carries the reply's headers as well as
/// its trailers in its metadata, as tonic's unary call gives it; a failure
/// after the message carries its trailers alone.
#[tokio::test]
async fn a_failures_metadata_is_the_replys_headers_and_trailers() {
    let message = framed(&Connection::default().encode_to_vec());
    let grpc = ("content-type", "application/grpc");
    let headers = vec![grpc, ("x-remote-header", "h")];
    let trailers = vec![
        ("grpc-status", "5"),
        ("grpc-message", "gone"),
        ("x-remote-trailer", "t"),
    ];
    for (what, data, header_kept) in [
        ("no message", vec![], true),
        ("after the message", vec![message], false),
    ] {
        let (url, _remote) = answering(Answer {
            status: 200,
            headers: headers.clone(),
            data,
            trailers: Some(trailers.clone()),
        })
        .await;
        let err = client(&url)
            .await
            .request(Context::new(), request("x"))
            .await
            .unwrap_err();

        assert_eq!(
            (err.code(), err.message()),
            (Code::NotFound, "gone"),
            "{what}"
        );
        assert_eq!(
            err.metadata().get("x-remote-trailer").unwrap(),
            "t",
            "{what}"
        );
        assert_eq!(
            err.metadata().get("x-remote-header").is_some(),
            header_kept,
            "{what}: {:?}",
            err.metadata()
        );
    }
}

/// A remote's reply whose status details are not base64 is an `Internal`
/// error naming the problem, never a panic, and leaves no client and no
/// connection behind (tonic's status parsing panics on such details).
#[tokio::test]
async fn a_malformed_status_is_an_internal_error_and_leaks_nothing() {
    let grpc = ("content-type", "application/grpc");
    let remote = RawRemote::start(Answer {
        status: 200,
        headers: vec![
            grpc,
            ("grpc-status", "13"),
            ("grpc-status-details-bin", "%%% not base64 %%%"),
        ],
        ..Default::default()
    })
    .await;
    let connect = grpc_only().dial_timeout(Duration::from_secs(1)).build();
    let front = Front::new(&connect, remote.url()).await;

    let status = front.request("m").await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("grpc-status-details-bin"),
        "{status:?}"
    );
    assert_no_leaks(&connect, &[]).await;
    remote
        .wait_connections(|c| c.accepted == 1 && c.open == 0)
        .await;
}

/// A reply that is not gRPC at all (an HTML page from a proxy) is an
/// `Unknown` error naming its content type (grpc-go's answer to HTTP 200
/// without gRPC), and leaks nothing.
#[tokio::test]
async fn a_reply_that_is_not_grpc_is_an_unknown_error_and_leaks_nothing() {
    let remote = RawRemote::start(Answer {
        status: 200,
        headers: vec![("content-type", "text/html")],
        data: vec![bytes::Bytes::from_static(b"<html>hello</html>")],
        trailers: None,
    })
    .await;
    let connect = grpc_only().dial_timeout(Duration::from_secs(1)).build();
    let front = Front::new(&connect, remote.url()).await;

    let status = front.request("h").await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(
        status.message().contains("content-type text/html"),
        "{status:?}"
    );
    assert_no_leaks(&connect, &[]).await;
    remote.wait_connections(|c| c.open == 0).await;
}
