//! NSM's monitor protocol on the served path: a hop of
//! `updatepath → expire(monitor → clienturl → connect)` whose clients relay
//! their remote's events, watched by a tonic `MonitorConnections` caller,
//! before endpoints that serve monitoring, break it, or lack it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use connect_runtime::proto::connection::monitor_connection_client::MonitorConnectionClient;
use connect_runtime::proto::connection::monitor_connection_server::{
    MonitorConnection, MonitorConnectionServer,
};
use connect_runtime::proto::connection::{
    Connection, ConnectionEvent, ConnectionEventType, MonitorScopeSelector, PathSegment, State,
};
use connect_runtime::proto::networkservice::network_service_client::NetworkServiceClient;
use connect_runtime::spiffe::{Authorize, SpiffeIdentity};
use connect_runtime::{
    CancellationToken, ClientChain, ClientConn, ClientUrl, Connect, ConnectionMonitor, Context,
    Expire, GrpcClient, Monitor, Serve, ServerChain, ServerHandle, UpdatePath, dial,
};
use connect_tests::caller::{monitor_caller, tonic_caller};
use connect_tests::harness::{assert_no_leaks, grpc_only, patient, settle};
use connect_tests::workload_api::{Authority, WorkloadApi};
use connect_tests::{from_caller, refreshed, request_for};
use futures_util::{StreamExt, stream};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use url::Url;

const LONG: Option<Duration> = Some(Duration::from_secs(600));

/// An endpoint that serves monitoring: `updatepath("nse") → monitor`.
struct Endpoint {
    monitor: ConnectionMonitor,
    chain: ServerChain,
    served: ServerHandle,
}

impl Endpoint {
    async fn start() -> Self {
        let stop = CancellationToken::new();
        let monitor = ConnectionMonitor::new().shutdown_on(stop.clone());
        let chain = ServerChain::builder()
            .with(UpdatePath::new("nse"))
            .with(monitor.server())
            .build();
        let served = Serve::new(chain.clone())
            .add_service(monitor.service())
            .shutdown_on(stop)
            .bind("tcp://127.0.0.1:0")
            .await
            .unwrap();
        Self {
            monitor,
            chain,
            served,
        }
    }
}

/// The hop under test, served with its monitor, and tonic callers of it.
struct Hop {
    monitor: ConnectionMonitor,
    connect: Connect,
    chain: ServerChain,
    caller: NetworkServiceClient<Channel>,
    watcher: MonitorConnectionClient<Channel>,
    stop: CancellationToken,
    served: ServerHandle,
}

impl Hop {
    /// Forwarding to `remote`, or to the URL each in-process call names.
    async fn new(remote: Option<&Url>) -> Self {
        Self::with(ConnectionMonitor::new(), remote).await
    }

    async fn with(monitor: ConnectionMonitor, remote: Option<&Url>) -> Self {
        let stop = CancellationToken::new();
        let monitor = monitor.shutdown_on(stop.clone());
        let relays = monitor.clone();
        let connect = Connect::builder(move |ctx: &Context, conn| {
            ClientChain::builder()
                .with(Monitor::new(ctx, conn.clone()))
                .with(relays.relay(ctx, conn.clone()))
                .with(GrpcClient::new(conn))
                .build()
        })
        .dial_timeout(Duration::from_secs(1))
        .build();
        let mut rest = ServerChain::builder().with(monitor.server());
        if let Some(remote) = remote {
            rest = rest.with(ClientUrl::new(remote.clone()));
        }
        let rest = rest.with(connect.clone()).build();
        let chain = ServerChain::builder()
            .with(UpdatePath::new("hop"))
            .with(Expire::new(rest))
            .build();
        let served = Serve::new(chain.clone())
            .add_service(monitor.service())
            .shutdown_on(stop.clone())
            .bind("tcp://127.0.0.1:0")
            .await
            .unwrap();
        let caller = tonic_caller(served.url()).await;
        let watcher = monitor_caller(served.url()).await;
        Self {
            monitor,
            connect,
            chain,
            caller,
            watcher,
            stop,
            served,
        }
    }

    async fn request(&self, conn: Connection) -> Connection {
        let mut caller = self.caller.clone();
        caller
            .request(request_for(conn))
            .await
            .unwrap()
            .into_inner()
    }

    async fn close(&self, conn: Connection) {
        let mut caller = self.caller.clone();
        caller.close(conn).await.unwrap();
    }

