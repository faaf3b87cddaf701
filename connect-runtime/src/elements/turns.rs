//! Per-connection ordering: calls for one connection id take turns, in
//! arrival order; calls for different ids never wait for each other.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::changes::Changes;
use crate::map::{DEFAULT_SHARDS, Shards};

/// A connection id's calls, while some call holds or awaits its turn.
struct Calls {
    /// Calls holding or awaiting the turn; the entry goes with the last.
    count: usize,
    /// Where calls after the first wait, made by the first call that has
    /// to: an id with one call at a time allocates nothing. Fair, so turns
    /// are taken in the order callers arrived.
    queue: Option<Arc<Semaphore>>,
}

#[derive(Clone)]
pub(crate) struct Turns {
    /// Counted under the shard's lock, so an entry lives exactly while
    /// some call for its id holds or awaits a turn, whatever observers do
    /// meanwhile.
    calls: Arc<Shards<Arc<str>, Calls>>,
    /// Woken whenever a call starts waiting for a turn or a turn ends.
    changed: Arc<Changes>,
}

impl Default for Turns {
    fn default() -> Self {
        Self {
            calls: Arc::new(Shards::new(DEFAULT_SHARDS)),
            changed: Arc::default(),
        }
    }
}

/// The right to act on one connection id; the next caller for that id goes
/// when this is dropped. Owned, so it can move into background cleanup.
pub(crate) struct Turn {
    calls: Arc<Shards<Arc<str>, Calls>>,
    changed: Arc<Changes>,
    id: Arc<str>,
    /// Whether this call has its turn (rather than still waiting for it).
    holds: bool,
    /// The turn, when another call handed it over through the queue.
    permit: Option<OwnedSemaphorePermit>,
}

impl Turns {
    /// Waits for `id`'s turn, in the order callers arrived. Dropping the
    /// future while it waits leaves nothing behind.
    pub(crate) async fn take(&self, id: &Arc<str>) -> Turn {
        let (mut turn, queue) = self.arrive(id, true).expect("a caller that waits arrives");
        if let Some(queue) = queue {
            let permit = queue.acquire_owned().await;
            turn.permit = Some(permit.expect("a turn queue is never closed"));
            turn.holds = true;
        }
        turn
    }

    /// `id`'s turn, if no call holds or awaits it; `None`, counting
    /// nothing, if one does.
    pub(crate) fn try_take(&self, id: &Arc<str>) -> Option<Turn> {
        self.arrive(id, false).map(|(turn, _)| turn)
    }

    /// Counts a caller for `id`: its turn, held if nobody else's is, else
    /// (when it will `wait`) still to come through the queue returned with
    /// it. `None`, counting nothing, for a caller that will not wait. The
    /// turn is made at once, so that its drop uncounts a caller that gives
    /// up while queued.
    fn arrive(&self, id: &Arc<str>, wait: bool) -> Option<(Turn, Option<Arc<Semaphore>>)> {
        let queue = {
            let mut shard = self.calls.lock(&**id);
            match shard.get_mut(&**id) {
                Some(_) if !wait => return None,
                Some(calls) => {
                    calls.count += 1;
                    let queue = calls
                        .queue
                        .get_or_insert_with(|| Arc::new(Semaphore::new(0)));
                    Some(Arc::clone(queue))
                }
                None => {
                    shard.insert(
                        Arc::clone(id),
                        Calls {
                            count: 1,
                            queue: None,
                        },
                    );
                    None
                }
            }
        };
        self.changed.notify();
        let turn = Turn {
            calls: Arc::clone(&self.calls),
            changed: Arc::clone(&self.changed),
            id: Arc::clone(id),
            holds: queue.is_none(),
            permit: None,
        };
        Some((turn, queue))
    }

    /// Ids with a call holding or awaiting its turn.
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    /// Calls queued behind another call for the same id.
    pub(crate) fn waiting(&self) -> usize {
        let mut waiting = 0;
        self.calls.range(
            |_, calls| calls.count,
            |count| {
                waiting += count.saturating_sub(1);
                true
            },
        );
        waiting
    }

    /// The signal that a call started waiting for a turn or a turn ended.
    pub(crate) fn changed(&self) -> &Changes {
        &self.changed
    }
}

