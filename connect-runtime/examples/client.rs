//! An NSM client: requests a connection from the server at a URL, refreshes
//! it, and closes it, printing what came back. Point it at the program (a
//! passthrough or an endpoint) or at any NSM server.
//!
//! ```sh
//! cargo run -p connect-runtime --example client -- tcp://127.0.0.1:5002
//! ```

use std::time::{Duration, SystemTime};

use connect_runtime::prelude::*;
use connect_runtime::proto::connection::{Path, PathSegment};
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::{Url, dial};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = std::env::args().nth(1) else {
        return Err("usage: client URL (tcp://host:port or unix:///path)".into());
    };
    let url: Url = url.parse()?;
    let conn = dial(&url, &DialOptions::new().timeout(Duration::from_secs(5))).await?;
    let mut nsm = NetworkServiceClient::new(conn);

    // This client's own path segment, which every hop keeps before its own,
    // expiring in a minute unless refreshed.
    let id = format!("example-{}", std::process::id());
    let request = |conn: Connection| NetworkServiceRequest {
        connection: Some(Box::new(conn)),
        ..Default::default()
    };
    let first = Connection {
        id: id.clone(),
        network_service: "example-service".into(),
        path: Some(Box::new(Path {
            index: 0,
            path_segments: vec![own_segment(&id)],
            ..Default::default()
        })),
        ..Default::default()
    };
    let conn = nsm.request(request(first)).await?.into_inner();
    println!("requested: {}", describe(&conn));

    // A refresh sends the connection back as it came, with this client's
    // segment expiring later.
    let mut again = conn;
    if let Some(path) = again.path.as_mut() {
        path.path_segments[path.index as usize] = own_segment(&id);
    }
    let conn = nsm.request(request(again)).await?.into_inner();
    println!("refreshed: {}", describe(&conn));

    nsm.close(conn).await?;
    println!("closed: {id}");
    Ok(())
}

fn own_segment(id: &str) -> PathSegment {
    PathSegment {
        name: "example-client".into(),
        id: id.into(),
        expires: Some((SystemTime::now() + Duration::from_secs(60)).into()),
        ..Default::default()
    }
}

/// The connection's id and the hops on its path.
fn describe(conn: &Connection) -> String {
    let hops: Vec<&str> = conn
        .path
        .iter()
        .flat_map(|p| &p.path_segments)
        .map(|s| s.name.as_str())
        .collect();
    format!("{} via {}", conn.id, hops.join(" → "))
}
