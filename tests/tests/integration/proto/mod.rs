//! The wire API: `connect_proto`.

mod unknown_fields;
mod wire;
