//! The virtio-blk device, served by vhost-backend: what it offers (features, config
//! space, queues), and the data path of each queue: take the guest's descriptor chains
//! (the framework marks them in flight), parse them into requests, hand them to the I/O
//! engine, put completions on the used ring and notify the guest. All queues are served
//! by one thread (the connection's worker); the engines keep many requests in flight
//! behind it. The device outlives connections: a new frontend (or the same one, back
//! after this daemon restarted) finds the node as it was.
//!
//! Between parsing and the engine sit the node's policies: discard (ignored unless the
//! node says unmap), detect-zeroes, the write threshold, and I/O limits. A read or write
//! the limits hold back waits in its queue's pending list (reads and writes apart, so a
//! write limit never delays reads) until a timer says the buckets have drained.
//!
//! After the engine sits the node's error policy (werror=, rerror=): a request the image
//! failed is reported to the guest, completed as if it had succeeded, or held (not
//! completed: the guest waits) until the gateway says to start it again, each with an
//! event for the gateway. A held request stays in flight in the inflight region, so a
//! daemon that replaces this one holds it too.
//!
//! The device can be quiesced (snapshots): no new request is taken from the rings and
//! the ones in flight finish; the guest's new requests wait in the rings (no error)
//! until the quiesce ends, when every queue is served again.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::{BlockEvent, DetectZeroes, ErrorAction, IoOperation, OnError};
use parking_lot::Mutex;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_backend::{Device, HostWatch, Rings, Vring};
use virtio::{blk, features, ChainError, Desc};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::config::{
    BlkConfig, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEG, SEG_MAX,
};
use crate::dirty::DirtyBitmaps;
use crate::disk::Disk;
use crate::engine::{Done, Engine, Op};
use crate::formats::FormatError;
use crate::request::{self, Kind, Limits, Rejected, Request, SectorRange};
use crate::stats::Stats;
use crate::throttle::{Direction, Throttle};

/// How long a queue is watched for new requests (and completions) after its last
/// batch, unless the export says otherwise (`poll-us=`; 0 turns the watch off).
pub const DEFAULT_POLL: Duration = Duration::from_micros(32);

pub const QUEUE_SIZE: u16 = 256;

/// How many chains a queue takes before what already finished goes on its used ring
/// (and the driver hears, if it asked to). Requests that finish at once (reads of holes
/// or of cached data, refusals) then reach the driver while the rest of its batch is
/// still being taken, and the driver sends them again meanwhile; completed as one batch
/// at the end, driver and daemon took turns (bench/blk, hole reads at queue depth 32:
/// 0.64-0.76M IOPS completed whole, 1.12-1.20M every 8, QSD 1.15-1.22M).
const COMPLETE_EVERY: usize = 8;

/// How many spins of the poll window go between two reads of the clock: a look at the
/// rings costs a fraction of a clock read, which was most of a spin's time.
const SPINS_PER_CLOCK_READ: u32 = 16;

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
    /// What a read the image fails does (rerror=).
    pub on_read_error: OnError,
    /// What any other request the image fails does (werror=).
    pub on_write_error: OnError,
    pub events: Option<EventSink>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            discard_unmap: true,
            detect_zeroes: DetectZeroes::Off,
            on_read_error: OnError::Report,
            on_write_error: OnError::Report,
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

/// What one of the device's host-side descriptors says when it becomes readable.
#[derive(Clone, Copy)]
enum HostSource {
    /// Queue `q`'s engine has completions to reap.
    Completions(usize),
    /// Held requests may go.
    Timer,
    /// Requests held after a failure are to be started again.
    Retry,
    /// A quiesce ended: the rings are served again.
    Unpaused,
    /// A drain asks for everything in the rings to be served now.
    Drain,
}

/// The queue polls (its ring and the engine's completions) only while at most this many
/// requests are in the engine. With more in flight, completions come often enough that
/// sleeping until the next one costs little, and the spinning took CPU the guest and the
/// kernel need (bench/blk, 4k QD32 O_DIRECT: the same IOPS for 22-33% less CPU); with
/// few, a poll catches the next completion or request without the wake-ups.
const POLL_WHILE_IN_FLIGHT_AT_MOST: usize = 4;

/// While requests are in the engine, the queue watches this many poll windows: their
/// completion is coming (a 4k O_DIRECT read or write took 60-120 us on this host's disk),
/// and catching it by watching spares the worker's wake-up (io_uring's eventfd, epoll)
/// and puts it on the used ring at once. bench/blk, 4k QD1 O_DIRECT, 5 rounds: 32 us
/// windows gave 1.33x fio's latency for reads and writes, 128 us ones 1.20x / 1.23x, for
/// 0.98 CPU s/s instead of 0.94 (at QD1 the worker watched most of the time already); a
/// second run of it alone was level, and with the COOP_TASKRUN ring (engine/uring.rs)
/// QD1 gained 2-9% (docs/benchmarks.md). The longer watch costs at most one request's
/// latency per batch, and never while many are in flight.
const WATCH_WINDOWS_WHILE_IN_FLIGHT: u32 = 4;

/// How long the queue watches its ring (and the engine's completions) after a batch:
/// the node's window with nothing in flight, WATCH_WINDOWS_WHILE_IN_FLIGHT of them
/// while a few requests are, nothing with more (or with polling off).
fn watch_window(window: Duration, engine: &dyn Engine) -> Duration {
    match engine.in_flight() {
        0 => window,
        n if n <= POLL_WHILE_IN_FLIGHT_AT_MOST => window * WATCH_WINDOWS_WHILE_IN_FLIGHT,
        _ => Duration::ZERO,
    }
}

/// What a queue's poll window found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Polled {
    /// The driver made requests available.
    Requests,
    /// The engine has finished requests to reap.
    Completions,
    /// Neither, within the window.
    Nothing,
}

/// How long requests in flight may take to finish before a management call that
/// quiesces the device (a snapshot, a bitmap's clear) gives up.
pub const QUIESCE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long QMP stop waits for a disk's requests (the gateway's link waits longer, so
/// a slow disk is reported by the daemon, not taken for a hung one).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// The device could not be quiesced.
#[derive(Debug, thiserror::Error)]
#[error("requests still in flight after {0:?}")]
pub struct QuiesceTimeout(pub Duration);

/// A drain did not end in time.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("requests still in the rings or in flight after {0:?}")]
    Timeout(Duration),
    #[error("waking the queues' worker: {0}")]
    Wake(std::io::Error),
    #[error("flushing the image: {0}")]
    Flush(std::io::Error),
}

/// The device is quiesced while this lives (see `BlkDevice::quiesce`).
pub struct Quiesced<'a>(&'a BlkDevice);

