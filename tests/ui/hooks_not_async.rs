use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::{Context, Element, Next, hooks};
use tonic::Status;

#[derive(Element)]
#[element(server)]
struct Blocking;

#[hooks]
impl Blocking {
    fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let _ = (ctx, request, next);
        Ok(Connection::default())
    }
}

fn main() {}
