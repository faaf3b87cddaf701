//! Per-connection ordering: calls for one connection id take turns, in
//! arrival order; calls for different ids never wait for each other.

use std::sync::Arc;

use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

use crate::ConcurrentMap;
use crate::map::SyncMap;

/// Connection id → the lock its calls queue on. An entry exists only while
/// some call for that id holds or awaits its turn.
#[derive(ConcurrentMap)]
pub(super) struct TurnLocks(SyncMap<Arc<str>, Arc<Mutex<()>>>);

#[derive(Clone, Default)]
pub(super) struct Turns {
    locks: Arc<TurnLocks>,
    /// Woken whenever a turn ends, for [`Turns::changed`].
    ended: Arc<Notify>,
}

/// The right to act on one connection id; the next caller for that id goes
/// when this is dropped. Owned, so it can move into background cleanup.
pub(super) struct Turn {
    locks: Arc<TurnLocks>,
    ended: Arc<Notify>,
    id: Arc<str>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    /// Waits for `id`'s turn. tokio's mutex is fair, so turns are taken in
    /// the order callers arrived. Dropping the future while it waits leaves
    /// nothing behind.
    pub(super) async fn take(&self, id: &Arc<str>) -> Turn {
        let (lock, _) = self
            .locks
            .load_or_store_with(Arc::clone(id), Default::default);
        // Built before waiting, so that its drop cleans up after a caller
        // that gives up while queued.
        let mut turn = Turn {
            locks: Arc::clone(&self.locks),
            ended: Arc::clone(&self.ended),
            id: Arc::clone(id),
            guard: None,
        };
        turn.guard = Some(lock.lock_owned().await);
        turn
    }

    /// Ids with a call holding or awaiting its turn.
    pub(super) fn len(&self) -> usize {
        self.locks.len()
    }

    /// Calls queued behind another call for the same id.
    pub(super) fn waiting(&self) -> usize {
        let mut waiting = 0;
        self.locks.range(|_, lock| {
            // References: the map's, the copy `range` hands us, the
            // holder's, and one per caller queued (or about to take a free
            // turn).
            waiting += Arc::strong_count(lock).saturating_sub(3);
            true
        });
        waiting
    }

    /// The signal that some turn has ended.
    pub(super) fn ended(&self) -> &Notify {
        &self.ended
    }
}

impl Turn {
    /// The connection id this turn is for.
    pub(super) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Only the map's own reference left: nobody holds or awaits this
        // id's lock (any new caller would clone it under the shard lock that
        // `delete_if` holds), so the entry can go.
        self.locks
            .delete_if(&*self.id, |lock| Arc::strong_count(lock) == 1);
        self.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            while Arc::strong_count(&turns.locks.load("a").unwrap()) < n + 3 {
                tokio::task::yield_now().await;
            }
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
}
