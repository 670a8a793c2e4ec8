//! Block jobs the daemon runs on its node (QMP's mirrors, backups, streams and commits):
//! one at a time, each on a thread of its own, reading the node as the guest sees it and
//! writing a target the gateway opened. The gateway keeps the job's bitmaps, so a new
//! daemon carries a job on (`JobSpec::resume`). This file starts a job and takes the
//! control calls (pause, resume, cancel, complete, speed); `control.rs` is what a job's
//! thread and those calls share, `mirror.rs` the mirror's copy loop, `backup.rs` the
//! backup's, `stream.rs` and `commit.rs` theirs, `kernel_copy.rs` the copy between raw
//! files the mirror and the backup make in the kernel.

mod backup;
mod commit;
mod control;
mod kernel_copy;
mod layers;
mod mirror;
mod stream;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use ipc::{
    BlockEvent, JobControl, JobEvent, JobKind, JobSpec, JobStatus, MirrorSpec, SharedBitmap,
    SyncMode,
};
use parking_lot::{Condvar, Mutex};

pub use control::Events;
use control::{Shared, State};

use crate::device::{BlkDevice, QUIESCE_TIMEOUT};
use crate::dirty::WriteHook;
use crate::formats::chain::{self, Chain, ChainOptions};
use crate::formats::{Format, FormatError};
use layers::{allocated_between, layer_at};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job '{0}' is running; one job at a time")]
    Busy(String),
    #[error("no job '{0}' runs here")]
    NoJob(String),
    #[error("job '{0}' is not ready")]
    NotReady(String),
    #[error("the job came without its target and bitmaps")]
    MissingFds,
    #[error("the job's bitmap: {0}")]
    Bitmap(#[from] ipc::dirty_bitmap::BitmapError),
    #[error("Could not open '{filename}': {error}")]
    Target {
        filename: String,
        error: crate::formats::chain::ChainError,
    },
    #[error("starting the job's thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Quiesce(#[from] crate::device::QuiesceTimeout),
    #[error("Dirty bitmap '{0}' not found")]
    NoBitmap(String),
    #[error("the chain served has no image at depth {0}")]
    NotInChain(usize),
    #[error("looking at what the images above base hold: {0}")]
    Allocation(FormatError),
    #[error("growing base to the disk's size: {0}")]
    GrowBase(FormatError),
}

/// How much lower a job's thread runs than the queues' (nice): when the CPUs are busy the
/// guest's requests come first and the copy takes what is left. bench/blocks-jobs, a
/// mirror while the guest reads at full speed on two cores: at nice 10 the copy got so
/// little that the mirror took 0.85-1.27x QSD's time; at 0 the guest's IOPS fell to
/// 0.85x QSD's guest's; at 5, 0.73x the time with 1.2-1.6x the IOPS.
const JOB_NICE: libc::c_int = 5;

/// A job's thread's nice. A backup's is the queues': until it ends, the guest's first
/// write to each chunk waits for that chunk's copy, so the sooner the backup is done the
/// sooner the guest writes at full speed (its guest still wrote 40-100 times as fast as
/// QSD's during it). The others copy beside a guest that waits for nothing of theirs.
fn nice_of(kind: &JobKind) -> libc::c_int {
    match kind {
        JobKind::Backup(_) => 0,
        _ => JOB_NICE,
    }
}

/// Lowers the calling thread's priority to `nice` (Linux keeps a nice value per
/// thread); a failure only costs the guest some speed.
fn lower_priority(nice: libc::c_int) {
    if nice == 0 {
        return;
    }
    // SAFETY: setpriority with integer arguments; who 0 with PRIO_PROCESS is the
    // calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        log::warn!(
            "lowering the job's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Marks in `bitmap` the chunks that an image above depth `base_depth` of `top`'s
/// chain holds.
fn mark_allocated(
    top: &Arc<dyn Format>,
    base_depth: usize,
    bitmap: &SharedBitmap,
) -> Result<(), JobError> {
    let g = bitmap.granularity();
    let size = top.virtual_size();
    for c in 0..bitmap.chunks() {
        let offset = c * g;
        let len = g.min(size - offset);
        if allocated_between(top, 0, Some(base_depth), offset, len).map_err(JobError::Allocation)? {
            bitmap.mark(offset, len);
        }
    }
    Ok(())
}

/// Another handle on a job's image file (`layer`'s), kept to open it again later.
fn second_handle(layer: &ipc::ImageLayer, file: &File) -> Result<File, JobError> {
    file.try_clone().map_err(|error| JobError::Target {
        filename: layer.filename.clone(),
        error: chain::ChainError::Io {
            filename: layer.filename.clone(),
            error,
        },
    })
}

/// A job's image `layer` (its `file`) opened alone over `below`, an image of the chain
/// the daemon serves.
fn open_target_over(
    layer: &ipc::ImageLayer,
    file: File,
    below: Option<Arc<dyn Format>>,
    options: &ChainOptions,
) -> Result<Chain, JobError> {
    let top = chain::open_over(layer, file, below, options).map_err(|error| JobError::Target {
        filename: layer.filename.clone(),
        error,
    })?;
    Ok(Chain {
        top,
        flush_fd: None,
    })
}

/// The job that runs, if any.
pub struct Jobs {
    current: Mutex<Option<(Arc<Shared>, JoinHandle<()>)>>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            current: Mutex::new(None),
        }
    }
}

