//! One gRPC unary call (gRPC over HTTP/2: a length-prefixed message out, one
//! back, the status in the trailers) over a [`ClientConn`].
//!
//! tonic's generic client runs every call through its streaming machinery:
//! an 8 KiB encode buffer and an 8 KiB decode buffer per call, a boxed
//! decoder, and a ~5 KiB call future. A unary call needs none of that: the
//! request is encoded at its exact size, and a reply that arrives in one
//! HTTP/2 DATA frame (the usual case) is decoded where it lies. What goes
//! on the wire is the same. The transport is the [`ClientConn`]'s (hyper's
//! HTTP/2 connection over plaintext, tonic's channel under TLS), which any
//! tonic client can use too.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue, TE};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use prost::Message;
use tonic::{Code, Status};

use crate::dial::ClientConn;

// Parsed once: `http` validates a path on every parse.
/// `networkservice.NetworkService/Request`, as NSM's API names it.
pub(crate) static REQUEST: LazyLock<http::Uri> =
    LazyLock::new(|| PathAndQuery::from_static("/networkservice.NetworkService/Request").into());
/// `networkservice.NetworkService/Close`.
pub(crate) static CLOSE: LazyLock<http::Uri> =
    LazyLock::new(|| PathAndQuery::from_static("/networkservice.NetworkService/Close").into());

/// The largest reply accepted (tonic's and grpc-go's default).
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// A gRPC message's prefix: a compressed flag and a 32-bit length.
const PREFIX_LEN: usize = 5;

const GRPC_TIMEOUT: &str = "grpc-timeout";
const GRPC_ENCODING: &str = "grpc-encoding";

/// Builds the HTTP/2 request for one unary call of `method` carrying
/// `message`, with `timeout` (the caller's remaining time) as
/// `grpc-timeout`.
pub(crate) fn encode<M: Message>(
    method: &http::Uri,
    message: &M,
    timeout: Option<Duration>,
) -> http::Request<tonic::body::Body> {
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(PREFIX_LEN + len);
    frame.put_u8(0);
    // A message over 4 GiB cannot be framed; the remote's limit is far
    // lower anyway, and it answers RESOURCE_EXHAUSTED or OUT_OF_RANGE.
    frame.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut frame);
    let mut request = http::Request::new(tonic::body::Body::new(Full::new(frame.freeze())));
    *request.method_mut() = http::Method::POST;
    *request.version_mut() = http::Version::HTTP_2;
    *request.uri_mut() = method.clone();
    let headers = request.headers_mut();
    headers.insert(TE, HeaderValue::from_static("trailers"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    if let Some(timeout) = timeout {
        headers.insert(GRPC_TIMEOUT, grpc_timeout(timeout));
    }
    request
}

/// Sends `request` (from [`encode`]) over `conn` and decodes the one reply.
pub(crate) async fn call<R: Message + Default>(
    mut conn: ClientConn,
    request: http::Request<tonic::body::Body>,
) -> Result<R, Status> {
    let slots = Arc::clone(&conn.unary_slots);
    let _slot = slots
        .acquire()
        .await
        .map_err(|_| Status::internal("the connection's call slots were closed"))?;
    std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut conn, cx))
        .await
        .map_err(Status::from_error)?;
    let response = tower_service::Service::call(&mut conn, request)
        .await
        .map_err(Status::from_error)?;
    let (head, mut body) = response.into_parts();
    check_head(&head)?;
    let mut reply = Reply::default();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => reply.push(data)?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return reply.finish(&trailers);
                }
            }
        }
    }
    Err(Status::unknown(
        "the remote's response ended without a grpc-status trailer",
    ))
}

