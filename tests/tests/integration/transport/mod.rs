//! The dialing side: `connect_runtime::transport`.

mod conn;
mod dial;
mod reply;
mod spiffe;
mod tls;
