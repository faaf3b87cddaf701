//! The elements this crate ships: [`Connect`] (the element the crate is
//! named after), and the small elements every chain needs: [`GrpcClient`]
//! (the call itself), [`ClientUrl`], [`Passthrough`] and [`Monitor`].

mod clienturl;
mod connect;
mod grpc_client;
mod monitor;
mod passthrough;

pub use clienturl::ClientUrl;
pub use connect::{
    ClientFactory, ClientStats, Connect, ConnectBuilder, ConnectStats, DEFAULT_CLEANUP_TIMEOUT,
};
pub use grpc_client::{DEADLINE_GRACE, GrpcClient};
pub use monitor::Monitor;
pub use passthrough::Passthrough;
