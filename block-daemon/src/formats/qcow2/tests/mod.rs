//! Unit tests of the qcow2 library, with qemu-img and qemu-io 7.2 as the oracles.

mod alloc;
mod blockdev;
mod concurrency;
mod crash;
mod damaged;
mod fuzz;
mod header;
mod oracle;
mod rw;
mod snapshots;
mod unmap;
