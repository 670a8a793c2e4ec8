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
use ipc::{DirtyBitmapSpec, SharedBitmap};
use parking_lot::RwLock;

use crate::disk::Disk;
use crate::formats::qcow2::bitmaps::StoredBitmap;
use crate::formats::qcow2::Qcow2;
use crate::formats::{Format, FormatError};
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

/// What writes mark: the disk's bitmaps that record, what the running job does, and a
/// block migration's marks (`crate::migration`, a bitmap of its own that no query
/// shows); beside them the set's others (disabled or inconsistent persistent bitmaps),
/// kept only to be stored.
#[derive(Default)]
struct Marked {
    disk: Vec<(String, Arc<SharedBitmap>)>,
    job: Option<Arc<dyn WriteHook>>,
    migration: Option<Arc<dyn WriteHook>>,
    all: Vec<(DirtyBitmapSpec, Arc<SharedBitmap>)>,
}

impl Marked {
    fn any(&self) -> bool {
        !self.disk.is_empty() || self.job.is_some() || self.migration.is_some()
    }
}

/// One bitmap of a set: what it is and its memory.
pub type Bitmap = (DirtyBitmapSpec, SharedBitmap);

impl DirtyBitmaps {
    /// Marks into exactly `bitmaps` from now on. The caller quiesces the device first:
    /// a write in flight was marked in the memory it replaces.
    pub fn set(&self, bitmaps: Vec<Bitmap>) -> Result<(), TooManyBitmaps> {
        if bitmaps.len() > MAX_BITMAPS {
            return Err(TooManyBitmaps);
        }
        let mut marked = Vec::new();
        let mut kept = Vec::new();
        for (spec, memory) in bitmaps {
            let memory = Arc::new(memory);
            if spec.recording && !spec.inconsistent {
                marked.push((spec.name.clone(), memory.clone()));
            }
            kept.push((spec, memory));
        }
        let mut all = self.bitmaps.write();
        all.disk = marked;
        all.all = kept;
        self.any.store(all.any(), Ordering::SeqCst);
        Ok(())
    }

    /// Stores the set's persistent bitmaps in `image` when `disk` keeps them and the
    /// image is qcow2 (a clean close, or the image stops being the top: an external
    /// snapshot over it, a mirror's pivot away from it).
    pub fn store_in(&self, disk: &Disk, image: &dyn Format) -> Result<(), FormatError> {
        if !disk.keeps_bitmaps() {
            return Ok(());
        }
        match image.as_any().and_then(|a| a.downcast_ref::<Qcow2>()) {
            Some(qcow2) => qcow2.store_bitmaps(&self.to_store()),
            None => Ok(()),
        }
    }

    /// The names of the set's persistent bitmaps.
    pub fn persistent_names(&self) -> Vec<String> {
        let all = self.bitmaps.read();
        all.all
            .iter()
            .filter(|(spec, _)| spec.persistent)
            .map(|(spec, _)| spec.name.clone())
            .collect()
    }

    /// Stores the set's persistent bitmaps in the disk's top now and marks them in use
    /// again (they go on recording): one taken out of the set leaves the image at once,
    /// as QEMU's block-dirty-bitmap-remove does. The caller quiesced the device.
    pub fn store_now(&self, disk: &Disk) -> Result<(), FormatError> {
        let top = disk.format();
        self.store_in(disk, &*top)?;
        match top.as_any().and_then(|a| a.downcast_ref::<Qcow2>()) {
            Some(qcow2) if disk.keeps_bitmaps() => qcow2.load_bitmaps().map(drop),
            _ => Ok(()),
        }
    }

    /// The persistent bitmaps as qcow2 stores them.
    pub fn to_store(&self) -> Vec<StoredBitmap> {
        let all = self.bitmaps.read();
        all.all
            .iter()
            .filter(|(spec, _)| spec.persistent)
            .map(|(spec, memory)| StoredBitmap {
                name: spec.name.clone(),
                granularity: spec.granularity,
                recording: spec.recording,
                in_use: spec.inconsistent,
                bits: memory.to_bytes(),
            })
            .collect()
    }

    /// Calls the job's hook before each write from now on (None: no more).
    pub fn set_job(&self, hook: Option<Arc<dyn WriteHook>>) {
        let mut all = self.bitmaps.write();
        all.job = hook;
        self.any.store(all.any(), Ordering::SeqCst);
    }

    /// Calls a block migration's hook before each write from now on (None: no more).
    pub fn set_migration(&self, hook: Option<Arc<dyn WriteHook>>) {
        let mut all = self.bitmaps.write();
        all.migration = hook;
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
            if let Some(hook) = &all.migration {
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

    fn spec(name: &str, b: &SharedBitmap, recording: bool, persistent: bool) -> DirtyBitmapSpec {
        DirtyBitmapSpec {
            name: name.into(),
            size: b.size(),
            granularity: b.granularity(),
            recording,
            persistent,
            inconsistent: false,
        }
    }

    fn recording(name: &str, b: SharedBitmap) -> Bitmap {
        (spec(name, &b, true, false), b)
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
        bitmaps.set(vec![recording("b0", daemon)]).unwrap();
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
        bitmaps.set(vec![recording("b", daemon)]).unwrap();
        let (second, daemon) = gateway_and_daemon_maps(1 << 20, 65536);
        bitmaps.set(vec![recording("b", daemon)]).unwrap();
        bitmaps.mark(&request(Kind::Write, 0, 512));
        assert_eq!((first.dirty_bytes(), second.dirty_bytes()), (0, 65536));
        bitmaps.set(Vec::new()).unwrap();
        bitmaps.mark(&request(Kind::Write, 65536, 512));
        assert_eq!(second.dirty_bytes(), 65536, "an empty set marks nothing");
    }

    #[test]
    fn no_more_than_the_limit() {
        let bitmaps = DirtyBitmaps::default();
        let set = |n: usize| -> Vec<Bitmap> {
            (0..n)
                .map(|i| recording(&format!("b{i}"), gateway_and_daemon_maps(4096, 512).1))
                .collect()
        };
        assert!(bitmaps.set(set(MAX_BITMAPS)).is_ok());
        assert!(bitmaps.set(set(MAX_BITMAPS + 1)).is_err());
    }

    #[test]
    fn disabled_persistent_bitmaps_are_kept_to_store_not_marked() {
        let bitmaps = DirtyBitmaps::default();
        let (on, on_daemon) = gateway_and_daemon_maps(1 << 20, 65536);
        let (off, off_daemon) = gateway_and_daemon_maps(1 << 20, 4096);
        let (_, plain_daemon) = gateway_and_daemon_maps(1 << 20, 65536);
        off.mark(8192, 1);
        bitmaps
            .set(vec![
                (spec("on", &on_daemon, true, true), on_daemon),
                (spec("off", &off_daemon, false, true), off_daemon),
                recording("plain", plain_daemon),
            ])
            .unwrap();
        bitmaps.mark(&request(Kind::Write, 0, 512));
        assert_eq!((on.dirty_bytes(), off.dirty_bytes()), (65536, 4096));
        let stored = bitmaps.to_store();
        let names: Vec<_> = stored
            .iter()
            .map(|b| (b.name.as_str(), b.recording))
            .collect();
        assert_eq!(
            names,
            [("on", true), ("off", false)],
            "persistent ones only"
        );
        assert_eq!(stored[0].bits[0], 0x01);
        assert_eq!(stored[1].bits[0], 0x04);
    }
}
