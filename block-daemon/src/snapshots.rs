//! Snapshots of the node a daemon serves, each done with the device quiesced (no
//! request in flight, new ones wait in their rings, the guest sees no error): internal
//! snapshots of the top image (qcow2's, created and deleted by the qcow2 library), and
//! external ones, where a new image (opened by the gateway, its fd with the call) goes
//! on top of the chain served now and the old top is only read from then on. The
//! last new top can be taken off again (a transaction that failed elsewhere). The
//! backing file the top image's header names can be rewritten (change-backing-file).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use ipc::{ImageFormat, ImageLayer, SnapshotRecord};
use parking_lot::Mutex;

use crate::device::{BlkDevice, QUIESCE_TIMEOUT};
use crate::disk::Served;
use crate::formats::qcow2::snapshot::SnapshotInfo;
use crate::formats::qcow2::snapshot_ops::NewSnapshot;
use crate::formats::qcow2::Qcow2;
use crate::formats::{Format, FormatError};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Quiesce(#[from] crate::device::QuiesceTimeout),
    #[error("Block format '{0}' does not support internal snapshots")]
    NoInternal(&'static str),
    #[error("{0}")]
    Format(#[from] FormatError),
    #[error("a new top must be a qcow2 image (it has a backing file)")]
    TopNotQcow2,
    #[error("the new top came without its fd")]
    NoFd,
    #[error("Could not open '{filename}': {error}")]
    Open {
        filename: String,
        error: FormatError,
    },
    #[error("no new top to take off")]
    NothingPushed,
    #[error("a qcow2 image cannot be served with cache.direct=on yet ('{0}')")]
    Direct(String),
}

/// The chains a node served before each new top (most recent last).
#[derive(Default)]
pub struct Snapshots {
    below: Mutex<Vec<Served>>,
}

/// A snapshot as the gateway hears of it.
pub fn record(s: &SnapshotInfo) -> SnapshotRecord {
    SnapshotRecord {
        id: s.id.clone(),
        name: s.name.clone(),
        vm_state_size: s.vm_state_size,
        date_sec: u64::from(s.date_sec),
        date_nsec: u64::from(s.date_nsec),
        vm_clock_nsec: s.vm_clock_nsec,
        icount: s.icount,
    }
}

/// Runs `f` on the top image as qcow2, with the device quiesced.
fn on_qcow2_top<T>(
    device: &BlkDevice,
    f: impl FnOnce(&Qcow2) -> Result<T, FormatError>,
) -> Result<T, SnapshotError> {
    let top = device.disk().format();
    let Some(qcow2) = top.as_any().and_then(|a| a.downcast_ref::<Qcow2>()) else {
        return Err(SnapshotError::NoInternal(top.name()));
    };
    let _quiesced = device.quiesce(QUIESCE_TIMEOUT)?;
    Ok(f(qcow2)?)
}

impl Snapshots {
    /// Internal snapshot `name` of the top image (QEMU gives it the next free id).
    pub fn create_internal(
        &self,
        device: &BlkDevice,
        name: &str,
    ) -> Result<SnapshotRecord, SnapshotError> {
        on_qcow2_top(device, |q| {
            q.snapshot_create(NewSnapshot {
                id: None,
                name: name.to_string(),
                ..NewSnapshot::default()
            })
            .map(|s| record(&s))
        })
    }

    /// Deletes the top image's internal snapshot matching `id` and/or `name`.
    pub fn delete_internal(
        &self,
        device: &BlkDevice,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<SnapshotRecord, SnapshotError> {
        on_qcow2_top(device, |q| q.snapshot_delete(id, name).map(|s| record(&s)))
    }

    /// Names `backing` (empty: none) with `format` in the top image's header.
    pub fn change_backing_file(
        &self,
        device: &BlkDevice,
        backing: &str,
        format: Option<&str>,
    ) -> Result<(), SnapshotError> {
        on_qcow2_top(device, |q| q.name_backing(backing, format))
    }

    /// Opens `layer` (from `fds`' one fd) over the chain served now and serves it as
    /// the new top. The old top is flushed first and left clean (nothing reserved,
    /// not dirty): it is a backing file from now on.
    pub fn push_top(
        &self,
        device: &BlkDevice,
        layer: &ImageLayer,
        fds: Vec<OwnedFd>,
    ) -> Result<(), SnapshotError> {
        let ImageFormat::Qcow2(opts) = &layer.format else {
            return Err(SnapshotError::TopNotQcow2);
        };
        let file = File::from(fds.into_iter().next().ok_or(SnapshotError::NoFd)?);
        let disk = device.disk();
        if disk.cache().direct() {
            return Err(SnapshotError::Direct(layer.filename.clone()));
        }
        let _quiesced = device.quiesce(QUIESCE_TIMEOUT)?;
        let old = disk.served();
        old.format.flush()?;
        let top = Qcow2::open(file, Some(old.format.clone()), opts, !disk.read_only()).map_err(
            |error| SnapshotError::Open {
                filename: layer.filename.clone(),
                error,
            },
        )?;
        // Its persistent bitmaps record nothing from now on: stored as they are (as QEMU
        // does when the old top becomes read-only).
        if let Err(e) = device.dirty_bitmaps().store_in(disk, &*old.format) {
            log::warn!("storing the old top's bitmaps: {e}");
        }
        if let Err(e) = old.format.close() {
            // Only the old top's tidiness is at stake (a leak qemu-img check repairs).
            log::warn!("leaving the old top clean: {e}");
        }
        let top: Arc<dyn Format> = Arc::new(top);
        let below = disk.replace_served(Served {
            format: top,
            flush_fd: None,
        });
        self.below.lock().push(below);
        log::info!("node serves a new top image {}", layer.filename);
        Ok(())
    }

    /// The disk's images went (no medium): a chain kept below is dropped (closed), never
    /// served again.
    pub fn forget_below(&self) {
        self.below.lock().clear();
    }

    /// Takes the last new top off: the chain under it is served again (its top
    /// writable again). The taken-off image is closed clean.
    pub fn pop_top(&self, device: &BlkDevice) -> Result<(), SnapshotError> {
        let mut below = self.below.lock();
        let Some(old) = below.pop() else {
            return Err(SnapshotError::NothingPushed);
        };
        let _quiesced = device.quiesce(QUIESCE_TIMEOUT)?;
        if device.disk().keeps_bitmaps() {
            // Written again: its stored bitmaps are in use until stored back.
            if let Some(q) = old.format.as_any().and_then(|a| a.downcast_ref::<Qcow2>()) {
                if let Err(e) = q.load_bitmaps() {
                    log::warn!("marking the old top's bitmaps in use: {e}");
                }
            }
        }
        let gone = device.disk().replace_served(old);
        if let Err(e) = gone.format.close() {
            log::warn!("closing the top taken off: {e}");
        }
        Ok(())
    }
}
