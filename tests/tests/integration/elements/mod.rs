//! The elements: `connect_runtime::elements`.

mod cancellation;
mod connect;
mod expire;
mod grpc_client;
mod linger;
mod monitor;
mod monitoring;
mod rotation;
