use connect_runtime::proto::connection::Connection;
use connect_runtime::{Context, Element, Hooks, Next, Status};

#[derive(Element)]
struct Owned;

impl Hooks for Owned {
    async fn close(self, ctx: Context, conn: Connection, next: Next<'_>) -> Result<(), Status> {
        next.close(ctx, conn).await
    }
}

fn main() {}
