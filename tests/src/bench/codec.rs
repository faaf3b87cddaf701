//! `codec`: what keeping unknown fields costs. Decodes and encodes a typical
//! `NetworkServiceRequest` with connect-proto's messages and with plain
//! prost's (generated from the same `.proto` files, dropping unknown
//! fields), from bytes without and with a newer peer's fields.

use std::hint::black_box;
use std::time::Instant;

use connect_runtime::proto::networkservice::NetworkServiceRequest as Ours;
use connect_tests::generated::future::connection::{Connection, Mechanism, Path, PathSegment};
use connect_tests::generated::future::connectioncontext::{ConnectionContext, IpContext, Route};
use connect_tests::generated::future::networkservice::NetworkServiceRequest as Future;
use connect_tests::generated::plain::networkservice::NetworkServiceRequest as Plain;
use prost::Message;
use serde::Serialize;

/// What an NSC's request through a passthrough looks like: a kernel
/// mechanism, addresses and routes, labels, and a path of three segments,
/// each with a token (NSM's are JWTs of a few hundred bytes).
fn typical() -> Future {
    let segment = |name: &str| PathSegment {
        name: name.into(),
        id: format!("{name}-0b7d6f1e-9a43-4f0e-8c1a-2f5e6d7c8b9a"),
        token: "x".repeat(320),
        expires: Some(prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        }),
        ..Default::default()
    };
    Future {
        connection: Some(Connection {
            id: "nsc-0b7d6f1e-9a43-4f0e-8c1a-2f5e6d7c8b9a".into(),
            network_service: "icmp-responder".into(),
            mechanism: Some(Mechanism {
                cls: "LOCAL".into(),
                r#type: "KERNEL".into(),
                parameters: [("name".to_owned(), "nsm-1".to_owned())].into(),
                ..Default::default()
            }),
            context: Some(ConnectionContext {
                ip_context: Some(IpContext {
                    src_ip_addrs: vec!["172.16.0.3/32".into()],
                    dst_ip_addrs: vec!["172.16.0.2/32".into()],
                    src_routes: vec![Route {
                        prefix: "172.16.0.0/16".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                mtu: 1450,
                ..Default::default()
            }),
            labels: [("app".to_owned(), "nsc-kernel".to_owned())].into(),
            path: Some(Path {
                index: 1,
                path_segments: vec![segment("nsc"), segment("nsmgr"), segment("forwarder")],
                ..Default::default()
            }),
            payload: "IP".into(),
            ..Default::default()
        }),
        mechanism_preferences: vec![Mechanism {
            cls: "LOCAL".into(),
            r#type: "KERNEL".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The same request from a newer peer: four fields this API does not
/// name, at the top and deeper down.
fn with_unknown_fields() -> Future {
    let mut request = typical();
    request.future_request_note = "newer".into();
    let connection = request.connection.as_mut().expect("typical has one");
    connection.future_note = "newer".into();
    connection.future_count = 7;
    let path = connection.path.as_mut().expect("typical has one");
    path.path_segments[0].future_stamp = 42;
    request
}

#[derive(Serialize)]
struct Line {
    workload: &'static str,
    input: &'static str,
    bytes: usize,
    messages: &'static str,
    decode_ns: f64,
    encode_ns: f64,
    decode_ns_min: f64,
    encode_ns_min: f64,
}

/// A decode loop and an encode loop for one kind of message and input, as
/// functions of their own, named after both: under `valgrind --tool=callgrind`
/// each case's instructions are those of its two functions.
macro_rules! loops {
    ($decode:ident, $encode:ident, $message:ty) => {
        #[inline(never)]
        fn $decode(wire: &[u8], iters: usize) {
            for _ in 0..iters {
                black_box(<$message>::decode(black_box(wire)).expect("decodes"));
            }
            // Keeps the loops of the two inputs apart: identical code is folded.
            black_box(stringify!($decode));
        }

        #[inline(never)]
        fn $encode(decoded: &$message, buf: &mut Vec<u8>, iters: usize) {
            for _ in 0..iters {
                buf.clear();
                black_box(decoded).encode(buf).expect("fits");
                black_box(&buf);
            }
            black_box(stringify!($encode));
        }
    };
}

loops!(decode_plain_prost, encode_plain_prost, Plain);
loops!(decode_plain_ours, encode_plain_ours, Ours);
loops!(decode_unknown_prost, encode_unknown_prost, Plain);
loops!(decode_unknown_ours, encode_unknown_ours, Ours);

type Loops<M> = (fn(&[u8], usize), fn(&M, &mut Vec<u8>, usize));

pub(crate) fn run(iters: usize, rounds: usize) -> Result<(), String> {
    let inputs = [
        typical().encode_to_vec(),
        with_unknown_fields().encode_to_vec(),
    ];
    let (plain, unknown) = (&inputs[0], &inputs[1]);
    let lines = [
        (
            "plain",
            "prost",
            plain,
            measure::<Plain>(
                plain,
                (decode_plain_prost, encode_plain_prost),
                iters,
                rounds,
            ),
        ),
        (
            "plain",
            "connect-proto",
            plain,
            measure::<Ours>(plain, (decode_plain_ours, encode_plain_ours), iters, rounds),
        ),
        (
            "unknown",
            "prost",
            unknown,
            measure::<Plain>(
                unknown,
                (decode_unknown_prost, encode_unknown_prost),
                iters,
                rounds,
            ),
        ),
        (
            "unknown",
            "connect-proto",
            unknown,
            measure::<Ours>(
                unknown,
                (decode_unknown_ours, encode_unknown_ours),
                iters,
                rounds,
            ),
        ),
    ];
    for (input, messages, wire, (decode, encode)) in lines {
        let line = Line {
            workload: "codec",
            input,
            bytes: wire.len(),
            messages,
            decode_ns: median(&decode),
            encode_ns: median(&encode),
            decode_ns_min: min(&decode),
            encode_ns_min: min(&encode),
        };
        println!(
            "{}",
            serde_json::to_string(&line).map_err(|e| e.to_string())?
        );
    }
    Ok(())
}

/// Nanoseconds per decode and per encode, one sample per round.
fn measure<M: Message + Default>(
    wire: &[u8],
    (decode_loop, encode_loop): Loops<M>,
    iters: usize,
    rounds: usize,
) -> (Vec<f64>, Vec<f64>) {
    let decoded = M::decode(wire).expect("the typical request decodes");
    let mut buf = Vec::with_capacity(wire.len() * 2);
    let (mut decode, mut encode) = (Vec::new(), Vec::new());
    // One unmeasured round warms caches and the allocator.
    for round in 0..=rounds {
        let start = Instant::now();
        decode_loop(wire, iters);
        let decoding = start.elapsed();
        let start = Instant::now();
        encode_loop(&decoded, &mut buf, iters);
        let encoding = start.elapsed();
        if round > 0 {
            decode.push(decoding.as_nanos() as f64 / iters as f64);
            encode.push(encoding.as_nanos() as f64 / iters as f64);
        }
    }
    (decode, encode)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}
