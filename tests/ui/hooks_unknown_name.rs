use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::{Context, Element, Next, hooks};
use tonic::Status;

#[derive(Element)]
#[element(server)]
struct Typo;

#[hooks]
impl Typo {
    async fn requst(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        next.request(ctx, request).await
    }

    fn helper(&self) {}
}

fn main() {}
