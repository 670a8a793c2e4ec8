//! Every message Flotilla's processes exchange, grouped by the pair of processes that
//! exchange them. Plain structs and enums only: bincode cannot decode serde's untagged or
//! flattened forms.
//!
//! The gateway talks to each child the same way: numbered `Call`s go down, and `Upcall`s
//! (the answer to a call, or an event the child raises on its own) come back.

pub mod block;
pub mod job;
pub mod migration;
pub mod net;
pub mod node;
pub mod vmm;

pub use block::*;
pub use job::*;
pub use migration::*;
pub use net::*;
pub use node::*;
pub use vmm::*;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A message type, and how many file descriptors a frame carrying it must hold.
pub trait Message: Serialize + DeserializeOwned {
    fn fd_count(&self) -> usize {
        0
    }
}

/// QMP error classes, for errors that travel back to a QMP client.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotActive,
    DeviceNotFound,
    KVMMissingCap,
}

impl ErrorClass {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

/// An error a process reports for a request, in QMP terms.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RemoteError {
    pub class: ErrorClass,
    pub desc: String,
}

impl RemoteError {
    pub fn generic(desc: impl Into<String>) -> Self {
        RemoteError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }
}

/// A request from the gateway to a child process, numbered so its answer can find it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Call<R> {
    pub id: u64,
    pub request: R,
}

impl<R: Message> Message for Call<R> {
    fn fd_count(&self) -> usize {
        self.request.fd_count()
    }
}

/// What a child sends the gateway: the answer to call `id`, or an event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Upcall<T, E> {
    Response {
        id: u64,
        result: Result<T, RemoteError>,
    },
    Event(E),
}

impl<T: Message, E: Serialize + DeserializeOwned> Message for Upcall<T, E> {
    fn fd_count(&self) -> usize {
        match self {
            Upcall::Response { result: Ok(t), .. } => t.fd_count(),
            _ => 0,
        }
    }
}
