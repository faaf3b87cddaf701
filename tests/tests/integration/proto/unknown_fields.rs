//! A passthrough forwards exactly what it is given: a newer peer's fields,
//! which connect-proto's messages do not name, survive decoding and
//! encoding at every depth and reach the next hop in Request, reply and
//! Close, on the served path and through the program.
//!
//! The sender and receiver of the newer API are plain prost, generated from
//! `tests/proto/future`: an encoder and decoder independent of the one under
//! test.

use std::time::Duration;

use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::{ClientUrl, ServerChain};
use connect_tests::elements::{CONNECT_TO, InjectError, RouteByMetadata};
use connect_tests::future::{FutureEndpoint, endpoint_marks, full_request, future_caller};
use connect_tests::generated::future;
use connect_tests::harness::{grpc_only, settle};
use connect_tests::program::Program;
use connect_tests::remote::start_tcp;
use proptest::prelude::*;
use prost::Message;
use prost::encoding::{self, WireType};
use tonic::Code;

fn ours<M: Message + Default>(bytes: &[u8]) -> M {
    M::decode(bytes).expect("connect-proto decodes a newer peer's message")
}

/// Every field of a newer peer's request, at every depth, comes out of a
/// decode and encode by connect-proto byte for byte as plain prost of the
/// newer API wrote it, and decodes there to the same request.
#[test]
fn a_newer_peers_request_is_encoded_again_byte_for_byte() {
    let sent = full_request("c-1");
    let wire = sent.encode_to_vec();
    let decoded: NetworkServiceRequest = ours(&wire);

    // Today's fields are read; the future's are kept.
    let connection = decoded.connection.as_deref().unwrap();
    let ip = connection
        .context
        .as_ref()
        .unwrap()
        .ip_context
        .as_ref()
        .unwrap();
    assert_eq!(ip.policies.len(), 1, "policy routes are a known field");
    assert_eq!(ip.policies[0].dst_port, "80-8080");
    assert_eq!(connection.state, 9, "an enum value we do not name is kept");
    assert!(!decoded.unknown_fields.is_empty());
    assert!(!connection.unknown_fields.is_empty());
    assert!(!ip.unknown_fields.is_empty());
    assert!(!ip.src_routes[0].unknown_fields.is_empty());
    let segment = &connection.path.as_ref().unwrap().path_segments[0];
    let stamp: Vec<_> = segment.unknown_fields.iter().collect();
    assert_eq!(stamp.len(), 1);
    assert_eq!(stamp[0].number, 100);

    let again = decoded.encode_to_vec();
    assert_eq!(again, wire, "the same bytes as the independent encoder");
    assert_eq!(
        future::networkservice::NetworkServiceRequest::decode(&*again).unwrap(),
        sent
    );
    assert_eq!(ours::<NetworkServiceRequest>(&again), decoded);
}

/// Raw unknown fields of one wire type each, groups nested in groups
/// among them (which proto3 never writes, but an older proto2 peer may).
#[derive(Clone, Debug)]
enum Raw {
    Varint(u64),
    Fixed32(u32),
    Fixed64(u64),
    Bytes(Vec<u8>),
    Group(Vec<(u32, Raw)>),
}

fn write_raw(fields: &[(u32, Raw)], out: &mut Vec<u8>) {
    for (number, value) in fields {
        match value {
            Raw::Varint(v) => encoding::uint64::encode(*number, v, out),
            Raw::Fixed32(v) => encoding::fixed32::encode(*number, v, out),
            Raw::Fixed64(v) => encoding::fixed64::encode(*number, v, out),
            Raw::Bytes(v) => encoding::bytes::encode(*number, v, out),
            Raw::Group(inner) => {
                encoding::encode_key(*number, WireType::StartGroup, out);
                write_raw(inner, out);
                encoding::encode_key(*number, WireType::EndGroup, out);
            }
        }
    }
}

fn raw(fields: &[(u32, Raw)]) -> Vec<u8> {
    let mut out = Vec::new();
    write_raw(fields, &mut out);
    out
}

fn message_field(number: u32, body: &[u8], out: &mut Vec<u8>) {
    encoding::bytes::encode(number, &body.to_vec(), out);
}

