//! Chain order, mutation, nesting, and which chain an element runs in.

use std::sync::{Arc, Mutex};

use connect_runtime::prelude::*;
use connect_runtime::proto::connection::Mechanism;
use connect_tests::elements::{Capture, Edit, InjectError, Record};
use connect_tests::{connection, request};
use tonic::Code;

fn log() -> Arc<Mutex<Vec<String>>> {
    Arc::default()
}

fn entries(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[tokio::test]
async fn elements_run_in_order_and_unwind_in_reverse() {
    let log = log();
    let chain = ServerChain::builder()
        .with(Record::new("a", &log))
        .with(Record::new("b", &log))
        .with(Record::new("c", &log))
        .build();

    chain.request(Context::new(), request("1")).await.unwrap();
    chain.close(Context::new(), connection("1")).await.unwrap();

    assert_eq!(
        entries(&log),
        [
            "a:request",
            "b:request",
            "c:request",
            "c:reply",
            "b:reply",
            "a:reply",
            "a:close",
            "b:close",
            "c:close",
            "c:closed",
            "b:closed",
            "a:closed",
        ]
    );
}

#[tokio::test]
async fn edits_are_seen_downstream_and_returned_upstream() {
    let capture = Capture::new();
    let chain = ServerChain::builder()
        .with(Edit {
            key: "first",
            value: "1",
            mechanism: None,
        })
        .with(capture.clone())
        .with(Edit {
            key: "second",
            value: "2",
            mechanism: Some(Mechanism {
                cls: "LOCAL".into(),
                r#type: "KERNEL".into(),
                ..Default::default()
            }),
        })
        .build();

    let reply = chain.request(Context::new(), request("1")).await.unwrap();

    let seen = capture.request().unwrap().connection.unwrap();
    let extra = &seen.context.unwrap().extra_context;
    assert_eq!(extra.get("first").map(String::as_str), Some("1"));
    assert!(
        !extra.contains_key("second"),
        "a later edit leaked upstream"
    );

    let extra = &reply.context.as_ref().unwrap().extra_context;
    assert_eq!(extra.len(), 2);
    assert_eq!(reply.mechanism.unwrap().r#type, "KERNEL");
}

#[tokio::test]
async fn an_error_stops_the_chain_and_reaches_the_caller() {
    let log = log();
    let chain = ServerChain::builder()
        .with(Record::new("a", &log))
        .with(InjectError::always(Code::PermissionDenied))
        .with(Record::new("never", &log))
        .build();

    let err = chain
        .request(Context::new(), request("1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = chain
        .close(Context::new(), connection("1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        entries(&log),
        ["a:request", "a:reply", "a:close", "a:closed"]
    );
}

#[tokio::test]
async fn a_nested_chain_continues_into_its_enclosing_chain() {
    let log = log();
    let inner = ServerChain::builder()
        .with(Record::new("inner1", &log))
        .with(Record::new("inner2", &log))
        .build();
    let outer = ServerChain::builder()
        .with(Record::new("outer", &log))
        .with(inner)
        .with(Record::new("after", &log))
        .build();

    outer.request(Context::new(), request("1")).await.unwrap();

    assert_eq!(
        entries(&log),
        [
            "outer:request",
            "inner1:request",
            "inner2:request",
            "after:request",
            "after:reply",
            "inner2:reply",
            "inner1:reply",
            "outer:reply",
        ]
    );
}

/// Chains nested in nested chains, first, last and alone in their
/// enclosing chains, run their elements in order and then continue, at
/// every depth, into what follows them (for requests and closes alike).
#[tokio::test]
async fn chains_nested_three_deep_continue_at_every_depth() {
    let log = log();
    let deepest = ServerChain::builder().with(Record::new("d", &log)).build();
    let middle = ServerChain::builder()
        .with(deepest)
        .with(Record::new("m", &log))
        .build();
    let inner = ServerChain::builder()
        .with(Record::new("i", &log))
        .with(middle)
        .build();
    let lone = ServerChain::builder().with(inner).build();
    let outer = ServerChain::builder()
        .with(Record::new("o", &log))
        .with(lone)
        .with(Record::new("after", &log))
        .build();

    let reply = outer.request(Context::new(), request("1")).await.unwrap();
    assert_eq!(reply.id, "1");
    let walked = [
        "o:request",
        "i:request",
        "d:request",
        "m:request",
        "after:request",
        "after:reply",
        "m:reply",
        "d:reply",
        "i:reply",
        "o:reply",
    ];
    assert_eq!(entries(&log), walked);

    log.lock().unwrap().clear();
    outer.close(Context::new(), reply).await.unwrap();
    let closed = walked.map(|e| e.replace("request", "close").replace("reply", "closed"));
    assert_eq!(entries(&log), closed);
}

/// Notes the role of each chain a request runs in.
#[derive(Clone, Default, Element)]
struct Roles(Arc<Mutex<Vec<&'static str>>>);

impl Hooks for Roles {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        self.0.lock().unwrap().push(next.role());
        next.request(ctx, request).await
    }
}

/// An element of both roles runs in server and client chains, and knows
/// which it is in; a client chain nested in a client chain continues into
/// it.
#[tokio::test]
async fn an_element_of_both_roles_runs_in_either_chain_and_knows_which() {
    let roles = Roles::default();
    let server = ServerChain::builder().with(roles.clone()).build();
    let inner = ClientChain::builder().with(roles.clone()).build();
    let client = ClientChain::builder()
        .with(inner)
        .with(roles.clone())
        .build();

    server.request(Context::new(), request("s")).await.unwrap();
    let reply = client.request(Context::new(), request("c")).await.unwrap();
    assert_eq!(reply.id, "c");
    assert_eq!(*roles.0.lock().unwrap(), ["server", "client", "client"]);
}

#[tokio::test]
async fn the_end_of_a_chain_answers_with_the_request_connection() {
    let empty = ServerChain::default();
    assert!(empty.is_empty());
    let reply = empty.request(Context::new(), request("7")).await.unwrap();
    assert_eq!(reply.id, "7");
    let reply = empty
        .request(Context::new(), Default::default())
        .await
        .unwrap();
    assert_eq!(reply, Default::default());
}

#[tokio::test]
async fn clienturl_sets_the_url_for_what_follows_only() {
    let before = Capture::new();
    let after = Capture::new();
    let url: url::Url = "tcp://10.0.0.1:5001".parse().unwrap();
    let chain = ServerChain::builder()
        .with(before.clone())
        .with(ClientUrl::new(url.clone()))
        .with(after.clone())
        .build();

    chain.request(Context::new(), request("1")).await.unwrap();

    assert_eq!(before.seen().client_url, None);
    assert_eq!(after.seen().client_url.as_deref(), Some(url.as_str()));
}
