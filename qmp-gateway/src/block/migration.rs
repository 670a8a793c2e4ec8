//! The disks of a block migration (QMP migrate's `blk` and `inc`): each writable disk's
//! content goes in the migration stream, read on the source and written on the
//! destination by the disk's own daemon. The gateway only makes the disk channels (a
//! socket pair per disk: one end to the daemon, `BlockRequest::MigrationSource` or
//! `MigrationSink`, the other to the migration agent) and routes the control.
//!
//! Such a disk's images are each side's own, not shared, so the switch-over's hand-over
//! of locks (activation.rs) leaves them out: the source keeps its locks and its daemon
//! (`Disk::block_migrated`); the destination, which opened every image inactive not
//! knowing whether blocks would come (QEMU's destination does not know either), takes
//! a disk's locks and gives it a daemon that writes as soon as the source names the
//! disk in its DISKS record, before any of its data arrives, as QEMU activates a
//! disk at its first block. A destination image some other process holds (the same
//! image as the source's, say) then fails the migration before anything is written.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use ipc::{BlockRequest, MigratedDisk, MigratedDisks};

use super::activation::disk_locks;
use super::bitmaps::node_size;
use super::disk::BlockProtocol;
use super::error::BlockError;
use super::lock;
use super::BlockLayer;
use crate::children::link::Link;

/// A disk channel's two ends: the daemon's and the agent's.
fn channel(id: &str) -> Result<(OwnedFd, OwnedFd), BlockError> {
    let (daemon, agent) = UnixStream::pair()
        .map_err(|e| BlockError::Migration(format!("disk {id}: its disk channel: {e}")))?;
    Ok((daemon.into(), agent.into()))
}

/// Hands `request` and the daemon's end of a new disk channel to `link`; the agent's end.
fn open_channel(
    id: &str,
    link: &Link<BlockProtocol>,
    request: BlockRequest,
) -> Result<OwnedFd, BlockError> {
    let (daemon, agent) = channel(id)?;
    link.request(request, &[daemon.as_fd()])
        .map_err(|e| BlockError::Migration(format!("disk {id}: {e}")))?;
    Ok(agent)
}

impl BlockLayer {
    /// Source, as a migration starts: with `copy` (blk or inc), every writable disk, in
    /// launch order, with its size and the agent's end of a disk channel whose daemon
    /// marks the disk's writes from now on; without, nothing. Either way the disks
    /// whose content this migration copies are the ones `inactivate` leaves be.
    pub fn migration_sources(
        &self,
        copy: bool,
    ) -> Result<Vec<(MigratedDisk, OwnedFd)>, BlockError> {
        let disks: Vec<(MigratedDisk, String, Arc<Link<BlockProtocol>>)> = {
            let mut state = self.state.lock();
            let mut out = Vec::new();
            for d in &state.disks {
                if !copy || d.config.read_only {
                    continue;
                }
                let size = node_size(&state.graph, &d.root);
                let link = d.daemon()?.link.clone();
                out.push((
                    MigratedDisk {
                        index: d.index,
                        size,
                    },
                    d.id.clone(),
                    link,
                ));
            }
            for d in &mut state.disks {
                d.block_migrated = copy && !d.config.read_only;
            }
            out
        };
        let mut sources: Vec<(MigratedDisk, OwnedFd)> = Vec::new();
        for (disk, id, link) in disks {
            let fd = open_channel(&id, &link, BlockRequest::MigrationSource)?;
            sources.push((disk, fd));
        }
        sources.sort_by_key(|(d, _)| d.index);
        Ok(sources)
    }

    /// Destination, when the source names the disks whose content it sends: each must
    /// be here, writable, of the same size; it then takes its images' locks and gets a
    /// daemon that writes them, which the returned disk channels (the agent's ends, in
    /// the order of `disks`) write through.
    pub fn migration_sinks(&self, disks: &MigratedDisks) -> Result<Vec<OwnedFd>, BlockError> {
        let mut ids = Vec::new();
        {
            let state = self.state.lock();
            for m in &disks.disks {
                let Some(d) = state.disks.iter().find(|d| d.index == m.index) else {
                    return Err(BlockError::Migration(format!(
                        "the source copies disk {} and this VM has {} disks",
                        m.index,
                        state.disks.len()
                    )));
                };
                if d.config.read_only {
                    return Err(BlockError::Migration(format!(
                        "disk {}: it is read-only here, and its content is copied",
                        d.id
                    )));
                }
                let size = node_size(&state.graph, &d.root);
                if size != m.size {
                    return Err(BlockError::Migration(format!(
                        "disk {}: the source's is {} bytes, this one {} bytes",
                        d.id, m.size, size
                    )));
                }
                ids.push(d.id.clone());
            }
        }
        for id in &ids {
            self.activate_disk(id)?;
        }
        let mut sinks = Vec::new();
        for id in &ids {
            let link = {
                let state = self.state.lock();
                let d = state
                    .disk_by_layer_id(id)
                    .ok_or_else(|| BlockError::DeviceNotFound(id.clone()))?;
                d.daemon()?.link.clone()
            };
            sinks.push(open_channel(id, &link, BlockRequest::MigrationSink)?);
        }
        Ok(sinks)
    }

    /// Destination: disk `id` takes its images' locks (none is kept if one fails) and,
    /// if it was inactive, its daemon serves (and writes) its images for real.
    fn activate_disk(&self, id: &str) -> Result<(), BlockError> {
        {
            let mut state = self.state.lock();
            let d = state
                .disk_by_layer_id(id)
                .ok_or_else(|| BlockError::DeviceNotFound(id.to_string()))?;
            if !d.config.inactive {
                return Ok(());
            }
            let all = disk_locks(&state, d);
            for (i, l) in all.iter().enumerate() {
                if let Err(error) = lock::lock(l.fd.as_fd(), l.take, l.share) {
                    for taken in &all[..i] {
                        lock::unlock(taken.fd.as_fd(), taken.take, taken.share);
                    }
                    return Err(BlockError::Migration(format!(
                        "disk {id}: {}",
                        BlockError::Locked {
                            error,
                            path: l.path.clone(),
                        }
                    )));
                }
            }
            if let Some(d) = state.disks.iter_mut().find(|d| d.id == id) {
                d.config.inactive = false;
            }
        }
        self.activate_daemon(id)
            .map_err(|e| BlockError::Migration(format!("disk {id}: {e}")))
    }
}
