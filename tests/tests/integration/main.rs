//! Integration tests: real tonic servers on loopback TCP and unix sockets.

mod chain;
mod transport;
mod wire;
