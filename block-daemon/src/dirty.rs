//! The dirty bitmaps this daemon marks into (block-dirty-bitmap-add): memory the
//! gateway keeps (`ipc::SharedBitmap`), so that the marks outlive the daemon. The gateway
//! sends the whole set each time it changes; a cleared bitmap is new, clean memory.
//!
//! A request is marked just before it goes to the engine, not when it comes off the
//! ring: one held back by the I/O limits is marked when it goes, and as a new set is
//! swapped in with the device quiesced (nothing in the engine then), a cleared bitmap
//! misses no write that lands after the clear. Discards the node ignores (discard=ignore) never reach the engine
//! and change nothing, so they mark nothing, as in QEMU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ipc::dirty_bitmap::MAX_BITMAPS_PER_DISK as MAX_BITMAPS;
use ipc::SharedBitmap;
use parking_lot::RwLock;

use crate::request::{Kind, Request, SECTOR_SHIFT};

#[derive(Debug, thiserror::Error)]
#[error("a disk marks into at most {MAX_BITMAPS} dirty bitmaps")]
pub struct TooManyBitmaps;

#[derive(Default)]
pub struct DirtyBitmaps {
    /// Whether there is any: a write looks at this alone when there is none.
    any: AtomicBool,
    bitmaps: RwLock<Marked>,
}

/// What a block job does before a write goes to the image: a mirror marks what it has
/// to copy again, a backup copies what the write would overwrite.
pub trait WriteHook: Send + Sync {
    fn before_write(&self, offset: u64, len: u64);
}

impl WriteHook for SharedBitmap {
    fn before_write(&self, offset: u64, len: u64) {
        self.mark(offset, len);
    }
}

/// What writes mark: the disk's bitmaps, and what the running job does.
#[derive(Default)]
struct Marked {
    disk: Vec<(String, SharedBitmap)>,
    job: Option<Arc<dyn WriteHook>>,
}

impl Marked {
    fn any(&self) -> bool {
        !self.disk.is_empty() || self.job.is_some()
    }
}

impl DirtyBitmaps {
    /// Marks into exactly `bitmaps` from now on. The caller quiesces the device first:
    /// a write in flight was marked in the memory it replaces.
    pub fn set(&self, bitmaps: Vec<(String, SharedBitmap)>) -> Result<(), TooManyBitmaps> {
        if bitmaps.len() > MAX_BITMAPS {
            return Err(TooManyBitmaps);
        }
        let mut all = self.bitmaps.write();
        all.disk = bitmaps;
        self.any.store(all.any(), Ordering::SeqCst);
        Ok(())
    }

    /// Calls the job's hook before each write from now on (None: no more).
    pub fn set_job(&self, hook: Option<Arc<dyn WriteHook>>) {
        let mut all = self.bitmaps.write();
        all.job = hook;
        self.any.store(all.any(), Ordering::SeqCst);
    }

    /// Moves the marks of bitmap `name` into `into` (an incremental backup's start; the
    /// caller quiesced the device); whether there is such a bitmap.
    pub fn take_named(
        &self,
        name: &str,
        into: &SharedBitmap,
    ) -> Result<bool, ipc::dirty_bitmap::BitmapError> {
        let all = self.bitmaps.read();
        match all.disk.iter().find(|(n, _)| n == name) {
            Some((_, b)) => b.take_into(into).map(|()| true),
            None => Ok(false),
        }
    }

    /// Marks what `req` changes in every bitmap (reads, flushes: nothing).
    pub fn mark(&self, req: &Request) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        let all = self.bitmaps.read();
        let each = |offset: u64, len: u64| {
            for (_, b) in all.disk.iter() {
                b.mark(offset, len);
            }
            if let Some(hook) = &all.job {
                hook.before_write(offset, len);
            }
        };
        match &req.kind {
            Kind::Write => each(req.sector << SECTOR_SHIFT, req.data_len as u64),
            Kind::WriteZeroes(ranges) | Kind::Discard(ranges) => {
                for r in ranges {
                    each(
                        r.sector << SECTOR_SHIFT,
                        u64::from(r.sectors) << SECTOR_SHIFT,
                    );
                }
            }
            Kind::Read | Kind::Flush | Kind::GetId => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::SectorRange;
    use std::time::Instant;

    fn request(kind: Kind, sector: u64, data_len: usize) -> Request {
        Request {
            kind,
            sector,
            data: Vec::new(),
            data_len,
            status: std::ptr::null_mut(),
            arrived: Instant::now(),
        }
    }

    fn gateway_and_daemon_maps(size: u64, granularity: u64) -> (SharedBitmap, SharedBitmap) {
        let gateway = SharedBitmap::create(size, granularity).unwrap();
        let daemon = SharedBitmap::map(gateway.fd().unwrap(), size, granularity).unwrap();
        (gateway, daemon)
    }

    #[test]
    fn writes_write_zeroes_and_discards_mark_reads_and_flushes_do_not() {
        let bitmaps = DirtyBitmaps::default();
        let (seen, daemon) = gateway_and_daemon_maps(1 << 20, 4096);
        bitmaps.set(vec![("b0".into(), daemon)]).unwrap();
        bitmaps.mark(&request(Kind::Read, 0, 4096));
        bitmaps.mark(&request(Kind::Flush, 0, 0));
        assert_eq!(seen.dirty_bytes(), 0);
        bitmaps.mark(&request(Kind::Write, 8, 512)); // byte 4096
        let range = |sector, sectors| SectorRange {
            sector,
            sectors,
            unmap: false,
        };
        bitmaps.mark(&request(Kind::WriteZeroes(vec![range(16, 16)]), 0, 0)); // 8192..16384
        bitmaps.mark(&request(
            Kind::Discard(vec![range(64, 1), range(72, 1)]),
            0,
            0,
        ));
        let dirty: Vec<u64> = (0..256).filter(|c| seen.is_dirty(c * 4096)).collect();
        assert_eq!(dirty, [1, 2, 3, 8, 9]);
    }

    #[test]
    fn a_new_set_replaces_the_old_one_whole() {
        let bitmaps = DirtyBitmaps::default();
        let (first, daemon) = gateway_and_daemon_maps(1 << 20, 65536);
        bitmaps.set(vec![("b".into(), daemon)]).unwrap();
        let (second, daemon) = gateway_and_daemon_maps(1 << 20, 65536);
        bitmaps.set(vec![("b".into(), daemon)]).unwrap();
        bitmaps.mark(&request(Kind::Write, 0, 512));
        assert_eq!((first.dirty_bytes(), second.dirty_bytes()), (0, 65536));
        bitmaps.set(Vec::new()).unwrap();
        bitmaps.mark(&request(Kind::Write, 65536, 512));
        assert_eq!(second.dirty_bytes(), 65536, "an empty set marks nothing");
    }

    #[test]
    fn no_more_than_the_limit() {
        let bitmaps = DirtyBitmaps::default();
        let set = |n: usize| -> Vec<(String, SharedBitmap)> {
            (0..n)
                .map(|i| (format!("b{i}"), gateway_and_daemon_maps(4096, 512).1))
                .collect()
        };
        assert!(bitmaps.set(set(MAX_BITMAPS)).is_ok());
        assert!(bitmaps.set(set(MAX_BITMAPS + 1)).is_err());
    }
}
