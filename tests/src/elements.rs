//! Chain elements the tests put in server and client chains to observe and
//! disturb calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_runtime::proto::connection::{Connection, Mechanism};
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::{Context, Element, Next, hooks};
use tokio::sync::Notify;
use tonic::{Code, Status};

/// Appends `<name>:request`, `<name>:reply`, `<name>:close` and
/// `<name>:closed` to a shared log, to check the order elements run in.
#[derive(Clone, Element)]
#[element(server, client)]
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

#[hooks]
impl Record {
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
#[element(server, client)]
pub struct Edit {
    pub key: &'static str,
    pub value: &'static str,
    pub mechanism: Option<Mechanism>,
}

#[hooks]
impl Edit {
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
            conn.mechanism = Some(mechanism.clone());
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
}

/// Keeps a copy of the last request and what its context carried; a close
/// forgets the request (Go's test `captureServer`).
#[derive(Clone, Default, Element)]
#[element(server, client)]
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

#[hooks]
impl Capture {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        *self.seen.lock().unwrap() = Seen {
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
        self.seen.lock().unwrap().request = None;
        next.close(ctx, connection).await
    }
}

/// Counts requests and closes that pass through it.
#[derive(Clone, Default, Element)]
#[element(server, client)]
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

#[hooks]
impl Count {
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
#[element(server, client)]
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

#[hooks]
impl InjectError {
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
#[element(server, client)]
pub struct Park {
    inner: Arc<ParkInner>,
}

#[derive(Default)]
struct ParkInner {
    arrived: Notify,
    release: Notify,
    abandoned: Notify,
    abandoned_calls: AtomicUsize,
}

/// Counts a parked call as abandoned unless it is released first.
struct ParkedCall<'a> {
    inner: &'a ParkInner,
    released: bool,
}

impl Drop for ParkedCall<'_> {
    fn drop(&mut self) {
        if !self.released {
            self.inner.abandoned_calls.fetch_add(1, Ordering::SeqCst);
            self.inner.abandoned.notify_one();
        }
    }
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
        self.inner.abandoned.notified().await;
    }

    /// How many parked calls were given up.
    pub fn abandoned_calls(&self) -> usize {
        self.inner.abandoned_calls.load(Ordering::SeqCst)
    }
}

#[hooks]
impl Park {
    async fn request(
        &self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'_>,
    ) -> Result<Connection, Status> {
        let mut parked = ParkedCall {
            inner: &self.inner,
            released: false,
        };
        self.inner.arrived.notify_one();
        tokio::select! {
            () = self.inner.release.notified() => {
                parked.released = true;
                next.request(ctx, request).await
            }
            () = ctx.cancellation_token().cancelled() => {
                Err(Status::cancelled("parked call cancelled"))
            }
        }
    }
}