impl Jobs {
    /// Starts `spec` on `device`; fds: the target image, the dirty and copy bitmaps.
    pub fn start(
        &self,
        device: &BlkDevice,
        spec: JobSpec,
        fds: Vec<OwnedFd>,
        events: Events,
    ) -> Result<(), JobError> {
        let mut current = self.current.lock();
        if let Some((shared, thread)) = current.as_ref() {
            if !thread.is_finished() && !shared.state.lock().done {
                return Err(JobError::Busy(shared.id.clone()));
            }
        }
        // A job over (the gateway may have heard of it before its thread returned).
        if let Some((shared, thread)) = current.take() {
            if thread.join().is_err() {
                log::error!("job {}: its thread panicked", shared.id);
            }
        }
        let mut fds = fds.into_iter();
        let target = match spec.kind.target() {
            Some(layer) => Some((layer.clone(), fds.next().ok_or(JobError::MissingFds)?)),
            None => None,
        };
        let granularity = spec.kind.granularity();
        let disk_size = device.disk().size();
        let mut bitmaps = Vec::new();
        for _ in 0..spec.kind.bitmaps() {
            let fd = fds.next().ok_or(JobError::MissingFds)?;
            bitmaps.push(Arc::new(SharedBitmap::map(
                fd.as_fd(),
                disk_size,
                granularity,
            )?));
        }
        let options = |unmap| ChainOptions {
            writable: true,
            direct: device.disk().cache().direct(),
            counters: None,
            discard_unmap: unmap,
            // A target's stored bitmaps would not follow what the job writes.
            keep_bitmaps: false,
        };
        // The target image: alone (a mirror's, a backup's), or base over the chain below
        // it (a commit's).
        let target = match (target, &spec.kind) {
            (Some((layer, fd)), JobKind::Commit(c)) => {
                let served = device.disk().format();
                let below = layer_at(&served, c.base_depth)
                    .ok_or(JobError::NotInChain(c.base_depth))?
                    .backing();
                let file = File::from(fd);
                let again = second_handle(&layer, &file)?;
                let base = open_target_over(&layer, file, below, &options(true))?;
                Some((base, Some(again)))
            }
            // A mirror of the top alone (sync top) or of what the guest writes (none)
            // reads through to what its target goes over when it completes: the
            // source's backing chain, or the source itself (QEMU sets the same backing
            // at completion). A partial cluster's copy on write reads it too.
            (Some((layer, fd)), JobKind::Mirror(m)) if m.sync != SyncMode::Full => {
                let served = device.disk().format();
                let below = match m.sync {
                    SyncMode::Top => served.backing(),
                    _ => Some(served),
                };
                let opened = open_target_over(&layer, File::from(fd), below, &options(m.unmap))?;
                Some((opened, None))
            }
            // A read-only disk's top, read-write for a stream: over the chain below it,
            // the file kept to open it read-only again at the end.
            (Some((layer, fd)), JobKind::Stream(_)) => {
                let served = device.disk().format();
                let file = File::from(fd);
                let again = second_handle(&layer, &file)?;
                let top = open_target_over(&layer, file, served.backing(), &options(false))?;
                Some((top, Some(again)))
            }
            (Some((layer, fd)), kind) => {
                let unmap = match kind {
                    JobKind::Mirror(m) => m.unmap,
                    _ => true,
                };
                let opened = chain::open(
                    std::slice::from_ref(&layer),
                    vec![File::from(fd)],
                    &options(unmap),
                )
                .map_err(|error| JobError::Target {
                    filename: layer.filename.clone(),
                    error,
                })?;
                Some((opened, None))
            }
            (None, _) => None,
        };
        if let (Some((t, _)), JobKind::Commit(_), false) = (&target, &spec.kind, spec.resume) {
            if t.top.virtual_size() < disk_size {
                // A base smaller than the disk grows to its size first (QEMU's commit
                // truncates base up too); the gateway holds resize on its fd.
                t.top.resize(disk_size).map_err(JobError::GrowBase)?;
            }
        }
        if let Some((t, _)) = &target {
            if t.top.virtual_size() != disk_size && matches!(spec.kind, JobKind::Mirror(_)) {
                // Taken, and over at once (QEMU's words).
                events(BlockEvent::Job(JobEvent::Ended {
                    id: spec.id.clone(),
                    offset: 0,
                    len: 0,
                    cancelled: false,
                    error: Some("Source and target image have different sizes".into()),
                }));
                return Ok(());
            }
        }
        let mirror_like = spec.kind.has_ready();
        let shared = Arc::new(Shared {
            id: spec.id.clone(),
            state: Mutex::new(State {
                speed: spec.speed,
                ready: spec.ready,
                offset: spec.offset,
                paused: spec.paused,
                complete: spec.completing && spec.ready,
                ..State::default()
            }),
            wake: Condvar::new(),
            left: mirror_like.then(|| (bitmaps[0].clone(), bitmaps[1].clone())),
        });
        let bitmap = |i: usize| bitmaps[i].clone();
        let nice = nice_of(&spec.kind);
        // A mirror, or an active commit (a mirror into base), and the depth above which
        // what the images hold is to copy (sync top: the top's; a commit: down to base).
        let as_mirror = match &spec.kind {
            JobKind::Mirror(m) => Some((m.clone(), (m.sync == SyncMode::Top).then_some(1))),
            JobKind::Commit(c) if c.active() => Some((
                MirrorSpec {
                    target: c.base.clone(),
                    sync: SyncMode::Top,
                    granularity: c.granularity,
                    buf_size: c.buf_size,
                    unmap: true,
                    fresh_target: false,
                },
                Some(c.base_depth),
            )),
            _ => None,
        };
        let run: Box<dyn FnOnce() + Send> = match (spec.kind.clone(), target, as_mirror) {
            (_, Some((target, _)), Some((mirror, held_above))) => {
                if let (Some(depth), false) = (held_above, spec.resume) {
                    mark_allocated(&device.disk().format(), depth, &bitmaps[0])?;
                }
                self.mirror(
                    device,
                    spec,
                    mirror,
                    target,
                    &bitmaps,
                    shared.clone(),
                    events,
                )
            }
            (JobKind::Commit(c), Some((target, Some(base_file))), None) => {
                let served = device.disk().format();
                let top =
                    layer_at(&served, c.top_depth).ok_or(JobError::NotInChain(c.top_depth))?;
                let job = commit::Commit {
                    device: device.clone(),
                    spec,
                    commit: c,
                    top,
                    base: target.top,
                    base_file,
                    options: options(true),
                    done: bitmap(0),
                    shared: shared.clone(),
                    events,
                };
                Box::new(move || job.run())
            }
            (JobKind::Stream(stream), target, None) => {
                let writable_top = match (target, &stream.writable_top) {
                    (Some((top, Some(file))), Some(layer)) => {
                        // Served from now on (the guest still may not write: its
                        // device is read-only); read-only again at the job's end.
                        let _quiesced = device.quiesce(QUIESCE_TIMEOUT)?;
                        device.disk().replace_served(crate::disk::Served {
                            format: top.top,
                            flush_fd: None,
                        });
                        Some((layer.clone(), file))
                    }
                    (None, None) => None,
                    _ => return Err(JobError::MissingFds),
                };
                let settled = Arc::new(stream::Settled::new(bitmap(0)));
                // Marked from now on, before a request the daemon serves after this call.
                device
                    .dirty_bitmaps()
                    .set_job(Some(settled.clone() as Arc<dyn WriteHook>));
                let job = stream::Stream {
                    device: device.clone(),
                    spec,
                    stream,
                    writable_top,
                    settled,
                    shared: shared.clone(),
                    events,
                };
                Box::new(move || job.run())
            }
            (JobKind::Backup(backup), Some((target, _)), None) => {
                let (to_copy, done) = (bitmap(0), bitmap(1));
                // The point in time: nothing in flight, every later write copies first.
                let _quiesced = device.quiesce(QUIESCE_TIMEOUT)?;
                if !spec.resume {
                    match &backup.bitmap {
                        Some(name) => {
                            if !device.dirty_bitmaps().take_named(name, &to_copy)? {
                                return Err(JobError::NoBitmap(name.clone()));
                            }
                        }
                        // What the top holds (sync top), or all of it.
                        None if backup.sync == SyncMode::Top => {
                            mark_allocated(&device.disk().format(), 1, &to_copy)?
                        }
                        None => to_copy.mark_all(),
                    }
                }
                shared.state.lock().len = to_copy.dirty_bytes();
                let copier = Arc::new(backup::Copier::new(
                    device.clone(),
                    target,
                    backup,
                    to_copy,
                    done,
                    shared.clone(),
                ));
                device
                    .dirty_bitmaps()
                    .set_job(Some(copier.clone() as Arc<dyn WriteHook>));
                let job = backup::Backup {
                    spec,
                    copier,
                    events,
                };
                Box::new(move || job.run())
            }
            _ => return Err(JobError::MissingFds),
        };
        let thread = std::thread::Builder::new()
            .name("block-job".into())
            .spawn(move || {
                lower_priority(nice);
                run()
            })
            .map_err(|e| {
                device.dirty_bitmaps().set_job(None);
                JobError::Thread(e)
            })?;
        *current = Some((shared, thread));
        Ok(())
    }

