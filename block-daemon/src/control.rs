//! Gateway mode: the daemon's configuration and files arrive on an inherited control
//! socket. The first call opens the node (the vhost-user listener fd, the disk's counters
//! page, which the gateway keeps across daemons, then one fd per image of the node's
//! chain, top first, which `formats::chain` opens bottom up, then one memfd per dirty
//! bitmap); later calls manage it (statistics, resize, I/O limits, write threshold,
//! retrying the requests held after a failure, a migration's inactivation and activation
//! in place, /dev/userfaultfd for a postcopy migration's destination) while a serving
//! thread answers the frontend. Events (the write threshold, failed requests) go back on
//! the same socket. Snapshots (internal, or a new top image over the chain) are
//! `snapshots`'; dirty bitmaps (shared memory the gateway keeps) are mapped here and
//! marked by the device.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use ipc::child::{ChildError, ChildLink};
use ipc::dirty_bitmap::{bytes_for, MAX_BITMAPS_PER_DISK, MAX_BITMAP_MEMORY};
use ipc::{
    errno_text, BlockCounters, BlockEvent, BlockOpen, BlockReply, BlockRequest, DirtyBitmapSpec,
    ImageLayer, RemoteError, SharedBitmap, StoredBitmaps,
};
use vhost_backend::UserfaultDevice;

use crate::device::{BlkDevice, Policy, DRAIN_TIMEOUT, QUEUE_SIZE, QUIESCE_TIMEOUT};
use crate::dirty::Bitmap;
use crate::disk::{CacheMode, Disk, Served};
use crate::engine::{self, EngineKind};
use crate::formats::chain::{self, ChainOptions};
use crate::formats::no_medium::NoMedium;
use crate::formats::qcow2::Qcow2;
use crate::formats::{Format, FormatError};
use crate::jobs::{Events, Jobs};
use crate::migration::Migrations;
use crate::snapshots::Snapshots;
use crate::stats::Stats;
use crate::throttle::{SharedPage, Throttle};

/// The daemon's end of its control link.
type Link = ChildLink<BlockRequest, BlockReply, BlockEvent>;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Link(#[from] ChildError),
    #[error("opening the node: {0}")]
    Open(String),
    #[error("starting the I/O thread: {0}")]
    Thread(std::io::Error),
}

fn cache_mode(direct: bool, no_flush: bool) -> CacheMode {
    match (direct, no_flush) {
        (false, false) => CacheMode::Writeback,
        (true, false) => CacheMode::Direct,
        (false, true) => CacheMode::NoFlush,
        (true, true) => CacheMode::DirectNoFlush,
    }
}

