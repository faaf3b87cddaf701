//! Replies checked before tonic reads them, and answered as grpc-go's
//! clients answer them: one that is not gRPC (by its `content-type`) is
//! `Unknown` with HTTP 200, else mapped from its HTTP status; one whose
//! status details are not base64 (on which tonic's status parser panics)
//! `Internal`, naming the problem; one cut by its connection's end
//! `Unavailable`.

use std::sync::Arc;

use base64::Engine as _;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming};
use tonic::Status;
use tonic::body::Body;
use url::Url;

/// A reply tonic can read safely: gRPC by its content type, with status
/// details that are base64 (tonic panics on others).
pub(super) fn checked(
    url: &Arc<Url>,
    response: http::Response<Incoming>,
) -> Result<http::Response<Body>, Status> {
    let (mut head, body) = response.into_parts();
    let content_type = head.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    let grpc = content_type.is_some_and(is_grpc);
    if !grpc && !head.headers.contains_key(&GRPC_STATUS) {
        if head.status != http::StatusCode::OK {
            // tonic maps the HTTP status as grpc-go does, once it is not
            // handed a body that is not gRPC to decode.
            return Ok(http::Response::from_parts(head, Body::empty()));
        }
        let content_type = String::from_utf8_lossy(content_type.unwrap_or(b"none"));
        let why = format!("{url} answered with content-type {content_type}, not gRPC");
        // As grpc-go: HTTP 200 maps to no gRPC code.
        return Err(Status::unknown(why));
    }
    sanitize_status(&mut head.headers);
    // Trailers are checked as the headers were.
    let body = body.map_frame(|frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            sanitize_status(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    let url = Arc::clone(url);
    let body = body.map_err(move |err| cut(&url, err));
    Ok(http::Response::from_parts(head, Body::new(body)))
}

/// A reply body's error: `Unavailable` if the connection ended under it
/// (tonic would say `Unknown`); the rest, such as a stream reset with a
/// reason, is tonic's to map.
fn cut(url: &Url, err: hyper::Error) -> tower::BoxError {
    if broke(&err) {
        let why = format!(
            "the connection to {url} ended during the call: {}",
            super::error::error_chain(&err)
        );
        return Box::new(Status::unavailable(why));
    }
    Box::new(err)
}

/// Whether a call failed because its connection broke: closed, an I/O
/// error (which hyper takes out of h2's), or a keepalive PING unanswered.
pub(super) fn broke(err: &hyper::Error) -> bool {
    use super::error::source_of;
    err.is_closed()
        || err.is_incomplete_message()
        || err.is_timeout()
        || source_of::<std::io::Error>(err).is_some()
        || source_of::<h2::Error>(err).is_some_and(h2::Error::is_io)
}

/// `application/grpc`, alone or with a subtype (`+proto`) or parameters,
/// as grpc-go accepts it.
fn is_grpc(content_type: &[u8]) -> bool {
    content_type
        .strip_prefix(b"application/grpc")
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

// Names, not strings: a lookup by string parses the name every time.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// Replaces a status whose details are not base64 by `Internal` saying so.
fn sanitize_status(headers: &mut HeaderMap) {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let Some(details) = headers.get(&GRPC_STATUS_DETAILS) else {
        return;
    };
    // How tonic decodes: the standard alphabet, padding optional.
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    if GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(details)
        .is_ok()
    {
        return;
    }
    let code = headers
        .get(&GRPC_STATUS)
        .map_or("none".into(), |c| String::from_utf8_lossy(c.as_bytes()));
    let message = format!(
        "the remote's status (grpc-status {code}) has malformed grpc-status-details-bin: not base64"
    );
    headers.remove(&GRPC_STATUS_DETAILS);
    headers.insert(GRPC_STATUS, HeaderValue::from_static("13"));
    let message = HeaderValue::from_str(&message).expect("an ASCII message");
    headers.insert("grpc-message", message);
}
