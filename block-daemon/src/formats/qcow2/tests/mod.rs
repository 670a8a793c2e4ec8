//! Unit tests of the qcow2 library, with qemu-img and qemu-io 7.2 as the oracles.

mod alloc;
mod bitmaps;
mod blockdev;
mod chain;
mod concurrency;
mod crash;
mod damaged;
mod early;
mod fuzz;
mod header;
mod links;
mod oracle;
mod rw;
mod snapshots;
mod unmap;
