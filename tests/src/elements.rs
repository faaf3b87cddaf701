//! Chain elements the tests put in server and client chains to observe and
//! disturb calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_runtime::proto::connection::{Connection, Mechanism};
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::{Context, Element, Hooks, Next};
use tokio::sync::Notify;
use tonic::{Code, Status};

/// Appends `<name>:request`, `<name>:reply`, `<name>:close` and
/// `<name>:closed` to a shared log, to check the order elements run in.
#[derive(Clone, Element)]
pub struct Record {
    pub name: &'static str,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Record {
    pub fn new(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Self {
        Self {
            name,
            log: Arc::clone(log),
        }
    }

    fn push(&self, event: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{event}", self.name));
    }
}

impl Hooks for Record {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        self.push("request");
        let reply = next.request(ctx, request).await;
        self.push("reply");
        reply
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        self.push("close");
        let result = next.close(ctx, connection).await;
        self.push("closed");
        result
    }
}

/// Sets `extra_context[key] = value` and, if given, the mechanism on every
/// request it passes on (Go's test `editServer`).
#[derive(Clone, Element)]
pub struct Edit {
    pub key: &'static str,
    pub value: &'static str,
    pub mechanism: Option<Mechanism>,
}

impl Hooks for Edit {
    async fn request(
        &self,
        ctx: Context,
        mut request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let conn = request.connection.get_or_insert_with(Default::default);
        conn.context
            .get_or_insert_with(Default::default)
            .extra_context
            .insert(self.key.to_owned(), self.value.to_owned());
        if let Some(mechanism) = &self.mechanism {
            conn.mechanism = Some(Box::new(mechanism.clone()));
        }
        next.request(ctx, request).await
    }
}

/// What a [`Capture`] saw of the last call's context.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub request: Option<NetworkServiceRequest>,
    pub remaining: Option<Duration>,
    pub authorization: Option<String>,
    pub client_url: Option<String>,
    /// The connection the last close carried.
    pub closed: Option<Connection>,
}

/// Keeps a copy of the last request and what its context carried; a close
/// forgets the request (Go's test `captureServer`).
#[derive(Clone, Default, Element)]
pub struct Capture {
    seen: Arc<Mutex<Seen>>,
}

impl Capture {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    pub fn request(&self) -> Option<NetworkServiceRequest> {
        self.seen().request
    }
}

impl Hooks for Capture {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let closed = self.seen.lock().unwrap().closed.take();
        *self.seen.lock().unwrap() = Seen {
            closed,
            request: Some(request.clone()),
            remaining: ctx.remaining(),
            authorization: ctx
                .incoming_metadata()
                .and_then(|m| m.get("authorization"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            client_url: ctx.client_url().map(|u| u.to_string()),
        };
        next.request(ctx, request).await
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        {
            let mut seen = self.seen.lock().unwrap();
            seen.request = None;
            seen.closed = Some(connection.clone());
        }
        next.close(ctx, connection).await
    }
}

/// Counts requests and closes that pass through it.
#[derive(Clone, Default, Element)]
pub struct Count {
    requests: Arc<AtomicUsize>,
    closes: Arc<AtomicUsize>,
}

impl Count {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn closes(&self) -> usize {
        self.closes.load(Ordering::SeqCst)
    }
}

impl Hooks for Count {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        next.request(ctx, request).await
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        self.closes.fetch_add(1, Ordering::SeqCst);
        next.close(ctx, connection).await
    }
}

/// Fails requests and/or closes with a given code, without calling `next`.
#[derive(Clone, Element)]
pub struct InjectError {
    pub on_request: Option<Code>,
    pub on_close: Option<Code>,
}

impl InjectError {
    /// Fails both requests and closes with `code`.
    pub fn always(code: Code) -> Self {
        Self {
            on_request: Some(code),
            on_close: Some(code),
        }
    }
}

impl Hooks for InjectError {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        match self.on_request {
            Some(code) => Err(Status::new(code, "injected request error")),
            None => next.request(ctx, request).await,
        }
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        match self.on_close {
            Some(code) => Err(Status::new(code, "injected close error")),
            None => next.close(ctx, connection).await,
        }
    }
}

