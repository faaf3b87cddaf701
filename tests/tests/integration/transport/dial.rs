//! The bounded dial (`transport::dial`): a remote that never answers, one
//! that is not HTTP/2, a missing socket, URLs connect cannot use.

use connect_runtime::{Context, DialError, DialOptions, ServeError, ServerChain, dial, serve};
use connect_tests::remote::{BlackHole, start_tcp, unix_url};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use url::Url;

#[tokio::test]
async fn a_listener_that_never_speaks_http2_fails_the_dial_within_its_timeout() {
    let hole = BlackHole::start().await;
    let caller = Context::new().with_timeout(Duration::from_secs(5));
    let options = DialOptions::new().timeout(Duration::from_millis(100));

    let started = Instant::now();
    let err = caller
        .run(async { Ok(dial(hole.url(), &options).await) })
        .await
        .expect("the dial ends before the caller's deadline")
        .unwrap_err();
    let elapsed = started.elapsed();

    assert!(matches!(err, DialError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains(hole.url().as_str()), "{err}");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        elapsed < Duration::from_millis(2500),
        "dial took {elapsed:?}"
    );
    assert_eq!(hole.accepted(), 1, "TCP connected; HTTP/2 never answered");
}

#[tokio::test]
async fn a_server_that_is_not_http2_is_reported_as_such() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("tcp://{}", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut socket, _) = listener.accept().await.unwrap();
        socket
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        std::future::pending::<()>().await;
    });

    let err = dial(&url, &DialOptions::new().timeout(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::NotHttp2 { .. }), "{err:?}");
    assert!(err.to_string().contains("does not speak HTTP/2"), "{err}");
}

#[tokio::test]
async fn dialing_a_missing_unix_socket_names_the_path() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("nobody.sock");
    let err = dial(&unix_url(&path), &DialOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
}

#[tokio::test]
async fn bad_urls_give_clear_errors() {
    for bad in [
        "http://127.0.0.1:1",
        "tcp://127.0.0.1",
        "unix://host/x.sock",
        "tcp://u:p@h:1",
    ] {
        let url = Url::parse(bad).unwrap();
        let err = dial(&url, &DialOptions::new()).await.unwrap_err();
        assert!(matches!(err, DialError::Url(_)), "{bad}: {err:?}");
        assert!(err.to_string().contains(bad), "{bad}: {err}");
        assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);

        let err = serve(&url, ServerChain::default(), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ServeError::Url(_)), "{bad}: {err:?}");
    }

    let err = serve(
        &Url::parse("unix:///definitely/not/here/x.sock").unwrap(),
        ServerChain::default(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("directory /definitely/not/here does not exist"),
        "{err}"
    );

    let taken = start_tcp(ServerChain::default()).await;
    let err = serve(
        taken.url(),
        ServerChain::default(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}
