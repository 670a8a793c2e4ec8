//! An iothread object's properties: the name disks are placed on, with QEMU's event-loop
//! tuning properties (kept and reported; the daemons' I/O threads poll their own way).
//! Its thread is a block daemon's I/O thread (block/iothreads.rs).

/// QEMU's default poll-max-ns for an iothread.
pub const DEFAULT_POLL_MAX_NS: i64 = 32768;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoThread {
    pub id: String,
    pub poll_max_ns: i64,
    pub poll_grow: i64,
    pub poll_shrink: i64,
    pub aio_max_batch: i64,
    pub thread_pool_min: i64,
    pub thread_pool_max: i64,
}

impl IoThread {
    /// With QEMU 7.2's defaults.
    pub fn new(id: &str) -> IoThread {
        IoThread {
            id: id.to_string(),
            poll_max_ns: DEFAULT_POLL_MAX_NS,
            poll_grow: 0,
            poll_shrink: 0,
            aio_max_batch: 0,
            thread_pool_min: 0,
            thread_pool_max: 64,
        }
    }
}
