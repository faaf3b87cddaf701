//! The macro fixtures compile and behave alike both ways: through the real
//! macros (`<name>.rs`) and as their checked-in expansions
//! (`<name>.expanded.rs`).

macro_rules! fixture {
    ($name:ident) => {
        #[allow(dead_code, unused_imports, unreachable_pub)]
        mod $name {
            pub mod derived {
                include!(concat!(
                    "../../../connect-macros/fixtures/",
                    stringify!($name),
                    ".rs"
                ));
            }
            pub mod expanded {
                include!(concat!(
                    "../../../connect-macros/fixtures/",
                    stringify!($name),
                    ".expanded.rs"
                ));
            }
        }
    };
}

fixture!(plain_map);
fixture!(refcount_map);
fixture!(generic_map);
fixture!(server_element);
fixture!(client_element);
fixture!(both_roles);
fixture!(generic_element);
fixture!(stateful_element);

use connect_runtime::map::{Released, SyncMap};
use connect_runtime::{ClientChain, Context, ServerChain};
use connect_tests::{connection, request};

macro_rules! both {
    ($fixture:ident, |$module:ident| $body:block) => {{
        {
            use $fixture::derived as $module;
            $body
        }
        {
            use $fixture::expanded as $module;
            $body
        }
    }};
}

#[test]
fn plain_map_has_the_go_verbs() {
    both!(plain_map, |m| {
        let infos = m::ConnectionInfos::new();
        let info = |url: &str| m::ConnectionInfo { url: url.into() };
        infos.store("a".into(), info("tcp://a:1"));
        assert_eq!(infos.load("a"), Some(info("tcp://a:1")));
        assert_eq!(
            infos.load_or_store("a".into(), info("x")),
            (info("tcp://a:1"), true)
        );
        assert_eq!(
            infos.load_or_store("b".into(), info("tcp://b:1")),
            (info("tcp://b:1"), false)
        );
        let mut seen = 0;
        infos.range(|_, _| {
            seen += 1;
            true
        });
        assert_eq!(seen, 2);
        assert_eq!(infos.load_and_delete("a"), Some(info("tcp://a:1")));
        infos.delete("b");
        assert!(infos.is_empty());
        assert_eq!(format!("{infos:?}"), "ConnectionInfos { len: 0 }");
        assert_eq!(m::ConnectionInfos::default().len(), 0);
    });
}

#[test]
fn refcount_map_counts_and_evicts() {
    both!(refcount_map, |m| {
        let clients = m::ClientInfos::default();
        let a = clients.acquire("u".into(), |_| "c1".into());
        let b = clients.acquire("u".into(), |_| "never".into());
        assert!(a.created && !b.created);
        assert_eq!(clients.refs("u"), Some(2));
        assert_eq!(clients.release("u", a.instance), Released::Shared(1));
        assert_eq!(clients.evict("u", b.instance).as_deref(), Some("c1"));
        assert_eq!(clients.release("u", b.instance), Released::Gone);
        assert!(clients.is_empty());
    });
}

#[test]
fn generic_map_works_for_any_value() {
    both!(generic_map, |m| {
        let map: m::ById<Vec<u8>> = m::ById::new();
        map.store(7, vec![1, 2]);
        assert_eq!(map.load(&7), Some(vec![1, 2]));
        let _: &dyn Fn() -> SyncMap<u64, ()> = &SyncMap::new;
    });
}

#[tokio::test]
async fn elements_behave_the_same_derived_and_expanded() {
    both!(server_element, |m| {
        let counter = std::sync::Arc::new(m::CountRequests::default());
        let chain = ServerChain::builder().with(counter.clone()).build();
        chain.request(Context::new(), request("1")).await.unwrap();
        assert_eq!(counter.seen.load(std::sync::atomic::Ordering::Relaxed), 1);
    });
    both!(client_element, |m| {
        let chain = ClientChain::builder()
            .with(m::RefuseClose {
                code: tonic::Code::Aborted,
            })
            .build();
        chain.request(Context::new(), request("1")).await.unwrap();
        let err = chain
            .close(Context::new(), connection("1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted);
        assert!(err.message().contains("refusing to close 1"));
    });
    both!(both_roles, |m| {
        let label = m::Label { key: "k" };
        let server = ServerChain::builder().with(label.clone()).build();
        let client = ClientChain::builder().with(label).build();
        for reply in [
            server.request(Context::new(), request("1")).await.unwrap(),
            client.request(Context::new(), request("1")).await.unwrap(),
        ] {
            assert_eq!(reply.labels["k"], "set");
        }
    });
    both!(generic_element, |m| {
        let chain = ServerChain::builder().with(m::Tag { value: 42u16 }).build();
        let reply = chain.request(Context::new(), request("1")).await.unwrap();
        assert_eq!(reply.labels["tag"], "42");
    });
    both!(stateful_element, |m| {
        let seen = std::sync::Arc::new(m::Seen {
            limit: 1,
            ..Default::default()
        });
        let chain = ServerChain::builder().with(seen.clone()).build();
        let reply = chain.request(Context::new(), request("1")).await.unwrap();
        assert_eq!(chain.stats().entries_of("Seen"), Some(2));
        // Over the limit: a refresh fails, and keeps its entries.
        assert!(chain.request(Context::new(), request("1")).await.is_err());
        assert_eq!(chain.stats().entries_of("Seen"), Some(2));
        // A close leaves nothing of the state; what the element counts
        // itself is added.
        chain.close(Context::new(), reply).await.unwrap();
        assert_eq!(chain.stats().entries_of("Seen"), Some(0));
        seen.reserved.store(5, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(chain.stats().entries_of("Seen"), Some(5));
    });
}