/// A connection whose own unknown fields, and those of its path and of the
/// path's one segment (three levels down), are `top`, `path` and
/// `segment`, written as connect-proto writes them: known fields in field
/// order, unknown ones after them. Known fields by plain prost.
fn nested(top: &[u8], path: &[u8], segment: &[u8]) -> Vec<u8> {
    use connect_tests::generated::plain::connection as plain;
    let mut segment_bytes = plain::PathSegment {
        name: "hop".into(),
        id: "seg-1".into(),
        ..Default::default()
    }
    .encode_to_vec();
    segment_bytes.extend_from_slice(segment);
    let mut path_bytes = plain::Path {
        index: 1,
        ..Default::default()
    }
    .encode_to_vec();
    message_field(2, &segment_bytes, &mut path_bytes);
    path_bytes.extend_from_slice(path);
    let mut bytes = plain::Connection {
        id: "c-1".into(),
        network_service: "ns".into(),
        ..Default::default()
    }
    .encode_to_vec();
    message_field(6, &path_bytes, &mut bytes);
    bytes.extend_from_slice(top);
    bytes
}

/// Unknown fields of every wire type, top level and three levels deep, are
/// kept in order and written back exactly.
#[test]
fn every_wire_type_survives_at_the_top_and_three_levels_down() {
    let all_types = |base: u32| {
        vec![
            (base, Raw::Varint(u64::MAX)),
            (base + 1, Raw::Fixed32(7)),
            (base + 2, Raw::Fixed64(8)),
            (base + 3, Raw::Bytes(b"length-delimited".to_vec())),
            // A nested message the receiver does not know, and a packed
            // repeated field: both length-delimited on the wire.
            (
                base + 4,
                Raw::Bytes(
                    future::connectioncontext::FutureDetail {
                        note: "nested".into(),
                        counts: vec![1, 2],
                        ..Default::default()
                    }
                    .encode_to_vec(),
                ),
            ),
            (base + 5, Raw::Varint(1)),
            (base + 5, Raw::Varint(2)), // repeated, unpacked
            (
                base + 6,
                Raw::Group(vec![(1, Raw::Varint(3)), (2, Raw::Group(vec![]))]),
            ),
        ]
    };
    let (top, path, segment) = (
        raw(&all_types(100)),
        raw(&all_types(200)),
        raw(&all_types(300)),
    );
    let wire = nested(&top, &path, &segment);

    let connection: Connection = ours(&wire);
    assert_eq!(connection.id, "c-1");
    let decoded_path = connection.path.as_ref().unwrap();
    assert_eq!(decoded_path.index, 1);
    assert_eq!(decoded_path.path_segments[0].id, "seg-1");
    assert_eq!(connection.unknown_fields.as_bytes(), top);
    assert_eq!(decoded_path.unknown_fields.as_bytes(), path);
    assert_eq!(
        decoded_path.path_segments[0].unknown_fields.as_bytes(),
        segment
    );
    assert_eq!(connection.unknown_fields.iter().count(), 8);

    assert_eq!(connection.encode_to_vec(), wire);
    assert_eq!(connection.encoded_len(), wire.len());

    // Clearing drops them with the rest.
    let mut cleared = connection.clone();
    cleared.clear();
    assert_eq!(cleared, Connection::default());
}

fn arb_raw() -> impl Strategy<Value = Raw> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(Raw::Varint),
        any::<u32>().prop_map(Raw::Fixed32),
        any::<u64>().prop_map(Raw::Fixed64),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Raw::Bytes),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop::collection::vec((1u32..50, inner), 0..4).prop_map(Raw::Group)
    })
}

/// Field numbers no message of the API uses (they stop at 11).
fn arb_unknown() -> impl Strategy<Value = Vec<(u32, Raw)>> {
    prop::collection::vec((100u32..100_000, arb_raw()), 0..6)
}

fn arb_string() -> impl Strategy<Value = String> {
    prop::string::string_regex("[a-z0-9./-]{0,12}").unwrap()
}

fn arb_route() -> impl Strategy<Value = future::connectioncontext::Route> {
    (arb_string(), arb_string(), arb_string()).prop_map(|(prefix, next_hop, note)| {
        future::connectioncontext::Route {
            prefix,
            next_hop,
            future_route_note: note,
        }
    })
}

