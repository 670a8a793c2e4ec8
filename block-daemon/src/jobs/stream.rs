//! The stream's copy: each chunk of the disk that the top image does not hold, and that
//! an image between the top and base does, is read through the chain and written into
//! the top, in order. `settled` (the gateway's memory, so a new daemon carries on)
//! marks the chunks copied, and the chunks the guest wrote: a guest write allocates
//! its clusters in the top with their old data around it (a chunk is one cluster of
//! the top), so such a chunk needs no copy, and a copy of old data after it would undo
//! it. One lock orders a chunk's copy and a write's mark.
//!
//! At the end, with the device quiesced, the whole disk is looked at once more (a write
//! that failed marked a chunk it did not fill) and what is left is copied; then the top
//! names base as its backing file and reads through it: the images between are out of
//! the chain.
//!
//! A read-only disk's top is served read-write while the job runs (the gateway opened
//! it so; the guest's device stays read-only), and read-only again at the end.

use std::fs::File;
use std::sync::Arc;

use ipc::{errno_text, ImageLayer, IoOperation, JobSpec, SharedBitmap, StreamSpec};
use parking_lot::Mutex;

use super::control::{report, walk_in_order, End, Events, Shared};
use super::layers::{allocated_between, layer_at};
use crate::device::{BlkDevice, QUIESCE_TIMEOUT};
use crate::dirty::WriteHook;
use crate::disk::Served;
use crate::formats::chain::{self, ChainOptions};
use crate::formats::qcow2::Qcow2;
use crate::formats::FormatError;

/// The most one read and one write move.
const MAX_IO: u64 = 1 << 20;

/// What the guest's writes and the job's thread share.
pub struct Settled {
    bitmap: Arc<SharedBitmap>,
    /// Held while a chunk is looked at and copied: a write to it waits.
    copying: Mutex<()>,
}

impl Settled {
    pub fn new(bitmap: Arc<SharedBitmap>) -> Settled {
        Settled {
            bitmap,
            copying: Mutex::new(()),
        }
    }
}

impl Settled {
    /// Runs `copy` for the chunk holding `offset` unless a guest write settled it (then
    /// 0 bytes were copied); a write to the chunk waits until the copy is done.
    fn copy_unless_written<E>(
        &self,
        offset: u64,
        copy: impl FnOnce() -> Result<u64, E>,
    ) -> Result<u64, E> {
        let _copying = self.copying.lock();
        if self.bitmap.is_dirty(offset) {
            // The guest wrote it meanwhile.
            return Ok(0);
        }
        copy()
    }
}

impl WriteHook for Settled {
    fn before_write(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let g = self.bitmap.granularity();
        // Marks are never taken back while the job runs: settled chunks need no lock.
        if (offset / g..=(offset + len - 1) / g).all(|c| self.bitmap.is_dirty(c * g)) {
            return;
        }
        let _copying = self.copying.lock();
        self.bitmap.mark(offset, len);
    }
}

pub struct Stream {
    pub device: BlkDevice,
    pub spec: JobSpec,
    pub stream: StreamSpec,
    /// A read-only disk's top, served read-write for the job: its layer and file.
    pub writable_top: Option<(ImageLayer, File)>,
    pub settled: Arc<Settled>,
    pub shared: Arc<Shared>,
    pub events: Events,
}

type CopyError = (IoOperation, FormatError);

impl Stream {
    pub fn run(self) {
        let end = self.copy_all();
        self.device.dirty_bitmaps().set_job(None);
        if let Err(e) = self.read_only_again() {
            log::warn!("job {}: the top stays read-write here: {e}", self.spec.id);
        }
        report(&self.shared, &self.events, end);
    }

