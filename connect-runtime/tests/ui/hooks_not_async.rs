use connect_runtime::proto::connection::Connection;
use connect_runtime::{Context, Element, Hooks, Next, Status};

#[derive(Element)]
struct Blocking;

// A hook is an `async fn` (or returns a `Send` future).
impl Hooks for Blocking {
    fn close(&self, ctx: Context, conn: Connection, next: Next<'_>) -> Result<(), Status> {
        let _ = (ctx, conn, next);
        Ok(())
    }
}

fn main() {}
