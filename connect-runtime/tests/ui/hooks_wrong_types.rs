use connect_runtime::proto::connection::Connection;
use connect_runtime::{Context, Element, Hooks, Next, Status};

#[derive(Element)]
struct Mistyped;

// The compiler checks a hook against the trait, at these tokens.
impl Hooks for Mistyped {
    async fn request(&self, ctx: Context, request: String, next: Next<'_>) -> Result<Connection, Status> {
        let _ = (ctx, request, next);
        Ok(Connection::default())
    }
}

fn main() {}