/// Fails a response whose headers already say the call failed, or that is
/// not a gRPC response at all (the gRPC HTTP-to-status mapping).
fn check_head(head: &http::response::Parts) -> Result<(), Status> {
    if let Some(status) = Status::from_header_map(&head.headers) {
        // Trailers-only: the status is all there is.
        return Err(if status.code() == Code::Ok {
            Status::internal("the remote answered OK without a reply message")
        } else {
            status
        });
    }
    if head.status != http::StatusCode::OK {
        let code = match head.status {
            http::StatusCode::BAD_REQUEST => Code::Internal,
            http::StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            http::StatusCode::FORBIDDEN => Code::PermissionDenied,
            http::StatusCode::NOT_FOUND => Code::Unimplemented,
            http::StatusCode::TOO_MANY_REQUESTS
            | http::StatusCode::BAD_GATEWAY
            | http::StatusCode::SERVICE_UNAVAILABLE
            | http::StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
            _ => Code::Unknown,
        };
        return Err(Status::new(
            code,
            format!(
                "the remote answered HTTP status {} without a grpc-status",
                head.status
            ),
        ));
    }
    if let Some(encoding) = head.headers.get(GRPC_ENCODING)
        && encoding != "identity"
    {
        // We never offer compression (no grpc-accept-encoding), so a
        // compressed reply is the remote's error, not a format to guess at.
        return Err(Status::unimplemented(format!(
            "the remote compressed its reply with {encoding:?}, which was not offered"
        )));
    }
    Ok(())
}

/// The reply's bytes as they arrive, split into gRPC messages.
#[derive(Default)]
struct Reply {
    /// A message's bytes split across DATA frames, gathered here.
    partial: BytesMut,
    message: Option<Bytes>,
}

impl Reply {
    fn push(&mut self, mut data: Bytes) -> Result<(), Status> {
        if self.partial.is_empty() {
            // The usual case: whole messages in this frame, taken without
            // copying.
            self.take_messages(&mut data)?;
            self.partial.extend_from_slice(&data);
        } else {
            self.partial.extend_from_slice(&data);
            let mut gathered = self.partial.split().freeze();
            self.take_messages(&mut gathered)?;
            self.partial.extend_from_slice(&gathered);
        }
        Ok(())
    }

    /// Takes each complete message off the front of `data`.
    fn take_messages(&mut self, data: &mut Bytes) -> Result<(), Status> {
        while data.len() >= PREFIX_LEN {
            let compressed = data[0];
            let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            if compressed != 0 {
                return Err(Status::internal(format!(
                    "the remote sent a message with compressed-flag {compressed}, \
                     but no compression was agreed"
                )));
            }
            if len > MAX_REPLY_BYTES {
                return Err(Status::out_of_range(format!(
                    "Error, decoded message length too large: found {len} bytes, \
                     the limit is: {MAX_REPLY_BYTES} bytes"
                )));
            }
            if data.len() < PREFIX_LEN + len {
                break;
            }
            if self.message.is_some() {
                return Err(Status::internal(
                    "the remote sent more than one message in reply to a unary call",
                ));
            }
            data.advance(PREFIX_LEN);
            self.message = Some(data.split_to(len));
        }
        Ok(())
    }

    /// The call's outcome, from the trailers.
    fn finish<R: Message + Default>(self, trailers: &http::HeaderMap) -> Result<R, Status> {
        match Status::from_header_map(trailers) {
            Some(status) if status.code() == Code::Ok => {}
            Some(status) => return Err(status),
            None => {
                return Err(Status::unknown(
                    "the remote's trailers carry no grpc-status",
                ));
            }
        }
        if !self.partial.is_empty() {
            return Err(Status::internal(
                "the remote's reply ended in the middle of a message",
            ));
        }
        let message = self
            .message
            .ok_or_else(|| Status::internal("the remote answered OK without a reply message"))?;
        R::decode(message).map_err(|err| Status::internal(format!("decoding the reply: {err}")))
    }
}

