//! Expiry: NSM's `timeout` server element, the mesh's garbage collector.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, SystemTime};

use futures_util::future::poll_fn;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::time::{DelayQueue, delay_queue};
use tonic::{Code, Status};

use crate::chain::{BoxFuture, Context, Element, Joins, Next, Server, ServerChain};
use crate::elements::DEFAULT_CLEANUP_TIMEOUT;
use crate::elements::changes::{self, Changes};
use crate::elements::last_known::LastKnown;
use crate::elements::turns::{Turn, Turns};
use crate::elements::updatepath::{DEFAULT_MAX_TOKEN_LIFETIME, caller_expiry};
use crate::map::PerConnection;
use crate::proto::connection::Connection;
use crate::proto::networkservice::NetworkServiceRequest;
use crate::sync::lock;

/// The longest a timer is set for, whatever expiry a caller claims: within
/// what the timer wheel holds (about two years).
const LONGEST_TIMER: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Expiry closes running at once, at most: a burst of connections that
/// expire together is closed at this pace, not all at once.
const CLOSING_AT_ONCE: usize = 256;

/// Closes connections their callers stopped refreshing, as NSM's `timeout`
/// server element does: when the caller's path segment `expires` (the
/// segment before this hop's, so [`UpdatePath`](super::UpdatePath) runs
/// before it) passes with no refresh, the connection is closed through the
/// chain `Expire` wraps, as last returned by it. A caller that died, was
/// evicted or lost its network so leaves nothing behind: connect releases
/// its client and the remote gets the Close.
///
/// - The close starts early by the request's timeout, so that it finishes
///   before the expiry; it may take that long (or
///   [`DEFAULT_CLEANUP_TIMEOUT`] for a request with no deadline).
/// - A refresh moves the expiry; a Close cancels it, unless it ran out of
///   time or was cancelled (the expiry then closes again).
/// - A request whose caller set no expiry gets [`max_lifetime`](Self::max_lifetime)
///   (NSM refuses such requests; simple callers work here).
/// - Calls for one connection id take turns, in arrival order, with each
///   other and with the expiry's close: an expiry never overlaps a refresh
///   or a Close, and never closes a connection twice.
/// - One task and one timer wheel serve every connection; the task starts
///   with the first request and ends when the element is dropped. A call
///   sets or clears its connection's expiry in the wheel itself, waking the
///   task only when the next expiry comes sooner. At most
///   256 expiry closes run at once: a burst that expires together is
///   closed at that pace.
///
/// ```
/// use std::time::Duration;
/// use connect_runtime::prelude::*;
/// use connect_runtime::{Expire, UpdatePath};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rest = ServerChain::builder().with(Passthrough).build();
/// let expire = Expire::new(rest).max_lifetime(Duration::from_secs(60));
/// let chain = ServerChain::builder()
///     .with(UpdatePath::new("passthrough-1"))
///     .with(expire.clone())
///     .build();
/// let request = NetworkServiceRequest {
///     connection: Some(Box::new(Connection { id: "c-1".into(), ..Default::default() })),
///     ..Default::default()
/// };
/// let conn = chain.request(Context::new(), request).await.unwrap();
/// assert_eq!(expire.stats().connections, 1);
/// chain.close(Context::new(), conn).await.unwrap();
/// assert_eq!(expire.stats().connections, 0);
/// # }
/// ```
#[derive(Clone)]
pub struct Expire {
    shared: Arc<Shared>,
}

/// What an [`Expire`] holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpireStats {
    /// Connections with an expiry set.
    pub connections: usize,
    /// Connections it has closed because they expired.
    pub expired: u64,
    /// Expiries that found the connection refreshed or closed first, and
    /// left it alone.
    pub superseded: u64,
    /// Calls waiting for another call for the same connection to end,
    /// expiry closes included.
    pub waiting: usize,
}

