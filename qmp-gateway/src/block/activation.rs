//! The disks around a migration's switch-over, as QEMU's inactivation: the source owns
//! its images until the switch-over, then its daemons leave them clean and write them
//! no more, and it lets go of their locks (keeping its fds); the destination opens the
//! same images without locks and with daemons that write nothing while the VM arrives,
//! and at the switch-over takes the locks (which fails if the source still holds them:
//! then the VM stays on the source) and has its daemons serve the images for real, in
//! place: each opens the image chain again, writable, from fds sent with the call, and
//! reads the metadata afresh (a new daemon only where none runs or that fails). A
//! source whose switch-over failed does the same to take its disks back.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use ipc::{BlockRequest, ImageFormat};

use super::disk::BlockProtocol;
use super::error::BlockError;
use super::lock::{self, Perms};
use super::{BlockLayer, State};

/// One image's locks: its fd, what it takes and refuses, its path for errors.
pub(super) struct ImageLocks {
    pub fd: Arc<OwnedFd>,
    pub take: Perms,
    pub share: Perms,
    pub path: String,
}

/// The locks every disk's images hold while active (top as a disk's image, backing
/// files as read-only images), for the images whose protocol node locks at all.
fn locks(state: &State) -> Vec<ImageLocks> {
    state
        .disks
        .iter()
        .flat_map(|d| disk_locks(state, d))
        .collect()
}

/// The locks disk `disk`'s images hold while active.
pub(super) fn disk_locks(state: &State, disk: &super::disk::Disk) -> Vec<ImageLocks> {
    let mut out = Vec::new();
    for (i, (layer, fd)) in disk.config.layers.iter().zip(&disk.images).enumerate() {
        let locking = state
            .graph
            .image_node(&layer.node_name)
            .and_then(|n| state.graph.protocol_of(&n.name))
            .is_none_or(|p| p.locking);
        if !locking {
            continue;
        }
        let qcow2 = matches!(layer.format, ImageFormat::Qcow2(_));
        let (take, share) = match i {
            0 => Perms::for_top(qcow2, disk.config.read_only),
            _ => Perms::for_backing(),
        };
        out.push(ImageLocks {
            fd: fd.clone(),
            take,
            share,
            path: layer.filename.clone(),
        });
    }
    out
}

impl BlockLayer {
    /// Whether the images are let go of (`inactivate`) until `activate`.
    pub fn inactive(&self) -> bool {
        self.state.lock().graph.inactive()
    }

    /// Destination: images opened from now on take no locks (the source holds them).
    pub fn open_inactive(&self) {
        self.state.lock().graph.set_inactive(true);
    }

    /// Destination, before a postcopy migration's switch: each running disk daemon gets
    /// /dev/userfaultfd (`device`), for its vhost-user backend to register guest RAM
    /// with when vmm-core advises postcopy.
    pub fn userfault(&self, device: std::os::fd::BorrowedFd<'_>) -> Result<(), BlockError> {
        let daemons: Vec<(String, Arc<crate::children::link::Link<BlockProtocol>>)> = {
            let state = self.state.lock();
            (state.disks.iter())
                .filter_map(|d| Some((d.id.clone(), d.daemon.as_ref()?.link.clone())))
                .collect()
        };
        for (id, link) in daemons {
            link.request(BlockRequest::Userfault, &[device])
                .map_err(|e| BlockError::Migration(format!("disk {id}: {e}")))?;
        }
        Ok(())
    }

