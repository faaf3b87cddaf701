//! The serving side: `connect_runtime::server`.

mod limits;
mod serve;