/// A `grpc-timeout` value: at most eight digits and a unit, rounded up so
/// that the remote never sees less time than the caller has.
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    const MAX_DIGITS: u128 = 99_999_999;
    const UNITS: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let nanos = timeout.as_nanos();
    let (value, unit) = UNITS
        .iter()
        .find_map(|&(per, unit)| {
            let value = nanos.div_ceil(per);
            (value <= MAX_DIGITS).then_some((value, unit))
        })
        .unwrap_or((MAX_DIGITS, 'H'));
    HeaderValue::from_str(&format!("{value}{unit}")).expect("digits and a letter")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_fit_eight_digits_and_round_up() {
        let value = |d| grpc_timeout(d).to_str().unwrap().to_owned();
        assert_eq!(value(Duration::from_nanos(5)), "5n");
        assert_eq!(value(Duration::from_millis(250)), "250000u");
        assert_eq!(value(Duration::from_nanos(100_000_001)), "100001u");
        assert_eq!(value(Duration::from_secs(5)), "5000000u");
        assert_eq!(value(Duration::from_secs(200_000)), "200000S");
        assert_eq!(value(Duration::from_secs(200_000_000)), "3333334M");
        assert_eq!(value(Duration::MAX), "99999999H");
    }

    fn framed(message: &[u8]) -> Bytes {
        let mut frame = BytesMut::new();
        frame.put_u8(0);
        frame.put_u32(message.len() as u32);
        frame.extend_from_slice(message);
        frame.freeze()
    }

    fn ok_trailers() -> http::HeaderMap {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers
    }

    #[test]
    fn a_reply_split_across_frames_is_gathered() {
        let sent = crate::proto::connection::Connection {
            id: "split".into(),
            network_service: "ns".into(),
            ..Default::default()
        };
        let whole = framed(&sent.encode_to_vec());
        for cut in 0..=whole.len() {
            let mut reply = Reply::default();
            reply.push(whole.slice(..cut)).unwrap();
            reply.push(whole.slice(cut..)).unwrap();
            let got: crate::proto::connection::Connection = reply.finish(&ok_trailers()).unwrap();
            assert_eq!(got, sent, "cut at {cut}");
        }
    }

    #[test]
    fn malformed_replies_are_refused_with_the_reason() {
        let finish = |frames: &[Bytes], trailers: &http::HeaderMap| {
            let mut reply = Reply::default();
            for frame in frames {
                reply.push(frame.clone())?;
            }
            reply.finish::<crate::proto::connection::Connection>(trailers)
        };
        let one = framed(b"");
        let cases: [(&[Bytes], http::HeaderMap, Code, &str); 6] = [
            (
                &[],
                ok_trailers(),
                Code::Internal,
                "without a reply message",
            ),
            (
                &[one.clone(), one.clone()],
                ok_trailers(),
                Code::Internal,
                "more than one message",
            ),
            (
                &[one.slice(..3)],
                ok_trailers(),
                Code::Internal,
                "middle of a message",
            ),
            (
                &[Bytes::from_static(&[1, 0, 0, 0, 0])],
                ok_trailers(),
                Code::Internal,
                "compressed-flag 1",
            ),
            (
                &[Bytes::from_static(&[0, 0xff, 0, 0, 0])],
                ok_trailers(),
                Code::OutOfRange,
                "the limit is: 4194304 bytes",
            ),
            (
                std::slice::from_ref(&one),
                http::HeaderMap::new(),
                Code::Unknown,
                "no grpc-status",
            ),
        ];
        for (frames, trailers, code, says) in cases {
            let err = finish(frames, &trailers).unwrap_err();
            assert_eq!(err.code(), code, "{err:?}");
            assert!(err.message().contains(says), "{err:?} should say {says:?}");
        }
        let mut failed = http::HeaderMap::new();
        failed.insert("grpc-status", HeaderValue::from_static("5"));
        failed.insert(
            "grpc-message",
            HeaderValue::from_static("no%20such%20thing"),
        );
        let err = finish(&[one], &failed).unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::NotFound, "no such thing")
        );
    }
}

#[cfg(test)]
mod window {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::dial::{DialOptions, UNARY_CALLS_IN_FLIGHT, dial};
    use crate::element::{BoxFuture, Next, ServerElement};
    use crate::proto::connection::Connection;
    use crate::proto::networkservice::NetworkServiceRequest;
    use crate::{ServerChain, serve};

    /// Holds every request until released; counts arrivals.
    #[derive(Default)]
    struct Hold {
        arrived: AtomicUsize,
        arrival: Notify,
        release: CancellationToken,
    }