fn arb_detail() -> impl Strategy<Value = Option<future::connectioncontext::FutureDetail>> {
    prop::option::of(
        (arb_string(), prop::collection::vec(any::<u32>(), 0..4)).prop_map(|(note, counts)| {
            future::connectioncontext::FutureDetail {
                note,
                counts,
                inner: None,
            }
        }),
    )
}

fn arb_ip_context() -> impl Strategy<Value = future::connectioncontext::IpContext> {
    (
        prop::collection::vec(arb_string(), 0..3),
        any::<bool>(),
        prop::collection::vec(arb_route(), 0..3),
        prop::collection::vec(
            (
                arb_string(),
                arb_string(),
                prop::collection::vec(arb_route(), 0..2),
                any::<i64>(),
            ),
            0..3,
        ),
        arb_string(),
        arb_detail(),
    )
        .prop_map(|(addrs, required, routes, policies, note, detail)| {
            future::connectioncontext::IpContext {
                src_ip_addrs: addrs,
                dst_ip_required: required,
                dst_routes: routes,
                policies: policies
                    .into_iter()
                    .map(
                        |(from, proto, routes, priority)| future::connectioncontext::PolicyRoute {
                            from,
                            proto,
                            routes,
                            future_priority: priority,
                            ..Default::default()
                        },
                    )
                    .collect(),
                future_ip_note: note,
                future_ip_detail: detail,
                ..Default::default()
            }
        })
}

/// Maps hold at most one entry, so that the order of their entries on the
/// wire is the same whoever encodes them.
fn arb_map() -> impl Strategy<Value = std::collections::HashMap<String, String>> {
    prop::collection::hash_map(arb_string(), arb_string(), 0..2)
}

