//! QMP: the wire protocol, the command table and its handlers, sessions and listeners.

pub mod absent;
pub mod block;
pub mod commands;
pub mod errors;
pub mod hmp;
pub mod json_stream;
pub mod net;
pub mod protocol;
pub mod schema;
pub mod server;
pub mod session;