    /// Source, at the switch-over: every disk's daemon leaves its image clean (bitmaps
    /// stored) and writes it no more; then the images' locks go. A disk whose content
    /// a block migration copied keeps both: its images are not the destination's.
    pub fn inactivate(&self) -> Result<(), BlockError> {
        // The persistent bitmaps of nodes no disk uses too, as QEMU's inactivation stores
        // every node's.
        self.store_all_loose();
        let daemons: Vec<(String, Arc<crate::children::link::Link<BlockProtocol>>)> = {
            let mut state = self.state.lock();
            state.graph.set_inactive(true);
            for d in state.disks.iter_mut().filter(|d| !d.block_migrated) {
                d.config.inactive = true;
            }
            (state.disks.iter().filter(|d| !d.block_migrated))
                .filter_map(|d| Some((d.id.clone(), d.daemon.as_ref()?.link.clone())))
                .collect()
        };
        for (id, link) in daemons {
            link.request(BlockRequest::Inactivate, &[])
                .map_err(|e| BlockError::Migration(format!("disk {id}: {e}")))?;
        }
        let state = self.state.lock();
        let shared = state.disks.iter().filter(|d| !d.block_migrated);
        for l in shared.flat_map(|d| disk_locks(&state, d)) {
            lock::unlock(l.fd.as_fd(), l.take, l.share);
        }
        Ok(())
    }

    /// Destination at the switch-over, or a source whose switch-over failed: every disk
    /// takes its images' locks (if one cannot, none is held and the error says which),
    /// then the inactive ones get a daemon that serves their images for real (a disk a
    /// block migration wrote is active already: see block/migration.rs).
    pub fn activate(&self) -> Result<(), BlockError> {
        let ids: Vec<String> = {
            let mut state = self.state.lock();
            let all = locks(&state);
            for (i, l) in all.iter().enumerate() {
                if let Err(error) = lock::lock(l.fd.as_fd(), l.take, l.share) {
                    for taken in &all[..i] {
                        lock::unlock(taken.fd.as_fd(), taken.take, taken.share);
                    }
                    return Err(BlockError::Locked {
                        error,
                        path: l.path.clone(),
                    });
                }
            }
            state.graph.set_inactive(false);
            let inactive = state.disks.iter().filter(|d| d.config.inactive);
            let ids = inactive.map(|d| d.id.clone()).collect();
            for d in &mut state.disks {
                d.config.inactive = false;
            }
            ids
        };
        for id in ids {
            self.activate_daemon(&id)?;
        }
        Ok(())
    }

    /// Disk `id`'s daemon serves its images for real from now on: the running one, in
    /// place (no new process, no new connection for vmm-core: most of a switch-over's
    /// downtime otherwise), or a new daemon if none runs or that fails.
    pub(super) fn activate_daemon(&self, id: &str) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let running = {
            let state = self.state.lock();
            let disk = state
                .disk_by_layer_id(id)
                .ok_or_else(|| BlockError::DeviceNotFound(id.to_string()))?;
            let job = state.jobs.iter().find(|j| j.disk == disk.id);
            match &disk.daemon {
                Some(d) => Some((d.link.clone(), disk.launch(&state.groups, job)?)),
                None => None,
            }
        };
        if let Some((link, launch)) = running {
            match launch.activate(&link) {
                Ok(loaded) => {
                    let mut state = self.state.lock();
                    if let Some(d) = state.disks.iter_mut().find(|d| d.id == id) {
                        d.adopt_loaded(loaded);
                    }
                    return Ok(());
                }
                Err(e) => log::warn!("disk {id}: activating its daemon in place: {e}"),
            }
        }
        self.replace_daemon(id, None).map(drop)
    }
}

impl BlockLayer {
    /// A new connection to each disk's daemon, in launch order, for a vmm-core that
    /// takes over the VM (a live upgrade); each daemon accepts it once the previous
    /// vmm-core has gone.
    pub fn frontend_connections(&self) -> Result<Vec<OwnedFd>, BlockError> {
        let mut disks: Vec<(u32, std::os::unix::net::UnixStream)> = Vec::new();
        for d in &self.state.lock().disks {
            disks.push((d.index, d.connect()?));
        }
        disks.sort_by_key(|(i, _)| *i);
        Ok(disks.into_iter().map(|(_, s)| s.into()).collect())
    }
}