fn arb_connection() -> impl Strategy<Value = future::connection::Connection> {
    (
        (arb_string(), arb_string(), arb_map(), any::<i32>()),
        (
            prop::option::of(arb_ip_context()),
            any::<u32>(),
            any::<u32>(),
        ),
        prop::collection::vec((arb_string(), any::<u64>(), arb_map()), 0..3),
        (
            arb_string(),
            any::<u64>(),
            any::<u32>(),
            any::<f64>(),
            arb_detail(),
        ),
        (
            prop::collection::vec(arb_string(), 0..3),
            prop::collection::vec(any::<i32>(), 0..4),
        ),
    )
        .prop_map(
            |(
                (id, network_service, labels, state),
                (ip_context, mtu, fixed),
                segments,
                (note, count, fixed32, double, detail),
                (tags, packed),
            )| {
                future::connection::Connection {
                    id,
                    network_service,
                    labels,
                    state,
                    context: Some(future::connectioncontext::ConnectionContext {
                        ip_context,
                        mtu,
                        future_context_fixed: fixed,
                        ..Default::default()
                    }),
                    path: Some(future::connection::Path {
                        index: 0,
                        path_segments: segments
                            .into_iter()
                            .map(|(name, stamp, metrics)| future::connection::PathSegment {
                                name,
                                metrics,
                                future_stamp: stamp,
                                ..Default::default()
                            })
                            .collect(),
                        future_path_note: String::new(),
                    }),
                    future_note: note,
                    future_count: count,
                    future_fixed32: fixed32,
                    future_double: double,
                    future_detail: detail,
                    future_tags: tags,
                    future_packed: packed,
                    ..Default::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A random newer peer's request: decoded and encoded by connect-proto,
    /// it is byte for byte what the independent encoder wrote, and decoding
    /// that again gives the same message on both sides.
    #[test]
    fn random_newer_requests_are_forwarded_intact(
        connection in arb_connection(),
        note in arb_string(),
        numbers in prop::collection::vec(any::<i64>(), 0..3),
    ) {
        let sent = future::networkservice::NetworkServiceRequest {
            connection: Some(connection),
            future_request_note: note,
            future_request_numbers: numbers,
            ..Default::default()
        };
        let wire = sent.encode_to_vec();
        let decoded: NetworkServiceRequest = ours(&wire);
        let again = decoded.encode_to_vec();
        prop_assert_eq!(&again, &wire);
        prop_assert_eq!(decoded.encoded_len(), wire.len());
        prop_assert_eq!(ours::<NetworkServiceRequest>(&again), decoded);
        // NaN is not equal to itself: compare the decoded bytes' meaning
        // through a second encode instead.
        let back = future::networkservice::NetworkServiceRequest::decode(&*again).unwrap();
        prop_assert_eq!(back.encode_to_vec(), wire);
    }

    /// Random unknown fields of every wire type, groups nested in groups
    /// among them, at the top and three levels down: decode then encode is
    /// the identity, and each level keeps exactly its own, in order.
    #[test]
    fn random_unknown_fields_round_trip_at_every_depth(
        top in arb_unknown(),
        path in arb_unknown(),
        segment in arb_unknown(),
    ) {
        let (top, path, segment) = (raw(&top), raw(&path), raw(&segment));
        let wire = nested(&top, &path, &segment);
        let connection: Connection = ours(&wire);
        let decoded_path = connection.path.as_ref().unwrap();
        prop_assert_eq!(connection.unknown_fields.as_bytes(), &top[..]);
        prop_assert_eq!(decoded_path.unknown_fields.as_bytes(), &path[..]);
        prop_assert_eq!(decoded_path.path_segments[0].unknown_fields.as_bytes(), &segment[..]);
        let again = connection.encode_to_vec();
        prop_assert_eq!(&again, &wire);
        prop_assert_eq!(ours::<Connection>(&again), connection);
    }
}

fn with_url(
    request: future::networkservice::NetworkServiceRequest,
    url: &url::Url,
) -> tonic::Request<future::networkservice::NetworkServiceRequest> {
    let mut call = tonic::Request::new(request);
    call.metadata_mut()
        .insert(CONNECT_TO, url.as_str().parse().unwrap());
    call.set_timeout(Duration::from_secs(10));
    call
}

/// A newer caller → connect served over gRPC → a newer endpoint: the
/// endpoint receives every field of the request, the refresh and the close
/// as the caller sent them, and the caller receives every field of the
/// endpoint's reply.
#[tokio::test]
async fn the_served_path_carries_every_field_both_ways() {
    let endpoint = FutureEndpoint::start().await;
    let connect = grpc_only().dial_timeout(Duration::from_secs(5)).build();
    let served = start_tcp(
        ServerChain::builder()
            .with(ClientUrl::new(endpoint.url().clone()))
            .with(connect.clone())
            .build(),
    )
    .await;
    let mut caller = future_caller(served.url()).await;

    let sent = full_request("c-1");
    let reply = caller.request(sent.clone()).await.unwrap().into_inner();
    let mut expected = sent.connection.clone().unwrap();
    endpoint_marks(&mut expected);
    assert_eq!(reply, expected, "the reply carries the endpoint's fields");

    // A refresh carries what the endpoint answered, as NSM clients send it.
    let refresh = future::networkservice::NetworkServiceRequest {
        connection: Some(reply.clone()),
        ..sent.clone()
    };
    caller.request(refresh.clone()).await.unwrap();
    caller.close(reply.clone()).await.unwrap();

    let received = endpoint.received();
    assert_eq!(received.requests, [sent, refresh]);
    assert_eq!(received.closes, [reply]);

    connect.shutdown();
    settle("connect to go idle", connect.idle()).await;
    assert!(connect.stats().is_idle());
    settle("the endpoint's connections to close", endpoint.all_closed()).await;
}

/// The closes connect sends on its own behalf carry the connection as last
/// known with everything the endpoint put in it: the undo after the rest of
/// the chain failed, and the close at the old remote when a connection
/// moves to another.
#[tokio::test]
async fn connects_own_closes_carry_the_endpoints_fields() {
    let (first, second) = (FutureEndpoint::start().await, FutureEndpoint::start().await);

    // The rest of the chain fails: connect closes what it made.
    let connect = grpc_only().dial_timeout(Duration::from_secs(5)).build();
    let failing = start_tcp(
        ServerChain::builder()
            .with(ClientUrl::new(first.url().clone()))
            .with(connect.clone())
            .with(InjectError {
                on_request: Some(Code::Aborted),
                on_close: None,
            })
            .build(),
    )
    .await;
    let mut caller = future_caller(failing.url()).await;
    let sent = full_request("undone");
    let status = caller.request(sent.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    let received = settle("the undo's close", first.until(|r| !r.closes.is_empty())).await;
    let mut last_known = sent.connection.clone().unwrap();
    endpoint_marks(&mut last_known);
    assert_eq!(received.closes, [last_known]);

    // A connection moving from `first` to `second` is closed at `first` as
    // last known.
    let routed = start_tcp(
        ServerChain::builder()
            .with(RouteByMetadata)
            .with(connect.clone())
            .build(),
    )
    .await;
    let mut caller = future_caller(routed.url()).await;
    let sent = full_request("moving");
    let reply = caller
        .request(with_url(sent.clone(), first.url()))
        .await
        .unwrap()
        .into_inner();
    let moved = caller
        .request(with_url(sent.clone(), second.url()))
        .await
        .unwrap()
        .into_inner();
    let received = settle("the move's close", first.until(|r| r.closes.len() == 2)).await;
    assert_eq!(received.closes[1], reply);
    assert_eq!(second.received().requests, [sent]);
    caller.close(moved.clone()).await.unwrap();
    assert_eq!(second.received().closes, [moved]);

    connect.shutdown();
    settle("connect to go idle", connect.idle()).await;
    settle(
        "the first endpoint's connections to close",
        first.all_closed(),
    )
    .await;
    settle(
        "the second endpoint's connections to close",
        second.all_closed(),
    )
    .await;
}

/// The release program between a newer caller and a newer endpoint:
/// Request, refresh and Close reach the endpoint with every field, and the
/// reply reaches the caller with the endpoint's.
#[tokio::test]
async fn the_program_forwards_a_newer_peers_fields_both_ways() {
    let endpoint = FutureEndpoint::start().await;
    let passthrough = Program::passthrough_named(endpoint.url(), Some(HOP)).await;
    let mut caller = future_caller(passthrough.url()).await;

    let sent = full_request("through-the-program");
    let reply = caller.request(sent.clone()).await.unwrap().into_inner();
    let mut expected = sent.connection.clone().unwrap();
    endpoint_marks(&mut expected);
    let (answered, hop_id) = without_hop(&reply);
    assert_eq!(answered, expected);
    let refresh = future::networkservice::NetworkServiceRequest {
        connection: Some(reply.clone()),
        ..sent.clone()
    };
    caller.request(refresh.clone()).await.unwrap();
    caller.close(reply.clone()).await.unwrap();

    // The endpoint got everything, with the program's segment added.
    let received = endpoint.received();
    let requests: Vec<_> = received
        .requests
        .into_iter()
        .map(|mut r| {
            let (conn, id) = without_hop(r.connection.as_ref().unwrap());
            assert_eq!(id, hop_id, "one id of the program's for the connection");
            r.connection = Some(conn);
            r
        })
        .collect();
    let mut refreshed = refresh.clone();
    refreshed.connection = Some(without_hop(&reply).0);
    assert_eq!(requests, [sent, refreshed]);
    let closes: Vec<_> = received.closes.iter().map(|c| without_hop(c).0).collect();
    assert_eq!(closes, [without_hop(&reply).0]);
    settle(
        "the program to close its connection to the endpoint",
        endpoint.all_closed(),
    )
    .await;

    passthrough.terminate();
    assert!(passthrough.exited().await.success());
}

/// The program's name in paths, in the test that runs it.
const HOP: &str = "program-under-test";

/// `conn` without the program's path segment, as its caller sees it (the
/// caller's id and index), and that segment's id.
fn without_hop(conn: &future::connection::Connection) -> (future::connection::Connection, String) {
    let mut conn = conn.clone();
    let path = conn.path.as_mut().expect("a path");
    let at = path
        .path_segments
        .iter()
        .position(|s| s.name == HOP)
        .expect("the program's path segment");
    let hop = path.path_segments.remove(at);
    let caller = &path.path_segments[at - 1];
    conn.id.clone_from(&caller.id);
    path.index = (at - 1) as u32;
    (conn, hop.id)
}
