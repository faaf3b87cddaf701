//! Locking a mutex whatever a panicking holder left behind.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning rather than spreading a panic to every
/// later caller: every critical section in this crate is a few operations
/// on the data, ordered so that stopping after any of them leaves it usable
/// (an entry uncounted, a stale expiry that its generation marks
/// superseded), never half-written.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