/// Holds every request until released, reporting when one arrives and when
/// a parked call is given up: its cancellation token fires or its future is
/// dropped (a caller's deadline, a dropped caller).
#[derive(Clone, Default, Element)]
pub struct Park {
    inner: Arc<ParkInner>,
}

#[derive(Default)]
struct ParkInner {
    arrived: Notify,
    release: Notify,
    /// Parked calls given up before they were released.
    abandoned: DropWatch,
}

impl Park {
    pub fn new() -> Self {
        Self::default()
    }

    /// Completes once a request is parked here.
    pub async fn arrived(&self) {
        self.inner.arrived.notified().await;
    }

    /// Lets one parked request continue.
    pub fn release_one(&self) {
        self.inner.release.notify_one();
    }

    /// Completes once a parked call has been given up.
    pub async fn abandoned(&self) {
        self.inner.abandoned.until_dropped(1).await;
    }

    /// How many parked calls were given up.
    pub fn abandoned_calls(&self) -> usize {
        self.inner.abandoned.dropped()
    }

    /// Holds the caller until released (`Ok`) or until the call's
    /// cancellation token fires (`Cancelled`), counting it abandoned if it is
    /// dropped or cancelled first.
    pub async fn hold(&self, ctx: &Context) -> Result<(), Status> {
        let mut parked = self.inner.abandoned.watch();
        self.inner.arrived.notify_one();
        tokio::select! {
            () = self.inner.release.notified() => {
                parked.finished = true;
                Ok(())
            }
            () = cancelled(ctx) => Err(Status::cancelled("parked call cancelled")),
        }
    }
}

impl Hooks for Park {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        self.hold(&ctx).await?;
        next.request(ctx, request).await
    }
}

/// A remote's ledger of connections: which ids it holds open (requested and
/// not closed), and whether two calls for one id ever overlapped.
#[derive(Clone, Default, Element)]
#[element(server)]
pub struct Ledger {
    inner: Arc<Mutex<LedgerState>>,
    changed: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct LedgerState {
    open: std::collections::BTreeSet<String>,
    in_call: std::collections::HashMap<String, usize>,
    overlaps: usize,
    closes: usize,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ids requested and not closed since.
    pub fn open(&self) -> Vec<String> {
        self.inner.lock().unwrap().open.iter().cloned().collect()
    }

    /// Times a call arrived for an id while another call for it was running.
    pub fn overlaps(&self) -> usize {
        self.inner.lock().unwrap().overlaps
    }

    /// Closes that have arrived (for any id, known or not).
    pub fn closes(&self) -> usize {
        self.inner.lock().unwrap().closes
    }

    /// Waits until `condition` holds of the ledger, re-checking it on every
    /// request that opens an id and every close.
    pub async fn until(&self, condition: impl Fn(&Ledger) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if condition(self) {
                return;
            }
            changed.await;
        }
    }

    /// Marks a call for `id` running until the returned guard drops (even
    /// if the call's future is dropped half-way).
    fn enter(&self, id: &str) -> InCall<'_> {
        let mut state = self.inner.lock().unwrap();
        let calls = state.in_call.entry(id.to_owned()).or_default();
        *calls += 1;
        if *calls > 1 {
            state.overlaps += 1;
        }
        InCall {
            ledger: self,
            id: id.to_owned(),
        }
    }

    fn set_open(&self, id: &str, open: bool) {
        let mut state = self.inner.lock().unwrap();
        if open {
            state.open.insert(id.to_owned());
        } else {
            state.open.remove(id);
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

struct InCall<'a> {
    ledger: &'a Ledger,
    id: String,
}

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        let mut state = self.ledger.inner.lock().unwrap();
        if let Some(calls) = state.in_call.get_mut(&self.id) {
            *calls -= 1;
            if *calls == 0 {
                state.in_call.remove(&self.id);
            }
        }
    }
}

