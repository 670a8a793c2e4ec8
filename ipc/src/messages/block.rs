//! gateway <-> block-daemon: opening a node on an image the gateway opened, serving it to
//! vmm-core over a vhost-user listener the gateway bound, and the node's management
//! (statistics, resize, I/O limits, write threshold).

use serde::{Deserialize, Serialize};

use super::{Call, Message, Upcall};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CacheFlags {
    /// O_DIRECT: bypass the host page cache.
    pub direct: bool,
    /// Ignore the guest's flushes.
    pub no_flush: bool,
}

/// What happens to writes of all-zero data (QEMU's detect-zeroes).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DetectZeroes {
    #[default]
    Off,
    /// Written as write-zeroes.
    On,
    /// Written as write-zeroes that may deallocate (needs discard=unmap).
    Unmap,
}

impl DetectZeroes {
    pub fn qmp_name(&self) -> &'static str {
        match self {
            DetectZeroes::Off => "off",
            DetectZeroes::On => "on",
            DetectZeroes::Unmap => "unmap",
        }
    }
}

/// A node to serve. The frame carries the image's fd (opened by the gateway with the
/// access `read_only` implies) and the listening vhost-user socket frontends connect to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlockOpen {
    /// The node the guest device is attached to (named in events).
    pub node_name: String,
    /// What the guest reads with GET_ID (at most 20 bytes are used).
    pub serial: String,
    pub read_only: bool,
    pub cache: CacheFlags,
    /// Guest discards deallocate (QEMU discard=unmap); otherwise they are ignored.
    pub discard_unmap: bool,
    pub detect_zeroes: DetectZeroes,
    pub queues: u32,
    /// Lengths in seconds of the windows timed statistics are kept over.
    pub stats_intervals: Vec<u32>,
}

/// One leaky bucket of a throttle configuration (QEMU's LeakyBucket settings).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BucketLimits {
    /// Sustained rate (bytes or operations per second); 0: unlimited.
    pub avg: u64,
    /// Burst rate; 0: no burst beyond a tenth of a second at `avg`.
    pub max: u64,
    /// How long a burst at `max` may last, in seconds.
    pub burst_length: u64,
}

/// Which bucket is which in `ThrottleLimits::buckets`.
pub const BPS_TOTAL: usize = 0;
pub const BPS_READ: usize = 1;
pub const BPS_WRITE: usize = 2;
pub const OPS_TOTAL: usize = 3;
pub const OPS_READ: usize = 4;
pub const OPS_WRITE: usize = 5;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ThrottleLimits {
    pub buckets: [BucketLimits; 6],
    /// An operation larger than this counts as size / iops_size operations; 0: off.
    pub iops_size: u64,
}

/// Size of a throttle group's state page: a memfd the gateway creates and hands every
/// member of the group with its limits; the daemons keep the bucket levels in it.
pub const THROTTLE_STATE_SIZE: u64 = 4096;

/// A new, zeroed throttle group state page.
pub fn new_throttle_state() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a valid C string.
    let fd = unsafe { libc::memfd_create(c"flotilla-throttle".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is ours alone.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    std::fs::File::from(fd.try_clone()?).set_len(THROTTLE_STATE_SIZE)?;
    Ok(fd)
}

impl ThrottleLimits {
    pub fn enabled(&self) -> bool {
        self.buckets.iter().any(|b| b.avg > 0)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum BlockRequest {
    /// Must come first; answered with `Opened`.
    Open(BlockOpen),
    /// Answered with `Stats`.
    Stats,
    /// Grow or shrink the image; the guest hears of it through a config-change interrupt.
    Resize { bytes: u64 },
    /// New I/O limits, shared with the other members of the throttle group through the
    /// state page that comes with them (one fd); `None` removes the limits (no fd).
    SetThrottle(Option<ThrottleLimits>),
    /// Raise `WriteThreshold` for `node_name` once a write ends beyond `bytes`; 0
    /// disables it. Each node of the disk's tree has its own.
    SetWriteThreshold { node_name: String, bytes: u64 },
    /// Stop serving and exit.
    Quit,
}

impl Message for BlockRequest {
    fn fd_count(&self) -> usize {
        match self {
            BlockRequest::Open(_) => 2,
            BlockRequest::SetThrottle(Some(_)) => 1,
            _ => 0,
        }
    }
}

/// Counters of one kind of operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OpCounters {
    pub operations: u64,
    pub bytes: u64,
    pub failed: u64,
    /// Refused before reaching the image (malformed, out of range).
    pub invalid: u64,
    pub total_time_ns: u64,
}

/// Latencies of one kind of operation over one window.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
pub struct Latency {
    pub min_ns: u64,
    pub max_ns: u64,
    pub avg_ns: u64,
    /// Mean number of these operations in flight over the window.
    pub avg_queue_depth: f64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
pub struct TimedStats {
    pub interval_length: u32,
    pub read: Latency,
    pub write: Latency,
    pub flush: Latency,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct BlockStats {
    pub size: u64,
    pub read: OpCounters,
    pub write: OpCounters,
    pub flush: OpCounters,
    pub unmap: OpCounters,
    /// The offset after the greatest byte written.
    pub wr_highest_offset: u64,
    /// Since the last completed operation; None before the first.
    pub idle_time_ns: Option<u64>,
    pub timed: Vec<TimedStats>,
    /// Discards that reached the image file (the file node's driver-specific counters).
    pub discard_ok: u64,
    pub discard_bytes_ok: u64,
    pub discard_failed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum BlockReply {
    Done,
    /// The image's size in bytes.
    Opened {
        size: u64,
    },
    Stats(Box<BlockStats>),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum BlockEvent {
    /// A write ended `amount_exceeded` bytes past `threshold`; the threshold is now off.
    WriteThreshold {
        node_name: String,
        amount_exceeded: u64,
        threshold: u64,
    },
}

pub type ToBlock = Call<BlockRequest>;
pub type FromBlock = Upcall<BlockReply, BlockEvent>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_declare_their_fds() {
        let open = BlockRequest::Open(BlockOpen {
            node_name: "n".into(),
            serial: "s".into(),
            read_only: false,
            cache: CacheFlags::default(),
            discard_unmap: false,
            detect_zeroes: DetectZeroes::Off,
            queues: 1,
            stats_intervals: vec![],
        });
        assert_eq!(
            ToBlock {
                id: 1,
                request: open
            }
            .fd_count(),
            2
        );
        let limits = ThrottleLimits::default();
        assert_eq!(BlockRequest::SetThrottle(Some(limits)).fd_count(), 1);
        assert_eq!(BlockRequest::SetThrottle(None).fd_count(), 0);
        assert_eq!(BlockRequest::Stats.fd_count(), 0);
    }
}
