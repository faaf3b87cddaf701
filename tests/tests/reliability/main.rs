//! Reliability: model-based random testing, concurrent interleavings,
//! stress, faults and a catalogue of bad input. Nothing leaks, nothing is
//! lost.

mod bad_input;
mod faults;
mod interleave;
mod model;
mod scale;
mod soak;
mod stress;
