//! A custom element, in both roles, on the served path, with state per
//! connection that cannot leak.
//!
//! `Quota` admits at most `limit` requests per connection id, and labels
//! each connection it admits with its count. It runs on both sides of the
//! wire: in a client chain before the gRPC call, and in the endpoint's
//! server chain. The third request for an id fails with
//! `RESOURCE_EXHAUSTED`; its spans record the code and message (printed
//! below as each span closes).
//!
//! Its counts are a `PerConnection` field: the chain drops a connection's
//! count when the connection is closed, when its first request fails, and,
//! behind `Expire`, when its caller vanishes and it expires. The example
//! ends by abandoning 20 connections and watching the endpoint's state
//! return to empty.
//!
//! ```sh
//! cargo run -p connect-runtime --example custom_element
//! ```

use std::time::Duration;

use connect_runtime::CancellationToken;
use connect_runtime::prelude::*;
use connect_runtime::proto::connection::{Path, PathSegment};
use connect_runtime::{Expire, UpdatePath, dial, serve};
use tracing_subscriber::fmt::format::FmtSpan;

/// Admits at most `limit` requests per connection id.
#[derive(Element)]
struct Quota {
    label: &'static str,
    limit: usize,
    seen: PerConnection<usize>,
}

impl Hooks for Quota {
    async fn request(
        &self,
        ctx: Context,
        mut request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let conn = request.connection.get_or_insert_default();
        let count = self.admit(&conn.id)?;
        conn.labels.insert(self.label.into(), count.to_string());
        next.request(ctx, request).await
    }
}

impl Quota {
    fn new(label: &'static str, limit: usize) -> Self {
        let seen = PerConnection::new();
        Self { label, limit, seen }
    }

    /// Counts a request for `id`: its number, or an error past the limit.
    fn admit(&self, id: &str) -> Result<usize, Status> {
        self.seen.update(id, |count| {
            if *count == self.limit {
                let why = format!("{id} has used its {} requests", self.limit);
                return Err(Status::resource_exhausted(why));
            }
            *count += 1;
            Ok(*count)
        })
    }
}

/// A new connection `id` whose caller's path segment expires in `ttl`.
fn request(id: &str, ttl: Duration) -> NetworkServiceRequest {
    let caller = PathSegment {
        name: "example-nsc".into(),
        id: id.into(),
        expires: Some((std::time::SystemTime::now() + ttl).into()),
        ..Default::default()
    };
    let conn = Connection {
        id: id.into(),
        path: Some(Box::new(Path {
            index: 0,
            path_segments: vec![caller],
            ..Default::default()
        })),
        ..Default::default()
    };
    NetworkServiceRequest {
        connection: Some(Box::new(conn)),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The element's spans only: their target is this crate.
    tracing_subscriber::fmt()
        .with_env_filter("custom_element=debug")
        .with_span_events(FmtSpan::CLOSE)
        .with_target(false)
        .init();

    // The endpoint admits three requests per id; the client side two. The
    // endpoint's Quota is inside its Expire, so expiry closes reach it.
    let shutdown = CancellationToken::new();
    let expire = Expire::new(
        ServerChain::builder()
            .with(Quota::new("endpoint-count", 3))
            .build(),
    );
    let endpoint = ServerChain::builder()
        .with(UpdatePath::new("endpoint"))
        .with(expire.clone())
        .build();
    let server = serve("tcp://127.0.0.1:0", endpoint.clone(), shutdown.clone()).await?;

    let conn = dial(server.url(), &DialOptions::new()).await?;
    let client = ClientChain::builder()
        .with(Quota::new("client-count", 2))
        .with(GrpcClient::new(conn.clone()))
        .build();

    let ttl = Duration::from_secs(60);
    let mut admitted = None;
    for attempt in 1..=3 {
        // A refresh carries the connection as last returned.
        let mut next = request("c-1", ttl);
        if let Some(conn) = admitted.clone() {
            next.connection = Some(Box::new(conn));
        }
        match client.request(Context::new(), next).await {
            Ok(conn) => {
                println!("attempt {attempt}: admitted, labels {:?}", conn.labels);
                admitted = Some(conn);
            }
            Err(status) => println!(
                "attempt {attempt}: refused: {:?}: {}",
                status.code(),
                status.message()
            ),
        }
    }
    if let Some(conn) = admitted {
        client.close(Context::new(), conn).await?;
    }
    println!("after the close: client holds {:?}", client.stats());
    println!("after the close: endpoint holds {:?}", endpoint.stats());

    // Callers that vanish: 20 connections never refreshed or closed.
    let vanishing = ClientChain::builder().with(GrpcClient::new(conn)).build();
    for n in 0..20 {
        let id = format!("abandoned-{n}");
        vanishing
            .request(Context::new(), request(&id, Duration::from_secs(2)))
            .await?;
    }
    println!("abandoned: endpoint holds {:?}", endpoint.stats());
    let expired = expire.wait_for(|s| s.expired == 20).await;
    println!(
        "expired: endpoint holds {:?} ({expired:?})",
        endpoint.stats()
    );

    shutdown.cancel();
    server.stopped().await;
    Ok(())
}