struct Shared {
    rest: ServerChain,
    max_lifetime: Duration,
    turns: Turns,
    /// Boxed: a table's empty slots cost a pointer, not a connection.
    live: PerConnection<Box<Live>>,
    timer: OnceLock<Timer>,
    generations: AtomicU64,
    expired: AtomicU64,
    superseded: AtomicU64,
    /// Woken when a connection's expiry is set, cleared or met.
    changed: Changes,
}

/// A connection with an expiry set: what its expiry closes.
struct Live {
    /// Which request set it; an expiry armed by an earlier one is stale.
    generation: u64,
    conn: LastKnown,
    close_timeout: Duration,
}

/// The expiries set, and the task that meets them.
struct Timer {
    wheel: Arc<Mutex<Wheel>>,
    /// The task's runtime, whose timer the wheel sleeps on.
    runtime: Handle,
    /// Ends the task when the element goes.
    _stop: DropGuard,
}

/// A timer wheel of (id, generation), each id armed at most once.
struct Wheel {
    queue: DelayQueue<(Arc<str>, u64)>,
    keys: HashMap<Arc<str>, delay_queue::Key>,
    /// The task waiting on the queue, to wake when the queue is replaced.
    task: Option<Waker>,
}

impl Expire {
    /// Expiry for the connections that pass through `rest`, which it runs
    /// (and then whatever follows it in the enclosing chain); expiry closes
    /// go through `rest` alone.
    pub fn new(rest: ServerChain) -> Self {
        Self {
            shared: Arc::new(Shared {
                rest,
                max_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
                turns: Turns::default(),
                live: PerConnection::new(),
                timer: OnceLock::new(),
                generations: AtomicU64::new(0),
                expired: AtomicU64::new(0),
                superseded: AtomicU64::new(0),
                changed: Changes::default(),
            }),
        }
    }

    /// How long a connection lives unrefreshed if its caller set no expiry
    /// ([`DEFAULT_MAX_TOKEN_LIFETIME`] unless set). Call it before the
    /// element is shared.
    ///
    /// # Panics
    ///
    /// If the element has been cloned already.
    pub fn max_lifetime(mut self, max_lifetime: Duration) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("max_lifetime is set before the element is shared")
            .max_lifetime = max_lifetime;
        self
    }

    /// A snapshot of what it holds.
    pub fn stats(&self) -> ExpireStats {
        ExpireStats {
            connections: self.shared.live.len(),
            expired: self.shared.expired.load(Ordering::Relaxed),
            superseded: self.shared.superseded.load(Ordering::Relaxed),
            waiting: self.shared.turns.waiting(),
        }
    }

    /// Waits until `condition` holds of [`Expire::stats`], re-checking it
    /// whenever an expiry is set, cleared or met, or a call starts waiting
    /// for its turn or ends one (no polling).
    pub async fn wait_for(&self, condition: impl Fn(&ExpireStats) -> bool) -> ExpireStats {
        let mut stats = self.stats();
        let shared = &self.shared;
        changes::until(shared.turns.changed(), &shared.changed, || {
            stats = self.stats();
            condition(&stats)
        })
        .await;
        stats
    }
}

