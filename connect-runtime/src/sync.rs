//! Locking a mutex whatever a panicking holder left behind.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning rather than spreading a panic to every
/// later caller: every critical section in this crate is a single call on
/// the data (one `HashMap` operation, one assignment), so a panic cannot
/// leave it half-written.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
