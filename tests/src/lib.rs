//! Support for connect's integration tests: chain elements that record,
//! count, edit, fail and park calls, and helpers that start real servers.

pub mod caller;
pub mod elements;
pub mod golike;
pub mod harness;
pub mod pki;
pub mod population;
pub mod program;
pub mod raw;
pub mod remote;

use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;

/// A request for a connection with the given id and nothing else.
pub fn request(id: &str) -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Box::new(Connection {
            id: id.to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A connection with the given id and nothing else.
pub fn connection(id: &str) -> Connection {
    Connection {
        id: id.to_owned(),
        ..Default::default()
    }
}