impl Drop for Quiesced<'_> {
    fn drop(&mut self) {
        self.0.unpause();
    }
}

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
    /// Per queue: heads the image failed whose action was to stop, oldest first. Not
    /// completed: they wait for `resume`.
    failed: Vec<Mutex<Vec<u16>>>,
    /// Written by `resume`: the worker starts the failed requests again.
    retry: EventFd,
    /// The host-side descriptors the worker watches for the device.
    sources: Vec<(HostSource, RawFd)>,
    /// Per node: the offset a write may not end beyond without an event.
    write_thresholds: Mutex<Vec<(String, u64)>>,
    /// The lowest of them (0: none), checked without the lock on every write.
    lowest_threshold: AtomicU64,
    /// How long (ns) a queue is watched after its last batch; 0: not at all.
    poll_ns: AtomicU64,
    /// Quiesced: no request is taken from the rings, held ones stay held.
    paused: AtomicBool,
    /// Written when a quiesce ends: the worker serves every ring again.
    unpaused: EventFd,
    /// `resume` came while quiesced: the failed requests go once it ends.
    retry_after_pause: AtomicBool,
    /// A drain runs: I/O limits hold nothing (as QEMU's drained sections).
    draining: AtomicBool,
    /// Written by `drain`: the worker serves every ring and what limits held.
    drain: EventFd,
    /// Drains asked, and the last one the worker served the rings for.
    drains_asked: AtomicU64,
    drains_served: AtomicU64,
    /// Marked by every request that goes to an engine.
    dirty: DirtyBitmaps,
}

#[derive(Clone)]
pub struct BlkDevice {
    inner: Arc<Inner>,
}

