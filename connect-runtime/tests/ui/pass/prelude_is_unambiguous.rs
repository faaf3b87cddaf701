// With the prelude imported, a derived element's hooks are called by
// method syntax without ambiguity: the prelude brings the derive, not the
// `Element` trait whose methods share the hooks' names.

use connect_runtime::prelude::*;

#[derive(Element)]
struct Inner;

impl Hooks for Inner {
    async fn request(
        &self,
        ctx: Context,
        mut request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        if let Some(conn) = request.connection.as_mut() {
            conn.labels.insert("inner".into(), "yes".into());
        }
        next.request(ctx, request).await
    }
}

/// Wraps another element and calls its hook by method syntax.
#[derive(Element)]
struct Outer {
    inner: Inner,
}

impl Hooks for Outer {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        self.inner.request(ctx, request, next).await
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let conn = runtime.block_on(async {
        let chain = ServerChain::builder().with(Outer { inner: Inner }).build();
        let request = NetworkServiceRequest {
            connection: Some(Box::new(Connection { id: "c".into(), ..Default::default() })),
            ..Default::default()
        };
        chain.request(Context::new(), request).await.unwrap()
    });
    assert_eq!(conn.labels["inner"], "yes");
}