impl Turn {
    /// The connection id this turn is for.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        {
            let mut shard = self.calls.lock(&*self.id);
            // An id's entry lives while a call for it is counted; a drop
            // never panics over it.
            let Some(calls) = shard.get_mut(&*self.id) else {
                debug_assert!(false, "a counted call's entry is gone");
                return;
            };
            calls.count -= 1;
            if calls.count == 0 {
                shard.remove(&*self.id);
            } else if self.holds {
                // The next in the queue goes: a permit handed back, or, from
                // the call that never queued, one added (a second call for
                // the id made the queue).
                match (self.permit.take(), &calls.queue) {
                    (Some(permit), _) => drop(permit),
                    (None, Some(queue)) => queue.add_permits(1),
                    (None, None) => debug_assert!(false, "a waiting call made no queue"),
                }
            }
        }
        self.changed.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until `n` calls are waiting for their turn.
    async fn until_waiting(turns: &Turns, n: usize) {
        let watching = turns.changed().watch();
        loop {
            let changed = watching.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if turns.waiting() >= n {
                return;
            }
            changed.await;
        }
    }

    #[tokio::test]
    async fn turns_for_one_id_are_taken_in_arrival_order() {
        let turns = Turns::default();
        let a: Arc<str> = Arc::from("a");
        let first = turns.take(&a).await;
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for n in 0..5 {
            let (queued, order, a) = (turns.clone(), Arc::clone(&order), Arc::clone(&a));
            waiters.push(tokio::spawn(async move {
                let _turn = queued.take(&a).await;
                order.lock().unwrap().push(n);
            }));
            // Each waiter is queued before the next one starts.
            until_waiting(&turns, n + 1).await;
        }
        let other = turns.take(&Arc::from("b")).await; // a different id does not wait
        drop(other);
        drop(first);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(turns.len(), 0);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_while_queued_leaves_nothing() {
        let turns = Turns::default();
        let x: Arc<str> = Arc::from("x");
        let held = turns.take(&x).await;
        let queued = turns.take(&x);
        let timed_out = tokio::time::timeout(std::time::Duration::ZERO, queued).await;
        assert!(timed_out.is_err());
        assert_eq!(turns.len(), 1);
        drop(held);
        assert_eq!(turns.len(), 0);
    }

    /// Polls `future` once, without a task to wake.
    fn poll_once<F: std::future::Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::Pin::new(future).poll(&mut cx)
    }

    /// Ids whose calls had to queue.
    fn queues(turns: &Turns) -> usize {
        let mut queues = 0;
        turns.calls.range(
            |_, calls| calls.queue.is_some(),
            |queued| {
                queues += usize::from(queued);
                true
            },
        );
        queues
    }

    #[tokio::test]
    async fn a_turn_nobody_waits_for_makes_no_queue() {
        let turns = Turns::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let (first, other) = (turns.take(&a).await, turns.take(&b).await);
        assert_eq!((turns.len(), queues(&turns)), (2, 0));
        let mut second = Box::pin(turns.take(&a));
        assert!(poll_once(&mut second).is_pending());
        assert_eq!(queues(&turns), 1, "the second call for a queues");
        drop((first, other));
        let second = second.await;
        drop(second);
        assert_eq!((turns.len(), queues(&turns)), (0, 0));
    }

    /// A turn taken at once is refused while another call holds or awaits
    /// the id's turn, counts nothing when refused, and orders later calls
    /// as a waited-for turn does.
    #[tokio::test]
    async fn a_turn_is_taken_at_once_only_when_no_call_holds_or_awaits_it() {
        let turns = Turns::default();
        let a: Arc<str> = Arc::from("a");
        let first = turns.try_take(&a).expect("nobody holds a");
        assert!(turns.try_take(&a).is_none(), "first holds a");
        assert_eq!((turns.len(), turns.waiting()), (1, 0));
        let mut queued = Box::pin(turns.take(&a));
        assert!(poll_once(&mut queued).is_pending());
        drop(first);
        assert!(
            turns.try_take(&a).is_none(),
            "the queued call is owed a's turn"
        );
        let second = queued.await;
        drop(second);
        assert_eq!(turns.len(), 0);
        let again = turns.try_take(&a).expect("a is free once more");
        drop(again);
        assert_eq!(turns.len(), 0);
    }

    /// A caller handed the turn who gives up before it runs passes the turn
    /// on to the one behind it; one who gives up before that passes nothing.
    #[tokio::test]
    async fn a_turn_handed_to_a_caller_that_gave_up_goes_to_the_next() {
        let turns = Turns::default();
        let x: Arc<str> = Arc::from("x");
        let held = turns.take(&x).await;
        let mut gives_up = Box::pin(turns.take(&x));
        let mut next = Box::pin(turns.take(&x));
        let mut after = Box::pin(turns.take(&x));
        assert!(poll_once(&mut gives_up).is_pending());
        assert!(poll_once(&mut next).is_pending());
        assert!(poll_once(&mut after).is_pending());
        drop(gives_up); // queued, never handed the turn: passes nothing on
        assert!(
            poll_once(&mut next).is_pending(),
            "next went beside the holder"
        );
        assert_eq!(turns.waiting(), 2);
        drop(held); // the turn is next's now, though it has not run
        drop(next);
        let after = match poll_once(&mut after) {
            std::task::Poll::Ready(turn) => turn,
            std::task::Poll::Pending => panic!("the turn did not reach the last caller"),
        };
        assert_eq!((turns.len(), turns.waiting()), (1, 0));
        drop(after);
        assert_eq!(turns.len(), 0);
    }

    /// An observer reading the turns while they end must not keep any
    /// entry alive: the count does not depend on who else looks at a lock.
    #[test]
    fn observers_reading_turns_as_they_end_leave_no_entry() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async {
            let turns = Turns::default();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (looking, looks) = std::sync::mpsc::channel();
            let observer = {
                let (turns, stop) = (turns.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let _ = looking.send(());
                    // The most turns it saw in use at once.
                    let mut busiest = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        busiest = busiest.max(turns.waiting() + turns.len());
                    }
                    busiest
                })
            };
            // Looking before the calls start, and until they have ended.
            looks.recv().unwrap();
            let mut calls = Vec::new();
            for n in 0..20_000 {
                let turns = turns.clone();
                calls.push(tokio::spawn(async move {
                    let id: Arc<str> = Arc::from(format!("id-{}", n % 512));
                    let turn = turns.take(&id).await;
                    tokio::task::yield_now().await;
                    drop(turn);
                }));
            }
            for call in calls {
                call.await.unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let busiest = observer.join().unwrap();
            assert!(busiest > 0, "the observer saw turns in use");
            assert_eq!(turns.len(), 0, "turn entries outlived their calls");
            assert_eq!(turns.waiting(), 0);
        });
    }
}
