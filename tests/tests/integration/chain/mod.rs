//! Chains and elements: `connect_runtime::chain`.

mod chains;
mod hooks;
mod state;
