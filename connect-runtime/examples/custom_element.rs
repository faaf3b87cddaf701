//! A custom element, in both roles, on the served path.
//!
//! `Quota` admits at most `limit` requests per connection id, and labels
//! each connection it admits with its count. It runs on both sides of the
//! wire: in a client chain before the gRPC call, and in the endpoint's
//! server chain. The third request for an id fails with
//! `RESOURCE_EXHAUSTED`; its spans record the code and message (printed
//! below as each span closes).
//!
//! ```sh
//! cargo run -p connect-runtime --example custom_element
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

use connect_runtime::prelude::*;
use connect_runtime::{dial, serve};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::format::FmtSpan;

/// Admits at most `limit` requests per connection id.
#[derive(Element)]
struct Quota {
    label: &'static str,
    limit: usize,
    seen: Mutex<HashMap<String, usize>>,
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
        let seen = Mutex::new(HashMap::new());
        Self { label, limit, seen }
    }

    /// Counts a request for `id`: its number, or an error past the limit.
    fn admit(&self, id: &str) -> Result<usize, Status> {
        let mut seen = self.seen.lock().expect("not poisoned");
        let count = seen.entry(id.to_owned()).or_default();
        if *count == self.limit {
            let why = format!("{id} has used its {} requests", self.limit);
            return Err(Status::resource_exhausted(why));
        }
        *count += 1;
        Ok(*count)
    }
}

fn request(id: &str) -> NetworkServiceRequest {
    let conn = Connection {
        id: id.into(),
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

    // The endpoint admits three requests per id; the client side two.
    let shutdown = CancellationToken::new();
    let endpoint = ServerChain::builder()
        .with(Quota::new("endpoint-count", 3))
        .build();
    let server = serve("tcp://127.0.0.1:0", endpoint, shutdown.clone()).await?;

    let conn = dial(server.url(), &DialOptions::new()).await?;
    let client = ClientChain::builder()
        .with(Quota::new("client-count", 2))
        .with(GrpcClient::new(conn))
        .build();

    for attempt in 1..=3 {
        match client.request(Context::new(), request("c-1")).await {
            Ok(conn) => println!("attempt {attempt}: admitted, labels {:?}", conn.labels),
            Err(status) => println!(
                "attempt {attempt}: refused: {:?}: {}",
                status.code(),
                status.message()
            ),
        }
    }

    shutdown.cancel();
    server.stopped().await;
    Ok(())
}
