//! qcow2 (versions 2 and 3), QEMU's copy-on-write format: header and extensions,
//! L1/L2 tables behind a bounded cache, refcounts and cluster allocation, compressed
//! and zero clusters, backing files, internal snapshots, persistent dirty bitmaps, and
//! the repair of an image left dirty. One concern per file; `image` ties them into `Qcow2`.

pub mod alloc;
pub mod bitmaps;
pub mod cache;
pub mod compressed;
pub mod create;
pub mod early_link;
pub mod extensions;
pub mod header;
pub mod header_cluster;
pub mod image;
pub mod io;
pub mod layout;
pub mod meta;
pub mod refcount;
pub mod repair;
pub mod snapshot;
pub mod snapshot_ops;
pub mod tables;
pub mod unmap;

pub use image::Qcow2;

#[cfg(test)]
mod tests;