/// Builds the node's device from the open call and starts serving its listener.
fn open(
    link: &Link,
    open: &BlockOpen,
    fds: Vec<OwnedFd>,
    engine: EngineKind,
    jobs: &Jobs,
    job_events: &Events,
    userfault: &UserfaultDevice,
) -> Result<(BlkDevice, Vec<(DirtyBitmapSpec, OwnedFd)>), String> {
    let mut fds = fds.into_iter();
    let (Some(listener), Some(counters)) = (fds.next(), fds.next()) else {
        return Err("the open call lacks its listener and counters fds".into());
    };
    let counters = Arc::new(BlockCounters::map(counters).map_err(|e| e.to_string())?);
    if !(1..=64).contains(&open.queues) {
        return Err(format!("{} queues: 1 to 64", open.queues));
    }
    let cache = cache_mode(open.cache.direct, open.cache.no_flush);
    let NodeFiles {
        images,
        bitmaps,
        job: job_fds,
    } = NodeFiles::take(open, fds)?;
    let chain = open_chain(open, images, &counters)?;
    let loaded = stored_bitmaps(&chain.top, open, bitmaps.len())?;
    let disk = Disk::new(
        chain.top,
        chain.flush_fd,
        open.read_only,
        cache,
        &open.serial,
    )
    .map_err(|e| e.to_string())?
    .keeping_bitmaps(keeps_bitmaps(open));
    if open.inactive {
        disk.set_inactive();
    }
    let disk = Arc::new(disk);
    let queues = open.queues as usize;
    let engines = match engine::per_queue(engine, &disk, queues, u32::from(QUEUE_SIZE)) {
        Ok(e) => e,
        Err(e) if engine == EngineKind::Uring => {
            log::warn!("io_uring unavailable ({e}): serving requests one at a time per queue");
            engine::per_queue(EngineKind::Sync, &disk, queues, u32::from(QUEUE_SIZE))
                .map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    let events = link.clone();
    let policy = Policy {
        discard_unmap: open.discard_unmap,
        detect_zeroes: open.detect_zeroes,
        on_read_error: open.on_read_error,
        on_write_error: open.on_write_error,
        events: Some(Arc::new(move |e: BlockEvent| events.event(e))),
    };
    let stats = Arc::new(Stats::new(&open.stats_intervals, counters));
    let device = BlkDevice::new(disk, engines, stats, policy).map_err(|e| format!("timer: {e}"))?;
    // Marked from the first request on: a restarted daemon loses no write to a bitmap,
    // nor its job any it has to copy.
    let handed = carry_on(&device, open, (bitmaps, loaded), job_fds, jobs, job_events)?;
    let serving = device.clone();
    let listener = UnixListener::from(listener);
    let userfault = userfault.clone();
    std::thread::Builder::new()
        .name("vhost-user".into())
        .spawn(move || vhost_backend::serve_forever_with_userfault(serving, listener, userfault))
        .map_err(|e| format!("serving thread: {e}"))?;
    Ok((device, handed))
}

/// A node's files as `Open` and `Activate` carry them after their own fds: its images
/// (top first), its dirty bitmaps' memory, its job's fds.
struct NodeFiles {
    images: Vec<File>,
    bitmaps: Vec<Bitmap>,
    job: Vec<OwnedFd>,
}

impl NodeFiles {
    fn take(open: &BlockOpen, fds: impl Iterator<Item = OwnedFd>) -> Result<NodeFiles, String> {
        let mut fds = fds;
        let images: Vec<File> = fds
            .by_ref()
            .take(ImageLayer::images(&open.layers))
            .map(File::from)
            .collect();
        let bitmaps = map_bitmaps(
            &open.dirty_bitmaps,
            fds.by_ref().take(open.dirty_bitmaps.len()),
        )?;
        Ok(NodeFiles {
            images,
            bitmaps,
            job: fds.collect(),
        })
    }
}

/// The node's image chain, from its images' fds.
fn open_chain(
    open: &BlockOpen,
    images: Vec<File>,
    counters: &Arc<BlockCounters>,
) -> Result<chain::Chain, String> {
    let cache = cache_mode(open.cache.direct, open.cache.no_flush);
    chain::open(
        &open.layers,
        images,
        &ChainOptions {
            // An inactive node (its VM still arriving) opens its images read-only: the
            // source still writes them.
            writable: !open.read_only && !open.inactive,
            direct: cache.direct(),
            counters: Some(counters.clone()),
            discard_unmap: open.discard_unmap,
            keep_bitmaps: keeps_bitmaps(open),
        },
    )
    .map_err(|e| e.to_string())
}

/// Whether a writable qcow2 top keeps its persistent bitmaps (see `ChainOptions`).
fn keeps_bitmaps(open: &BlockOpen) -> bool {
    open.stored_bitmaps != StoredBitmaps::NotKept && !open.read_only && !open.inactive
}

/// Gives the device its dirty bitmaps (the gateway's, then those loaded from the
/// image) and carries on the disk's job; returns the loaded bitmaps' memory, which
/// the gateway keeps from then on.
fn carry_on(
    device: &BlkDevice,
    open: &BlockOpen,
    (bitmaps, loaded): (Vec<Bitmap>, Vec<Bitmap>),
    job_fds: Vec<OwnedFd>,
    jobs: &Jobs,
    job_events: &Events,
) -> Result<Vec<(DirtyBitmapSpec, OwnedFd)>, String> {
    let mut bitmaps = bitmaps;
    let mut handed = Vec::new();
    for (spec, memory) in loaded {
        // The gateway's own copy of a bitmap the image stores too is the newer one (a
        // node's bitmaps stored at a pivot away from it, then kept by the gateway).
        if bitmaps.iter().any(|(s, _)| s.name == spec.name) {
            continue;
        }
        let fd = memory
            .fd()
            .ok_or("a loaded bitmap has no memfd")?
            .try_clone_to_owned()
            .map_err(|e| format!("dirty bitmap '{}': {e}", spec.name))?;
        handed.push((spec.clone(), fd));
        bitmaps.push((spec, memory));
    }
    device
        .dirty_bitmaps()
        .set(bitmaps)
        .map_err(|e| e.to_string())?;
    if let Some(spec) = &open.job {
        let id = spec.id.clone();
        if let Err(e) = jobs.start(device, spec.clone(), job_fds, job_events.clone()) {
            // The node serves anyway; the job ends, and the gateway hears why.
            log::error!("job {id}: carrying it on: {e}");
            job_events(BlockEvent::Job(ipc::JobEvent::Ended {
                id,
                offset: spec.offset,
                len: spec.offset,
                cancelled: false,
                error: Some(e.to_string()),
            }));
        }
    }
    Ok(handed)
}

/// The node serves its images for real again, in place (`BlockRequest::Activate`):
/// the chain opened afresh from the fds, as the other side left it, served once
/// nothing is in flight; then its bitmaps and job as at an open.
fn activate(
    device: &BlkDevice,
    open: &BlockOpen,
    fds: Vec<OwnedFd>,
    jobs: &Jobs,
    job_events: &Events,
) -> Result<Vec<(DirtyBitmapSpec, OwnedFd)>, String> {
    let disk = device.disk();
    if !disk.inactive() {
        return Err("the node is active already".into());
    }
    if open.inactive {
        return Err("the activation's configuration says inactive".into());
    }
    let NodeFiles {
        images,
        bitmaps,
        job: job_fds,
    } = NodeFiles::take(open, fds.into_iter())?;
    let chain = open_chain(open, images, device.stats().counters())?;
    let loaded = stored_bitmaps(&chain.top, open, bitmaps.len())?;
    {
        let _quiesced = device.quiesce(QUIESCE_TIMEOUT).map_err(|e| e.to_string())?;
        disk.replace_served(Served {
            format: chain.top,
            flush_fd: chain.flush_fd,
        });
        disk.set_active(keeps_bitmaps(open));
    }
    carry_on(device, open, (bitmaps, loaded), job_fds, jobs, job_events)
}

/// The persistent bitmaps `top` stores, loaded into new memory when the open says
/// `Load` (each then marked in use in the image; with `Kept`, only marked: the gateway
/// has their bits). `more`: the bitmaps the gateway sent, which count against the
/// bounds too.
fn stored_bitmaps(
    top: &Arc<dyn Format>,
    open: &BlockOpen,
    more: usize,
) -> Result<Vec<Bitmap>, String> {
    let Some(qcow2) = top.as_any().and_then(|a| a.downcast_ref::<Qcow2>()) else {
        return Ok(Vec::new());
    };
    let load = match open.stored_bitmaps {
        _ if open.read_only || open.inactive => return Ok(Vec::new()),
        StoredBitmaps::NotKept => return Ok(Vec::new()),
        StoredBitmaps::Load => true,
        StoredBitmaps::Kept => false,
    };
    let stored = qcow2
        .load_bitmaps()
        .map_err(|e| format!("loading the image's bitmaps: {e}"))?;
    if !load {
        return Ok(Vec::new());
    }
    if stored.len() + more > MAX_BITMAPS_PER_DISK {
        return Err(format!(
            "the image stores {} bitmaps: a disk has at most {MAX_BITMAPS_PER_DISK}",
            stored.len()
        ));
    }
    let size = top.virtual_size();
    let mut memory = 0u64;
    let mut out = Vec::new();
    for b in stored {
        let bitmap = SharedBitmap::create(size, b.granularity)
            .map_err(|e| format!("dirty bitmap '{}': {e}", b.name))?;
        memory += bytes_for(size, b.granularity).map_err(|e| e.to_string())?;
        if memory > MAX_BITMAP_MEMORY {
            return Err(format!(
                "the image's bitmaps need more than {MAX_BITMAP_MEMORY} bytes of memory"
            ));
        }
        bitmap.mark_bytes(&b.bits);
        out.push((
            DirtyBitmapSpec {
                name: b.name,
                size,
                granularity: b.granularity,
                recording: b.recording,
                persistent: true,
                inconsistent: b.in_use,
            },
            bitmap,
        ));
    }
    Ok(out)
}

/// Maps the dirty bitmaps `specs` names, one memfd each from `fds`.
fn map_bitmaps(
    specs: &[DirtyBitmapSpec],
    fds: impl IntoIterator<Item = OwnedFd>,
) -> Result<Vec<Bitmap>, String> {
    let mut fds = fds.into_iter();
    specs
        .iter()
        .map(|spec| {
            let fd = fds
                .next()
                .ok_or_else(|| format!("dirty bitmap '{}' came without its memory", spec.name))?;
            SharedBitmap::map(fd.as_fd(), spec.size, spec.granularity)
                .map(|b| (spec.clone(), b))
                .map_err(|e| format!("dirty bitmap '{}': {e}", spec.name))
        })
        .collect()
}

/// Leaves the image clean, its persistent bitmaps stored first (an inactive node's
/// image is not ours to write: it is left as it is).
fn close(device: &BlkDevice) -> Result<(), FormatError> {
    if device.disk().inactive() {
        return Ok(());
    }
    {
        let _quiesced = device.quiesce(QUIESCE_TIMEOUT);
        device
            .dirty_bitmaps()
            .store_in(device.disk(), &*device.disk().format())?;
    }
    device.disk().close()
}

/// The disk's drive was deleted (BlockRequest::RemoveMedium): its images are left clean
/// (persistent bitmaps stored, as at a close) and closed, and it serves no medium of the
/// same size from then on; a chain a snapshot kept below is dropped with them.
fn remove_medium(device: &BlkDevice, snapshots: &Snapshots) -> Result<(), String> {
    let disk = device.disk();
    let size = disk.size();
    let _quiesced = device.quiesce(QUIESCE_TIMEOUT).map_err(|e| e.to_string())?;
    let inactive = disk.inactive();
    if !inactive {
        (device.dirty_bitmaps().store_in(disk, &*disk.format())).map_err(|e| e.to_string())?;
    }
    let gone = disk.replace_served(Served {
        format: Arc::new(NoMedium::new(size)),
        flush_fd: None,
    });
    // Nothing of the old images is written after this, not even bitmaps at the last close.
    disk.stop_keeping_bitmaps();
    snapshots.forget_below();
    if !inactive {
        gone.format.close().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Answers one management call.
// Each argument is one of the node's parts that `run` owns.
#[allow(clippy::too_many_arguments)]
fn handle(
    device: &BlkDevice,
    snapshots: &Snapshots,
    jobs: &Jobs,
    events: &Events,
    migrations: &Arc<Migrations>,
    userfault: &UserfaultDevice,
    request: BlockRequest,
    fds: Vec<OwnedFd>,
) -> Result<BlockReply, RemoteError> {
    let disk = device.disk();
    match request {
        BlockRequest::Open(_) => Err(RemoteError::generic("the node is already open")),
        // Answered by `run`, which hands the loaded bitmaps' memory over with it.
        BlockRequest::Activate(_) => Err(RemoteError::generic("activation is not a plain call")),
        BlockRequest::Userfault => userfault
            .take_from(fds)
            .map_err(|e| RemoteError::generic(e.to_string()))
            .map(|()| BlockReply::Done),
        BlockRequest::Stats => {
            let stats = device.stats().snapshot(disk.size());
            Ok(BlockReply::Stats(Box::new(stats)))
        }
        BlockRequest::Resize { bytes } => {
            if disk.read_only() {
                return Err(RemoteError::generic("Image is read-only"));
            }
            device.resize(bytes).map_err(|e| match e {
                FormatError::Io(e) => {
                    RemoteError::generic(format!("Could not resize file: {}", errno_text(&e)))
                }
                // The format's own words (qcow2's, QEMU's where QEMU has them).
                other => RemoteError::generic(other.to_string()),
            })?;
            Ok(BlockReply::Done)
        }
        BlockRequest::SetThrottle(limits) => {
            let throttle = match (limits, fds.into_iter().next()) {
                (None, _) => None,
                (Some(l), Some(fd)) => Some(Throttle::new(
                    l,
                    SharedPage::map(fd).map_err(|e| RemoteError::generic(e.to_string()))?,
                )),
                (Some(_), None) => {
                    return Err(RemoteError::generic(
                        "throttle limits came without their state",
                    ))
                }
            };
            device.set_throttle(throttle);
            Ok(BlockReply::Done)
        }
        BlockRequest::SetWriteThreshold { node_name, bytes } => {
            device.set_write_threshold(&node_name, bytes);
            Ok(BlockReply::Done)
        }
        BlockRequest::Resume => {
            device.resume();
            Ok(BlockReply::Done)
        }
        BlockRequest::Drain { flush } => device
            .drain(DRAIN_TIMEOUT, flush)
            .map(|()| BlockReply::Done)
            .map_err(|e| RemoteError::generic(e.to_string())),
        BlockRequest::SnapshotCreate { name } => snapshots
            .create_internal(device, &name)
            .map(BlockReply::Snapshot)
            .map_err(|e| RemoteError::generic(e.to_string())),
        BlockRequest::SnapshotDelete { id, name } => snapshots
            .delete_internal(device, id.as_deref(), name.as_deref())
            .map(BlockReply::Snapshot)
            .map_err(|e| RemoteError::generic(e.to_string())),
        BlockRequest::PushTop(layer) => snapshots
            .push_top(device, &layer, fds)
            .map(|()| BlockReply::Done)
            .map_err(|e| RemoteError::generic(e.to_string())),
        BlockRequest::ChangeBackingFile {
            backing_file,
            backing_format,
        } => snapshots
            .change_backing_file(device, &backing_file, backing_format.as_deref())
            .map(|()| BlockReply::Done)
            .map_err(|e| RemoteError::generic(e.to_string())),
        BlockRequest::SetDirtyBitmaps(specs) => {
            let bitmaps = map_bitmaps(&specs, fds).map_err(RemoteError::generic)?;
            let _quiesced = device
                .quiesce(QUIESCE_TIMEOUT)
                .map_err(|e| RemoteError::generic(e.to_string()))?;
            let set = device.dirty_bitmaps();
            let before = set.persistent_names();
            set.set(bitmaps)
                .map_err(|e| RemoteError::generic(e.to_string()))?;
            let after = set.persistent_names();
            if before.iter().any(|name| !after.contains(name)) {
                if let Err(e) = set.store_now(disk) {
                    // It leaves the image at the next clean close instead.
                    log::warn!("taking a removed bitmap out of the image: {e}");
                }
            }
            Ok(BlockReply::Done)
        }
        BlockRequest::StartJob(spec) => jobs
            .start(device, spec, fds, events.clone())
            .map(|()| BlockReply::Done)
            .map_err(|e| RemoteError::generic(e.to_string())),
        BlockRequest::ControlJob { id, control } => jobs
            .control(&id, control)
            .map(|()| BlockReply::Done)
            .map_err(|e| RemoteError::generic(e.to_string())),
        BlockRequest::JobStatus => Ok(BlockReply::Job(jobs.status())),
        BlockRequest::PopTop => snapshots
            .pop_top(device)
            .map(|()| BlockReply::Done)
            .map_err(|e| RemoteError::generic(e.to_string())),
        // The image is clean (qcow2: nothing left reserved, not dirty) before the
        // gateway hears that we are done.
        // A migration's switch-over: clean now, then never written again here.
        BlockRequest::Inactivate => match close(device) {
            Ok(()) => {
                device.disk().set_inactive();
                Ok(BlockReply::Done)
            }
            Err(e) => Err(RemoteError::generic(e.to_string())),
        },
        // A block migration's disk channel (migration.rs).
        BlockRequest::MigrationSource | BlockRequest::MigrationSink => {
            let fd = fds
                .into_iter()
                .next()
                .ok_or_else(|| RemoteError::generic("the call came without its disk channel"))?;
            let started = match request {
                BlockRequest::MigrationSource => migrations.source(device, fd),
                _ => migrations.sink(device, fd),
            };
            started
                .map(|()| BlockReply::Done)
                .map_err(|e| RemoteError::generic(e.to_string()))
        }
        BlockRequest::RemoveMedium => remove_medium(device, snapshots)
            .map(|()| BlockReply::Done)
            .map_err(RemoteError::generic),
        BlockRequest::Quit => match close(device) {
            Ok(()) => Ok(BlockReply::Done),
            Err(e) => Err(RemoteError::generic(e.to_string())),
        },
    }
}

/// Runs the daemon under the gateway until it says quit or hangs up.
pub fn run(stream: UnixStream, engine: EngineKind) -> Result<(), ControlError> {
    // The thread that will serve the node's rings, there before the node: the gateway
    // names it as an iothread's thread while this daemon waits for its disk.
    vhost_backend::start_resident_thread().map_err(ControlError::Thread)?;
    let link = Link::new(stream);
    let (id, config, fds) =
        link.recv_first("the open call", "opening a node", |request| match request {
            BlockRequest::Open(config) => Some(config),
            _ => None,
        })?;
    let jobs = Jobs::default();
    let events: Events = {
        let link = link.clone();
        Arc::new(move |e| link.event(e))
    };
    let userfault = UserfaultDevice::new();
    let (device, loaded) = match open(&link, &config, fds, engine, &jobs, &events, &userfault) {
        Ok(b) => b,
        Err(e) => {
            link.reply(id, Err(RemoteError::generic(e.clone())));
            return Err(ControlError::Open(e));
        }
    };
    log::info!(
        "node {}: {} bytes, {} queue(s){}",
        config.node_name,
        device.disk().size(),
        config.queues,
        if config.read_only { ", read-only" } else { "" }
    );
    let (loaded_bitmaps, memfds): (Vec<_>, Vec<_>) = loaded.into_iter().unzip();
    let memfds: Vec<_> = memfds.iter().map(|fd: &OwnedFd| fd.as_fd()).collect();
    link.reply_with_fds(
        id,
        Ok(BlockReply::Opened {
            size: device.disk().size(),
            loaded_bitmaps,
        }),
        &memfds,
    );
    let snapshots = Snapshots::default();
    let migrations = Arc::new(Migrations::default());
    let served = link.answer_calls_with_fds(
        |request| *request == BlockRequest::Quit,
        |request, fds| {
            if request == BlockRequest::Quit {
                // The job ends before the image is closed.
                jobs.stop();
                migrations.stop();
            }
            if let BlockRequest::Activate(config) = request {
                let loaded = activate(&device, &config, fds, &jobs, &events)
                    .map_err(RemoteError::generic)?;
                let (loaded_bitmaps, memfds) = loaded.into_iter().unzip();
                let size = device.disk().size();
                log::info!("node {}: active, {size} bytes", config.node_name);
                return Ok((
                    BlockReply::Opened {
                        size,
                        loaded_bitmaps,
                    },
                    memfds,
                ));
            }
            let reply = handle(
                &device,
                &snapshots,
                &jobs,
                &events,
                &migrations,
                &userfault,
                request,
                fds,
            )?;
            Ok((reply, Vec::new()))
        },
    );
    jobs.stop();
    migrations.stop();
    // A gateway that hung up (or said quit) leaves the image clean too.
    if let Err(e) = close(&device) {
        log::error!("closing the image: {e}");
    }
    served.map_err(ChildError::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Policy;
    use crate::testing::Scratch;
    use ipc::{CacheFlags, DetectZeroes, ImageFormat, ImageLayer, OnError};
    use std::os::unix::fs::FileExt;

    fn config(inactive: bool) -> BlockOpen {
        BlockOpen {
            node_name: "n0".into(),
            serial: "s".into(),
            read_only: false,
            cache: CacheFlags::default(),
            discard_unmap: true,
            detect_zeroes: DetectZeroes::Off,
            queues: 1,
            stats_intervals: vec![],
            on_read_error: OnError::Report,
            on_write_error: OnError::Enospc,
            layers: vec![ImageLayer {
                node_name: "n0".into(),
                format: ImageFormat::Raw,
                filename: "image".into(),
            }],
            dirty_bitmaps: vec![],
            stored_bitmaps: StoredBitmaps::NotKept,
            job: None,
            inactive,
        }
    }

    /// A node opened inactive (a migration's destination) over `scratch`, as `open`
    /// builds it.
    fn inactive_device(scratch: &Scratch) -> BlkDevice {
        let open = config(true);
        let counters = Arc::new(BlockCounters::create().unwrap());
        let file = File::from(OwnedFd::from(scratch.file.try_clone().unwrap()));
        let chain = open_chain(&open, vec![file], &counters).unwrap();
        let disk = Disk::new(chain.top, chain.flush_fd, false, CacheMode::Writeback, "n0")
            .unwrap()
            .keeping_bitmaps(keeps_bitmaps(&open));
        disk.set_inactive();
        let disk = Arc::new(disk);
        let engines = engine::per_queue(EngineKind::Sync, &disk, 1, u32::from(QUEUE_SIZE)).unwrap();
        let stats = Arc::new(Stats::new(&[], counters));
        BlkDevice::new(disk, engines, stats, Policy::default()).unwrap()
    }

    fn image_fd(scratch: &Scratch) -> Vec<OwnedFd> {
        vec![OwnedFd::from(scratch.file.try_clone().unwrap())]
    }

    #[test]
    fn an_inactive_node_is_activated_in_place() {
        let scratch = Scratch::new("control-activate", 1 << 20);
        let device = inactive_device(&scratch);
        let (jobs, events): (Jobs, Events) = (Jobs::default(), Arc::new(|_| {}));
        // Inactive: its chain was opened read-only, while the other side writes.
        assert!(device.disk().format().write(0, &[0xcd; 512]).is_err());
        scratch.file.write_all_at(&[0xab; 4096], 4096).unwrap();

        let said_inactive = activate(&device, &config(true), image_fd(&scratch), &jobs, &events);
        assert!(
            said_inactive
                .as_ref()
                .is_err_and(|e| e.contains("says inactive")),
            "{said_inactive:?}"
        );
        assert!(device.disk().inactive());

        let loaded = activate(&device, &config(false), image_fd(&scratch), &jobs, &events);
        assert_eq!(loaded.map(|l| l.len()), Ok(0));
        let disk = device.disk();
        assert!(!disk.inactive());
        disk.format().write(0, &[0xcd; 512]).unwrap();
        let mut buf = [0u8; 4096];
        disk.format().read(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0xab), "what the other side wrote");
        scratch.file.read_exact_at(&mut buf[..512], 0).unwrap();
        assert!(
            buf[..512].iter().all(|b| *b == 0xcd),
            "written through the new chain"
        );

        let again = activate(&device, &config(false), image_fd(&scratch), &jobs, &events);
        assert!(
            again.as_ref().is_err_and(|e| e.contains("active already")),
            "{again:?}"
        );
    }

    #[test]
    fn an_activation_short_of_its_image_fd_is_refused() {
        let scratch = Scratch::new("control-activate-short", 1 << 20);
        let device = inactive_device(&scratch);
        let (jobs, events): (Jobs, Events) = (Jobs::default(), Arc::new(|_| {}));
        let refused = activate(&device, &config(false), Vec::new(), &jobs, &events);
        assert!(refused.is_err(), "{refused:?}");
        assert!(device.disk().inactive(), "still inactive");
    }
}
