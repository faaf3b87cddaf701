//! The elements: `connect_runtime::elements`.

mod cancellation;
mod connect;
mod expire;
mod linger;
mod monitor;
mod monitoring;
mod rotation;
