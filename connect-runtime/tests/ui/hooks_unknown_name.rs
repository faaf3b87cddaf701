use connect_runtime::proto::connection::Connection;
use connect_runtime::{Context, Element, Hooks, Next, Status};

#[derive(Element)]
struct Misnamed;

impl Hooks for Misnamed {
    async fn close_connection(&self, ctx: Context, conn: Connection, next: Next<'_>) -> Result<(), Status> {
        next.close(ctx, conn).await
    }
}

fn main() {}
