//! block-stream and block-commit: the jobs that shorten a disk's backing chain. The
//! gateway finds top and base in the chain (QEMU 7.2's checks and texts), opens base
//! read-write for a commit (its read-only fd then lets it be written) and hands the job
//! to the disk's daemon, which copies and, at the end, makes the image over the copied
//! ones read through base. When the daemon says the job completed, the gateway takes the
//! images between out of the disk's chain and its graph (and for an active commit, once
//! completed, base is the disk's root).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use ipc::{CommitSpec, JobKind, JobSpec, OnError, SharedBitmap, StreamSpec};

use super::bitmaps::default_granularity;
use super::error::{BlockError, JobError};
use super::graph;
use super::job::BlockJob;
use super::lock::{self, Perms};
use super::options::Driver;
use super::{BlockLayer, State};
use crate::fdstore::Charge;

/// An active commit's buffer (QEMU's mirror default).
const DEFAULT_BUF_SIZE: u64 = 10 << 20;

/// block-stream's arguments.
#[derive(Debug, Clone)]
pub struct StreamRequest {
    pub job_id: Option<String>,
    pub device: String,
    /// Base by its file name, or by node name.
    pub base: Option<String>,
    pub base_node: Option<String>,
    pub backing_file: Option<String>,
    pub speed: i64,
    pub on_error: OnError,
    pub finish: super::job::JobFinish,
}

/// block-commit's arguments.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub job_id: Option<String>,
    pub device: String,
    pub base: Option<String>,
    pub base_node: Option<String>,
    pub top: Option<String>,
    pub top_node: Option<String>,
    pub backing_file: Option<String>,
    pub speed: i64,
    pub finish: super::job::JobFinish,
}

/// A commit's base: its node, the read-write fd, the locks that fd took.
type CommitBase = (String, Arc<OwnedFd>, Option<(Perms, Perms)>);

/// One image of a disk's chain: its format node (as the chain names it), its image
/// node, file name and fd.
struct Link {
    node: String,
    image: String,
    filename: String,
    driver: Driver,
    fd: Option<Arc<OwnedFd>>,
    locking: bool,
}

/// The chain under `root`, top first.
fn links(state: &State, root: &str) -> Vec<Link> {
    state
        .graph
        .chain(root)
        .iter()
        .map(|n| {
            let image = state.graph.image_node(&n.name).unwrap_or(n);
            let proto = state.graph.protocol_of(&image.name);
            Link {
                node: n.name.clone(),
                image: image.name.clone(),
                filename: proto.map(|p| p.filename.clone()).unwrap_or_default(),
                driver: image.driver,
                fd: proto.and_then(|p| p.image.clone()),
                locking: proto.is_some_and(|p| p.locking),
            }
        })
        .collect()
}

/// Where node `name` is in `chain` (by its format or image node).
fn depth_of_node(chain: &[Link], name: &str) -> Option<usize> {
    chain.iter().position(|l| l.node == name || l.image == name)
}

/// QEMU's bdrv_find_backing_image: the image below the top named `file` (as written,
/// or as the same file).
fn depth_of_file(chain: &[Link], file: &str) -> Option<usize> {
    let same = |a: &str| {
        a == file
            || match (std::fs::canonicalize(a), std::fs::canonicalize(file)) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            }
    };
    chain
        .iter()
        .skip(1)
        .position(|l| same(&l.filename))
        .map(|i| i + 1)
}

fn format_name(driver: Driver) -> Option<String> {
    Some(driver.name().to_string())
}

/// A commit's base fd, opened read-write: the read-only fd the chain holds lets others
/// write from now on, the new one takes writing. Returns the locks the new fd took.
fn lock_base(base: &Link, rw: &OwnedFd) -> Result<Option<(Perms, Perms)>, BlockError> {
    lock_for_writing(base, rw, Perms::for_backing())
}

/// Takes write and resize on `rw`, a second fd of `image` for a job, after relaxing
/// what its read-only fd holds (`held`) to share them.
fn lock_for_writing(
    image: &Link,
    rw: &OwnedFd,
    held: (Perms, Perms),
) -> Result<Option<(Perms, Perms)>, BlockError> {
    let (Some(ro), true) = (&image.fd, image.locking) else {
        return Ok(None);
    };
    lock::unlock(ro.as_fd(), held.0, held.1);
    let relaxed = lock::lock(ro.as_fd(), Perms::CONSISTENT_READ, Perms::ALL);
    let wanted = Perms::for_top(image.driver == Driver::Qcow2, false);
    let taken = relaxed.and_then(|()| lock::lock(rw.as_fd(), wanted.0, wanted.1));
    if let Err(error) = taken {
        relock_ro(ro, held);
        return Err(BlockError::Locked {
            error,
            path: image.filename.clone(),
        });
    }
    Ok(Some(wanted))
}

