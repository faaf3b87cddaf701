//! Whether a failed client call can have reached the remote: a call that
//! failed before anything was sent (no dial, no time left, refused
//! unprocessed) leaves nothing there to close.

use std::sync::Arc;

use tonic::Status;

/// The marker a status carries as its source when nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("the call was not sent")]
struct NotSent;

/// Marks `status` as the failure of a call that sent nothing.
pub(crate) fn not_sent(mut status: Status) -> Status {
    status.set_source(Arc::new(NotSent));
    status
}

/// Whether `status` is marked as the failure of a call that sent nothing.
pub(crate) fn sent_nothing(status: &Status) -> bool {
    std::error::Error::source(status).is_some_and(|source| source.is::<NotSent>())
}