    impl ServerElement for Arc<Hold> {
        fn request<'a>(
            &'a self,
            ctx: crate::Context,
            request: NetworkServiceRequest,
            next: Next<'a>,
        ) -> BoxFuture<'a, Result<Connection, Status>> {
            Box::pin(async move {
                self.arrived.fetch_add(1, Ordering::SeqCst);
                self.arrival.notify_waiters();
                self.release.cancelled().await;
                next.request(ctx, request).await
            })
        }
    }

    impl Hold {
        /// A remote whose every request is held, and a connection to it.
        async fn serve_and_dial() -> (Arc<Hold>, crate::ServerHandle, ClientConn) {
            let hold = Arc::new(Hold::default());
            let url: url::Url = "tcp://127.0.0.1:0".parse().unwrap();
            let chain = ServerChain::builder().with(Arc::clone(&hold)).build();
            let server = serve(&url, chain, CancellationToken::new()).await.unwrap();
            let conn = dial(server.url(), &DialOptions::new()).await.unwrap();
            (hold, server, conn)
        }

        async fn until_arrived(&self, count: usize) {
            loop {
                let arrival = self.arrival.notified();
                tokio::pin!(arrival);
                arrival.as_mut().enable();
                if self.arrived.load(Ordering::SeqCst) >= count {
                    return;
                }
                arrival.await;
            }
        }
    }

    /// A Request for connection `id` on `conn`.
    fn request(
        conn: &ClientConn,
        id: &str,
    ) -> impl Future<Output = Result<Connection, Status>> + use<> {
        let request = NetworkServiceRequest {
            connection: Some(Box::new(Connection {
                id: id.to_owned(),
                ..Default::default()
            })),
            ..Default::default()
        };
        call::<Connection>(conn.clone(), encode(&REQUEST, &request, None))
    }

    /// `count` Requests on `conn`, each in a task of its own.
    fn spawn_requests(
        conn: &ClientConn,
        count: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<Connection, Status>>> {
        (0..count)
            .map(|k| tokio::spawn(request(conn, &format!("held-{k}"))))
            .collect()
    }

    #[tokio::test]
    async fn calls_beyond_the_window_wait_for_a_slot_and_then_go() {
        let (hold, server, conn) = Hold::serve_and_dial().await;
        let total = UNARY_CALLS_IN_FLIGHT + 20;
        let calls = spawn_requests(&conn, total);

        // A full window is at the remote, and every slot is taken: the
        // calls past it have not been sent (a call sends only once it holds
        // a slot, and keeps it until its reply is in).
        hold.until_arrived(UNARY_CALLS_IN_FLIGHT).await;
        assert_eq!(conn.unary_slots.available_permits(), 0);
        assert_eq!(conn.calls_in_flight(), UNARY_CALLS_IN_FLIGHT);

        hold.release.cancel();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(hold.arrived.load(Ordering::SeqCst), total);
        assert_eq!(conn.unary_slots.available_permits(), UNARY_CALLS_IN_FLIGHT);
        assert_eq!(conn.calls_in_flight(), 0);
        server.shutdown().await;
    }

    /// Past a handful of calls in flight, calls reach hyper through the
    /// connection's hand-off task; abandoning them there leaves nothing
    /// counted and the connection usable.
    #[tokio::test]
    async fn crowded_calls_abandoned_in_flight_leave_nothing_behind() {
        let (hold, server, conn) = Hold::serve_and_dial().await;
        let calls = spawn_requests(&conn, 40);
        hold.until_arrived(40).await;
        assert_eq!(conn.calls_in_flight(), 40);
        for call in &calls {
            call.abort();
        }
        for call in calls {
            assert!(call.await.unwrap_err().is_cancelled());
        }
        assert_eq!(conn.calls_in_flight(), 0);
        assert_eq!(conn.unary_slots.available_permits(), UNARY_CALLS_IN_FLIGHT);

        hold.release.cancel();
        let reply = request(&conn, "after").await.unwrap();
        assert_eq!(reply.id, "after");
        server.shutdown().await;
    }
}