    /// A mirror (or an active commit: a mirror into base) of `device` to `target`.
    #[allow(clippy::too_many_arguments)]
    fn mirror(
        &self,
        device: &BlkDevice,
        spec: JobSpec,
        mirror: MirrorSpec,
        target: Chain,
        bitmaps: &[Arc<SharedBitmap>],
        shared: Arc<Shared>,
        events: Events,
    ) -> Box<dyn FnOnce() + Send> {
        let dirty = bitmaps[0].clone();
        // Marked from now on, before a request the daemon serves after this call.
        device
            .dirty_bitmaps()
            .set_job(Some(dirty.clone() as Arc<dyn WriteHook>));
        let job = mirror::Mirror {
            device: device.clone(),
            spec,
            mirror,
            target,
            dirty,
            copying: bitmaps[1].clone(),
            shared,
            events,
            first_pass_done: std::cell::Cell::new(false),
        };
        Box::new(move || job.run())
    }

    /// The running job `id`'s control state.
    fn running(&self, id: &str) -> Result<Arc<Shared>, JobError> {
        match self.current.lock().as_ref() {
            Some((shared, thread))
                if shared.id == id && !thread.is_finished() && !shared.state.lock().done =>
            {
                Ok(shared.clone())
            }
            _ => Err(JobError::NoJob(id.to_string())),
        }
    }

