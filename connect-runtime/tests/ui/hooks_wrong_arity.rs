use connect_runtime::proto::connection::Connection;
use connect_runtime::{Context, Element, Hooks, Next, Status};

#[derive(Element)]
struct TooFew;

impl Hooks for TooFew {
    async fn close(&self, ctx: Context, next: Next<'_>) -> Result<(), Status> {
        next.close(ctx, Connection::default()).await
    }
}

fn main() {}
