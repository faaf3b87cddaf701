//! Integration tests: real tonic servers on loopback TCP and unix sockets.

mod chain;
mod fixtures;
mod transport;
mod wire;
