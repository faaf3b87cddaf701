//! Per-connection ordering: calls for one connection id take turns, in
//! arrival order; calls for different ids never wait for each other.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

use super::changes::Changes;
use connect_macros::ConcurrentMap;

use crate::map::{Instance, RefCountMap};

/// Connection id → the lock its calls queue on, counted once per call that
/// holds or awaits it. The count is kept under the map's shard lock, so an
/// entry lives exactly while some call for its id holds or awaits a turn,
/// whatever observers do meanwhile.
#[derive(ConcurrentMap)]
pub(crate) struct TurnLocks(RefCountMap<Arc<str>, Arc<Mutex<()>>>);

#[derive(Clone, Default)]
pub(crate) struct Turns {
    locks: Arc<TurnLocks>,
    /// Woken whenever a call starts waiting for a turn or a turn ends.
    changed: Arc<Changes>,
}

/// The right to act on one connection id; the next caller for that id goes
/// when this is dropped. Owned, so it can move into background cleanup.
pub(crate) struct Turn {
    locks: Arc<TurnLocks>,
    changed: Arc<Changes>,
    id: Arc<str>,
    instance: Instance,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    /// Waits for `id`'s turn. tokio's mutex is fair, so turns are taken in
    /// the order callers arrived. Dropping the future while it waits leaves
    /// nothing behind.
    pub(crate) async fn take(&self, id: &Arc<str>) -> Turn {
        let acquired = self
            .locks
            .acquire(Arc::clone(id), |_| Arc::new(Mutex::new(())));
        self.changed.notify();
        // Built before waiting, so that its drop releases the count of a
        // caller that gives up while queued.
        let mut turn = Turn {
            locks: Arc::clone(&self.locks),
            changed: Arc::clone(&self.changed),
            id: Arc::clone(id),
            instance: acquired.instance,
            guard: None,
        };
        turn.guard = Some(acquired.value.lock_owned().await);
        turn
    }

    /// Ids with a call holding or awaiting its turn.
    pub(crate) fn len(&self) -> usize {
        self.locks.len()
    }

    /// Calls queued behind another call for the same id.
    pub(crate) fn waiting(&self) -> usize {
        let mut waiting = 0;
        self.locks.range(|_, _, calls| {
            waiting += calls.saturating_sub(1);
            true
        });
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
        drop(self.guard.take());
        self.locks.release(&*self.id, self.instance);
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
