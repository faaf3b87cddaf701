use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::{Context, Element, hooks};
use tonic::Status;

#[derive(Element)]
#[element(server)]
struct NoNext;

#[hooks]
impl NoNext {
    async fn request(&self, ctx: Context, request: NetworkServiceRequest) -> Result<Connection, Status> {
        let _ = (ctx, request);
        Ok(Connection::default())
    }
}

fn main() {}
