//! Integration tests: real tonic servers on loopback TCP and unix sockets.

mod answers;
mod cancellation;
mod chain;
mod connect;
mod fixtures;
mod interop;
mod peers;
mod program;
mod rotation;
mod served;
mod spans;
mod spiffe;
mod transport;
mod unknown_fields;
mod wire;