    async fn watch(&self, selector: MonitorScopeSelector) -> Streaming<ConnectionEvent> {
        let mut watcher = self.watcher.clone();
        watcher
            .monitor_connections(selector)
            .await
            .unwrap()
            .into_inner()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.served.stopped().await;
        self.connect.shutdown();
    }
}

/// The id hop `n` of `reply`'s path gave the connection (0 is the caller).
fn id_at(reply: &Connection, n: usize) -> String {
    reply.path.as_ref().unwrap().path_segments[n].id.clone()
}

async fn next_event(events: &mut Streaming<ConnectionEvent>) -> ConnectionEvent {
    settle("a monitor event", events.message())
        .await
        .expect("the stream stays healthy")
        .expect("the stream stays open")
}

fn kind(event: &ConnectionEvent) -> ConnectionEventType {
    ConnectionEventType::try_from(event.r#type).unwrap()
}

/// The one connection `event` carries.
fn only(event: &ConnectionEvent) -> &Connection {
    assert_eq!(event.connections.len(), 1, "{event:?}");
    event.connections.values().next().unwrap()
}

fn everything() -> MonitorScopeSelector {
    MonitorScopeSelector::default()
}

fn segment(name: &str, id: &str) -> PathSegment {
    PathSegment {
        name: name.into(),
        id: id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_watcher_hears_the_initial_state_then_updates_and_deletes_in_this_hops_terms() {
    let endpoint = Endpoint::start().await;
    let hop = Hop::new(Some(endpoint.served.url())).await;
    let first = hop.request(from_caller("nsc", "c-1", LONG)).await;
    let first_here = id_at(&first, 1);

    let mut events = hop.watch(everything()).await;
    let initial = next_event(&mut events).await;
    assert_eq!(kind(&initial), ConnectionEventType::InitialStateTransfer);
    let held = only(&initial);
    assert_eq!(held.id, first_here, "this hop's id, not the caller's");
    let path = held.path.as_ref().unwrap();
    assert_eq!(path.index, 1, "this hop's index");
    assert_eq!(path.path_segments[1].name, "hop");
    assert_eq!(
        path.path_segments[2].name, "nse",
        "as the endpoint returned it"
    );

    let second = hop.request(from_caller("nsc", "c-2", LONG)).await;
    let update = next_event(&mut events).await;
    assert_eq!(kind(&update), ConnectionEventType::Update);
    assert_eq!(only(&update).id, id_at(&second, 1));

    let first = hop
        .request(refreshed(first, Duration::from_secs(600)))
        .await;
    let update = next_event(&mut events).await;
    assert_eq!(kind(&update), ConnectionEventType::Update);
    assert_eq!(only(&update).id, first_here);
    assert_eq!(only(&update).state, State::Up as i32);

    hop.close(second.clone()).await;
    let delete = next_event(&mut events).await;
    assert_eq!(kind(&delete), ConnectionEventType::Delete);
    assert_eq!(only(&delete).id, id_at(&second, 1));
    assert_eq!(hop.monitor.stats().connections, 1);

    hop.close(first).await;
    assert_eq!(
        kind(&next_event(&mut events).await),
        ConnectionEventType::Delete
    );
    assert_eq!(hop.monitor.stats().connections, 0);
    // The endpoint deleted both as well.
    assert_eq!(endpoint.monitor.stats().connections, 0);
    drop(events);
    settle(
        "the watcher to leave",
        hop.monitor.wait_for(|s| s.watchers == 0),
    )
    .await;
    let connect = hop.connect.clone();
    hop.stop().await;
    assert_no_leaks(&connect, &[&endpoint.served]).await;
}

#[tokio::test]
async fn selectors_name_connections_by_path_segments_and_network_service() {
    let endpoint = Endpoint::start().await;
    let hop = Hop::new(Some(endpoint.served.url())).await;
    let mut blue = from_caller("nsc", "blue", LONG);
    blue.network_service = "blue-ns".into();
    let mut red = from_caller("nsc", "red", LONG);
    red.network_service = "red-ns".into();
    let blue = hop.request(blue).await;
    let red = hop.request(red).await;

    // The caller's own segment, as NSM's monitor clients select.
    let mine = MonitorScopeSelector {
        path_segments: vec![segment("nsc", "blue")],
        ..Default::default()
    };
    let initial = next_event(&mut hop.watch(mine).await).await;
    assert_eq!(only(&initial).id, id_at(&blue, 1));

    let by_service = MonitorScopeSelector {
        network_services: vec!["red-ns".into()],
        ..Default::default()
    };
    let mut reds = hop.watch(by_service).await;
    assert_eq!(only(&next_event(&mut reds).await).id, id_at(&red, 1));

    // A run of two segments: the caller's, then this hop's.
    let run = MonitorScopeSelector {
        path_segments: vec![segment("nsc", "red"), segment("hop", "")],
        ..Default::default()
    };
    assert_eq!(
        only(&next_event(&mut hop.watch(run).await).await).id,
        id_at(&red, 1)
    );
    let nothing = MonitorScopeSelector {
        path_segments: vec![segment("nsc", "red"), segment("nse", "")],
        ..Default::default()
    };
    let initial = next_event(&mut hop.watch(nothing).await).await;
    assert!(initial.connections.is_empty(), "{initial:?}");

    // Events reach only the watchers they concern.
    hop.close(blue).await;
    hop.request(refreshed(red.clone(), Duration::from_secs(600)))
        .await;
    let update = next_event(&mut reds).await;
    assert_eq!(
        kind(&update),
        ConnectionEventType::Update,
        "no delete of blue here"
    );
    assert_eq!(only(&update).id, id_at(&red, 1));
    hop.close(red).await;
    hop.stop().await;
}

#[tokio::test]
async fn the_next_hops_down_and_delete_are_down_here_until_a_refresh() {
    let endpoint = Endpoint::start().await;
    let hop = Hop::new(Some(endpoint.served.url())).await;
    let conn = hop.request(from_caller("nsc", "c-1", LONG)).await;
    let (here, there) = (id_at(&conn, 1), id_at(&conn, 2));
    settle(
        "the relay to open",
        hop.monitor.wait_for(|s| s.relayed_streams == 1),
    )
    .await;
    let mut events = hop.watch(everything()).await;
    next_event(&mut events).await;

    assert!(endpoint.monitor.set_state(&there, State::Down));
    let down = next_event(&mut events).await;
    assert_eq!(kind(&down), ConnectionEventType::Update);
    assert_eq!(only(&down).id, here);
    assert_eq!(only(&down).state, State::Down as i32);

    // A refresh through the hop brings it back up (the endpoint's own
    // update may say so first).
    let conn = hop.request(refreshed(conn, Duration::from_secs(600))).await;
    let up = next_event(&mut events).await;
    assert_eq!(only(&up).state, State::Up as i32);

    // The endpoint closing it on its own is a DOWN here, not a delete: the
    // caller still holds it.
    let at_endpoint = endpoint.monitor.connection(&there).unwrap();
    endpoint
        .chain
        .close(Context::new(), at_endpoint)
        .await
        .unwrap();
    let down = loop {
        let event = next_event(&mut events).await;
        assert_eq!(kind(&event), ConnectionEventType::Update);
        assert_eq!(only(&event).id, here);
        if only(&event).state != State::Up as i32 {
            break event;
        }
    };
    assert_eq!(only(&down).state, State::Down as i32);

    hop.close(conn).await;
    assert_eq!(
        kind(&next_event(&mut events).await),
        ConnectionEventType::Delete
    );
    hop.stop().await;
}

#[tokio::test]
async fn connections_of_a_client_that_is_gone_are_down() {
    let endpoint = Endpoint::start().await;
    let hop = Hop::new(Some(endpoint.served.url())).await;
    let conn = hop.request(from_caller("nsc", "c-1", LONG)).await;
    let mut events = hop.watch(everything()).await;
    next_event(&mut events).await;

    // The endpoint goes away: the health monitor closes the client.
    endpoint.served.abort();
    let down = next_event(&mut events).await;
    assert_eq!(only(&down).id, id_at(&conn, 1));
    assert_eq!(only(&down).state, State::Down as i32);
    settle(
        "the relay to end",
        hop.monitor.wait_for(|s| s.relayed_streams == 0),
    )
    .await;
    hop.stop().await;
}

#[tokio::test]
async fn one_stream_per_remote_serves_every_connection_to_it() {
    const REMOTES: usize = 10;
    const CONNECTIONS: usize = 10_000;
    let mut endpoints = Vec::new();
    for _ in 0..REMOTES {
        endpoints.push(Endpoint::start().await);
    }
    let hop = Hop::new(None).await;
    let urls: Vec<Url> = endpoints.iter().map(|e| e.served.url().clone()).collect();
    let replies: Vec<Connection> = stream::iter(0..CONNECTIONS)
        .map(|n| {
            let ctx = Context::new().with_client_url(urls[n % REMOTES].clone());
            let request = request_for(from_caller("nsc", &format!("c-{n}"), LONG));
            hop.chain.request(ctx, request)
        })
        .buffer_unordered(64)
        .map(Result::unwrap)
        .collect()
        .await;
    let stats = settle(
        "a stream to each remote",
        hop.monitor.wait_for(|s| s.relayed_streams == REMOTES),
    )
    .await;
    assert_eq!(
        stats.relay_opens, REMOTES as u64,
        "one each, never per connection"
    );
    assert_eq!(stats.connections, CONNECTIONS);
    for endpoint in &endpoints {
        let seen = endpoint.monitor.stats();
        assert_eq!(seen.watchers, 1);
        assert_eq!(seen.connections, CONNECTIONS / REMOTES);
    }

    // Each remote's word reaches the connection it concerns, and only it.
    let mut events = hop.watch(everything()).await;
    assert_eq!(next_event(&mut events).await.connections.len(), CONNECTIONS);
    for (n, reply) in replies.iter().enumerate().take(REMOTES) {
        let endpoint = endpoints
            .iter()
            .find(|e| e.monitor.connection(&id_at(reply, 2)).is_some())
            .unwrap_or_else(|| panic!("connection {n} is at an endpoint"));
        endpoint.monitor.set_state(&id_at(reply, 2), State::Down);
        let down = next_event(&mut events).await;
        assert_eq!(only(&down).id, id_at(reply, 1));
        assert_eq!(only(&down).state, State::Down as i32);
    }
    assert_eq!(hop.monitor.stats().relayed_states, REMOTES as u64);
    hop.stop().await;
}

/// A remote's monitor service whose first stream breaks after its initial
/// state, and whose later streams stay open; or, `refusing`, that refuses
/// every watch as a policy would.
#[derive(Clone, Default)]
struct Breaking {
    opens: Arc<AtomicUsize>,
    refusing: Option<Code>,
}

type Events = Pin<Box<dyn futures_util::Stream<Item = Result<ConnectionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl MonitorConnection for Breaking {
    type MonitorConnectionsStream = Events;

    async fn monitor_connections(
        &self,
        _: Request<MonitorScopeSelector>,
    ) -> Result<Response<Events>, Status> {
        let opened = self.opens.fetch_add(1, Ordering::SeqCst);
        if let Some(code) = self.refusing {
            return Err(Status::new(code, "this selector is not yours"));
        }
        let initial = Ok(ConnectionEvent::default());
        let events: Events = match opened {
            0 => Box::pin(stream::iter([
                initial,
                Err(Status::unavailable("monitor broke")),
            ])),
            _ => Box::pin(stream::iter([initial]).chain(stream::pending())),
        };
        Ok(Response::new(events))
    }
}

#[tokio::test]
async fn a_remote_whose_stream_breaks_is_watched_again_and_nothing_is_down() {
    let breaking = Breaking::default();
    let remote = Serve::new(ServerChain::builder().with(UpdatePath::new("nse")).build())
        .add_service(MonitorConnectionServer::new(breaking.clone()))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let hop = Hop::new(Some(remote.url())).await;
    let conn = hop.request(from_caller("nsc", "c-1", LONG)).await;
    let stats = settle(
        "the relay to open its stream again",
        hop.monitor
            .wait_for(|s| s.relay_opens == 2 && s.relayed_streams == 1),
    )
    .await;
    assert_eq!(breaking.opens.load(Ordering::SeqCst), 2);
    assert_eq!(stats.relayed_states, 0);
    let held = hop.monitor.connection(&id_at(&conn, 1)).unwrap();
    assert_eq!(held.state, State::Up as i32);
    hop.close(conn).await;
    hop.stop().await;
}

#[tokio::test]
async fn a_remote_without_monitoring_is_not_watched_and_nothing_is_down() {
    let remote = Serve::new(ServerChain::builder().with(UpdatePath::new("nse")).build())
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let hop = Hop::new(Some(remote.url())).await;
    let mut events = hop.watch(everything()).await;
    next_event(&mut events).await;
    let conn = hop.request(from_caller("nsc", "c-1", LONG)).await;
    assert_eq!(only(&next_event(&mut events).await).state, State::Up as i32);
    let stats = settle(
        "the relay to find no monitoring",
        hop.monitor.wait_for(|s| s.unmonitored == 1),
    )
    .await;
    assert_eq!((stats.relayed_streams, stats.relayed_states), (0, 0));
    // The next event is the close's delete: nothing was reported between.
    hop.close(conn).await;
    let delete = next_event(&mut events).await;
    assert_eq!(kind(&delete), ConnectionEventType::Delete);
    let connect = hop.connect.clone();
    settle("the client to close", connect.idle()).await;
    settle(
        "the relay to end",
        hop.monitor.wait_for(|s| s.unmonitored == 0),
    )
    .await;
    hop.stop().await;
}

#[tokio::test]
async fn an_expired_connection_is_deleted() {
    let endpoint = Endpoint::start().await;
    let hop = Hop::new(Some(endpoint.served.url())).await;
    let mut events = hop.watch(everything()).await;
    next_event(&mut events).await;
    let conn = hop
        .request(from_caller("nsc", "c-1", Some(Duration::from_millis(500))))
        .await;
    assert_eq!(
        kind(&next_event(&mut events).await),
        ConnectionEventType::Update
    );
    let delete = next_event(&mut events).await;
    assert_eq!(kind(&delete), ConnectionEventType::Delete);
    assert_eq!(only(&delete).id, id_at(&conn, 1));
    settle(
        "the endpoint to forget it",
        endpoint.monitor.wait_for(|s| s.connections == 0),
    )
    .await;
    hop.stop().await;
}

#[tokio::test]
async fn a_watcher_that_does_not_read_is_cut_with_resource_exhausted() {
    let hop = Hop::with(ConnectionMonitor::new().watcher_buffer(4), None).await;
    let mut slow = hop.watch(everything()).await;
    next_event(&mut slow).await;
    let mut keeping_up = hop.watch(everything()).await;
    next_event(&mut keeping_up).await;
    // Events far larger than HTTP/2's windows: the slow watcher's fill the
    // network's buffers, then its own.
    let mut conn = from_caller("nsc", "big", LONG);
    conn.labels.insert("payload".into(), "x".repeat(64 * 1024));
    let server = Endpoint::start().await;
    let ctx = || Context::new().with_client_url(server.served.url().clone());
    let mut refreshes = 0;
    let mut last = hop.chain.request(ctx(), request_for(conn)).await.unwrap();
    assert_eq!(
        kind(&next_event(&mut keeping_up).await),
        ConnectionEventType::Update
    );
    while hop.monitor.stats().watchers_cut == 0 {
        assert!(refreshes < 1000, "the slow watcher was never cut");
        last = hop
            .chain
            .request(
                ctx(),
                request_for(refreshed(last, Duration::from_secs(600))),
            )
            .await
            .unwrap();
        refreshes += 1;
        // The watcher that reads keeps up.
        assert_eq!(
            kind(&next_event(&mut keeping_up).await),
            ConnectionEventType::Update
        );
    }
    let stats = hop.monitor.stats();
    assert_eq!((stats.watchers, stats.watchers_cut), (1, 1));
    // What reached the slow caller before the cut, then the cut.
    let ended = settle("the slow watcher's end", async {
        loop {
            match slow.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await;
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    hop.chain.close(ctx(), last).await.unwrap();
    assert_eq!(
        kind(&next_event(&mut keeping_up).await),
        ConnectionEventType::Delete
    );
    hop.stop().await;
}

#[tokio::test]
async fn watchers_end_when_their_caller_leaves_and_at_shutdown() {
    let hop = Hop::new(None).await;
    let leaving = hop.watch(everything()).await;
    let mut staying = hop.watch(everything()).await;
    next_event(&mut staying).await;
    settle("two watchers", hop.monitor.wait_for(|s| s.watchers == 2)).await;
    drop(leaving);
    settle(
        "the caller that left to be forgotten",
        hop.monitor.wait_for(|s| s.watchers == 1),
    )
    .await;
    hop.stop.cancel();
    let end = settle("the stream to end at shutdown", staying.message()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    settle("no watchers", hop.monitor.wait_for(|s| s.watchers == 0)).await;
    settle("the server to stop", hop.served.stopped()).await;
}

/// A caller with its own SPIFFE identity: a NetworkService client and a
/// monitor client over one mTLS channel.
struct Workload {
    caller: NetworkServiceClient<ClientConn>,
    watcher: MonitorConnectionClient<ClientConn>,
    _api: WorkloadApi,
}

impl Workload {
    async fn start(domain: &Arc<Authority>, path: &str, hop: &Url) -> Self {
        let api = WorkloadApi::start(Arc::clone(domain), path, Duration::from_secs(300)).await;
        let identity = SpiffeIdentity::from_endpoint(api.endpoint()).await.unwrap();
        let tls = identity.client_tls(Authorize::SameTrustDomain).unwrap();
        let conn = dial(hop, &patient().tls(tls)).await.unwrap();
        Self {
            caller: NetworkServiceClient::new(conn.clone()),
            watcher: MonitorConnectionClient::new(conn),
            _api: api,
        }
    }

    async fn request(&self, conn: Connection) -> Connection {
        let mut caller = self.caller.clone();
        caller
            .request(request_for(conn))
            .await
            .unwrap()
            .into_inner()
    }

    async fn watch(&self) -> Streaming<ConnectionEvent> {
        let mut watcher = self.watcher.clone();
        let events = watcher.monitor_connections(everything()).await;
        events.unwrap().into_inner()
    }
}

#[tokio::test]
async fn with_spiffe_identities_a_caller_sees_only_the_connections_it_requested() {
    let domain = Arc::new(Authority::new("example.org"));
    let api = WorkloadApi::start(Arc::clone(&domain), "/hop", Duration::from_secs(300)).await;
    let identity = SpiffeIdentity::from_endpoint(api.endpoint()).await.unwrap();
    let monitor = ConnectionMonitor::new();
    let endpoint = Endpoint::start().await;
    let chain = ServerChain::builder()
        .with(UpdatePath::new("hop"))
        .with(monitor.server())
        .with(ClientUrl::new(endpoint.served.url().clone()))
        .with(grpc_only().build())
        .build();
    let hop = Serve::new(chain)
        .add_service(monitor.service())
        .tls(identity.server_tls(Authorize::SameTrustDomain).unwrap())
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let alice = Workload::start(&domain, "/alice", hop.url()).await;
    let bob = Workload::start(&domain, "/bob", hop.url()).await;
    let from_alice = alice.request(from_caller("alice", "a-1", LONG)).await;
    let from_bob = bob.request(from_caller("bob", "b-1", LONG)).await;

    let mut alices = alice.watch().await;
    assert_eq!(
        only(&next_event(&mut alices).await).id,
        id_at(&from_alice, 1)
    );
    let mut bobs = bob.watch().await;
    assert_eq!(only(&next_event(&mut bobs).await).id, id_at(&from_bob, 1));

    // Bob's refresh reaches Bob's watcher only: Alice's next event is her
    // own refresh.
    bob.request(refreshed(from_bob.clone(), Duration::from_secs(600)))
        .await;
    assert_eq!(only(&next_event(&mut bobs).await).id, id_at(&from_bob, 1));
    alice
        .request(refreshed(from_alice.clone(), Duration::from_secs(600)))
        .await;
    assert_eq!(
        only(&next_event(&mut alices).await).id,
        id_at(&from_alice, 1)
    );
    assert_eq!(monitor.stats().connections, 2);
}

#[tokio::test]
async fn a_remote_that_refuses_the_watch_is_asked_once_and_nothing_is_down() {
    let refusing = Breaking {
        refusing: Some(Code::PermissionDenied),
        ..Breaking::default()
    };
    let remote = Serve::new(ServerChain::builder().with(UpdatePath::new("nse")).build())
        .add_service(MonitorConnectionServer::new(refusing.clone()))
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let hop = Hop::new(Some(remote.url())).await;
    let conn = hop.request(from_caller("nsc", "c-1", LONG)).await;
    let stats = settle(
        "the relay to give up watching",
        hop.monitor.wait_for(|s| s.unmonitored == 1),
    )
    .await;
    assert_eq!((stats.relayed_streams, stats.relayed_states), (0, 0));
    assert_eq!(refusing.opens.load(Ordering::SeqCst), 1, "asked once");
    // A second connection through the same client asks nothing more.
    let other = hop.request(from_caller("nsc", "c-2", LONG)).await;
    assert_eq!(refusing.opens.load(Ordering::SeqCst), 1);
    let held = hop.monitor.connection(&id_at(&conn, 1)).unwrap();
    assert_eq!(held.state, State::Up as i32);
    hop.close(conn).await;
    hop.close(other).await;
    hop.stop().await;
}
