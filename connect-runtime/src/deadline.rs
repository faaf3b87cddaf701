//! Instants and durations that saturate instead of overflowing the clock.

use std::time::Duration;

use tokio::time::Instant;

/// What tokio's timers treat as never: about thirty years.
pub(crate) const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant `timeout` from now, saturating at [`FAR`].
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    deadline_from(Instant::now(), timeout)
}

/// `timeout` after `start`, saturating as [`deadline_after`] does.
pub(crate) fn deadline_from(start: Instant, timeout: Duration) -> Instant {
    start + timeout.min(FAR)
}

/// `duration`, at most [`FAR`]: safe to add to any instant.
pub(crate) fn saturated(duration: Duration) -> Duration {
    duration.min(FAR)
}