impl Shared {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        let Some(id) = request
            .connection
            .as_deref()
            .filter(|c| !c.id.is_empty())
            .map(|c| Arc::<str>::from(c.id.as_str()))
        else {
            return Element::request(&self.rest, ctx, request, next);
        };
        let lives = self.lifetime(request.connection.as_deref().and_then(caller_expiry));
        let early = ctx.remaining().unwrap_or_default();
        self.in_turn(
            id,
            move || Element::request(&self.rest, ctx, request, next),
            move |id, turn, call| self.requested(id, turn, lives, early, call),
        )
    }

    /// Runs `call` (the rest of the chain) in `id`'s turn, and `then` with
    /// the turn and its future. A turn nobody holds is taken at once and
    /// `call` made there and then, so that the future keeps only what
    /// `then` does, not the call's arguments (the usual case); a call that
    /// has to wait keeps them, in a box of its own.
    fn in_turn<'a, T, F>(
        &'a self,
        id: Arc<str>,
        call: impl FnOnce() -> BoxFuture<'a, Result<T, Status>> + Send + 'a,
        then: impl FnOnce(Arc<str>, Turn, BoxFuture<'a, Result<T, Status>>) -> F + Send + 'a,
    ) -> BoxFuture<'a, Result<T, Status>>
    where
        T: 'a,
        F: Future<Output = Result<T, Status>> + Send + 'a,
    {
        match self.turns.try_take(&id) {
            Some(turn) => Box::pin(then(id, turn, call())),
            None => Box::pin(async move {
                let turn = self.turns.take(&id).await;
                then(id, turn, call()).await
            }),
        }
    }

    /// The rest of a request, in `id`'s turn: arms the expiry of the
    /// connection it returns, `lives` from now less the `early` margin.
    async fn requested(
        &self,
        id: Arc<str>,
        _turn: Turn,
        lives: Duration,
        early: Duration,
        call: BoxFuture<'_, Result<Connection, Status>>,
    ) -> Result<Connection, Status> {
        let conn = call.await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let live = Live {
            generation,
            conn: LastKnown::new(&conn),
            close_timeout: if early.is_zero() {
                DEFAULT_CLEANUP_TIMEOUT
            } else {
                early
            },
        };
        self.live.set(&id, Box::new(live));
        self.changed.notify();
        let at = Instant::now() + lives.saturating_sub(early);
        self.timer().arm(id, generation, at);
        Ok(conn)
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        conn: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        if conn.id.is_empty() {
            return Element::close(&self.rest, ctx, conn, next);
        }
        let id = Arc::<str>::from(conn.id.as_str());
        self.in_turn(
            id,
            move || Element::close(&self.rest, ctx, conn, next),
            |id, turn, call| self.closed(id, turn, call),
        )
    }

    /// The rest of a close, in `id`'s turn: forgets the expiry unless the
    /// close may be tried again.
    async fn closed(
        &self,
        id: Arc<str>,
        _turn: Turn,
        call: BoxFuture<'_, Result<(), Status>>,
    ) -> Result<(), Status> {
        let result = call.await;
        let retry = matches!(&result, Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled));
        if !retry && self.live.take_if(&id, |_| true).is_some() {
            self.changed.notify();
            self.timer().disarm(&id);
        }
        result
    }

    /// Closes `id` if the request that armed this expiry was its last.
    async fn expire(&self, id: Arc<str>, generation: u64) {
        let _turn = self.turns.take(&id).await;
        let live = self.live.take_if(&id, |l| l.generation == generation);
        let Some(live) = live else {
            self.superseded.fetch_add(1, Ordering::Relaxed);
            self.changed.notify();
            return;
        };
        let ctx = Context::new().with_timeout(live.close_timeout);
        match self.rest.close(ctx, live.conn.connection()).await {
            Ok(()) => tracing::info!(connection_id = %id, "closed an expired connection"),
            Err(status) => tracing::warn!(
                connection_id = %id,
                code = ?status.code(),
                error = status.message(),
                "closing an expired connection failed"
            ),
        }
        self.expired.fetch_add(1, Ordering::Relaxed);
        self.changed.notify();
    }

    /// How long a connection lives from now without a refresh.
    fn lifetime(&self, expires: Option<SystemTime>) -> Duration {
        expires
            .map_or(self.max_lifetime, |at| {
                at.duration_since(SystemTime::now()).unwrap_or_default()
            })
            .min(LONGEST_TIMER)
    }

    /// Only `Expire`'s own calls get here, after the first request.
    fn timer(&self) -> &Timer {
        self.timer
            .get()
            .expect("the timer starts with the first request")
    }
}