impl Hooks for Ledger {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let id = request
            .connection
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        let _call = self.enter(&id);
        // Yield so that an overlapping call, if connect let one through,
        // would be running at the same time.
        tokio::task::yield_now().await;
        let reply = next.request(ctx, request).await;
        if reply.is_ok() {
            self.set_open(&id, true);
        }
        reply
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        let id = connection.id.clone();
        self.inner.lock().unwrap().closes += 1;
        self.changed.notify_waiters();
        let _call = self.enter(&id);
        tokio::task::yield_now().await;
        let result = next.close(ctx, connection).await;
        // A close the rest of the remote refused leaves the connection open.
        if result.is_ok() {
            self.set_open(&id, false);
        }
        result
    }
}

/// Which call a [`Gate`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Request,
    Close,
}

/// Holds the next call of one kind once armed, until it is dropped or
/// released: the await point a cancellation test cuts a call off at.
#[derive(Clone, Default, Element)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Default)]
struct GateInner {
    armed: Mutex<Option<Op>>,
    held: Park,
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds the next call of kind `op`.
    pub fn arm(&self, op: Op) {
        *self.inner.armed.lock().unwrap() = Some(op);
    }

    /// Completes once a call is held.
    pub async fn holding(&self) {
        self.inner.held.arrived().await;
    }

    /// Lets the held call go on.
    pub fn release(&self) {
        self.inner.held.release_one();
    }

    /// How many held calls were given up (cut off) instead of released.
    pub fn abandoned(&self) -> usize {
        self.inner.held.abandoned_calls()
    }

    /// Completes once a held call has been given up.
    pub async fn cut_off(&self) {
        self.inner.held.abandoned().await;
    }

    fn take(&self, op: Op) -> bool {
        let mut armed = self.inner.armed.lock().unwrap();
        if *armed == Some(op) {
            *armed = None;
            true
        } else {
            false
        }
    }

    async fn hold(&self, ctx: &Context) -> Result<(), Status> {
        self.inner.held.hold(ctx).await
    }
}

impl Hooks for Gate {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        if self.take(Op::Request) {
            self.hold(&ctx).await?;
        }
        next.request(ctx, request).await
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        if self.take(Op::Close) {
            self.hold(&ctx).await?;
        }
        next.close(ctx, connection).await
    }
}

/// Fails each request only after the call's deadline has passed, as a slow
/// downstream element would: what the cleanup after it then has to cope with.
#[derive(Clone, Default, Element)]
#[element(server)]
pub struct FailAfterDeadline;

impl Hooks for FailAfterDeadline {
    async fn request(
        &self,
        ctx: Context,
        _request: NetworkServiceRequest,
        _next: Next<'_>,
    ) -> Result<Connection, Status> {
        let deadline = ctx.deadline().expect("the test gives the call a deadline");
        tokio::time::sleep_until(deadline).await;
        Err(Status::deadline_exceeded("too slow"))
    }
}

/// Completes when the call's cancellation token fires; never, if it has none.
async fn cancelled(ctx: &Context) {
    match ctx.cancellation_token() {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Fails requests and/or closes while switched on, as a remote in trouble
/// would; switchable at any time from the test.
#[derive(Clone, Default, Element)]
#[element(server)]
pub struct Faults {
    inner: Arc<FaultSwitches>,
}

#[derive(Default)]
struct FaultSwitches {
    request: std::sync::atomic::AtomicBool,
    close: std::sync::atomic::AtomicBool,
}

impl Faults {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets whether requests and closes fail from now on.
    pub fn set(&self, request: bool, close: bool) {
        self.inner.request.store(request, Ordering::SeqCst);
        self.inner.close.store(close, Ordering::SeqCst);
    }
}

impl Hooks for Faults {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        if self.inner.request.load(Ordering::SeqCst) {
            return Err(Status::unavailable("injected request fault"));
        }
        next.request(ctx, request).await
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        if self.inner.close.load(Ordering::SeqCst) {
            return Err(Status::unavailable("injected close fault"));
        }
        next.close(ctx, connection).await
    }
}

/// Counts calls whose future was dropped before they finished: what a
/// server does to a handler whose caller went away.
#[derive(Clone, Default, Element)]
pub struct DropWatch {
    inner: Arc<DropWatchInner>,
}

#[derive(Default)]
struct DropWatchInner {
    dropped: AtomicUsize,
    changed: Notify,
}

/// Counts the call dropped unless it finishes.
struct Watched<'a> {
    inner: &'a DropWatchInner,
    finished: bool,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.inner.dropped.fetch_add(1, Ordering::SeqCst);
            self.inner.changed.notify_waiters();
        }
    }
}

