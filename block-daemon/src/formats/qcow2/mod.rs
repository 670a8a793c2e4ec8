//! qcow2 (versions 2 and 3), QEMU's copy-on-write format: header and extensions,
//! L1/L2 tables behind a bounded cache, refcounts and cluster allocation, compressed
//! and zero clusters, backing files, internal snapshots, and the repair of an image
//! left dirty. One concern per file; `image` ties them into `Qcow2`.

pub mod create;
pub mod extensions;
pub mod header;
pub mod io;
pub mod layout;
pub mod snapshot;

#[cfg(test)]
mod tests;
