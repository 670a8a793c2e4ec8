//! The dirty bitmaps this daemon marks into (block-dirty-bitmap-add): memory the
//! gateway keeps (`ipc::SharedBitmap`), so that the marks outlive the daemon.
//!
//! A request is marked just before it goes to the engine, not when it comes off the
//! ring: one held back by the I/O limits is marked when it goes, and a bitmap cleared
//! with the device quiesced (nothing in the engine then) misses no write that lands
//! after the clear. Discards the node ignores (discard=ignore) never reach the engine
//! and change nothing, so they mark nothing, as in QEMU.

use std::sync::atomic::{AtomicBool, Ordering};

use ipc::SharedBitmap;
use parking_lot::RwLock;

use crate::request::{Kind, Request, SECTOR_SHIFT};

/// Bitmaps per disk: each costs a mapping and a little time per write.
pub const MAX_BITMAPS: usize = 64;

#[derive(Debug, thiserror::Error)]
#[error("a disk marks into at most {MAX_BITMAPS} dirty bitmaps")]
pub struct TooManyBitmaps;

#[derive(Default)]
pub struct DirtyBitmaps {
    /// Whether there is any: a write looks at this alone when there is none.
    any: AtomicBool,
    bitmaps: RwLock<Vec<(String, SharedBitmap)>>,
}

impl DirtyBitmaps {
    /// Marks into `bitmap` from now on, in place of one named `name`.
    pub fn add(&self, name: String, bitmap: SharedBitmap) -> Result<(), TooManyBitmaps> {
        let mut all = self.bitmaps.write();
        if let Some(slot) = all.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = bitmap;
        } else if all.len() >= MAX_BITMAPS {
            return Err(TooManyBitmaps);
        } else {
            all.push((name, bitmap));
        }
        self.any.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Stops marking into `name`; whether there was one.
    pub fn remove(&self, name: &str) -> bool {
        let mut all = self.bitmaps.write();
        let before = all.len();
        all.retain(|(n, _)| n != name);
        self.any.store(!all.is_empty(), Ordering::SeqCst);
        all.len() != before
    }

    /// Cleans `name`; whether there is one. The caller quiesces the device first, or a
    /// write in flight may land after its mark was cleared.
    pub fn clear(&self, name: &str) -> bool {
        let all = self.bitmaps.read();
        let found = all.iter().find(|(n, _)| n == name);
        if let Some((_, b)) = found {
            b.clear();
        }
        found.is_some()
    }

    /// Marks what `req` changes in every bitmap (reads, flushes: nothing).
    pub fn mark(&self, req: &Request) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        let all = self.bitmaps.read();
        let each = |offset: u64, len: u64| {
            for (_, b) in all.iter() {
                b.mark(offset, len);
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
        bitmaps.add("b0".into(), daemon).unwrap();
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
    fn a_bitmap_added_again_replaces_and_a_removed_one_is_left_alone() {
        let bitmaps = DirtyBitmaps::default();
        let (first, daemon) = gateway_and_daemon_maps(1 << 20, 65536);
        bitmaps.add("b".into(), daemon).unwrap();
        let (second, daemon) = gateway_and_daemon_maps(1 << 20, 65536);
        bitmaps.add("b".into(), daemon).unwrap();
        bitmaps.mark(&request(Kind::Write, 0, 512));
        assert_eq!((first.dirty_bytes(), second.dirty_bytes()), (0, 65536));
        assert!(bitmaps.clear("b"));
        assert_eq!(second.dirty_bytes(), 0);
        assert!(bitmaps.remove("b"));
        assert!(!bitmaps.remove("b") && !bitmaps.clear("b"));
        bitmaps.mark(&request(Kind::Write, 0, 512));
        assert_eq!(second.dirty_bytes(), 0);
    }

    #[test]
    fn no_more_than_the_limit() {
        let bitmaps = DirtyBitmaps::default();
        for i in 0..MAX_BITMAPS {
            let (_, daemon) = gateway_and_daemon_maps(4096, 512);
            bitmaps.add(format!("b{i}"), daemon).unwrap();
        }
        let (_, daemon) = gateway_and_daemon_maps(4096, 512);
        assert!(bitmaps.add("one more".into(), daemon).is_err());
        let (_, daemon) = gateway_and_daemon_maps(4096, 512);
        assert!(
            bitmaps.add("b0".into(), daemon).is_ok(),
            "replacing is not adding"
        );
    }
}
