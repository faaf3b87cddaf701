//! `ConnectBuilder::linger`: a client whose last connection left stays a
//! while for the next one, and is still accounted for and closed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use connect_runtime::{ClientChain, Connect, Context, GrpcClient, Monitor, ServerChain};
use connect_tests::elements::Count;
use connect_tests::harness::{
    assert_no_leaks, at, connect_chain, grpc_only_counting_dials, settle,
};
use connect_tests::remote::start_tcp;
use connect_tests::request;

#[tokio::test]
async fn a_request_within_the_linger_dials_nothing_and_the_client_closes_after_it() {
    let (builder, dials) = grpc_only_counting_dials();
    let connect = builder.linger(Duration::from_secs(2)).build();
    let chain = connect_chain(&connect);
    let remote = Count::new();
    let server = start_tcp(ServerChain::builder().with(remote.clone()).build()).await;

    let first = chain.request(at(server.url()), request("a")).await.unwrap();
    chain.close(Context::new(), first).await.unwrap();
    // Unused, but there: accounted for, and connect is not idle.
    let stats = connect.stats();
    assert_eq!(stats.clients.len(), 1);
    assert_eq!((stats.clients[0].refs, stats.records), (0, 0));
    assert!(!stats.is_idle());

    let second = chain.request(at(server.url()), request("b")).await.unwrap();
    assert_eq!(
        dials.load(Ordering::SeqCst),
        1,
        "the lingering client served it"
    );
    assert_eq!(server.connections().accepted, 1);
    chain.close(Context::new(), second).await.unwrap();
    assert_eq!((remote.requests(), remote.closes()), (2, 2));
    // Then it closes on its own, and the remote sees its TCP connection go.
    assert_no_leaks(&connect, &[&server]).await;
    assert_eq!(dials.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn shutdown_closes_a_lingering_client_at_once() {
    let (builder, _) = grpc_only_counting_dials();
    let connect = builder.linger(Duration::from_secs(3600)).build();
    let chain = connect_chain(&connect);
    let server = start_tcp(ServerChain::builder().with(Count::new()).build()).await;
    let conn = chain.request(at(server.url()), request("a")).await.unwrap();
    chain.close(Context::new(), conn).await.unwrap();
    assert_eq!(connect.stats().clients.len(), 1);
    // An hour's linger: only the shutdown can end it within the test.
    connect.shutdown();
    assert_no_leaks(&connect, &[&server]).await;
}

#[tokio::test]
async fn a_lingering_client_whose_remote_goes_is_closed() {
    let connect = Connect::builder(|ctx: &Context, conn| {
        ClientChain::builder()
            .with(Monitor::new(ctx, conn.clone()))
            .with(GrpcClient::new(conn))
            .build()
    })
    .linger(Duration::from_secs(3600))
    .build();
    let chain = connect_chain(&connect);
    let server = start_tcp(ServerChain::builder().with(Count::new()).build()).await;
    let conn = chain.request(at(server.url()), request("a")).await.unwrap();
    chain.close(Context::new(), conn).await.unwrap();
    assert_eq!(connect.stats().clients.len(), 1);
    server.shutdown().await;
    settle("the lingering client to close", connect.idle()).await;
    assert!(connect.stats().is_idle());
}

#[tokio::test]
async fn each_last_close_starts_the_linger_over() {
    let (builder, dials) = grpc_only_counting_dials();
    let connect = builder.linger(Duration::from_secs(2)).build();
    let chain = connect_chain(&connect);
    let server = start_tcp(ServerChain::builder().with(Count::new()).build()).await;
    // Closes a quarter of a linger apart, for one and a half lingers: one
    // client throughout.
    for n in 0..6 {
        let conn = chain
            .request(at(server.url()), request(&format!("c-{n}")))
            .await
            .unwrap();
        chain.close(Context::new(), conn).await.unwrap();
        assert_eq!(connect.stats().clients.len(), 1, "after close {n}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    assert_no_leaks(&connect, &[&server]).await;
}
