//! Network Service Mesh's `networkservice` API, wire-compatible with NSM's api
//! repository at the release [`API_VERSION`] names: the same packages,
//! messages, field names and numbers, so a Go or Python NSM peer reads what we
//! write.
//!
//! Every message keeps the fields it does not know and writes them back when
//! encoded, as Go's protobuf does, so a passthrough forwards a newer peer's
//! fields intact: see [`unknown`].
//!
//! Nested messages that a request or connection may lack are boxed, as Go's
//! protobuf holds them behind pointers: a request's `connection`, and a
//! connection's `mechanism`, `context` and `path` are `Option<Box<_>>`. An
//! absent one costs a word, and a `Connection` moves as 184 bytes.
//!
//! The modules below are generated from `proto/api/*.proto` by
//! `cargo xtask codegen` and checked in; building needs no `protoc`.
//!
//! ```
//! use connect_proto::connection::Connection;
//! use connect_proto::networkservice::NetworkServiceRequest;
//!
//! let request = NetworkServiceRequest {
//!     connection: Some(Box::new(Connection { id: "conn-1".into(), ..Default::default() })),
//!     ..Default::default()
//! };
//! assert_eq!(request.connection.unwrap().id, "conn-1");
//! ```

pub mod codec;
pub mod unknown;

/// The networkservicemesh/api release whose messages and fields
/// `proto/api/*.proto` follow (recorded in `proto/api/UPSTREAM`).
pub const API_VERSION: &str = include_str!("../api/UPSTREAM").trim_ascii();

/// `connectioncontext`: IP, DNS and Ethernet context of a connection.
#[allow(clippy::all, missing_docs, unreachable_pub)]
#[path = "generated/connectioncontext.rs"]
pub mod connectioncontext;

/// `connection`: connections, mechanisms, paths and the `MonitorConnection` service.
#[allow(clippy::all, missing_docs, unreachable_pub)]
#[path = "generated/connection.rs"]
pub mod connection;

/// `networkservice`: `NetworkServiceRequest` and the `NetworkService` service.
#[allow(clippy::all, missing_docs, unreachable_pub)]
#[path = "generated/networkservice.rs"]
pub mod networkservice;

/// The fully qualified gRPC service name of `NetworkService`.
pub const NETWORK_SERVICE: &str = "networkservice.NetworkService";
