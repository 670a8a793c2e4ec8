//! migration-agent: the process that moves one VM, started by the gateway for each
//! migration, on the source and on the destination. It owns the migration stream and
//! nothing else: it reads (source) or writes (destination) guest RAM through vmm-core's
//! memfd, takes the pages the shared dirty log marks, and speaks the stream on the one
//! connection the gateway handed over; device state comes from vmm-core through the
//! gateway, opaque. The gateway drives it (passes, the stop-and-copy, the answer).
//!
//! - `stream`: the wire format (versioned; docs/migration-stream.md); `wire`: its integers;
//! - `ram`: guest RAM's windows, mapped;
//! - `outgoing`: the source's passes and finish; `pacer`: the bandwidth limit;
//!   `xbzrle`: the delta encoding and its cache;
//! - `compress`: pages deflated on the source and inflated at the destination, by
//!   `workers`, threads whose results come back in order;
//! - `incoming`: the destination's receiver;
//! - `disks`: block migration, the disks' content in the stream (source and
//!   destination);
//! - `seccomp`: the agent's sandbox.

pub mod answer;
pub mod channel;
pub mod compress;
pub mod disks;
pub mod incoming;
pub mod outgoing;
pub mod pacer;
pub mod postcopy;
pub mod ram;
pub mod seccomp;
pub mod stream;
#[cfg(test)]
pub mod testing;
pub mod wire;
pub mod workers;
pub mod xbzrle;
