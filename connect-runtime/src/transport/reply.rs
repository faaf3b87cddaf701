//! Replies checked before tonic reads them: one that is not gRPC (by its
//! `content-type`), or whose status details are not base64 (on which
//! tonic's status parser panics), becomes `Internal` naming the problem.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tonic::Status;
use tonic::body::Body;
use url::Url;

/// A reply tonic can read safely: gRPC by its content type, with status
/// details that are base64 (tonic panics on others).
pub(super) fn checked(
    url: &Url,
    response: http::Response<Incoming>,
) -> Result<http::Response<Body>, Status> {
    let (mut head, body) = response.into_parts();
    let content_type = head.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    let grpc = content_type.is_some_and(|t| t.starts_with(b"application/grpc"));
    if head.status == http::StatusCode::OK && !grpc && !head.headers.contains_key(GRPC_STATUS) {
        let content_type = String::from_utf8_lossy(content_type.unwrap_or(b"none"));
        let why = format!(
            "{} answered with content-type {content_type}, not gRPC",
            url
        );
        return Err(Status::internal(why));
    }
    sanitize_status(&mut head.headers);
    Ok(http::Response::from_parts(
        head,
        Body::new(Checked { body }),
    ))
}

const GRPC_STATUS: &str = "grpc-status";
const GRPC_STATUS_DETAILS: &str = "grpc-status-details-bin";

/// Replaces a status whose details are not base64 by `Internal` saying so.
fn sanitize_status(headers: &mut HeaderMap) {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let Some(details) = headers.get(GRPC_STATUS_DETAILS) else {
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
        .get(GRPC_STATUS)
        .map_or("none".into(), |c| String::from_utf8_lossy(c.as_bytes()));
    let message = format!(
        "the remote's status (grpc-status {code}) has malformed grpc-status-details-bin: not base64"
    );
    headers.remove(GRPC_STATUS_DETAILS);
    headers.insert(GRPC_STATUS, HeaderValue::from_static("13"));
    let message = HeaderValue::from_str(&message).expect("an ASCII message");
    headers.insert("grpc-message", message);
}

pin_project_lite::pin_project! {
    /// A reply body whose trailers are checked as the headers were.
    struct Checked {
        #[pin]
        body: Incoming,
    }
}

impl HttpBody for Checked {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project()
            .body
            .poll_frame(cx)
            .map_ok(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    sanitize_status(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
