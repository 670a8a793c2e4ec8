//! QMP: the wire protocol, the command table with its typed arguments and handlers,
//! the schema, and the clients' connections, sessions, slots and listeners.

pub mod args;
pub mod blockdev;
pub mod commands;
pub mod conn;
pub mod context;
pub mod errors;
pub mod handlers;
pub mod json_stream;
pub mod monitor_number;
pub mod object_add;
pub mod outbox;
pub mod pretty;
pub mod protocol;
pub mod qapi;
pub mod schema;
pub mod server;
pub mod session;
pub mod slots;
pub mod types;
