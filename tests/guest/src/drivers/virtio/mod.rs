//! Virtio 1.x over PCI (the "modern" transport), as an independent driver: it checks our
//! devices against the specification, so it shares no code or constants with them.
//!
//! - discovery.rs: which PCI functions are virtio devices of a type, and the probe loop.
//! - transport.rs ([`transport::Transport`], ring 0): capabilities, reset, feature
//!   negotiation, MSI-X, queue set-up, DRIVER_OK, device configuration reads and writes.
//! - virtqueue.rs ([`virtqueue::Virtqueue`], usable from ring 3): split rings, the doorbell,
//!   used entries, interrupt suppression.
//! - queue_bits.rs: one bit per queue entry, for the drivers' slot bookkeeping.

pub mod discovery;
pub mod queue_bits;
pub mod transport;
pub mod virtqueue;