fn direction_index(d: Direction) -> usize {
    match d {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

impl BlkDevice {
    /// `engines`: one per queue.
    pub fn new(
        disk: Arc<Disk>,
        engines: Vec<Box<dyn Engine>>,
        stats: Arc<Stats>,
        policy: Policy,
    ) -> io::Result<BlkDevice> {
        let n = engines.len();
        let timer = TimerFd::new()?;
        let mut sources: Vec<(HostSource, RawFd)> = engines
            .iter()
            .enumerate()
            .filter_map(|(q, e)| e.notifier().map(|fd| (HostSource::Completions(q), fd)))
            .collect();
        sources.push((HostSource::Timer, timer.as_raw_fd()));
        let retry = EventFd::new(EFD_NONBLOCK)?;
        sources.push((HostSource::Retry, retry.as_raw_fd()));
        let unpaused = EventFd::new(EFD_NONBLOCK)?;
        sources.push((HostSource::Unpaused, unpaused.as_raw_fd()));
        let drain = EventFd::new(EFD_NONBLOCK)?;
        sources.push((HostSource::Drain, drain.as_raw_fd()));
        Ok(BlkDevice {
            inner: Arc::new(Inner {
                num_queues: n,
                disk,
                engines: engines.into_iter().map(Mutex::new).collect(),
                stats,
                refusals: RefusalLog::default(),
                policy,
                throttle: Mutex::new(None),
                held: (0..n).map(|_| Mutex::new(Default::default())).collect(),
                timer: Mutex::new(timer),
                failed: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
                retry,
                sources,
                write_thresholds: Mutex::new(Vec::new()),
                lowest_threshold: AtomicU64::new(0),
                poll_ns: AtomicU64::new(DEFAULT_POLL.as_nanos() as u64),
                paused: AtomicBool::new(false),
                unpaused,
                retry_after_pause: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                drain,
                drains_asked: AtomicU64::new(0),
                drains_served: AtomicU64::new(0),
                dirty: DirtyBitmaps::default(),
            }),
        })
    }

    /// New I/O limits (None: unlimited). Held requests are looked at again at once.
    pub fn set_throttle(&self, throttle: Option<Throttle>) {
        *self.inner.throttle.lock() = throttle;
        self.arm_timer(Duration::from_nanos(1));
    }

    pub fn throttled(&self) -> bool {
        self.inner.throttle.lock().is_some()
    }

    /// Sets (or with 0, clears) `node`'s write threshold.
    pub fn set_write_threshold(&self, node: &str, bytes: u64) {
        let mut all = self.inner.write_thresholds.lock();
        all.retain(|(n, _)| n != node);
        if bytes > 0 {
            all.push((node.to_string(), bytes));
        }
        self.inner
            .lowest_threshold
            .store(all.iter().map(|t| t.1).min().unwrap_or(0), Ordering::SeqCst);
    }

    /// How long each queue is watched for new requests and completions after its last
    /// batch (zero: the worker goes back to waiting at once, as a backend that cannot
    /// poll does).
    pub fn set_poll(&self, window: Duration) {
        let ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        self.inner.poll_ns.store(ns, Ordering::Relaxed);
    }

    pub fn poll_window(&self) -> Duration {
        Duration::from_nanos(self.inner.poll_ns.load(Ordering::Relaxed))
    }

    /// Grows or shrinks the image. The guest learns of it from vmm-core, which the
    /// gateway tells (vhost 0.18's backend channel cannot send CONFIG_CHANGE_MSG); a
    /// frontend that asks GET_CONFIG sees the new capacity.
    pub fn resize(&self, bytes: u64) -> Result<(), FormatError> {
        self.inner.disk.resize(bytes)
    }

    /// Stops taking requests from the rings and waits (up to `timeout`) for every
    /// request in flight to finish; the device serves again when the guard drops.
    /// Requests the guest makes meanwhile wait in their rings.
    pub fn quiesce(&self, timeout: Duration) -> Result<Quiesced<'_>, QuiesceTimeout> {
        self.inner.paused.store(true, Ordering::SeqCst);
        let guard = Quiesced(self);
        let deadline = Instant::now() + timeout;
        // A queue's worker checks `paused` with its engine locked, so once an engine
        // is seen idle here, nothing more reaches it. Completions are reaped by the
        // worker as usual; this only watches for them.
        loop {
            let busy = self.inner.engines.iter().any(|e| e.lock().in_flight() > 0);
            if !busy {
                return Ok(guard);
            }
            if Instant::now() >= deadline {
                return Err(QuiesceTimeout(timeout));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn paused(&self) -> bool {
        self.inner.paused.load(Ordering::SeqCst)
    }

    /// Ends a quiesce: the worker serves every ring, held requests are looked at again.
    fn unpause(&self) {
        self.inner.paused.store(false, Ordering::SeqCst);
        if self.inner.retry_after_pause.swap(false, Ordering::SeqCst) {
            self.resume();
        }
        self.arm_timer(Duration::from_nanos(1));
        if let Err(e) = self.inner.unpaused.write(1) {
            log::error!("waking the worker after a quiesce: {e}");
        }
        let inner = &self.inner;
        if inner.drains_asked.load(Ordering::SeqCst) > inner.drains_served.load(Ordering::SeqCst) {
            if let Err(e) = inner.drain.write(1) {
                log::error!("waking the worker for a drain after a quiesce: {e}");
            }
        }
    }

    /// Serves what the guest made available (what I/O limits held too, whatever they
    /// say) and waits up to `timeout` for every request to finish, then flushes the
    /// image if `flush`: QMP stop returns with the guest's requests done and durable, as
    /// QEMU's drain. The vCPUs are stopped, so nothing new comes meanwhile.
    pub fn drain(&self, timeout: Duration, flush: bool) -> Result<(), DrainError> {
        let inner = &self.inner;
        inner.draining.store(true, Ordering::SeqCst);
        let asked = inner.drains_asked.fetch_add(1, Ordering::SeqCst) + 1;
        let ended = (|| {
            inner.drain.write(1).map_err(DrainError::Wake)?;
            let deadline = Instant::now() + timeout;
            // Short naps first: an idle device is drained within tens of microseconds,
            // and a drain is part of a migration's downtime.
            let mut nap = Duration::from_micros(10);
            loop {
                let served = inner.drains_served.load(Ordering::SeqCst) >= asked;
                let idle = served
                    && inner.engines.iter().all(|e| e.lock().in_flight() == 0)
                    && inner
                        .held
                        .iter()
                        .all(|h| h.lock().iter().all(|list| list.is_empty()));
                if idle {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(DrainError::Timeout(timeout));
                }
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_micros(200));
            }
        })();
        inner.draining.store(false, Ordering::SeqCst);
        ended?;
        if !flush {
            return Ok(());
        }
        inner
            .disk
            .format()
            .flush()
            .map_err(|e| DrainError::Flush(e.into_io()))
    }

    fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// A drain asked: held requests go and every live ring is served.
    fn serve_for_drain(&self, rings: &Rings, mem: &Arc<GuestMemoryMmap>) -> io::Result<()> {
        let _ = self.inner.drain.read();
        if self.paused() {
            // The quiesce's end asks again (`unpause`).
            return Ok(());
        }
        let asked = self.inner.drains_asked.load(Ordering::SeqCst);
        self.start_held(rings, mem)?;
        for q in 0..self.inner.num_queues {
            let Some(mut vring) = rings.lock(q, mem) else {
                continue;
            };
            if vring.live() {
                self.process_queue(q, &mut vring, mem)?;
            }
        }
        self.inner.drains_served.fetch_max(asked, Ordering::SeqCst);
        Ok(())
    }

    /// A quiesce ended: every live ring is served (what arrived meanwhile waits there).
    fn serve_all(&self, rings: &Rings, mem: &Arc<GuestMemoryMmap>) -> io::Result<()> {
        let _ = self.inner.unpaused.read();
        for q in 0..self.inner.num_queues {
            let Some(mut vring) = rings.lock(q, mem) else {
                continue;
            };
            if vring.live() {
                self.process_queue(q, &mut vring, mem)?;
            }
        }
        Ok(())
    }

    /// Starts again the requests held after a failure (QMP cont): the worker takes them
    /// from the descriptor table, where the guest left them, as if they were new.
    pub fn resume(&self) {
        if let Err(e) = self.inner.retry.write(1) {
            log::error!("waking the worker to retry failed requests: {e}");
        }
    }

    /// Requests held after a failure, on every queue.
    pub fn failed_requests(&self) -> usize {
        self.inner.failed.iter().map(|f| f.lock().len()).sum()
    }

    fn arm_timer(&self, after: Duration) {
        if let Err(e) = self.inner.timer.lock().reset(after, None) {
            log::error!("arming the throttle timer: {e}");
        }
    }

    pub fn disk(&self) -> &Arc<Disk> {
        &self.inner.disk
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// The dirty bitmaps requests mark (block-dirty-bitmap-add).
    pub fn dirty_bitmaps(&self) -> &DirtyBitmaps {
        &self.inner.dirty
    }

    /// Hands `req` to `engine`, marking the dirty bitmaps first (see `dirty`).
    fn start(&self, engine: &mut dyn Engine, head: u16, req: Request, mem: Arc<GuestMemoryMmap>) {
        self.inner.dirty.mark(&req);
        ipc::tracepoint!(
            VirtioBlkReqSubmit,
            "head={head} type={:?} sector={} len={}",
            Op::of(&req.kind),
            req.sector,
            req.image_bytes()
        );
        engine.submit(head, req, mem);
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

    /// Serves queue `q`: everything the guest made available (after what a previous
    /// daemon left in flight) and what the engine finished, then a short watch for more
    /// of either.
    fn process_queue(
        &self,
        q: usize,
        vring: &mut Vring,
        mem: &Arc<GuestMemoryMmap>,
    ) -> io::Result<()> {
        let event_idx = vring.event_idx();
        let mut batch = Batch::new(self, q, mem);
        let mut empty_pass = false;
        loop {
            // Quiesced: what the guest made available stays in the ring (`serve_all`
            // takes it when the quiesce ends).
            if self.paused() {
                if event_idx {
                    let _ = vring.enable_notification(mem);
                }
                break;
            }
            if event_idx {
                vring.disable_notification(mem)?;
            }
            let mut arrived: usize = 0;
            batch.taken_at = None;
            while let Some((head, chain)) = vring.pop_chain(mem) {
                arrived += 1;
                batch.take(head, chain, vring)?;
                if arrived.is_multiple_of(COMPLETE_EVERY) {
                    batch.complete_finished(vring)?;
                }
            }
            batch.complete(vring)?;
            if arrived > 0 {
                empty_pass = false;
                continue;
            }
            if empty_pass {
                // The ring said there was more, yet nothing could be taken: a broken
                // available index. Wait for the next kick rather than spin on it.
                if event_idx {
                    let _ = vring.enable_notification(mem);
                }
                break;
            }
            empty_pass = true;
            // Nothing new: watch the ring, and the engine's completions, a little
            // before going back to sleep. A guest at queue depth 1 sends its next
            // request within microseconds, and catching it here saves the kick's trip
            // through KVM, the eventfd and epoll (QEMU's iothreads poll the same way);
            // a completion caught here is on the used ring at once, without the two
            // wake-ups (io_uring's task work, then the ring's fd) of a sleeping worker,
            // and what the guest sends back is taken in the same loop. With polling
            // off (poll-us=0) it goes straight back to waiting.
            let window = watch_window(self.poll_window(), &**batch.engine);
            if !window.is_zero() && vring.live() {
                match self.poll(vring, mem, &mut **batch.engine, window) {
                    Polled::Requests => continue,
                    Polled::Completions => {
                        empty_pass = false;
                        continue;
                    }
                    Polled::Nothing => {}
                }
            }
            if !event_idx || !vring.enable_notification(mem)? {
                break;
            }
        }
        if let Some(wait) = batch.soonest {
            self.arm_timer(wait);
        }
        Ok(())
    }

    /// A chain with no status byte to report through (or none that can be found): it is
    /// completed with length 0.
    fn refuse_unanswerable(
        &self,
        vring: &mut Vring,
        mem: &GuestMemoryMmap,
        head: u16,
        reason: &str,
    ) -> io::Result<()> {
        self.inner.refusals.note(head, reason);
        self.inner.stats.record_invalid(None);
        vring.add_used(mem, head, 0)
    }

    /// Spins up to `window` for the driver to make more requests available or the
    /// engine to have completions.
    fn poll(
        &self,
        vring: &Vring,
        mem: &GuestMemoryMmap,
        engine: &mut dyn Engine,
        window: Duration,
    ) -> Polled {
        let mut deadline = Deadline::after(window);
        let queue = vring.queue();
        let in_flight = engine.in_flight() > 0;
        loop {
            match queue.avail_idx(mem, Ordering::Acquire) {
                Ok(idx) if idx.0 != queue.next_avail() => return Polled::Requests,
                Ok(_) => {}
                Err(_) => return Polled::Nothing,
            }
            if in_flight && engine.has_completions() {
                return Polled::Completions;
            }
            if deadline.passed() {
                return Polled::Nothing;
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
                        code: blk::S_OK,
                        used_len: 1,
                        op: Op::Discard,
                        bytes: req.image_bytes(),
                        started: req.arrived,
                        error: None,
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
            let throttle = self.inner.throttle.lock();
            if let Some(t) = throttle.as_ref().filter(|_| !self.draining()) {
                let mut held = self.inner.held[q].lock();
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
        self.start(engine, head, req, mem.clone());
        None
    }

    fn check_write_threshold(&self, end: u64) {
        let lowest = self.inner.lowest_threshold.load(Ordering::SeqCst);
        if lowest == 0 || end <= lowest {
            return;
        }
        // Each crossed threshold fires once and switches itself off (as QEMU's does).
        let crossed: Vec<(String, u64)> = {
            let mut all = self.inner.write_thresholds.lock();
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
    fn release_held(&self, rings: &Rings, mem: &Arc<GuestMemoryMmap>) -> io::Result<()> {
        let _ = self.inner.timer.lock().wait();
        self.start_held(rings, mem)
    }

    /// Starts the held requests the limits let go now (all of them during a drain).
    fn start_held(&self, rings: &Rings, mem: &Arc<GuestMemoryMmap>) -> io::Result<()> {
        if self.paused() {
            // They go when the quiesce ends (it arms the timer).
            return Ok(());
        }
        let mut soonest: Option<Duration> = None;
        for q in 0..self.inner.num_queues {
            let Some(mut vring) = rings.lock(q, mem) else {
                continue;
            };
            let mut engine = self.inner.engines[q].lock();
            {
                let throttle = self.inner.throttle.lock();
                let mut held = self.inner.held[q].lock();
                for dir in [Direction::Read, Direction::Write] {
                    let list = &mut held[direction_index(dir)];
                    while let Some(h) = list.front() {
                        if let Some(t) = throttle.as_ref().filter(|_| !self.draining()) {
                            if let Err(wait) = t.admit(dir, h.req.image_bytes()) {
                                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                                break;
                            }
                        }
                        let Some(h) = list.pop_front() else { break };
                        self.start(&mut **engine, h.head, h.req, h.mem);
                    }
                }
            }
            engine.flush();
            let mut done = Vec::new();
            engine.reap(&mut done);
            drop(engine);
            self.complete(q, &mut vring, mem, &mut done)?;
        }
        if let Some(wait) = soonest {
            self.arm_timer(wait);
        }
        Ok(())
    }

    /// `resume` was asked for: the failed requests of every live ring go through the
    /// node's policies and the engine again (a limit may hold them back, a failure
    /// hold them again).
    fn retry_failed(&self, rings: &Rings, mem: &Arc<GuestMemoryMmap>) -> io::Result<()> {
        let _ = self.inner.retry.read();
        if self.paused() {
            self.inner.retry_after_pause.store(true, Ordering::SeqCst);
            return Ok(());
        }
        let mut soonest: Option<Duration> = None;
        for q in 0..self.inner.num_queues {
            if self.inner.failed[q].lock().is_empty() {
                continue;
            }
            let Some(mut vring) = rings.lock(q, mem) else {
                continue;
            };
            // A ring that is not live keeps them until it is (and is resumed again).
            if !vring.live() {
                continue;
            }
            let heads = std::mem::take(&mut *self.inner.failed[q].lock());
            log::info!(
                "queue {q}: starting again {} failed request(s)",
                heads.len()
            );
            let table = GuestAddress(vring.queue().desc_table());
            let size = vring.queue().size();
            let mut batch = Batch::new(self, q, mem);
            for head in heads {
                let chain = virtio::read_chain(&**mem, table, size, head);
                batch.take(head, chain, &mut vring)?;
            }
            batch.complete(&mut vring)?;
            soonest = earliest(soonest, batch.soonest);
        }
        if let Some(wait) = soonest {
            self.arm_timer(wait);
        }
        Ok(())
    }

    /// What the node's policy does about a request the image failed with `errno`; the
    /// gateway hears of it. Holding a request needs someone to resume it: without the
    /// gateway (no events), a stop is a report.
    fn on_failure(&self, op: Op, errno: i32) -> ErrorAction {
        let policy = &self.inner.policy;
        let (operation, on_error) = match op {
            Op::Read => (IoOperation::Read, policy.on_read_error),
            _ => (IoOperation::Write, policy.on_write_error),
        };
        // No medium (its drive was deleted): reported, whatever the actions (QEMU's
        // drive_del sets them so that further I/O does not pause the guest).
        let action = match errno {
            libc::ENOMEDIUM => ErrorAction::Report,
            _ => on_error.action(errno),
        };
        let Some(events) = &policy.events else {
            return match action {
                ErrorAction::Stop => ErrorAction::Report,
                other => other,
            };
        };
        events(BlockEvent::IoError {
            operation,
            action,
            errno,
        });
        action
    }

    /// Puts finished requests of queue `q` on its used ring (after the error policy:
    /// a failed one may be held instead) and notifies the guest.
    fn complete(
        &self,
        q: usize,
        vring: &mut Vring,
        mem: &GuestMemoryMmap,
        done: &mut Vec<Done>,
    ) -> io::Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        done.retain_mut(|d| {
            if let Some(errno) = d.error {
                match self.on_failure(d.op, errno) {
                    ErrorAction::Stop => {
                        self.inner.failed[q].lock().push(d.head);
                        return false;
                    }
                    ErrorAction::Ignore => {
                        d.code = blk::S_OK;
                        d.used_len = match d.op {
                            Op::Read => d.bytes as u32 + 1,
                            _ => 1,
                        };
                    }
                    ErrorAction::Report => {}
                }
            }
            if !d.status.is_null() {
                // SAFETY: the status byte came from request::parse, and the memory map it
                // points into is still held (by the engine until now, or by the caller).
                unsafe { request::write_status(d.status, d.code) };
            }
            true
        });
        // Counted before any of them reaches the used ring: the counters page must hold
        // every request the guest has seen complete, even if this daemon is killed
        // between the two (block_restart's twenty SIGKILLs check it).
        let mut stats = self.inner.stats.recorder(Instant::now());
        for d in done.iter() {
            stats.record(d.op, d.bytes, d.code == blk::S_OK, d.started);
            ipc::tracepoint!(
                VirtioBlkReqComplete,
                "queue={q} head={} type={:?} len={} status={}",
                d.head,
                d.op,
                d.bytes,
                d.code
            );
        }
        drop(stats);
        if done.is_empty() {
            return Ok(());
        }
        for d in done.drain(..) {
            vring.add_used(mem, d.head, d.used_len)?;
        }
        vring.notify(mem)
    }

    /// Queue `q`'s engine signalled completions.
    fn reap(&self, q: usize, vring: &mut Vring, mem: &GuestMemoryMmap) -> io::Result<()> {
        let mut done = Vec::new();
        self.inner.engines[q].lock().reap(&mut done);
        self.complete(q, vring, mem, &mut done)
    }

    /// Completions, or the timer, with no memory table to serve them against (cannot
    /// happen once the frontend set one up): consumed so the descriptor does not stay
    /// ready, and dropped.
    fn discard(&self, source: HostSource) {
        match source {
            HostSource::Completions(q) => {
                let mut done = Vec::new();
                self.inner.engines[q].lock().reap(&mut done);
            }
            HostSource::Timer => {
                let _ = self.inner.timer.lock().wait();
            }
            // The failed requests stay held for a ring to retry them on.
            HostSource::Retry => {
                let _ = self.inner.retry.read();
            }
            HostSource::Unpaused => {
                let _ = self.inner.unpaused.read();
            }
            // Nothing to serve: the drain has nothing to wait for.
            HostSource::Drain => {
                let _ = self.inner.drain.read();
                let asked = self.inner.drains_asked.load(Ordering::SeqCst);
                self.inner.drains_served.fetch_max(asked, Ordering::SeqCst);
            }
        }
    }
}

/// The end of a poll window, looked at on every spin and read from the clock on every
/// `SPINS_PER_CLOCK_READ`th (the window may run over by that many spins).
struct Deadline {
    at: Instant,
    spins: u32,
}

impl Deadline {
    fn after(window: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + window,
            spins: 0,
        }
    }

    fn passed(&mut self) -> bool {
        self.spins = self.spins.wrapping_add(1);
        self.spins.is_multiple_of(SPINS_PER_CLOCK_READ) && Instant::now() >= self.at
    }
}

/// The sooner of two waits.
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Chains of one queue on their way to its engine (locked meanwhile), and what
/// finished: taken one by one, then handed to the kernel and completed together.
struct Batch<'a> {
    device: &'a BlkDevice,
    q: usize,
    limits: Limits,
    mem: &'a Arc<GuestMemoryMmap>,
    engine: parking_lot::MutexGuard<'a, Box<dyn Engine>>,
    done: Vec<Done>,
    /// When requests the I/O limits hold back may go.
    soonest: Option<Duration>,
    /// When this pass over the ring took its first request (read once per pass: a
    /// clock reading per request cost more than the rest of a hole's read).
    taken_at: Option<Instant>,
}

impl<'a> Batch<'a> {
    fn new(device: &'a BlkDevice, q: usize, mem: &'a Arc<GuestMemoryMmap>) -> Batch<'a> {
        Batch {
            device,
            q,
            limits: device.limits(),
            mem,
            engine: device.inner.engines[q].lock(),
            done: Vec::new(),
            soonest: None,
            taken_at: None,
        }
    }

    /// Parses one chain and dispatches it (or completes it with the guest's error).
    fn take(
        &mut self,
        head: u16,
        chain: Result<Vec<Desc>, ChainError>,
        vring: &mut Vring,
    ) -> io::Result<()> {
        let device = self.device;
        let descs = match chain {
            Ok(descs) => descs,
            Err(e) => return device.refuse_unanswerable(vring, self.mem, head, &e.to_string()),
        };
        let now = *self.taken_at.get_or_insert_with(Instant::now);
        match request::parse(self.mem, &descs, &self.limits, now) {
            Ok(req) => {
                let wait = device.dispatch(
                    self.q,
                    head,
                    req,
                    self.mem,
                    &mut **self.engine,
                    &mut self.done,
                );
                self.soonest = earliest(self.soonest, wait);
            }
            Err(Rejected::Status {
                status,
                code,
                reason,
                request_type,
            }) => {
                device.inner.refusals.note(head, &reason);
                device.inner.stats.record_invalid(request_type);
                self.done.push(Done {
                    head,
                    status,
                    code,
                    used_len: 1,
                    op: Op::Other,
                    bytes: 0,
                    started: now,
                    error: None,
                });
            }
            Err(Rejected::NoStatus(reason)) => {
                device.refuse_unanswerable(vring, self.mem, head, &reason)?;
            }
        }
        Ok(())
    }

    /// Completes what already finished, without handing anything to the kernel (the
    /// batch's submissions still go together, in `complete`). Only while nothing is in
    /// the kernel's hands: then only requests that finished here are reaped, never a
    /// completion (or a qcow2 link commit) ahead of the batch's flush (the SIGKILL test
    /// of early-linked allocation hung twice in four runs without this guard).
    fn complete_finished(&mut self, vring: &mut Vring) -> io::Result<()> {
        if self.engine.in_flight() > 0 {
            return Ok(());
        }
        self.engine.reap(&mut self.done);
        self.device
            .complete(self.q, vring, self.mem, &mut self.done)
    }

    /// Hands what was taken to the kernel and completes what finished.
    fn complete(&mut self, vring: &mut Vring) -> io::Result<()> {
        self.engine.flush();
        self.engine.reap(&mut self.done);
        self.device
            .complete(self.q, vring, self.mem, &mut self.done)
    }
}

impl Device for BlkDevice {
    fn num_queues(&self) -> usize {
        self.inner.num_queues
    }

    fn max_queue_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = features::VERSION_1
            | features::INDIRECT_DESC
            | features::EVENT_IDX
            | blk::F_SEG_MAX
            | blk::F_BLK_SIZE
            | blk::F_TOPOLOGY
            | blk::F_FLUSH
            | blk::F_MQ;
        if self.inner.disk.read_only() {
            f |= blk::F_RO;
        } else {
            f |= blk::F_DISCARD | blk::F_WRITE_ZEROES;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    /// A request the guest made is never lost to a daemon restart.
    fn tracks_inflight(&self) -> bool {
        true
    }

    fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        BlkConfig {
            capacity_sectors: self.inner.disk.capacity_sectors(),
            num_queues: self.inner.num_queues as u16,
            logical_block_size: 512,
        }
        .read(offset, size)
    }

    fn host_fds(&self) -> Vec<RawFd> {
        self.inner.sources.iter().map(|(_, fd)| *fd).collect()
    }

    fn queue_kicked(
        &self,
        q: usize,
        ring: &mut Vring,
        mem: &Arc<GuestMemoryMmap>,
        _watch: &HostWatch,
    ) -> io::Result<()> {
        self.process_queue(q, ring, mem)
    }

    fn host_ready(
        &self,
        source: usize,
        rings: &Rings,
        mem: Option<&Arc<GuestMemoryMmap>>,
        _watch: &HostWatch,
    ) -> io::Result<()> {
        let Some(&(source, _)) = self.inner.sources.get(source) else {
            return Ok(());
        };
        let Some(mem) = mem else {
            self.discard(source);
            return Ok(());
        };
        match source {
            // A live ring is served as after a kick: the completions go on the used
            // ring, and the poll window then catches what the guest sends back.
            HostSource::Completions(q) => match rings.lock(q, mem) {
                Some(mut ring) if ring.live() && !self.paused() => {
                    self.process_queue(q, &mut ring, mem)
                }
                Some(mut ring) => self.reap(q, &mut ring, mem),
                None => Ok(()),
            },
            HostSource::Timer => self.release_held(rings, mem),
            HostSource::Retry => self.retry_failed(rings, mem),
            HostSource::Unpaused => self.serve_all(rings, mem),
            HostSource::Drain => self.serve_for_drain(rings, mem),
        }
    }

    /// Held requests go now, whatever the limits say, and everything in flight finishes
    /// onto the used ring. Requests held after a failure end with the guest's error: the
    /// driver is stopping the queue (QEMU drops them when its device resets).
    fn stop_queue(&self, q: usize, ring: &mut Vring, mem: &Arc<GuestMemoryMmap>) -> io::Result<()> {
        let mut engine = self.inner.engines[q].lock();
        let held = std::mem::take(&mut *self.inner.held[q].lock());
        for list in held {
            for h in list {
                self.start(&mut **engine, h.head, h.req, h.mem);
            }
        }
        let mut done = Vec::new();
        engine.drain(&mut done);
        drop(engine);
        // Nothing finishing now can be held: the ring is going away.
        let failed = std::mem::take(&mut *self.inner.failed[q].lock());
        let limits = self.limits();
        let table = GuestAddress(ring.queue().desc_table());
        let size = ring.queue().size();
        let now = Instant::now();
        done.extend(failed.into_iter().map(|head| {
            let status = virtio::read_chain(&**mem, table, size, head)
                .ok()
                .and_then(|descs| match request::parse(mem, &descs, &limits, now) {
                    Ok(req) => Some(req.status),
                    Err(Rejected::Status { status, .. }) => Some(status),
                    Err(Rejected::NoStatus(_)) => None,
                })
                .unwrap_or(std::ptr::null_mut());
            Done {
                head,
                status,
                code: blk::S_IOERR,
                used_len: u32::from(!status.is_null()),
                op: Op::Other,
                bytes: 0,
                started: now,
                error: None,
            }
        }));
        for d in &mut done {
            d.error = None;
        }
        self.complete(q, ring, mem, &mut done)
    }

    /// The gateway hears how many requests a previous daemon left in flight (standalone,
    /// the framework's log line says it).
    fn resumed_in_flight(&self, q: usize, requests: usize) {
        if let Some(events) = &self.inner.policy.events {
            events(BlockEvent::InflightResumed {
                queue: q as u32,
                requests: requests as u32,
            });
        }
    }

    /// Whatever is in flight finishes, and nothing is put on a ring nobody serves. The
    /// inflight region still says those heads are in flight (the failed ones too); the
    /// next connection starts them again.
    fn disconnected(&self) {
        for q in 0..self.inner.num_queues {
            *self.inner.held[q].lock() = Default::default();
            self.inner.failed[q].lock().clear();
            let mut done = Vec::new();
            self.inner.engines[q].lock().drain(&mut done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::CacheMode;
    use crate::engine::{self, EngineKind};
    use crate::formats::raw::Raw;
    use std::os::fd::{AsRawFd, FromRawFd};
    use vm_memory::{Bytes, GuestAddress};

    const QSIZE: u16 = 16;
    const RING: (u64, u64, u64) = (0x1000, 0x2000, 0x3000);
    const HEADER: u64 = 0x10000;
    const DATA: u64 = 0x11000;
    const STATUS: u64 = 0x12000;

    fn memory() -> Arc<GuestMemoryMmap> {
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap())
    }

    fn descriptor(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = RING.0 + 16 * u64::from(i);
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// One 512-byte write of 0xab to sector 1, made available as head 0.
    fn write_request(mem: &GuestMemoryMmap) {
        mem.write_obj(blk::T_OUT, GuestAddress(HEADER)).unwrap();
        mem.write_obj(1u64, GuestAddress(HEADER + 8)).unwrap();
        mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        descriptor(mem, 0, HEADER, 16, 1, 1);
        descriptor(mem, 1, DATA, 512, 1, 2);
        descriptor(mem, 2, STATUS, 1, 2, 0);
        mem.write_obj(0u16, GuestAddress(RING.1 + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(RING.1 + 2)).unwrap();
    }

    fn used_idx(mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(RING.2 + 2)).unwrap()
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// A device over an image opened read-only (so every write fails, with EBADF), with
    /// the events it raises; and the image's path.
    fn device(
        tag: &str,
        on_write_error: OnError,
    ) -> (BlkDevice, Arc<Mutex<Vec<BlockEvent>>>, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("flotilla-blk-policy-{tag}-{}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 16)
            .unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let counters = Arc::new(ipc::BlockCounters::create().unwrap());
        let raw = Arc::new(Raw::open(file, true).unwrap());
        let disk = Arc::new(Disk::new(raw, None, false, CacheMode::Writeback, "d").unwrap());
        let engines = engine::per_queue(EngineKind::Sync, &disk, 1, u32::from(QSIZE)).unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let policy = Policy {
            on_write_error,
            events: Some(Arc::new(move |e| sink.lock().push(e))),
            ..Policy::default()
        };
        let stats = Arc::new(Stats::new(&[], counters));
        let dev = BlkDevice::new(disk, engines, stats, policy).unwrap();
        (dev, events, path)
    }

    fn kick(dev: &BlkDevice, rings: &Rings, mem: &Arc<GuestMemoryMmap>) {
        let watch = HostWatch::for_testing(dev.host_fds()).unwrap();
        let mut ring = rings.lock(0, mem).unwrap();
        dev.queue_kicked(0, &mut ring, mem, &watch).unwrap();
    }

    /// A FLUSH as head `head` (descriptors `head`, `head + 1`), its header and status
    /// at `at` and `at + 0x10`, made available in slot `slot` of the available ring
    /// (whose index becomes `slot + 1`).
    fn flush_request(mem: &GuestMemoryMmap, head: u16, slot: u16, at: u64) {
        mem.write_obj(blk::T_FLUSH, GuestAddress(at)).unwrap();
        mem.write_obj(0u64, GuestAddress(at + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(at + 0x10)).unwrap();
        descriptor(mem, head, at, 16, 1, head + 1);
        descriptor(mem, head + 1, at + 0x10, 1, 2, 0);
        mem.write_obj(head, GuestAddress(RING.1 + 4 + 2 * u64::from(slot)))
            .unwrap();
        mem.write_obj(slot + 1, GuestAddress(RING.1 + 2)).unwrap();
    }

    /// A device with a `kind` engine over a writable 64 KiB raw image, whose FLUSH syncs
    /// the image's file (io_uring: completed by the kernel, later); and the image's path.
    fn writable_device(tag: &str, kind: EngineKind) -> (BlkDevice, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("flotilla-blk-{tag}-{}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 16)
            .unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let fd = file.as_raw_fd();
        let counters = Arc::new(ipc::BlockCounters::create().unwrap());
        let raw = Arc::new(Raw::open(file, true).unwrap());
        let disk = Arc::new(Disk::new(raw, Some(fd), false, CacheMode::Writeback, "d").unwrap());
        let engines = engine::per_queue(kind, &disk, 1, u32::from(QSIZE)).unwrap();
        let stats = Arc::new(Stats::new(&[], counters));
        (
            BlkDevice::new(disk, engines, stats, Policy::default()).unwrap(),
            path,
        )
    }

    /// Waits (up to 10 s) for the engine's completion source to become readable.
    fn wait_readable(fd: RawFd) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd that lives on the stack.
        let n = unsafe { libc::poll(&mut p, 1, 10_000) };
        assert_eq!(n, 1, "no completion in 10 s");
    }

    #[test]
    fn a_completion_that_arrives_in_the_poll_window_is_on_the_used_ring_at_once() {
        let mem = memory();
        flush_request(&mem, 0, 0, HEADER);
        let rings = Rings::live_for_testing(&[RING], QSIZE, false).unwrap();
        let (dev, path) = writable_device("poll-window", EngineKind::Uring);
        // Long enough for the kernel's fdatasync on any machine.
        dev.set_poll(Duration::from_secs(1));
        kick(&dev, &rings, &mem);
        // The kick's own call completed it: no trip through the ring's fd.
        assert_eq!(used_idx(&mem), 1);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(HEADER + 0x10)).unwrap(),
            blk::S_OK
        );
        std::fs::remove_file(path).unwrap();
    }

    /// The poll window is used while few requests are in flight, not with more (they
    /// stay in flight here: nothing reaps them until the drain), and is longer while
    /// some are in flight than with none.
    #[test]
    fn the_queue_polls_only_while_few_requests_are_in_flight() {
        let (dev, path) = writable_device("poll-few", EngineKind::Uring);
        let mem = memory();
        let status =
            vm_memory::GuestMemoryBackend::get_host_address(&*mem, GuestAddress(HEADER + 0x10))
                .unwrap();
        let mut engine = dev.inner.engines[0].lock();
        let window = Duration::from_micros(32);
        let longer = window * WATCH_WINDOWS_WHILE_IN_FLIGHT;
        assert!(longer > window);
        for i in 0..=POLL_WHILE_IN_FLIGHT_AT_MOST {
            let expected = if i == 0 { window } else { longer };
            assert_eq!(
                watch_window(window, &**engine),
                expected,
                "the watch with {i} in flight"
            );
            assert_eq!(watch_window(Duration::ZERO, &**engine), Duration::ZERO);
            let flush = Request {
                kind: Kind::Flush,
                sector: 0,
                data: Vec::new(),
                data_len: 0,
                status,
                arrived: Instant::now(),
            };
            engine.submit(i as u16, flush, mem.clone());
        }
        assert_eq!(
            watch_window(window, &**engine),
            Duration::ZERO,
            "polled with {} in flight",
            engine.in_flight()
        );
        let mut done = Vec::new();
        engine.flush();
        engine.drain(&mut done);
        assert_eq!(done.len(), POLL_WHILE_IN_FLIGHT_AT_MOST + 1);
        assert_eq!(watch_window(window, &**engine), window);
        drop(engine);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn completions_on_a_live_ring_also_take_what_the_guest_made_available() {
        let mem = memory();
        flush_request(&mem, 0, 0, HEADER);
        let rings = Rings::live_for_testing(&[RING], QSIZE, false).unwrap();
        let (dev, path) = writable_device("poll-pipeline", EngineKind::Uring);
        dev.set_poll(Duration::ZERO);
        kick(&dev, &rings, &mem);
        // The second request arrives without a kick (the driver saw the device busy).
        flush_request(&mem, 3, 1, HEADER + 0x100);
        let completions = dev.host_fds()[0];
        wait_readable(completions);
        let watch = HostWatch::for_testing(dev.host_fds()).unwrap();
        dev.host_ready(0, &rings, Some(&mem), &watch).unwrap();
        assert!(used_idx(&mem) >= 1, "the first is not complete");
        assert_eq!(
            rings.lock(0, &mem).unwrap().queue().next_avail(),
            2,
            "the second was taken with it"
        );
        // (The second's sync may already be done by the batch's own reap.)
        if used_idx(&mem) < 2 {
            wait_readable(completions);
            dev.host_ready(0, &rings, Some(&mem), &watch).unwrap();
        }
        assert_eq!(used_idx(&mem), 2);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(HEADER + 0x110)).unwrap(),
            blk::S_OK
        );
        std::fs::remove_file(path).unwrap();
    }

    /// The call eventfd's count since the last look (0: the driver was not interrupted).
    fn calls(call: &std::fs::File) -> u64 {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes from a nonblocking eventfd into a local buffer.
        let n = unsafe { libc::read(call.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        if n == 8 {
            u64::from_ne_bytes(buf)
        } else {
            0
        }
    }

    /// 32 FLUSHes made available at once on a ring of 64 (event_idx: with `used_event`
    /// 0, the driver asks for a call when the first is used), served by a sync engine
    /// (each finishes as it is taken) after one kick; the calls the driver got.
    fn calls_for_a_batch_of_32(event_idx: bool) -> u64 {
        const SIZE: u16 = 64;
        let mem = memory();
        for i in 0..32u16 {
            flush_request(&mem, 2 * i, i, HEADER + 0x100 * u64::from(i));
        }
        let used_event = GuestAddress(RING.1 + 4 + 2 * u64::from(SIZE));
        mem.write_obj(0u16, used_event).unwrap();
        let rings = Rings::live_for_testing(&[RING], SIZE, event_idx).unwrap();
        // SAFETY: eventfd with integer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: fd was just created and nothing else owns it.
        let call = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        rings
            .lock(0, &mem)
            .unwrap()
            .set_call_for_testing(call.try_clone().unwrap());
        let (dev, path) = writable_device(&format!("stream-{event_idx}"), EngineKind::Sync);
        dev.set_poll(Duration::ZERO);
        kick(&dev, &rings, &mem);
        assert_eq!(used_idx(&mem), 32);
        for i in 0..32 {
            let status = GuestAddress(HEADER + 0x100 * i + 0x10);
            assert_eq!(
                mem.read_obj::<u8>(status).unwrap(),
                blk::S_OK,
                "request {i}"
            );
        }
        std::fs::remove_file(path).unwrap();
        calls(&call)
    }

    /// Requests that finish as they are taken reach the driver every COMPLETE_EVERY
    /// chains, not once the whole batch is taken: the driver can send them again while
    /// the daemon takes the rest.
    #[test]
    fn finished_requests_reach_the_driver_while_the_batch_is_still_being_taken() {
        assert_eq!(calls_for_a_batch_of_32(false), 32 / COMPLETE_EVERY as u64);
    }

    /// With EVENT_IDX, those completions interrupt the driver only when it asked: once
    /// for a batch when it asked for a call at the first used entry.
    #[test]
    fn with_event_idx_a_batch_completed_in_steps_calls_the_driver_once() {
        assert_eq!(calls_for_a_batch_of_32(true), 1);
    }

    /// The poll window's end is read from the clock once every SPINS_PER_CLOCK_READ
    /// spins, and then seen.
    #[test]
    fn a_poll_deadline_reads_the_clock_once_every_few_spins() {
        let mut deadline = Deadline::after(Duration::ZERO);
        for spin in 1..SPINS_PER_CLOCK_READ {
            assert!(!deadline.passed(), "spin {spin} read the clock");
        }
        assert!(deadline.passed());
        let mut later = Deadline::after(Duration::from_secs(3600));
        assert!((0..4 * SPINS_PER_CLOCK_READ).all(|_| !later.passed()));
    }

    #[test]
    fn a_quiesced_device_takes_nothing_from_its_rings_until_the_quiesce_ends() {
        let mem = memory();
        write_request(&mem);
        let rings = Rings::live_for_testing(&[RING], QSIZE, false).unwrap();
        let (dev, path) = writable_device("quiesce", EngineKind::Sync);
        let quiesced = dev.quiesce(Duration::from_secs(1)).unwrap();
        kick(&dev, &rings, &mem);
        // The request waits in the ring: not taken, not completed, nothing written.
        assert_eq!(used_idx(&mem), 0);
        assert_eq!(status(&mem), 0xff);
        assert!(std::fs::read(&path).unwrap()[512..1024]
            .iter()
            .all(|b| *b == 0));
        drop(quiesced);
        // The end of the quiesce (the third host source) serves the ring.
        let watch = HostWatch::for_testing(dev.host_fds()).unwrap();
        dev.host_ready(2, &rings, Some(&mem), &watch).unwrap();
        assert_eq!(used_idx(&mem), 1);
        assert_eq!(status(&mem), blk::S_OK);
        assert!(std::fs::read(&path).unwrap()[512..1024]
            .iter()
            .all(|b| *b == 0xab));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_failed_write_is_held_until_resumed_then_lands() {
        let mem = memory();
        write_request(&mem);
        let rings = Rings::live_for_testing(&[RING], QSIZE, false).unwrap();
        let (dev, events, path) = device("stop", OnError::Stop);
        kick(&dev, &rings, &mem);
        // Held: not completed, the status byte untouched, the gateway told.
        assert_eq!(used_idx(&mem), 0);
        assert_eq!(status(&mem), 0xff);
        assert_eq!(dev.failed_requests(), 1);
        assert_eq!(
            *events.lock(),
            [BlockEvent::IoError {
                operation: IoOperation::Write,
                action: ErrorAction::Stop,
                errno: libc::EBADF
            }]
        );
        // Space is back, so to speak: the image is writable now. Resumed, the request
        // is taken again from the descriptor table and lands.
        let writable = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mapping = dev.disk().format().map(0, 512, true).unwrap();
        let [crate::formats::Extent::File { fd, .. }] = mapping.extents[..] else {
            panic!("raw maps to its file: {mapping:?}");
        };
        // SAFETY: dup2 onto the disk's own descriptor, which stays open and is ours.
        assert!(unsafe { libc::dup2(writable.as_raw_fd(), fd) } >= 0);
        dev.resume();
        let watch = HostWatch::for_testing(dev.host_fds()).unwrap();
        // The sync engine has no completion source: the timer, the retry, the end of
        // a quiesce, then a drain's ask.
        assert_eq!(dev.host_fds().len(), 4);
        dev.host_ready(1, &rings, Some(&mem), &watch).unwrap();
        assert_eq!(used_idx(&mem), 1);
        assert_eq!(status(&mem), blk::S_OK);
        assert_eq!(dev.failed_requests(), 0);
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk[512..1024].iter().all(|b| *b == 0xab));
        assert_eq!(events.lock().len(), 1, "the retry raised nothing");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn report_fails_the_request_and_ignore_completes_it() {
        for (policy, code) in [
            (OnError::Report, blk::S_IOERR),
            (OnError::Ignore, blk::S_OK),
        ] {
            let mem = memory();
            write_request(&mem);
            let rings = Rings::live_for_testing(&[RING], QSIZE, false).unwrap();
            let (dev, events, path) = device(policy.qmp_name(), policy);
            kick(&dev, &rings, &mem);
            assert_eq!(used_idx(&mem), 1, "{policy:?}");
            assert_eq!(status(&mem), code, "{policy:?}");
            assert_eq!(dev.failed_requests(), 0);
            let expected = if policy == OnError::Report {
                ErrorAction::Report
            } else {
                ErrorAction::Ignore
            };
            assert!(
                matches!(events.lock()[..], [BlockEvent::IoError { action, .. }] if action == expected),
                "{policy:?}: {:?}",
                events.lock()
            );
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn no_medium_is_reported_whatever_the_policy() {
        let mem = memory();
        write_request(&mem);
        let rings = Rings::live_for_testing(&[RING], QSIZE, false).unwrap();
        let (dev, events, path) = device("no-medium", OnError::Stop);
        let size = dev.disk().size();
        dev.disk().replace_served(crate::disk::Served {
            format: Arc::new(crate::formats::no_medium::NoMedium::new(size)),
            flush_fd: None,
        });
        kick(&dev, &rings, &mem);
        // Not held under werror=stop: failed at once, reported.
        assert_eq!(used_idx(&mem), 1);
        assert_eq!(status(&mem), blk::S_IOERR);
        assert_eq!(dev.failed_requests(), 0);
        assert_eq!(
            *events.lock(),
            [BlockEvent::IoError {
                operation: IoOperation::Write,
                action: ErrorAction::Report,
                errno: libc::ENOMEDIUM
            }]
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn enospc_stops_only_on_enospc_and_a_stopped_queue_fails_what_it_held() {
        let mem = memory();
        write_request(&mem);
        let rings = Rings::live_for_testing(&[RING], QSIZE, false).unwrap();
        // EBADF is no ENOSPC: reported.
        let (dev, events, path) = device("enospc", OnError::Enospc);
        kick(&dev, &rings, &mem);
        assert_eq!(status(&mem), blk::S_IOERR);
        assert!(matches!(
            events.lock()[..],
            [BlockEvent::IoError {
                action: ErrorAction::Report,
                ..
            }]
        ));
        std::fs::remove_file(path).unwrap();
        // A queue stopped while it holds a failed request completes it with an error.
        let mem = memory();
        write_request(&mem);
        let rings = Rings::live_for_testing(&[RING], QSIZE, false).unwrap();
        let (dev, _, path) = device("stop-queue", OnError::Stop);
        kick(&dev, &rings, &mem);
        assert_eq!(used_idx(&mem), 0);
        let mut ring = rings.lock(0, &mem).unwrap();
        dev.stop_queue(0, &mut ring, &mem).unwrap();
        assert_eq!(used_idx(&mem), 1);
        assert_eq!(status(&mem), blk::S_IOERR);
        assert_eq!(dev.failed_requests(), 0);
        std::fs::remove_file(path).unwrap();
    }
}