/// Puts a base's read-only fd back to a backing file's locks.
fn unlock_base_ro(ro: &OwnedFd) {
    relock_ro(ro, Perms::for_backing());
}

/// Puts a read-only fd that shared everything for a job back to `held`.
fn relock_ro(ro: &OwnedFd, held: (Perms, Perms)) {
    lock::unlock(ro.as_fd(), Perms::CONSISTENT_READ, Perms::ALL);
    if let Err(e) = lock::lock(ro.as_fd(), held.0, held.1) {
        log::warn!("locking an image's read-only fd again after a job: {e}");
    }
}

impl BlockLayer {
    pub fn stream(&self, r: &StreamRequest) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let id = self.prepare_stream(&mut self.state.lock(), r)?;
        self.set_finish(&id, r.finish);
        self.start_job(&id)
    }

    /// `charge`: the base's read-write fd, charged to the client.
    pub fn commit(&self, r: &CommitRequest, charge: Option<Charge>) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let id = self.prepare_commit(&mut self.state.lock(), r)?;
        if let Some(job) = self.state.lock().jobs.iter_mut().find(|j| j.id == id) {
            job.charge = charge;
            job.finish = r.finish;
        }
        self.start_job(&id)
    }

    /// QEMU 7.2's qmp_block_stream checks, in its order; records the job.
    fn prepare_stream(&self, state: &mut State, r: &StreamRequest) -> Result<String, BlockError> {
        if r.base.is_some() && r.base_node.is_some() {
            return Err(JobError::BaseTwice.into());
        }
        let root = state.lookup_node(Some(&r.device), Some(&r.device))?;
        let chain = links(state, &root);
        let mut base_depth = None;
        if let Some(file) = &r.base {
            base_depth =
                Some(depth_of_file(&chain, file).ok_or_else(|| JobError::NoBase(file.clone()))?);
        }
        if let Some(node) = &r.base_node {
            let found = state.lookup_node(None, Some(node))?;
            let d = depth_of_node(&chain, &found)
                .filter(|&d| d > 0)
                .ok_or_else(|| JobError::NotBackingOf {
                    base: node.clone(),
                    top: r.device.clone(),
                })?;
            base_depth = Some(d);
        }
        if base_depth.is_none() && r.backing_file.is_some() {
            return Err(JobError::BackingFileWholeChain.into());
        }
        let (disk_index, root, id) = Self::check_new_job(
            state,
            &self.job_records,
            &r.device,
            r.job_id.as_deref(),
            r.speed,
            false,
        )?;
        // A read-only disk's top is opened read-write for the job (QEMU reopens it so for
        // a drive opened read-only): the daemon writes the stream, the guest cannot.
        let writable_top = match (state.disks[disk_index].config.read_only, chain.first()) {
            (true, Some(top)) => {
                let rw = graph::open_path(&top.filename, Driver::File, true)?;
                let held = Perms::for_top(top.driver == Driver::Qcow2, true);
                let locked = lock_for_writing(top, &rw, held)?;
                Some((top, Arc::new(rw), locked))
            }
            _ => None,
        };
        let base = base_depth.and_then(|d| chain.get(d));
        let spec = JobSpec {
            id,
            kind: JobKind::Stream(StreamSpec {
                base_depth,
                backing_file: r
                    .backing_file
                    .clone()
                    .or_else(|| base.map(|b| b.filename.clone()))
                    .unwrap_or_default(),
                backing_format: base.and_then(|b| format_name(b.driver)),
                // A chunk is at most one cluster of the top (see the daemon's stream).
                granularity: default_granularity(&state.graph, &root),
                writable_top: writable_top.as_ref().map(|(top, _, _)| ipc::ImageLayer {
                    node_name: top.image.clone(),
                    format: state.disks[disk_index].config.layers[0].format.clone(),
                    filename: top.filename.clone(),
                }),
            }),
            speed: r.speed as u64,
            on_source_error: r.on_error,
            on_target_error: r.on_error,
            resume: false,
            ready: false,
            offset: 0,
            paused: false,
            completing: false,
        };
        let target = writable_top
            .as_ref()
            .map(|(top, rw, locked)| (top.node.clone(), rw.clone(), *locked));
        let recorded = self.record_chain_job(state, disk_index, &root, spec, target);
        if let (Err(_), Some((top, _, Some(_)))) = (&recorded, &writable_top) {
            if let Some(ro) = &top.fd {
                relock_ro(ro, Perms::for_top(top.driver == Driver::Qcow2, true));
            }
        }
        recorded
    }

    /// QEMU 7.2's qmp_block_commit checks, in its order; opens base read-write and
    /// records the job.
    fn prepare_commit(&self, state: &mut State, r: &CommitRequest) -> Result<String, BlockError> {
        let root = state
            .lookup_node(Some(&r.device), Some(&r.device))
            .map_err(|_| BlockError::DeviceNotFound(r.device.clone()))?;
        let Some(disk_index) = state.disks.iter().position(|d| d.root == root) else {
            return Err(JobError::NotRoot.into());
        };
        if state.job_of_disk(&state.disks[disk_index].id).is_some() {
            // QEMU's job filter node over the disk.
            return Err(JobError::NotRoot.into());
        }
        if r.top.is_some() && r.top_node.is_some() {
            return Err(JobError::TopTwice.into());
        }
        if r.base.is_some() && r.base_node.is_some() {
            return Err(JobError::BaseNodeTwice.into());
        }
        let chain = links(state, &root);
        let mut top_depth = 0;
        if let Some(node) = &r.top_node {
            let found = state.lookup_node(None, Some(node))?;
            top_depth =
                depth_of_node(&chain, &found).ok_or_else(|| JobError::NotInChain(node.clone()))?;
        } else if let Some(file) = &r.top {
            top_depth = if chain.first().is_some_and(|l| l.filename == *file) {
                0
            } else {
                depth_of_file(&chain, file).ok_or_else(|| JobError::NoTop(file.clone()))?
            };
        }
        let below_top = &chain[top_depth..];
        let base_depth = if let Some(node) = &r.base_node {
            let found = state.lookup_node(None, Some(node))?;
            top_depth
                + depth_of_node(below_top, &found)
                    .ok_or_else(|| JobError::NotInChain(node.clone()))?
        } else if let Some(file) = &r.base {
            top_depth
                + depth_of_file(below_top, file)
                    .or_else(|| below_top.first().filter(|l| l.filename == *file).map(|_| 0))
                    .ok_or_else(|| JobError::NoBase(file.clone()))?
        } else {
            chain.len() - 1
        };
        if base_depth == top_depth {
            return Err(JobError::CommitIntoItself.into());
        }
        if top_depth == 0 && r.backing_file.is_some() {
            return Err(JobError::BackingFileActive.into());
        }
        let (disk_index, root, id) = Self::check_new_job(
            state,
            &self.job_records,
            &r.device,
            r.job_id.as_deref(),
            r.speed,
            false,
        )?;
        let base = &chain[base_depth];
        let rw = graph::open_path(&base.filename, Driver::File, true)?;
        let locked = lock_base(base, &rw)?;
        let base_layer = ipc::ImageLayer {
            node_name: base.image.clone(),
            format: match (base.driver, state.graph.node(&base.image)) {
                (Driver::Qcow2, Some(n)) => ipc::ImageFormat::Qcow2(n.qcow2_options.clone()),
                _ => ipc::ImageFormat::Raw,
            },
            filename: base.filename.clone(),
        };
        let spec = JobSpec {
            id,
            kind: JobKind::Commit(CommitSpec {
                base: base_layer,
                top_depth,
                base_depth,
                backing_file: r.backing_file.clone().unwrap_or(base.filename.clone()),
                backing_format: format_name(base.driver),
                granularity: default_granularity(&state.graph, &root),
                buf_size: DEFAULT_BUF_SIZE,
            }),
            speed: r.speed as u64,
            on_source_error: OnError::Report,
            on_target_error: OnError::Report,
            resume: false,
            ready: false,
            offset: 0,
            paused: false,
            completing: false,
        };
        let recorded = self.record_chain_job(
            state,
            disk_index,
            &root,
            spec,
            Some((base.node.clone(), Arc::new(rw), locked)),
        );
        if recorded.is_err() {
            if let Some(ro) = base.fd.as_ref().filter(|_| locked.is_some()) {
                unlock_base_ro(ro);
            }
        }
        recorded
    }

    /// Records a stream or commit (with its base: node, read-write fd, locks taken).
    fn record_chain_job(
        &self,
        state: &mut State,
        disk_index: usize,
        root: &str,
        spec: JobSpec,
        base: Option<CommitBase>,
    ) -> Result<String, BlockError> {
        let size = super::bitmaps::node_size(&state.graph, root);
        let granularity = spec.kind.granularity();
        let bitmaps = (0..spec.kind.bitmaps())
            .map(|_| SharedBitmap::create(size, granularity))
            .collect::<Result<Vec<_>, _>>()
            .map_err(JobError::from)?;
        let id = spec.id.clone();
        let disk = state.disks[disk_index].id.clone();
        let mut job = BlockJob::new(disk, spec, bitmaps);
        if let Some((node, fd, locked)) = base {
            job.target_node = Some(node);
            job.target = Some(fd);
            job.locked = locked;
        }
        state.jobs.push(job);
        Ok(id)
    }

    /// A stream or commit over (`completed`: its daemon cut the chain; `pivot`: an
    /// active commit's disk serves base): the disk's chain and the graph follow. The
    /// caller holds `changes`.
    pub(super) fn chain_job_ended(&self, job: &BlockJob, completed: bool, pivot: bool) {
        let mut state = self.state.lock();
        let base_fd = job.target.clone();
        let base_ro = job
            .target_node
            .as_deref()
            .and_then(|n| state.graph.protocol_of(n))
            .and_then(|p| p.image.clone());
        if let (Some(rw), Some((take, share)), false) = (&base_fd, job.locked, pivot) {
            // Nothing writes base (or a read-only disk's top) now: its read-only fd
            // locks as a backing file (or a read-only top) again.
            lock::unlock(rw.as_fd(), take, share);
            if let Some(ro) = &base_ro {
                match &job.spec.kind {
                    JobKind::Stream(s) => {
                        let qcow2 = matches!(
                            s.writable_top.as_ref().map(|l| &l.format),
                            Some(ipc::ImageFormat::Qcow2(_))
                        );
                        relock_ro(ro, Perms::for_top(qcow2, true))
                    }
                    _ => unlock_base_ro(ro),
                }
            }
        }
        if !completed {
            return;
        }
        let Some(index) = state.disks.iter().position(|d| d.id == job.disk) else {
            return;
        };
        let root = state.disks[index].root.clone();
        let chain = links(&state, &root);
        let (above, from, to) = match &job.spec.kind {
            JobKind::Stream(s) => (0, 1, s.base_depth.unwrap_or(chain.len())),
            JobKind::Commit(c) if c.active() => (0, 0, c.base_depth),
            JobKind::Commit(c) => (c.top_depth - 1, c.top_depth, c.base_depth),
            _ => return,
        };
        let to = to.min(chain.len());
        let base = chain.get(to).map(|l| l.node.clone());
        if let Some(image) = chain.get(to).map(|l| l.image.clone()) {
            // Its header again: the job may have grown it to the disk's size.
            state.refresh_image(&image);
        }
        let gone: Vec<String> = chain[from..to].iter().map(|l| l.node.clone()).collect();
        if pivot {
            let Some(base) = base else {
                return;
            };
            let disk = &mut state.disks[index];
            disk.root = base.clone();
            disk.health.set_node(&base);
            disk.config.node_name = base.clone();
            disk.config.layers.drain(..to);
            disk.images.drain(..to);
            if let (Some(rw), Some(first)) = (&base_fd, disk.images.first_mut()) {
                // Base is written from now on, through the fd opened for the job.
                *first = rw.clone();
            }
            let image = chain[to].image.clone();
            if let Some(proto) = state.graph.protocol_of(&image).map(|p| p.name.clone()) {
                if let Some(n) = state.graph.node_mut(&proto) {
                    n.image = base_fd.clone();
                    n.read_only = false;
                }
            }
            if let Some(n) = state.graph.node_mut(&image) {
                n.read_only = false;
            }
            if let Some(ro) = &base_ro {
                lock::unlock(ro.as_fd(), Perms::CONSISTENT_READ, Perms::ALL);
            }
            let nodes = state.graph.tree(&base);
            state.disks[index].nodes = nodes;
        } else {
            let overlay = chain[above].image.clone();
            // A stream's daemon names base in the top (a read-only disk's top was opened
            // read-write for it).
            let served_top = above == 0
                && (!state.disks[index].config.read_only
                    || matches!(job.spec.kind, JobKind::Stream(_)));
            if !served_top {
                // The daemon reads this image only: its header is rewritten here.
                let (name, format) = match &job.spec.kind {
                    JobKind::Commit(c) => (c.backing_file.clone(), c.backing_format.clone()),
                    _ => (String::new(), None),
                };
                let renamed = graph::open_path(&chain[above].filename, Driver::File, true)
                    .map(std::fs::File::from)
                    .map_err(|e| e.to_string())
                    .and_then(|f| {
                        block_daemon::formats::qcow2::header_cluster::change_backing(
                            &f,
                            &name,
                            format.as_deref(),
                        )
                        .map_err(|e| e.to_string())
                    });
                if let Err(e) = renamed {
                    log::warn!("job {}: naming base in {overlay}'s header: {e}", job.id);
                }
            }
            let disk = &mut state.disks[index];
            disk.config.layers.drain(from..to);
            disk.images.drain(from..to);
            state.refresh_image(&overlay);
            state.graph.set_backing(&overlay, base.as_deref());
        }
        for name in gone {
            let owned = state.graph.node(&name).is_some_and(|n| n.monitor_owned);
            if !owned {
                state.graph.remove_image(&name);
            }
        }
        // The bitmaps of the images that left the chain: loose on a node that stays,
        // gone with one that went.
        state.settle_bitmaps();
        log::info!("disk {}: chain shortened by job {}", job.disk, job.id);
    }
}
