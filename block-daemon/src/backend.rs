//! The virtio-blk device behind the vhost-user connection: what it offers (features,
//! config space, queues), and the data path of each queue: take the guest's descriptor
//! chains (marking them in flight), parse them into requests, hand them to the I/O
//! engine, put completions on the used ring and notify the guest through the call
//! eventfd. All queues are served by one thread (vhost_user::worker); the engines keep
//! many requests in flight behind it. The device outlives connections: a new frontend
//! (or the same one, back after this daemon restarted) finds the node as it was.
//!
//! Between parsing and the engine sit the node's policies: discard (ignored unless the
//! node says unmap), detect-zeroes, the write threshold, and I/O limits. A read or write
//! the limits hold back waits in its queue's pending list (reads and writes apart, so a
//! write limit never delays reads) until a timer says the buckets have drained.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipc::{BlockEvent, DetectZeroes};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::timerfd::TimerFd;

use crate::config::{
    BlkConfig, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEG, SEG_MAX,
};
use crate::disk::Disk;
use crate::engine::{Done, Engine, Op};
use crate::request::{self, Desc, Kind, Limits, Rejected, Request, SectorRange};
use crate::stats::Stats;
use crate::throttle::{Direction, Throttle};
use crate::vhost_user::vring::Vring;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_TOPOLOGY: u64 = 1 << 10;
const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// How long a queue is watched for new requests after its last batch.
const POLL: Duration = Duration::from_micros(32);

/// Longest descriptor chain followed (the queue size bounds it anyway).
const MAX_CHAIN: usize = 1024;
pub const QUEUE_SIZE: usize = 256;

/// Logs the first refusals of guest requests, then one in a thousand: a guest cannot
/// flood the log.
#[derive(Default)]
struct RefusalLog(AtomicU64);

impl RefusalLog {
    fn note(&self, head: u16, reason: &str) {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        if n < 20 || n.is_multiple_of(1000) {
            log::warn!(
                "refused guest request (descriptor {head}): {reason} [{} so far]",
                n + 1
            );
        }
    }
}

/// Where the daemon's events go (the control channel, in gateway mode).
pub type EventSink = Arc<dyn Fn(BlockEvent) + Send + Sync>;

/// How the node treats what the guest asks for.
#[derive(Clone)]
pub struct Policy {
    /// Discards deallocate; otherwise they succeed without touching the image.
    pub discard_unmap: bool,
    pub detect_zeroes: DetectZeroes,
    pub events: Option<EventSink>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            discard_unmap: true,
            detect_zeroes: DetectZeroes::Off,
            events: None,
        }
    }
}

/// A request held back by the I/O limits, with the memory map it points into.
struct Held {
    head: u16,
    req: Request,
    mem: Arc<GuestMemoryMmap>,
}

/// Held reads (0) and writes (1) of one queue, each in arrival order.
type HeldLists = [VecDeque<Held>; 2];

struct Inner {
    disk: Arc<Disk>,
    num_queues: usize,
    engines: Vec<Mutex<Box<dyn Engine>>>,
    stats: Arc<Stats>,
    refusals: RefusalLog,
    policy: Policy,
    throttle: Mutex<Option<Throttle>>,
    held: Vec<Mutex<HeldLists>>,
    /// Fires when held requests may go.
    timer: Mutex<TimerFd>,
    /// Per node: the offset a write may not end beyond without an event.
    write_thresholds: Mutex<Vec<(String, u64)>>,
    /// The lowest of them (0: none), checked without the lock on every write.
    lowest_threshold: AtomicU64,
}

