//! A change signal that costs its notifiers nothing while nobody watches:
//! every call ends a turn, and few have an observer waiting.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Wakes the tasks watching for a change. A notifier changes the state
/// under a lock before [`Changes::notify`]; a watcher starts watching, then
/// looks at that state under the same lock. So a notifier that sees no
/// watcher made its change before any watcher looked, and the watcher sees
/// it.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    notify: Notify,
    watchers: AtomicUsize,
}

impl Changes {
    /// Wakes every task watching now.
    pub(crate) fn notify(&self) {
        if self.watchers.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Counts the caller as watching until the result is dropped.
    pub(crate) fn watch(&self) -> Watching<'_> {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        Watching(self)
    }
}

/// A watcher of a [`Changes`].
pub(crate) struct Watching<'a>(&'a Changes);

impl Watching<'_> {
    /// The next change: enable it before looking at the state.
    pub(crate) fn changed(&self) -> Notified<'_> {
        self.0.notify.notified()
    }
}

/// Waits until `done` holds, re-checking it whenever `a` or `b` changes
/// (no polling). `done` reads state that the notifiers change under a lock
/// before they notify, as [`Changes`] requires.
pub(crate) async fn until(a: &Changes, b: &Changes, mut done: impl FnMut() -> bool) {
    let (a, b) = (a.watch(), b.watch());
    loop {
        let a_changed = a.changed();
        tokio::pin!(a_changed);
        a_changed.as_mut().enable();
        let b_changed = b.changed();
        tokio::pin!(b_changed);
        b_changed.as_mut().enable();
        if done() {
            return;
        }
        tokio::select! {
            () = a_changed => {}
            () = b_changed => {}
        }
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watcher_hears_a_change_and_stops_counting_when_dropped() {
        let signal = Changes::default();
        {
            let watching = signal.watch();
            let changed = watching.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            assert_eq!(signal.watchers.load(Ordering::SeqCst), 1);
            signal.notify();
            changed.await;
        }
        assert_eq!(signal.watchers.load(Ordering::SeqCst), 0);
    }

    /// A notifier that sees no watcher skips `Notify`; a watcher that was
    /// starting meanwhile still sees the change, made under the lock it
    /// reads. Raced many times over two workers.
    #[test]
    fn a_watcher_never_misses_a_change_made_under_the_lock_it_reads() {
        use std::sync::{Arc, Mutex};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            for _ in 0..500 {
                let shared = Arc::new((Changes::default(), Mutex::new(false)));
                let watcher = tokio::spawn({
                    let shared = Arc::clone(&shared);
                    async move {
                        let (signal, done) = &*shared;
                        let watching = signal.watch();
                        loop {
                            let changed = watching.changed();
                            tokio::pin!(changed);
                            changed.as_mut().enable();
                            if *done.lock().unwrap() {
                                return;
                            }
                            changed.await;
                        }
                    }
                });
                let notifier = tokio::spawn({
                    let shared = Arc::clone(&shared);
                    async move {
                        let (signal, done) = &*shared;
                        *done.lock().unwrap() = true;
                        signal.notify();
                    }
                });
                notifier.await.unwrap();
                // Bounded only so that a missed wake-up fails.
                let seen = tokio::time::timeout(std::time::Duration::from_secs(10), watcher).await;
                seen.expect("the watcher saw the change").unwrap();
            }
        });
    }
}
