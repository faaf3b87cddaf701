use connect_runtime::proto::connection::Connection;
use connect_runtime::{Context, Element, Next, hooks};
use tonic::Status;

#[derive(Element)]
#[element(client)]
struct Consumed;

#[hooks]
impl Consumed {
    async fn close(self, ctx: Context, connection: Connection, next: Next<'_>) -> Result<(), Status> {
        next.close(ctx, connection).await
    }
}

fn main() {}
