//! The server against hostile peers (`server`'s accept loop): stalled
//! handshakes, callers that are not HTTP/2, more connections than the limit.

use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{DialOptions, Passthrough, Serve, ServerChain, dial};
use connect_tests::caller::tonic_caller;
use connect_tests::harness::{PATIENCE, settle};
use connect_tests::remote::start_tcp;
use connect_tests::request;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection that sends nothing is closed once the handshake timeout
/// passes, plain or TLS; its slot is not held forever.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    use connect_runtime::Serve;
    use connect_runtime::tls::{Identity, ServerTls};
    use connect_tests::pki::Pki;
    use tokio::io::AsyncReadExt;

    let pki = Pki::new("test CA");
    let issued = pki.issue(&["localhost"]);
    let tls =
        ServerTls::new(Identity::from_pem(&issued.cert_pem, &issued.key_pem).unwrap()).unwrap();
    for tls in [None, Some(tls)] {
        let mut serve =
            Serve::new(ServerChain::default()).handshake_timeout(Duration::from_millis(200));
        if let Some(tls) = tls.clone() {
            serve = serve.tls(tls);
        }
        let server = serve.bind("tcp://127.0.0.1:0").await.unwrap();
        let addr = format!(
            "{}:{}",
            server.url().host_str().unwrap(),
            server.url().port().unwrap()
        );
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        // The server closes it: the read ends (with EOF, or a reset).
        let _ = settle(
            "the server to close the silent connection",
            silent.read_to_end(&mut rest),
        )
        .await;
        let seen = settle(
            "the server to count it closed",
            server.wait_connections(|c| c.open == 0),
        )
        .await;
        assert_eq!(seen.accepted, 1);
        assert_eq!((seen.timed_out, seen.refused), (1, 0), "{seen:?}");
        server.shutdown().await;
    }
}

/// Connections that stop partway through their handshake, whatever they
/// sent (one byte, most of the preface, all of it, part of their SETTINGS),
/// are all closed by the handshake timeout and counted, while real calls go
/// on meanwhile.
#[tokio::test]
async fn stalled_handshakes_are_closed_whatever_they_sent() {
    const STALLED: usize = 100;
    let server = Serve::new(ServerChain::builder().with(Passthrough).build())
        .handshake_timeout(Duration::from_millis(500))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let addr = format!(
        "{}:{}",
        server.url().host_str().unwrap(),
        server.url().port().unwrap()
    );
    let mut with_settings = PREFACE.to_vec();
    with_settings.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3]); // 2 of 6 bytes
    let sends: [&[u8]; 4] = [b"P", &PREFACE[..23], PREFACE, &with_settings];
    let mut stalled = Vec::new();
    for k in 0..STALLED {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(sends[k % sends.len()]).await.unwrap();
        stalled.push(stream);
    }
    // Real calls, meanwhile, over a connection that did its handshake.
    let mut caller = tonic_caller(server.url()).await;
    for k in 0..10 {
        caller.request(request(&format!("real-{k}"))).await.unwrap();
    }
    for mut stream in stalled {
        let mut rest = Vec::new();
        // The server closes it: the read ends (with EOF, or a reset).
        let _ = settle(
            "a stalled connection to be closed",
            stream.read_to_end(&mut rest),
        )
        .await;
    }
    let seen = settle(
        "the server to count them",
        server.wait_connections(|c| c.open == 1),
    )
    .await;
    assert_eq!(seen.timed_out, STALLED as u64, "{seen:?}");
    assert_eq!((seen.refused, seen.not_http2), (0, 0), "{seen:?}");
    caller.request(request("after")).await.unwrap();
    server.shutdown().await;
}

/// A connection whose first bytes are not HTTP/2's is closed at once and
/// counted.
#[tokio::test]
async fn a_caller_that_is_not_http2_is_closed_at_once() {
    let server = start_tcp(ServerChain::default()).await;
    let addr = format!(
        "{}:{}",
        server.url().host_str().unwrap(),
        server.url().port().unwrap()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = settle("the server to close it", stream.read_to_end(&mut rest)).await;
    let seen = settle("it to be counted", server.wait_connections(|c| c.open == 0)).await;
    assert_eq!((seen.not_http2, seen.timed_out), (1, 0), "{seen:?}");
    server.shutdown().await;
}

/// At the connection limit the server stops accepting: a new connection
/// waits in the listen backlog, never accepted and left hanging, and is
/// served once an open one closes.
#[tokio::test]
async fn at_the_connection_limit_new_connections_wait_until_one_closes() {
    let server = Serve::new(ServerChain::builder().with(Passthrough).build())
        .max_connections(Some(2))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let options = DialOptions::new().timeout(PATIENCE);
    let first = dial(server.url(), &options).await.unwrap();
    let second = dial(server.url(), &options).await.unwrap();
    let url = server.url().clone();
    let third =
        tokio::spawn(async move { dial(&url, &DialOptions::new().timeout(PATIENCE)).await });
    let limited = settle(
        "the server to stop at the limit",
        server.wait_connections(|c| c.at_limit > 0),
    )
    .await;
    assert_eq!((limited.accepted, limited.open), (2, 2), "{limited:?}");
    assert!(!third.is_finished(), "the third was served past the limit");

    drop(first);
    let third = settle("the third connection", third)
        .await
        .unwrap()
        .unwrap();
    NetworkServiceClient::new(third.clone())
        .request(request("third"))
        .await
        .unwrap();
    NetworkServiceClient::new(second)
        .request(request("second"))
        .await
        .unwrap();
    let seen = server.connections();
    assert_eq!(
        (seen.accepted, seen.open, seen.peak_open),
        (3, 2, 2),
        "{seen:?}"
    );
    drop(third);
    server.shutdown().await;
}

/// A call h2 refuses before it reaches the chain (here, grpcio's unix
/// socket `:authority`, the socket's path) is counted, and said once per
/// connection at warn with the fix; the connection stays usable.
#[tokio::test]
async fn a_call_with_a_malformed_authority_is_counted() {
    let dir = tempfile::TempDir::new().unwrap();
    let server = connect_tests::remote::start_unix(
        dir.path(),
        "nse.sock",
        ServerChain::builder().with(Passthrough).build(),
    )
    .await;
    let path = dir.path().join("nse.sock");
    let mut caller = tokio::net::UnixStream::connect(&path).await.unwrap();
    // The client preface, empty SETTINGS, then two calls' HEADERS (streams
    // 1 and 3) whose `:authority` is a path, as grpcio sends it.
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    for stream in [1u8, 3] {
        let literal = |index: u8, value: &str| {
            let mut field = vec![index, value.len() as u8];
            field.extend(value.as_bytes());
            field
        };
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        block.extend(literal(0x04, "/networkservice.NetworkService/Request"));
        block.extend(literal(0x01, path.to_str().unwrap()));
        block.extend([0x0f, 0x10, 16]); // content-type
        block.extend(b"application/grpc");
        block.extend([0x00, 2]);
        block.extend(b"te");
        block.extend([8]);
        block.extend(b"trailers");
        let len = block.len();
        bytes.extend([(len >> 16) as u8, (len >> 8) as u8, len as u8, 0x1, 0x4]);
        bytes.extend([0, 0, 0, stream]);
        bytes.extend(block);
    }
    caller.write_all(&bytes).await.unwrap();
    let seen = settle(
        "the server to count both calls as malformed",
        server.wait_connections(|c| c.malformed_streams == 2),
    )
    .await;
    assert_eq!(seen.open, 1, "the connection stays open: {seen:?}");
    drop(caller);
    server.shutdown().await;
}
