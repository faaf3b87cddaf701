use std::rc::Rc;

use connect_runtime::proto::connection::Connection;
use connect_runtime::{Context, Element, Hooks, Next, Status};

#[derive(Element)]
struct HoldsRc;

// Chains run on a multi-threaded runtime: a hook's future must be `Send`.
impl Hooks for HoldsRc {
    async fn close(&self, ctx: Context, conn: Connection, next: Next<'_>) -> Result<(), Status> {
        let local = Rc::new(1);
        let result = next.close(ctx, conn).await;
        drop(local);
        result
    }
}

fn main() {}
