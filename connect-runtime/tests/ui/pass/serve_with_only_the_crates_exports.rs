// Serving, dialing and stopping a chain, as the README's examples do, with
// nothing named outside `connect_runtime` but tokio's runtime: the token
// and the URL type are re-exported.

use connect_runtime::prelude::*;
use connect_runtime::{CancellationToken, Url, dial, serve};

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let chain = ServerChain::builder().with(Passthrough).build();
        let server = serve("tcp://127.0.0.1:0", chain, stop.clone()).await.unwrap();
        let url: &Url = server.url();
        let conn = dial(url, &DialOptions::new()).await.unwrap();
        let client = ClientChain::builder().with(GrpcClient::new(conn)).build();
        let request = NetworkServiceRequest {
            connection: Some(Box::new(Connection { id: "c-1".into(), ..Default::default() })),
            ..Default::default()
        };
        assert_eq!(client.request(Context::new(), request).await.unwrap().id, "c-1");
        stop.cancel();
        server.stopped().await;
    });
}
