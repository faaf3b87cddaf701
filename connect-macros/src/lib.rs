//! Derives for `connect-runtime`; see that crate's documentation.
