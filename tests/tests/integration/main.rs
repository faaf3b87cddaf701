//! Integration tests: real tonic servers on loopback TCP and unix sockets.
//! Laid out as the runtime is, so that the test of a guarantee is found
//! where the guarantee lives: `chain/`, `transport/` (the dialing side),
//! `server/` (the serving side), `elements/`, `proto/` (the wire API); the
//! derives' fixtures; and the release program between independent peers.

mod chain;
mod elements;
mod fixtures;
mod interop;
mod program;
mod proto;
mod server;
mod telemetry;
mod transport;
