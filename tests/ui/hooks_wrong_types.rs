use connect_runtime::proto::connection::Connection;
use connect_runtime::{Context, Element, Next, hooks};
use tonic::Status;

#[derive(Element)]
#[element(server)]
struct Mistyped;

// The shape is right, so the compiler checks the types, at these tokens.
#[hooks]
impl Mistyped {
    async fn request(&self, ctx: Context, request: String, next: Next<'_>) -> Result<Connection, Status> {
        let _ = (ctx, request, next);
        Ok(Connection::default())
    }
}

fn main() {}