impl Expire {
    /// Starts the timer task, once.
    fn start_timer(&self) {
        self.shared.timer.get_or_init(|| {
            let wheel = Arc::new(Mutex::new(Wheel {
                queue: DelayQueue::new(),
                keys: HashMap::new(),
                task: None,
            }));
            let stop = CancellationToken::new();
            let task = run_timer(Arc::downgrade(&self.shared), Arc::clone(&wheel));
            tokio::spawn(stop.clone().run_until_cancelled_owned(task));
            Timer {
                wheel,
                runtime: Handle::current(),
                _stop: stop.drop_guard(),
            }
        });
    }
}

impl Timer {
    fn arm(&self, id: Arc<str>, generation: u64, at: Instant) {
        // A new first expiry makes the wheel's sleep, on the task's runtime
        // whichever runtime this call runs on.
        let _runtime = self.runtime.enter();
        let wheel = &mut *lock(&self.wheel);
        wheel.clear(&id);
        let key = wheel.queue.insert_at((Arc::clone(&id), generation), at);
        wheel.keys.insert(id, key);
    }

    fn disarm(&self, id: &str) {
        let wheel = &mut *lock(&self.wheel);
        if wheel.clear(id) {
            wheel.give_back();
        }
    }
}

impl Wheel {
    /// Removes `id`'s expiry; whether it had one.
    fn clear(&mut self, id: &str) -> bool {
        let Some(key) = self.keys.remove(id) else {
            return false;
        };
        self.queue.remove(&key);
        true
    }

    /// The next expiry. The queue wakes the task when an expiry is set
    /// sooner than the one it sleeps for.
    fn poll_expired(&mut self, cx: &mut TaskContext<'_>) -> Poll<(Arc<str>, u64)> {
        if !self.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.task = Some(cx.waker().clone());
        }
        match self.queue.poll_expired(cx) {
            Poll::Ready(Some(expired)) => {
                let (id, generation) = expired.into_inner();
                self.keys.remove(&id);
                self.give_back();
                Poll::Ready((id, generation))
            }
            // Empty: the next expiry set wakes the task.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    /// Returns the room of expiries gone to the allocator once three
    /// quarters of it is empty, so that a burst of connections that all
    /// ended leaves nothing behind (amortised: the room at least halves
    /// each time).
    fn give_back(&mut self) {
        const MIN_ROOM: usize = 64;
        let keys = &mut self.keys;
        if keys.capacity() > MIN_ROOM && keys.len() * 4 < keys.capacity() {
            keys.shrink_to(keys.len() * 2);
        }
        let queue = &mut self.queue;
        if queue.is_empty() && queue.capacity() > MIN_ROOM {
            *queue = DelayQueue::new();
            // The task waits on the queue replaced: it polls the new one.
            if let Some(task) = &self.task {
                task.wake_by_ref();
            }
        } else if queue.capacity() > MIN_ROOM && queue.len() * 4 < queue.capacity() {
            queue.shrink_to_fit();
        }
    }
}

/// The one task behind every connection's expiry, until the element goes.
async fn run_timer(shared: Weak<Shared>, wheel: Arc<Mutex<Wheel>>) {
    let closing = Arc::new(Semaphore::new(CLOSING_AT_ONCE));
    loop {
        // At most CLOSING_AT_ONCE closes at once: the permit is the right
        // to run one.
        let Ok(permit) = Arc::clone(&closing).acquire_owned().await else {
            return;
        };
        let (id, generation) = poll_fn(|cx| lock(&wheel).poll_expired(cx)).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            shared.expire(id, generation).await;
            drop(permit);
        });
    }
}

impl Element for Expire {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Connection, Status>> {
        self.start_timer();
        self.shared.request(ctx, request, next)
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), Status>> {
        self.shared.close(ctx, connection, next)
    }

    fn connection_entries(&self, f: &mut dyn FnMut(&'static str, usize)) {
        f("Expire", self.shared.live.len());
        self.shared.rest.connection_entries(f);
    }
}

impl Joins<Server> for Expire {}

impl std::fmt::Debug for Expire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expire")
            .field("max_lifetime", &self.shared.max_lifetime)
            .field("stats", &self.stats())
            .finish()
    }
}