impl DropWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls dropped before they finished.
    pub fn dropped(&self) -> usize {
        self.inner.dropped.load(Ordering::SeqCst)
    }

    /// Completes once at least `count` calls have been dropped.
    pub async fn until_dropped(&self, count: usize) {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.dropped() >= count {
                return;
            }
            changed.await;
        }
    }

    fn watch(&self) -> Watched<'_> {
        Watched {
            inner: &self.inner,
            finished: false,
        }
    }
}

impl Hooks for DropWatch {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let mut watched = self.watch();
        let result = next.request(ctx, request).await;
        watched.finished = true;
        result
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        let mut watched = self.watch();
        let result = next.close(ctx, connection).await;
        watched.finished = true;
        result
    }
}

/// Panics on the next call of one kind once armed: a bug in some element.
#[derive(Clone, Default, Element)]
pub struct Panic {
    armed: Arc<Mutex<Option<Op>>>,
}

impl Panic {
    pub fn new() -> Self {
        Self::default()
    }

    /// Panics on the next call of kind `op`.
    pub fn arm(&self, op: Op) {
        *self.armed.lock().unwrap() = Some(op);
    }

    fn fire(&self, op: Op) {
        let mut armed = self.armed.lock().unwrap();
        if *armed == Some(op) {
            *armed = None;
            drop(armed);
            panic!("an element panicked on {op:?}");
        }
    }
}

impl Hooks for Panic {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        self.fire(Op::Request);
        next.request(ctx, request).await
    }

    async fn close(
        &self,
        ctx: Context,
        connection: Connection,
        next: Next<'_>,
    ) -> Result<(), Status> {
        self.fire(Op::Close);
        next.close(ctx, connection).await
    }
}

/// Sets the path of every request it passes on to one segment named
/// `name`: what a remote adds to the connections it returns.
#[derive(Clone, Element)]
#[element(server)]
pub struct SetPath(pub &'static str);

impl Hooks for SetPath {
    async fn request(
        &self,
        ctx: Context,
        mut request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let conn = request.connection.get_or_insert_with(Default::default);
        conn.path = Some(Box::new(connect_runtime::proto::connection::Path {
            index: 0,
            path_segments: vec![connect_runtime::proto::connection::PathSegment {
                name: self.0.to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        }));
        next.request(ctx, request).await
    }
}

/// The metadata key [`RouteByMetadata`] reads the client URL from.
pub const CONNECT_TO: &str = "x-connect-to";

/// Sets the client URL from the call's `x-connect-to` metadata: one served
/// connect in front of several remotes, the caller choosing per call.
#[derive(Clone, Default, Element)]
#[element(server)]
pub struct RouteByMetadata;

impl Hooks for RouteByMetadata {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let url = ctx
            .incoming_metadata()
            .and_then(|m| m.get(CONNECT_TO))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| url::Url::parse(v).ok());
        let ctx = match url {
            Some(url) => ctx.with_client_url(url),
            None => ctx,
        };
        next.request(ctx, request).await
    }
}

/// A remote's chain: a [`Ledger`] of what it holds, then a [`Gate`] that can
/// hold its calls.
pub fn ledger_chain(ledger: &Ledger, gate: &Gate) -> connect_runtime::ServerChain {
    connect_runtime::ServerChain::builder()
        .with(ledger.clone())
        .with(gate.clone())
        .build()
}
