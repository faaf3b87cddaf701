//! The elements: `connect_runtime::elements`.

mod cancellation;
mod connect;
mod monitor;
mod rotation;