    pub fn control(&self, id: &str, control: JobControl) -> Result<(), JobError> {
        let shared = self.running(id)?;
        let mut s = shared.state.lock();
        match control {
            JobControl::Pause => s.paused = true,
            JobControl::Resume => {
                s.paused = false;
                s.failed = false;
                s.nospace = false;
            }
            JobControl::Cancel { force } => s.cancel = Some(force),
            JobControl::Complete if !s.ready => return Err(JobError::NotReady(id.to_string())),
            JobControl::Complete => s.complete = true,
            JobControl::SetSpeed(speed) => s.speed = speed,
        }
        shared.wake.notify_all();
        Ok(())
    }

    /// The running job's progress.
    pub fn status(&self) -> Option<JobStatus> {
        let current = self.current.lock();
        let (shared, thread) = current.as_ref()?;
        if thread.is_finished() || shared.state.lock().done {
            return None;
        }
        let (offset, len) = shared.progress();
        let s = shared.state.lock();
        Some(JobStatus {
            id: shared.id.clone(),
            offset,
            len,
            speed: s.speed,
            paused: s.paused || s.failed,
            ready: s.ready,
            busy: s.busy,
            failed: s.failed,
            nospace: s.nospace,
        })
    }

    /// Stops the running job, if any, where it is and waits for its thread (the daemon
    /// is going; the gateway gives the job to the next one).
    pub fn stop(&self) {
        let Some((shared, thread)) = self.current.lock().take() else {
            return;
        };
        shared.state.lock().detach = true;
        shared.wake.notify_all();
        if thread.join().is_err() {
            log::error!("job {}: its thread panicked", shared.id);
        }
    }
}