    /// A read-only disk's top, served read-write for the job: closed clean and opened
    /// read-only again over what it reads through now.
    fn read_only_again(&self) -> Result<(), String> {
        let Some((layer, file)) = &self.writable_top else {
            return Ok(());
        };
        let disk = self.device.disk();
        let _quiesced = self
            .device
            .quiesce(QUIESCE_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let top = disk.format();
        top.close().map_err(|e| e.to_string())?;
        let file = file.try_clone().map_err(|e| e.to_string())?;
        let options = ChainOptions {
            writable: false,
            direct: disk.cache().direct(),
            counters: None,
            discard_unmap: false,
            keep_bitmaps: false,
        };
        let read_only =
            chain::open_over(layer, file, top.backing(), &options).map_err(|e| e.to_string())?;
        disk.replace_served(Served {
            format: read_only,
            flush_fd: None,
        });
        Ok(())
    }

    fn copy_all(&self) -> Result<End, String> {
        let bitmap = &self.settled.bitmap;
        let size = self.device.disk().size();
        if self.device.disk().format().backing().is_none() {
            // Nothing below the top: over at once, as QEMU's (len 0).
            return Ok(End::Completed);
        }
        walk_in_order(
            &self.shared,
            &self.events,
            &self.spec,
            bitmap,
            size,
            self.device.disk().format(),
            |offset, len| {
                self.settled
                    .copy_unless_written(offset, || self.copy(offset, len))
            },
            || self.finish(size),
        )
    }

    /// Copies into the top what it does not hold of `offset..offset + len` and an image
    /// above base does; the bytes copied.
    fn copy(&self, offset: u64, len: u64) -> Result<u64, CopyError> {
        let top = self.device.disk().format();
        let read = |e| (IoOperation::Read, e);
        let mut copied = 0;
        let mut at = offset;
        while at < offset + len {
            let (own, n) = top
                .allocated(at, (offset + len - at).min(MAX_IO))
                .map_err(read)?;
            if !own && allocated_between(&top, 1, self.stream.base_depth, at, n).map_err(read)? {
                let mut buf = vec![0u8; n as usize];
                top.read(at, &mut buf).map_err(read)?;
                let written = if buf.iter().all(|&b| b == 0) {
                    top.write_zeroes(at, n, false)
                } else {
                    top.write(at, &buf)
                };
                written.map_err(|e| (IoOperation::Write, e))?;
                copied += n;
            }
            at += n.max(1);
        }
        Ok(copied)
    }

    /// With the device quiesced: copies what is left, then the top names base and
    /// reads through it.
    fn finish(&self, size: u64) -> Result<(), String> {
        let text = |e: FormatError| errno_text(&e.into_io());
        let _quiesced = self
            .device
            .quiesce(QUIESCE_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let top = self.device.disk().format();
        if top.backing().is_none() {
            // Nothing below the top: nothing to stream (QEMU's job ends at once too).
            return Ok(());
        }
        self.copy(0, size).map_err(|(_, e)| text(e))?;
        top.flush().map_err(text)?;
        let Some(qcow2) = top.as_any().and_then(|a| a.downcast_ref::<Qcow2>()) else {
            return Err(format!("a {} image has no backing file", top.name()));
        };
        if !self.device.disk().read_only() || self.writable_top.is_some() {
            qcow2
                .name_backing(
                    &self.stream.backing_file,
                    self.stream.backing_format.as_deref(),
                )
                .map_err(text)?;
        }
        let base = self.stream.base_depth.and_then(|d| layer_at(&top, d));
        qcow2.replace_backing(base);
        log::info!(
            "job {}: the top reads through {} now",
            self.spec.id,
            match self.stream.backing_file.as_str() {
                "" => "nothing",
                name => name,
            }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// A guest write to a chunk being copied waits for the copy, and marks the chunk so
    /// no later copy lands on it; a chunk written before its copy is not copied.
    #[test]
    fn a_write_waits_for_the_copy_of_its_chunk_and_settles_it() {
        let settled = Arc::new(Settled::new(Arc::new(
            SharedBitmap::create(1 << 20, 65536).unwrap(),
        )));
        let marked = Arc::new(AtomicBool::new(false));
        let (read_tx, read_rx) = std::sync::mpsc::channel();
        let writer = {
            let (settled, marked) = (settled.clone(), marked.clone());
            std::thread::spawn(move || {
                read_rx.recv().unwrap();
                settled.before_write(4096, 512);
                marked.store(true, Ordering::SeqCst);
            })
        };
        let copied = settled.copy_unless_written(0, || {
            // The chunk's old data is read; the guest's write comes now.
            read_tx.send(()).unwrap();
            let until = Instant::now() + Duration::from_millis(200);
            while Instant::now() < until {
                assert!(
                    !marked.load(Ordering::SeqCst),
                    "the write went ahead while its chunk's old data was being copied"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok::<u64, ()>(65536)
        });
        assert_eq!(copied, Ok(65536));
        writer.join().unwrap();
        assert!(marked.load(Ordering::SeqCst));
        // The chunk is settled: a copy after the write does not happen.
        let again = settled.copy_unless_written(0, || -> Result<u64, ()> {
            panic!("a written chunk copied again")
        });
        assert_eq!(again, Ok(0));
        // Another chunk is copied.
        assert_eq!(
            settled.copy_unless_written(65536, || Ok::<u64, ()>(1)),
            Ok(1)
        );
    }
}