#[derive(Clone)]
pub struct BlkBackend {
    inner: Arc<Inner>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn direction_index(d: Direction) -> usize {
    match d {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

impl BlkBackend {
    /// `engines`: one per queue.
    pub fn new(
        disk: Arc<Disk>,
        engines: Vec<Box<dyn Engine>>,
        stats: Arc<Stats>,
        policy: Policy,
    ) -> io::Result<BlkBackend> {
        let n = engines.len();
        Ok(BlkBackend {
            inner: Arc::new(Inner {
                num_queues: n,
                disk,
                engines: engines.into_iter().map(Mutex::new).collect(),
                stats,
                refusals: RefusalLog::default(),
                policy,
                throttle: Mutex::new(None),
                held: (0..n).map(|_| Mutex::new(Default::default())).collect(),
                timer: Mutex::new(TimerFd::new()?),
                write_thresholds: Mutex::new(Vec::new()),
                lowest_threshold: AtomicU64::new(0),
            }),
        })
    }

    /// The timer that says held requests may go.
    pub fn timer_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        lock(&self.inner.timer).as_raw_fd()
    }

    /// New I/O limits (None: unlimited). Held requests are looked at again at once.
    pub fn set_throttle(&self, throttle: Option<Throttle>) {
        *lock(&self.inner.throttle) = throttle;
        self.arm_timer(Duration::from_nanos(1));
    }

    pub fn throttled(&self) -> bool {
        lock(&self.inner.throttle).is_some()
    }

    /// Sets (or with 0, clears) `node`'s write threshold.
    pub fn set_write_threshold(&self, node: &str, bytes: u64) {
        let mut all = lock(&self.inner.write_thresholds);
        all.retain(|(n, _)| n != node);
        if bytes > 0 {
            all.push((node.to_string(), bytes));
        }
        self.inner
            .lowest_threshold
            .store(all.iter().map(|t| t.1).min().unwrap_or(0), Ordering::SeqCst);
    }

    /// Grows or shrinks the image. The guest learns of it from vmm-core, which the
    /// gateway tells (vhost 0.18's backend channel cannot send CONFIG_CHANGE_MSG); a
    /// frontend that asks GET_CONFIG sees the new capacity.
    pub fn resize(&self, bytes: u64) -> io::Result<()> {
        self.inner.disk.resize(bytes)
    }

    fn arm_timer(&self, after: Duration) {
        if let Err(e) = lock(&self.inner.timer).reset(after, None) {
            log::error!("arming the throttle timer: {e}");
        }
    }

    pub fn disk(&self) -> &Arc<Disk> {
        &self.inner.disk
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    pub fn num_queues(&self) -> usize {
        self.inner.num_queues
    }

    /// (queue, completion eventfd) for each engine that completes asynchronously.
    pub fn notifiers(&self) -> Vec<(usize, std::os::fd::RawFd)> {
        self.inner
            .engines
            .iter()
            .enumerate()
            .filter_map(|(q, e)| lock(e).notifier().map(|fd| (q, fd)))
            .collect()
    }

    fn limits(&self) -> Limits {
        let disk = &self.inner.disk;
        Limits {
            capacity_sectors: disk.capacity_sectors(),
            read_only: disk.read_only(),
            max_segments: SEG_MAX as usize,
            max_bytes: 32 << 20,
            max_discard_segments: MAX_DISCARD_SEG,
            max_write_zeroes_segments: MAX_WRITE_ZEROES_SEG,
            max_range_sectors: MAX_DISCARD_SECTORS.min(MAX_WRITE_ZEROES_SECTORS),
            discard: true,
            write_zeroes: true,
        }
    }

    /// Serves queue `q`: everything the guest made available, then a short watch for more.
    pub fn process_queue(
        &self,
        q: usize,
        vring: &mut Vring,
        mem: &Arc<GuestMemoryMmap>,
    ) -> io::Result<()> {
        let limits = self.limits();
        let event_idx = vring.queue.event_idx_enabled();
        let mut engine = lock(&self.inner.engines[q]);
        let mut done = Vec::new();
        let mut soonest: Option<Duration> = None;
        // Heads a previous daemon had in flight go first, oldest first.
        for head in std::mem::take(&mut vring.resubmit) {
            let descs = match chain_at(mem, &vring.queue, head) {
                Ok(d) => d,
                Err(reason) => {
                    self.inner.refusals.note(head, &reason);
                    vring.add_used(mem, head, 0)?;
                    continue;
                }
            };
            self.handle_chain(
                q,
                head,
                &descs,
                &limits,
                vring,
                mem,
                &mut **engine,
                &mut done,
                &mut soonest,
            )?;
        }
        let mut empty_pass = false;
        loop {
            if event_idx {
                vring
                    .queue
                    .disable_notification(mem.as_ref())
                    .map_err(io::Error::other)?;
            }
            let mut chains: Vec<(u16, Vec<Desc>)> = Vec::new();
            while let Some(chain) = vring.queue.pop_descriptor_chain(mem.clone()) {
                let head = chain.head_index();
                let descs = chain
                    .take(MAX_CHAIN)
                    .map(|d| Desc {
                        addr: d.addr().0,
                        len: d.len(),
                        writable: d.is_write_only(),
                    })
                    .collect();
                chains.push((head, descs));
            }
            let arrived = chains.len();
            for (head, descs) in chains {
                vring.mark_started(head);
                self.handle_chain(
                    q,
                    head,
                    &descs,
                    &limits,
                    vring,
                    mem,
                    &mut **engine,
                    &mut done,
                    &mut soonest,
                )?;
            }
            engine.flush();
            engine.reap(&mut done);
            self.complete(vring, mem, &mut done)?;
            if arrived > 0 {
                empty_pass = false;
                continue;
            }
            if empty_pass {
                // The ring said there was more, yet nothing could be taken: a broken
                // available index. Wait for the next kick rather than spin on it.
                if event_idx {
                    let _ = vring.queue.enable_notification(mem.as_ref());
                }
                break;
            }
            empty_pass = true;
            // Nothing new: watch the ring a little before going back to sleep. A guest
            // at queue depth 1 sends its next request within microseconds, and catching
            // it here saves the kick's trip through KVM, the eventfd and epoll (QEMU's
            // iothreads poll the same way).
            if self.poll_avail(vring, mem) {
                continue;
            }
            if !event_idx
                || !vring
                    .queue
                    .enable_notification(mem.as_ref())
                    .map_err(io::Error::other)?
            {
                break;
            }
        }
        if let Some(wait) = soonest {
            self.arm_timer(wait);
        }
        Ok(())
    }

    /// Parses one chain and dispatches it (or completes it with the guest's error).
    #[allow(clippy::too_many_arguments)]
    fn handle_chain(
        &self,
        q: usize,
        head: u16,
        descs: &[Desc],
        limits: &Limits,
        vring: &mut Vring,
        mem: &Arc<GuestMemoryMmap>,
        engine: &mut dyn Engine,
        done: &mut Vec<Done>,
        soonest: &mut Option<Duration>,
    ) -> io::Result<()> {
        match request::parse(mem, descs, limits) {
            Ok(req) => {
                if let Some(wait) = self.dispatch(q, head, req, mem, engine, done) {
                    *soonest = Some(soonest.map_or(wait, |s: Duration| s.min(wait)));
                }
            }
            Err(Rejected::Status {
                status,
                code,
                reason,
                request_type,
            }) => {
                self.inner.refusals.note(head, &reason);
                self.inner.stats.record_invalid(request_type);
                done.push(Done {
                    head,
                    status,
                    code,
                    used_len: 1,
                    op: Op::Other,
                    bytes: 0,
                    started: Instant::now(),
                });
            }
            Err(Rejected::NoStatus(reason)) => {
                self.inner.refusals.note(head, &reason);
                self.inner.stats.record_invalid(None);
                vring.add_used(mem, head, 0)?;
            }
        }
        Ok(())
    }

    /// Spins up to POLL for the driver to make more requests available.
    fn poll_avail(&self, vring: &Vring, mem: &GuestMemoryMmap) -> bool {
        let deadline = Instant::now() + POLL;
        loop {
            match vring
                .queue
                .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            {
                Ok(idx) if idx.0 != vring.queue.next_avail() => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Applies the node's policies to a parsed request, then starts it, completes it at
    /// once, or holds it back for the I/O limits (returning how long until it may go).
    fn dispatch(
        &self,
        q: usize,
        head: u16,
        mut req: Request,
        mem: &Arc<GuestMemoryMmap>,
        engine: &mut dyn Engine,
        done: &mut Vec<Done>,
    ) -> Option<Duration> {
        let policy = &self.inner.policy;
        if !policy.discard_unmap {
            match &mut req.kind {
                Kind::Discard(_) => {
                    // discard=ignore: the request succeeds and the image keeps its blocks.
                    done.push(Done {
                        head,
                        status: req.status,
                        code: request::S_OK,
                        used_len: 1,
                        op: Op::Discard,
                        bytes: req.image_bytes(),
                        started: Instant::now(),
                    });
                    return None;
                }
                Kind::WriteZeroes(ranges) => ranges.iter_mut().for_each(|r| r.unmap = false),
                _ => {}
            }
        }
        if req.kind == Kind::Write
            && policy.detect_zeroes != DetectZeroes::Off
            && req.data_is_zero()
        {
            req.kind = Kind::WriteZeroes(vec![SectorRange {
                sector: req.sector,
                sectors: (req.data_len >> request::SECTOR_SHIFT) as u32,
                unmap: policy.detect_zeroes == DetectZeroes::Unmap && policy.discard_unmap,
            }]);
        }
        if let Some(end) = req.write_end() {
            self.inner.stats.note_write_end(end);
            self.check_write_threshold(end);
        }
        let direction = match req.kind {
            Kind::Read => Some(Direction::Read),
            Kind::Write | Kind::WriteZeroes(_) => Some(Direction::Write),
            _ => None,
        };
        if let Some(dir) = direction {
            let throttle = lock(&self.inner.throttle);
            if let Some(t) = throttle.as_ref() {
                let mut held = lock(&self.inner.held[q]);
                let list = &mut held[direction_index(dir)];
                // Behind requests already waiting, a request waits its turn.
                let verdict = if list.is_empty() {
                    t.admit(dir, req.image_bytes())
                } else {
                    Err(Duration::ZERO)
                };
                if let Err(wait) = verdict {
                    list.push_back(Held {
                        head,
                        req,
                        mem: mem.clone(),
                    });
                    return (!wait.is_zero()).then_some(wait);
                }
            }
        }
        engine.submit(head, req, mem.clone());
        None
    }

    fn check_write_threshold(&self, end: u64) {
        let lowest = self.inner.lowest_threshold.load(Ordering::SeqCst);
        if lowest == 0 || end <= lowest {
            return;
        }
        // Each crossed threshold fires once and switches itself off (as QEMU's does).
        let crossed: Vec<(String, u64)> = {
            let mut all = lock(&self.inner.write_thresholds);
            let (crossed, kept): (Vec<_>, Vec<_>) = all.drain(..).partition(|t| end > t.1);
            *all = kept;
            self.inner
                .lowest_threshold
                .store(all.iter().map(|t| t.1).min().unwrap_or(0), Ordering::SeqCst);
            crossed
        };
        if let Some(events) = &self.inner.policy.events {
            for (node_name, threshold) in crossed {
                events(BlockEvent::WriteThreshold {
                    node_name,
                    amount_exceeded: end - threshold,
                    threshold,
                });
            }
        }
    }

    /// The timer fired: lets held requests go as far as the limits allow.
    pub fn release_held(
        &self,
        vrings: &[Mutex<Vring>],
        mem: &Arc<GuestMemoryMmap>,
    ) -> io::Result<()> {
        let _ = lock(&self.inner.timer).wait();
        let mut soonest: Option<Duration> = None;
        for (q, vring) in vrings.iter().enumerate().take(self.inner.num_queues) {
            let mut vring = lock(vring);
            let mut engine = lock(&self.inner.engines[q]);
            {
                let throttle = lock(&self.inner.throttle);
                let mut held = lock(&self.inner.held[q]);
                for dir in [Direction::Read, Direction::Write] {
                    let list = &mut held[direction_index(dir)];
                    while let Some(h) = list.front() {
                        if let Some(t) = throttle.as_ref() {
                            if let Err(wait) = t.admit(dir, h.req.image_bytes()) {
                                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                                break;
                            }
                        }
                        let Some(h) = list.pop_front() else { break };
                        engine.submit(h.head, h.req, h.mem);
                    }
                }
            }
            engine.flush();
            let mut done = Vec::new();
            engine.reap(&mut done);
            drop(engine);
            self.complete(&mut vring, mem, &mut done)?;
        }
        if let Some(wait) = soonest {
            self.arm_timer(wait);
        }
        Ok(())
    }

    fn complete(
        &self,
        vring: &mut Vring,
        mem: &GuestMemoryMmap,
        done: &mut Vec<Done>,
    ) -> io::Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        for d in done.drain(..) {
            if !d.status.is_null() {
                // SAFETY: the status byte came from request::parse, and the memory map it
                // points into is still held (by the engine until now, or by the caller).
                unsafe { request::write_status(d.status, d.code) };
            }
            self.inner
                .stats
                .record(d.op, d.bytes, d.code == request::S_OK, d.started.elapsed());
            vring.add_used(mem, d.head, d.used_len)?;
        }
        vring.notify(mem)
    }

    /// Queue `q`'s engine signalled completions.
    pub fn reap(&self, q: usize, vring: &mut Vring, mem: &GuestMemoryMmap) -> io::Result<()> {
        let mut done = Vec::new();
        lock(&self.inner.engines[q]).reap(&mut done);
        self.complete(vring, mem, &mut done)
    }

    /// The frontend stops queue `q` (GET_VRING_BASE): held requests go now, whatever
    /// the limits say, and everything in flight finishes onto the used ring, so the
    /// index the frontend gets back has nothing outstanding behind it.
    pub fn stop_queue(&self, q: usize, vring: &mut Vring, mem: &GuestMemoryMmap) -> io::Result<()> {
        let mut engine = lock(&self.inner.engines[q]);
        let held = std::mem::take(&mut *lock(&self.inner.held[q]));
        for list in held {
            for h in list {
                engine.submit(h.head, h.req, h.mem);
            }
        }
        let mut done = Vec::new();
        engine.drain(&mut done);
        drop(engine);
        self.complete(vring, mem, &mut done)
    }

    /// The timer fired with no memory table to serve held requests against.
    pub fn discard_timer(&self) {
        let _ = lock(&self.inner.timer).wait();
    }

    /// Completions for a connection that has no memory table (cannot happen once the
    /// frontend set one up; read so the eventfd does not stay ready).
    pub fn discard_completions(&self, q: usize) {
        if let Some(e) = self.inner.engines.get(q) {
            let mut done = Vec::new();
            lock(e).reap(&mut done);
        }
    }

    /// The frontend went away: whatever is in flight finishes, and nothing is put on a
    /// ring nobody serves. The inflight region still says those heads are in flight;
    /// the next connection starts them again.
    pub fn abandon_in_flight(&self) {
        for q in 0..self.inner.num_queues {
            *lock(&self.inner.held[q]) = Default::default();
            let mut done = Vec::new();
            lock(&self.inner.engines[q]).drain(&mut done);
        }
    }

    pub fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    pub fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_TOPOLOGY
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_MQ
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.inner.disk.read_only() {
            f |= VIRTIO_BLK_F_RO;
        } else {
            f |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    pub fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        BlkConfig {
            capacity_sectors: self.inner.disk.capacity_sectors(),
            num_queues: self.inner.num_queues as u16,
            logical_block_size: 512,
        }
        .read(offset, size)
    }
}

/// The descriptors of the chain at `head`, read from the descriptor table (for heads a
/// previous daemon took from the available ring, which the ring no longer lists). The
/// guest wrote the table: every index and address is checked, indirect tables included.
fn chain_at(
    mem: &GuestMemoryMmap,
    queue: &virtio_queue::Queue,
    head: u16,
) -> Result<Vec<Desc>, String> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    let read = |table: u64, index: u64| -> Result<(u64, u32, u16, u16), String> {
        let at = GuestAddress(table + index * 16);
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, at)
            .map_err(|e| format!("descriptor {index} at {:#x}: {e}", at.0))?;
        let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        Ok((addr, len, flags, next))
    };
    let size = u64::from(queue.size());
    let (mut table, mut count, mut index) = (queue.desc_table(), size, u64::from(head));
    let mut out = Vec::new();
    let mut indirect_taken = false;
    loop {
        if index >= count || out.len() >= MAX_CHAIN {
            return Err(format!("chain from head {head} runs out of its table"));
        }
        let (addr, len, flags, next) = read(table, index)?;
        if flags & INDIRECT != 0 {
            if indirect_taken || !out.is_empty() || len % 16 != 0 || len == 0 {
                return Err(format!("bad indirect descriptor in chain {head}"));
            }
            indirect_taken = true;
            (table, count, index) = (addr, u64::from(len / 16), 0);
            continue;
        }
        out.push(Desc {
            addr,
            len,
            writable: flags & WRITE != 0,
        });
        if flags & NEXT == 0 {
            return Ok(out);
        }
        index = u64::from(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::Queue;

    const TABLE: u64 = 0x1000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap, table: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(table + 16 * i)).unwrap();
    }

    fn queue() -> Queue {
        let mut q = Queue::new(16).unwrap();
        q.try_set_desc_table_address(GuestAddress(TABLE)).unwrap();
        q
    }

    #[test]
    fn chains_are_read_back_from_the_table() {
        let mem = memory();
        put(&mem, TABLE, 3, 0x4000, 16, 1, 7);
        put(&mem, TABLE, 7, 0x5000, 512, 1 | 2, 2);
        put(&mem, TABLE, 2, 0x6000, 1, 2, 0);
        let chain = chain_at(&mem, &queue(), 3).unwrap();
        assert_eq!(
            chain,
            vec![
                Desc {
                    addr: 0x4000,
                    len: 16,
                    writable: false
                },
                Desc {
                    addr: 0x5000,
                    len: 512,
                    writable: true
                },
                Desc {
                    addr: 0x6000,
                    len: 1,
                    writable: true
                },
            ]
        );
        // An indirect table holding the same chain.
        put(&mem, TABLE, 5, 0x8000, 48, 4, 0);
        put(&mem, 0x8000, 0, 0x4000, 16, 1, 1);
        put(&mem, 0x8000, 1, 0x5000, 512, 1 | 2, 2);
        put(&mem, 0x8000, 2, 0x6000, 1, 2, 0);
        assert_eq!(chain_at(&mem, &queue(), 5).unwrap(), chain);
    }

    #[test]
    fn broken_chains_are_refused_not_followed() {
        let mem = memory();
        // A loop: 1 -> 2 -> 1 ...
        put(&mem, TABLE, 1, 0x4000, 16, 1, 2);
        put(&mem, TABLE, 2, 0x4000, 16, 1, 1);
        assert!(chain_at(&mem, &queue(), 1).is_err());
        // Next beyond the queue size, a head beyond it, a table outside memory.
        put(&mem, TABLE, 4, 0x4000, 16, 1, 40);
        assert!(chain_at(&mem, &queue(), 4).is_err());
        assert!(chain_at(&mem, &queue(), 16).is_err());
        put(&mem, TABLE, 6, 0xffff_0000, 32, 4, 0);
        assert!(chain_at(&mem, &queue(), 6).is_err());
        // An indirect table of odd length, and one nested in another.
        put(&mem, TABLE, 8, 0x8000, 20, 4, 0);
        assert!(chain_at(&mem, &queue(), 8).is_err());
        put(&mem, TABLE, 9, 0x9000, 16, 4, 0);
        put(&mem, 0x9000, 0, 0x8000, 16, 4, 0);
        assert!(chain_at(&mem, &queue(), 9).is_err());
    }
}
