//! The elements this crate ships: [`Connect`] (the element the crate is
//! named after), and the small elements every chain needs: [`GrpcClient`]
//! (the call itself), [`ClientUrl`], [`Passthrough`] and [`Monitor`]; and
//! the two every NSM hop runs, [`UpdatePath`] (this hop's path segment) and
//! [`Expire`] (closing what callers stopped refreshing); and NSM's monitor
//! protocol, [`ConnectionMonitor`].

mod changes;
mod clienturl;
mod connect;
mod expire;
mod grpc_client;
mod last_known;
mod monitor;
mod monitoring;
mod passthrough;
mod turns;
mod updatepath;

pub use clienturl::ClientUrl;
pub use connect::{
    ClientFactory, ClientStats, Connect, ConnectBuilder, ConnectStats, DEFAULT_CLEANUP_TIMEOUT,
};
pub use expire::{Expire, ExpireStats};
pub use grpc_client::{DEADLINE_GRACE, GrpcClient};
pub use monitor::Monitor;
pub use monitoring::{
    ConnectionMonitor, DEFAULT_WATCHER_BUFFER, MonitorRelay, MonitorServer, MonitorService,
    MonitorStats, MonitorStream,
};
pub use passthrough::Passthrough;
pub use updatepath::{DEFAULT_MAX_TOKEN_LIFETIME, UpdatePath};
