//! A migration out of this VM, on its own thread: connect, start dirty logging and the
//! agent, passes until what is left fits the downtime limit (with auto-converge's CPU
//! throttle when it does not converge), then the stop-and-copy: vCPUs stopped, disks
//! drained, the last dirty pages and the device state (the disks flushed and let go
//! meanwhile), the destination's answer. Whatever
//! fails or is cancelled on the way leaves the VM here as it was: logging off, the agent
//! gone, the vCPUs running again if they ran.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::{
    AgentReply, AgentRequest, Channel, CompressParams, OutgoingStart, PassReport, RunState,
    VmmReply, VmmRequest,
};

use crate::block::BlockError;
use crate::children::daemon::DaemonError;

use super::agent::Agent;
use super::block::DiskCopy;
use super::migrator::{MigrateError, Migrator};
use super::progress::{Progress, Status, PAGE_SIZE};
use super::settings::Capability;
use super::uri::{self, MigrationUri, Opened};

/// How long one SendPass call works before reporting back.
const PASS_BUDGET_MS: u32 = 100;
/// The final pass runs with the VM stopped: it works in longer calls.
const FINAL_BUDGET_MS: u32 = 1000;
/// auto-converge looks at the migration in periods of at least this long (QEMU's).
const THROTTLE_PERIOD: Duration = Duration::from_secs(1);

/// Why the migration ended early.
enum Stop {
    Failed(String),
    Cancelled,
}

impl<E: std::fmt::Display> From<E> for Stop {
    fn from(e: E) -> Stop {
        Stop::Failed(e.to_string())
    }
}

/// What a migration that fails must undo here.
#[derive(Default)]
struct Undo {
    /// Dirty logging is on.
    logging: bool,
    /// Set at the stop-and-copy (or the switch to postcopy): whether the VM ran then.
    stopped: Option<bool>,
    /// The disks were let go of.
    inactive: bool,
    /// Postcopy: the VM runs at the destination. Nothing can be undone then: it must
    /// not run here again (its disks changed there), and it cannot go on there
    /// without the pages still here.
    ran_there: bool,
}

pub fn run(m: &Arc<Migrator>, uri: &MigrationUri, named_fd: Option<OwnedFd>, copy: DiskCopy) {
    let mut undo = Undo::default();
    let result = migrate(m, uri, named_fd, copy, &mut undo);
    let Undo {
        logging,
        stopped,
        inactive,
        ran_there,
    } = undo;
    // Whatever happened, the agent goes, and the connection with it.
    m.connection.lock().take();
    if let Some(agent) = m.agent.lock().take() {
        match &result {
            Ok(()) => {
                agent.stop(Duration::from_secs(2));
            }
            Err(_) => {
                agent.kill();
            }
        }
    }
    if result.is_ok() {
        return;
    }
    if ran_there {
        if let Err(e) = m.h.vmm.request(VmmRequest::MigrationEnd, &[]) {
            log::error!("migration: turning dirty logging off: {e}");
        }
        // The VM is not this side's any more: "postmigrate", as after a completion.
        if let Err(e) = m.h.vmm.request(VmmRequest::MigrationCompleted, &[]) {
            log::error!("migration: marking the VM postmigrate: {e}");
        }
        let why = match result {
            Err(Stop::Failed(why)) => why,
            _ => "cancelled".into(),
        };
        m.fail(format!(
            "{why}; postcopy had switched: the VM ran at the destination without all of \
             its memory, and stays stopped here"
        ));
        return;
    }
    // The VM stays here: its disks back, logging off, running again if it ran.
    let mut disks_back = true;
    if inactive {
        if let Err(e) = m.h.block.activate() {
            // Someone took them meanwhile (the destination): the VM must not write them,
            // so it does not run again here.
            log::error!("migration: taking the disks back: {e}");
            disks_back = false;
        }
    }
    if logging {
        if let Err(e) = m.h.vmm.request(VmmRequest::MigrationEnd, &[]) {
            log::error!("migration: turning dirty logging off: {e}");
        }
    }
    if stopped == Some(true) && disks_back {
        if let Err(e) = m.h.vmm.request(VmmRequest::Cont, &[]) {
            log::error!("migration: resuming the VM: {e}");
        }
        m.h.block.cont();
    } else if stopped.is_some() {
        // Stopped before the migration, or without its disks: paused, not finish-migrate.
        if let Err(e) = m.h.vmm.request(VmmRequest::Stop, &[]) {
            log::error!("migration: leaving the VM paused: {e}");
        }
    }
    if m.cancelled() {
        m.with_progress(|p| {
            if let Some(s) = p.started {
                p.total_ms = Some(s.elapsed().as_millis() as u64);
            }
        });
        m.set_status(Status::Cancelled);
        return;
    }
    match result {
        Err(Stop::Failed(why)) if !disks_back => m.fail(format!(
            "{why}; the VM stays paused here: its disks could not be taken back"
        )),
        Err(Stop::Failed(why)) => m.fail(why),
        _ => m.set_status(Status::Cancelled),
    }
}

/// pause-before-switchover: the VM stopped, the source waits in status pre-switchover
/// for migrate-continue (or a cancel) before the device state goes, as QEMU 7.2's
/// migration_maybe_pause.
fn pause_before_switchover(m: &Migrator) -> Result<(), Stop> {
    if !m
        .settings
        .lock()
        .capability(Capability::PauseBeforeSwitchover)
    {
        return Ok(());
    }
    {
        let _order = m.transitions.lock();
        // A migrate-continue before the pause does not count (QEMU drains its semaphore).
        m.switchover.store(false, Ordering::SeqCst);
        if !m.change_status(Status::PreSwitchover, |s| s != Status::Cancelling) {
            return Err(Stop::Cancelled);
        }
    }
    while !m.switchover.load(Ordering::SeqCst) {
        check_cancel(m)?;
        std::thread::sleep(Duration::from_millis(1));
    }
    check_cancel(m)
}

fn check_cancel(m: &Migrator) -> Result<(), Stop> {
    match m.cancelled() {
        true => Err(Stop::Cancelled),
        false => Ok(()),
    }
}

/// The agent's process while it starts, beside the connection and dirty logging. A
/// migration that ends before it is opened waits for it and stops it: nothing of the
/// migration is left once it reports failed.
struct Spawning(Option<std::thread::JoinHandle<Result<Agent, DaemonError>>>);

impl Spawning {
    fn join(mut self) -> Result<Agent, DaemonError> {
        match self.0.take().map(|t| t.join()) {
            Some(Ok(started)) => started,
            _ => Err(DaemonError::Panicked("the agent's start")),
        }
    }
}

impl Drop for Spawning {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            // An agent started for nothing quits (Daemon's drop).
            drop(t.join());
        }
    }
}

/// The stop-and-copy's last dirty pages, then the device state (the VM is stopped):
/// vmm-core's and the NICs' host sides' (filters, links), as the STATE record carries them.
fn last_pages_and_state(m: &Migrator, agent: &Agent, last_pages: bool) -> Result<Vec<u8>, Stop> {
    sync(m)?;
    if last_pages {
        send_pass(m, agent, false, FINAL_BUDGET_MS, true)?;
    }
    let state = super::device_state::take(&m.h.vmm, (m.h.nics)())?;
    Ok(state.encode()?)
}

/// A failed call to the agent is a cancellation when migrate_cancel killed it.
fn agent_call(m: &Migrator, agent: &Agent, request: AgentRequest) -> Result<AgentReply, Stop> {
    agent.link.request(request, &[]).map_err(|e| {
        if m.cancelled() {
            Stop::Cancelled
        } else {
            Stop::Failed(e.to_string())
        }
    })
}

fn migrate(
    m: &Arc<Migrator>,
    uri: &MigrationUri,
    named_fd: Option<OwnedFd>,
    copy: DiskCopy,
    undo: &mut Undo,
) -> Result<(), Stop> {
    // The agent's process starts (and is sandboxed) while the connection is made and
    // dirty logging turned on: most of the setup time otherwise.
    let spawning = {
        let (binary, policy) = (m.h.agent_binary.clone(), m.h.policy.clone());
        let deaths = std::sync::mpsc::channel().0;
        Spawning(Some(std::thread::spawn(move || {
            Agent::spawn_ahead(&binary, "the migration", &policy, |_| {}, deaths)
        })))
    };
    let mut named_fd = named_fd;
    let opened: Opened = uri::connect(uri, |_| {
        named_fd
            .take()
            .ok_or_else(|| "the named fd was already taken".to_string())
    })
    .map_err(Stop::Failed)?;
    if opened.channel == Channel::OneWay && m.settings.lock().capability(Capability::ReturnPath) {
        return Err(Stop::Failed(
            "return-path is on, but a file or a pipe cannot carry the destination's answer".into(),
        ));
    }
    *m.connection.lock() = opened.fd.try_clone().ok();
    check_cancel(m)?;
    let (reply, fds) = m.h.vmm.request_with_fds(VmmRequest::MigrationStart, &[])?;
    undo.logging = true;
    let VmmReply::Migration {
        windows,
        bitmap_len,
    } = reply
    else {
        return Err(Stop::Failed(format!("vmm-core answered {reply:?}")));
    };
    let (settings, shape) = (m.settings.lock().clone(), m.shape.lock().clone());
    let xbzrle = settings.capability(Capability::Xbzrle);
    let compress = settings.capability(Capability::Compress);
    let total: u64 = windows.iter().map(|w| w.size).sum();
    m.with_progress(|p| {
        p.ram.total = total;
        p.ram.remaining = total;
        p.xbzrle = xbzrle.then(|| super::progress::Xbzrle {
            cache_size: settings.xbzrle_cache_size(),
            ..Default::default()
        });
        p.compression = compress.then(Default::default);
    });
    let start = OutgoingStart {
        channel: opened.channel,
        windows,
        log_len: bitmap_len,
        shape,
        xbzrle_cache: xbzrle.then(|| settings.xbzrle_cache_size()),
        // Read once, as QEMU sets its compression threads up at the start.
        compress: compress.then(|| CompressParams {
            level: settings.compress_level(),
            threads: settings.compress_threads(),
            wait_thread: settings.compress_wait_thread(),
        }),
        postcopy: settings.capability(Capability::PostcopyRam),
    };
    let mut fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    fds.push(opened.fd.as_fd());
    let spawned = spawning.join();
    let (agent, _, _) = (spawned.and_then(|agent| agent.open(AgentRequest::Outgoing(start), &fds)))
        .map_err(|e| match e {
            DaemonError::Link(crate::children::link::LinkError::Remote(r)) => Stop::Failed(r.desc),
            other => Stop::Failed(other.to_string()),
        })?;
    let agent = Arc::new(agent);
    *m.agent.lock() = Some(agent.clone());
    check_cancel(m)?;
    // Block migration: the disks' channels, the DISKS record and its answer.
    let zero_blocks = settings.capability(Capability::ZeroBlocks);
    super::block::start_outgoing(&m.h.block, &agent, copy, zero_blocks, |d| {
        m.with_progress(|p| p.disk = Some(d))
    })?;
    check_cancel(m)?;
    let setup_ms = m.with_progress(|p| p.started.map_or(0, |s| s.elapsed().as_millis() as u64));
    m.with_progress(|p| p.setup_ms = setup_ms);
    m.set_status(Status::Active);

    let downtime = match precopy(m, &agent)? {
        Switch::StopAndCopy => stop_and_copy(m, &agent, undo)?,
        Switch::Postcopy => postcopy(m, &agent, undo)?,
    };
    // total-time ends here, as QEMU's ends at the completion, before its cleanup (the
    // agent's exit and dirty logging off, here).
    let total = m.with_progress(|p| p.started.map(|s| s.elapsed().as_millis() as u64));
    // The agent and the gateway's handles on the connection go first, so that an exec:
    // command sees the end of its input and finishes writing, rather than being cut short.
    if let Some(agent) = m.agent.lock().take() {
        agent.stop(Duration::from_secs(2));
    }
    m.connection.lock().take();
    opened.finish();
    if let Err(e) = m.h.vmm.request(VmmRequest::MigrationEnd, &[]) {
        log::warn!("migration: turning dirty logging off: {e}");
    }
    undo.logging = false;
    if let Err(e) = m.h.vmm.request(VmmRequest::MigrationCompleted, &[]) {
        log::warn!("migration: marking the VM postmigrate: {e}");
    }
    m.with_progress(|p| {
        p.downtime_ms = Some(downtime);
        p.ram.remaining = 0;
        p.total_ms = total;
    });
    m.set_status(Status::Completed);
    Ok(())
}

/// The VM stops, the disks are drained and let go of while the last dirty pages (unless
/// `last_pages` is false: postcopy sends them later) and the device state are taken;
/// the state, encoded. Whether the VM runs is read at the stop, as QEMU takes the run
/// state it sends at the completion: one stopped during the passes stays paused at the
/// destination (and here, should the migration fail).
fn stop_and_take_state(
    m: &Migrator,
    agent: &Agent,
    undo: &mut Undo,
    last_pages: bool,
) -> Result<(Vec<u8>, bool), Stop> {
    let running_before = (m.h.run_state)() == RunState::Running;
    m.h.vmm.request(VmmRequest::MigrationStop, &[])?;
    undo.stopped = Some(running_before);
    m.h.block.drain_unflushed();
    check_cancel(m)?;
    pause_before_switchover(m)?;
    if last_pages {
        m.set_status(Status::Device);
    }
    // The disks are flushed, left clean and their locks let go (the destination takes
    // them when it has the state) while the last pages and the state are taken: both
    // are inside the downtime. A failure or a cancel from here on takes them back.
    undo.inactive = true;
    let (state, inactivated) = std::thread::scope(|scope| {
        let inactivation = scope.spawn(|| m.h.block.inactivate());
        let state = last_pages_and_state(m, agent, last_pages);
        let inactivated = inactivation
            .join()
            .unwrap_or_else(|_| Err(BlockError::Migration("the inactivation panicked".into())));
        (state, inactivated)
    });
    let state = state?;
    inactivated?;
    Ok((state, running_before))
}

/// The stop-and-copy: the last pages, the state, the destination's answer. Returns
/// the downtime in milliseconds.
fn stop_and_copy(m: &Migrator, agent: &Agent, undo: &mut Undo) -> Result<u64, Stop> {
    let downtime_start = Instant::now();
    let (state, running) = stop_and_take_state(m, agent, undo, true)?;
    // Once the state goes, the VM may run there: no cancel from here on.
    if !m.commit() {
        return Err(Stop::Cancelled);
    }
    agent_call(m, agent, AgentRequest::Finish { state, running })?;
    Ok(downtime_start.elapsed().as_millis() as u64)
}

/// The switch to postcopy (migrate-start-postcopy came): the VM stops, the state goes
/// without the pages still dirty, and the VM runs at the destination while the agent
/// sends those (the ones the destination waits for first). Returns the downtime (the
/// stop until the destination runs the VM), once every page went.
fn postcopy(m: &Migrator, agent: &Agent, undo: &mut Undo) -> Result<u64, Stop> {
    // The VM will run there before everything is there: no cancel from here on (QEMU's
    // migrate_cancel cannot take a postcopy migration back either).
    if !m.commit() {
        return Err(Stop::Cancelled);
    }
    // QEMU's order: the status, then the stop.
    m.set_status(Status::PostcopyActive);
    let downtime_start = Instant::now();
    let (state, running) = stop_and_take_state(m, agent, undo, false)?;
    let max_bandwidth = m.settings.lock().max_postcopy_bandwidth();
    // Answered once the destination's vmm-core took the state; if it could not, the VM
    // never ran there and runs here again (the failure path).
    agent_call(
        m,
        agent,
        AgentRequest::Postcopy {
            state,
            running,
            max_bandwidth,
        },
    )?;
    undo.ran_there = true;
    let downtime = downtime_start.elapsed().as_millis() as u64;
    let mut before = ipc::PostcopyReport::default();
    loop {
        let report = match agent_call(m, agent, AgentRequest::PostcopyProgress { wait_ms: 100 })? {
            AgentReply::Postcopy(r) => r,
            other => return Err(Stop::Failed(format!("the agent answered {other:?}"))),
        };
        let secs = downtime_start.elapsed().as_secs_f64().max(1e-3);
        m.with_progress(|p| {
            p.add_postcopy(&report, &before);
            // The postcopy phase's throughput so far, as query-migrate's mbps.
            p.ram.bandwidth = report.bytes as f64 / secs;
            p.ram.pages_per_second =
                ((report.normal_pages + report.zero_pages) as f64 / secs) as u64;
        });
        before = report;
        if report.complete {
            return Ok(downtime);
        }
    }
}

/// Moves KVM's dirty log into the shared one; counts the sync; returns the dirty pages.
fn sync(m: &Migrator) -> Result<u64, Stop> {
    let pages = match m.h.vmm.request(VmmRequest::DirtyLogSync, &[])? {
        VmmReply::Dirty { pages } => pages,
        other => return Err(Stop::Failed(format!("vmm-core answered {other:?}"))),
    };
    let count = m.with_progress(|p| {
        p.ram.dirty_sync_count += 1;
        p.ram.remaining = pages * PAGE_SIZE;
        p.ram.dirty_sync_count
    });
    m.pass_event(count);
    Ok(pages)
}

/// How the precopy passes end.
enum Switch {
    /// What is left fits the downtime limit.
    StopAndCopy,
    /// migrate-start-postcopy came.
    Postcopy,
}

/// How a pass ended.
enum Pass {
    /// Its bytes and how long it took.
    Complete(u64, Duration),
    /// Cut short: postcopy was asked for.
    Postcopy,
}

/// Whether to switch to postcopy now, in the middle of a pass. A block migration's
/// disks are not postcopied (nor are QEMU's): with them, the switch waits for a pass's
/// end, after the disks' first copy.
fn postcopy_now(m: &Migrator, stopped: bool) -> bool {
    !stopped && m.postcopy_requested() && m.with_progress(|p| p.disk.is_none())
}

/// One whole pass, in calls of `budget_ms` (cut short when postcopy is asked for).
fn send_pass(
    m: &Migrator,
    agent: &Agent,
    first: bool,
    budget_ms: u32,
    stopped: bool,
) -> Result<Pass, Stop> {
    let started = Instant::now();
    let mut bytes = 0;
    let mut pages = 0;
    loop {
        check_cancel(m)?;
        // Asked for before this call (even before the first): switch now, as QEMU does
        // at its next iteration.
        if postcopy_now(m, stopped) {
            return Ok(Pass::Postcopy);
        }
        let max_bandwidth = if stopped {
            // The VM is stopped: the downtime is what counts now (QEMU lifts the
            // limit for the last pass too).
            0
        } else {
            m.settings.lock().max_bandwidth()
        };
        let report: PassReport = match agent_call(
            m,
            agent,
            AgentRequest::SendPass {
                first,
                budget_ms,
                max_bandwidth,
            },
        )? {
            AgentReply::Pass(r) => r,
            other => return Err(Stop::Failed(format!("the agent answered {other:?}"))),
        };
        bytes += report.bytes;
        pages +=
            report.normal_pages + report.zero_pages + report.xbzrle_pages + report.compressed_pages;
        m.with_progress(|p| {
            p.add(&report, stopped);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            p.ram.pages_per_second = (pages as f64 / secs) as u64;
        });
        if report.remaining_pages == 0 && report.disk_remaining == 0 {
            return Ok(Pass::Complete(bytes, started.elapsed()));
        }
    }
}

/// Passes until the dirty pages left would take no longer than the downtime limit to
/// send at the bandwidth the last pass reached; with auto-converge, the vCPUs are
/// throttled meanwhile as QEMU throttles them.
fn precopy(m: &Migrator, agent: &Agent) -> Result<Switch, Stop> {
    let mut first = true;
    let mut converge = AutoConverge::new(Instant::now());
    loop {
        let pass = send_pass(m, agent, first, PASS_BUDGET_MS, false)?;
        let (bytes, took) = match pass {
            Pass::Complete(bytes, took) if !m.postcopy_requested() => (bytes, took),
            _ => {
                // The VM stops at the switch: auto-converge's throttle is over.
                if converge.throttle > 0 {
                    set_throttle(m, 0)?;
                }
                return Ok(Switch::Postcopy);
            }
        };
        first = false;
        let pass_start = Instant::now();
        let dirty = sync(m)?;
        let bandwidth = bytes as f64 / took.as_secs_f64().max(1e-3);
        let disk_dirty = m.with_progress(|p| p.disk.as_ref().map_or(0, |d| d.dirty));
        let expected_ms = (dirty * PAGE_SIZE + disk_dirty) as f64 / bandwidth.max(1.0) * 1000.0;
        let (limit_ms, knobs) = {
            let s = m.settings.lock();
            let knobs = ThrottleKnobs {
                on: s.capability(Capability::AutoConverge),
                threshold: s.throttle_trigger_threshold(),
                initial: s.cpu_throttle_initial(),
                increment: s.cpu_throttle_increment(),
                tailslow: s.cpu_throttle_tailslow(),
                max: s.max_cpu_throttle(),
            };
            (s.downtime_limit_ms(), knobs)
        };
        m.with_progress(|p| {
            p.ram.bandwidth = bandwidth;
            p.expected_downtime_ms = expected_ms as u64;
            p.ram.dirty_pages_rate =
                (dirty as f64 / (took + pass_start.elapsed()).as_secs_f64().max(1e-3)) as u64;
        });
        if expected_ms <= limit_ms as f64 {
            if converge.throttle > 0 {
                set_throttle(m, 0)?;
            }
            return Ok(Switch::StopAndCopy);
        }
        if let Some(percent) = converge.after_sync(Instant::now(), bytes, dirty, &knobs) {
            set_throttle(m, percent)?;
        }
    }
}

/// The parameters of auto-converge, read at each sync (they may change meanwhile).
struct ThrottleKnobs {
    /// The capability.
    on: bool,
    /// throttle-trigger-threshold: a period is "high" when it dirtied more than this
    /// percentage of the bytes it sent.
    threshold: u8,
    initial: u8,
    increment: u8,
    tailslow: bool,
    max: u8,
}

/// auto-converge's decisions, QEMU 7.2's (migration_trigger_throttle and
/// mig_throttle_guest_down in migration/ram.c): the migration is looked at in periods of
/// more than THROTTLE_PERIOD, each ending at a sync; every second "high" period (not
/// necessarily in a row) starts the throttle at cpu-throttle-initial, or raises it by
/// cpu-throttle-increment (with cpu-throttle-tailslow, by what would bring the dirtying
/// down to the threshold if that is less), up to max-cpu-throttle.
struct AutoConverge {
    period_start: Instant,
    /// Bytes sent and pages found dirty in this period.
    sent: u64,
    dirty_pages: u64,
    /// High periods since the throttle last changed.
    high: u32,
    /// The throttle now, in percent.
    throttle: u8,
}

impl AutoConverge {
    fn new(now: Instant) -> AutoConverge {
        AutoConverge {
            period_start: now,
            sent: 0,
            dirty_pages: 0,
            high: 0,
            throttle: 0,
        }
    }

    /// A sync at `now` found `dirty` pages dirty after a pass that sent `sent` bytes;
    /// the new throttle if it changes.
    fn after_sync(&mut self, now: Instant, sent: u64, dirty: u64, k: &ThrottleKnobs) -> Option<u8> {
        self.sent += sent;
        self.dirty_pages += dirty;
        if now.duration_since(self.period_start) <= THROTTLE_PERIOD {
            return None;
        }
        let dirtied = self.dirty_pages * PAGE_SIZE;
        let threshold = self.sent * u64::from(k.threshold) / 100;
        (self.period_start, self.sent, self.dirty_pages) = (now, 0, 0);
        if !k.on || dirtied <= threshold {
            return None;
        }
        self.high += 1;
        if self.high < 2 {
            return None;
        }
        self.high = 0;
        self.throttle = if self.throttle == 0 {
            k.initial
        } else {
            let step = if k.tailslow {
                // The share of its time the guest runs now, and the share at which it
                // would dirty no more than the threshold (in whole percent, as QEMU's).
                let cpu_now = 100 - u64::from(self.throttle);
                let cpu_ideal = (cpu_now as f64 * (threshold as f64 / dirtied as f64)) as u64;
                (cpu_now - cpu_ideal).min(u64::from(k.increment)) as u8
            } else {
                k.increment
            };
            self.throttle.saturating_add(step).min(k.max)
        }
        .clamp(1, 99);
        Some(self.throttle)
    }
}

/// auto-converge's CPU throttle (percent of each vCPU's time spent stopped).
fn set_throttle(m: &Migrator, percent: u8) -> Result<(), Stop> {
    m.h.vmm.request(VmmRequest::Throttle { percent }, &[])?;
    m.with_progress(|p| p.cpu_throttle = percent);
    Ok(())
}

impl Migrator {
    /// QMP migrate: checks, then the migration runs on a thread of its own (its
    /// failures show in query-migrate and the MIGRATION event, as in QEMU).
    pub fn migrate(
        self: &Arc<Self>,
        uri: &str,
        blk: bool,
        inc: bool,
        named: impl FnOnce(&str) -> Result<OwnedFd, String>,
    ) -> Result<(), MigrateError> {
        if (self.h.run_state)() == RunState::InMigrate {
            return Err(MigrateError::Incoming);
        }
        if self.in_progress() {
            return Err(MigrateError::InProgress);
        }
        if (self.h.run_state)() == RunState::PostMigrate {
            return Err(MigrateError::Migrated);
        }
        // A block migration is asked for by the flags or by the settings, not both (as
        // QEMU 7.2); the flags set the settings for this migration only.
        let flags = blk || inc;
        let (block, incremental) = self.settings.lock().block_options();
        if flags && (block || incremental) {
            return Err(MigrateError::BlockOptions);
        }
        let copy = match flags {
            true => DiskCopy::from_flags(true, inc),
            // block-incremental alone copies nothing (QEMU's neither).
            false => DiskCopy::from_flags(block, block && incremental),
        };
        {
            let _order = self.transitions.lock();
            if self.in_progress() {
                return Err(MigrateError::InProgress);
            }
            self.cancel.store(false, Ordering::SeqCst);
            self.committed.store(false, Ordering::SeqCst);
            self.switchover.store(false, Ordering::SeqCst);
            self.start_postcopy.store(false, Ordering::SeqCst);
            *self.progress.lock() = Progress {
                started: Some(std::time::Instant::now()),
                ..Progress::default()
            };
            self.change_status(Status::Setup, |_| true);
        }
        // From here on the migration exists, as in QEMU: a URI refused now fails it
        // (with the reason as error-desc, but for an unknown scheme).
        let refused = |e: MigrateError| {
            let desc = !matches!(e, MigrateError::Uri(super::uri::UriError::Protocol));
            self.failed(desc.then(|| e.to_string()));
            e
        };
        let uri = MigrationUri::parse(uri).map_err(|e| refused(e.into()))?;
        // An fd: URI takes the named (or numbered) fd now, as QEMU does (the name is
        // gone after).
        let named_fd = match &uri {
            MigrationUri::Fd(name) => Some(
                super::uri::fd_param(name, named).map_err(|e| refused(MigrateError::Channel(e)))?,
            ),
            _ => None,
        };
        if flags {
            self.settings.lock().set_block_options(true, inc);
        }
        let m = self.clone();
        std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || {
                run(&m, &uri, named_fd, copy);
                if flags {
                    m.settings.lock().set_block_options(false, false);
                }
            })
            .map_err(|e| {
                if flags {
                    self.settings.lock().set_block_options(false, false);
                }
                MigrateError::Agent(e.to_string())
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOBS: ThrottleKnobs = ThrottleKnobs {
        on: true,
        threshold: 50,
        initial: 20,
        increment: 10,
        tailslow: false,
        max: 99,
    };

    /// Periods of 1.1 s, each sending `sent` bytes and finding `dirty` pages; the
    /// throttle after each.
    fn periods(k: &ThrottleKnobs, periods: &[(u64, u64)]) -> Vec<u8> {
        let start = Instant::now();
        let mut c = AutoConverge::new(start);
        let mut at = start;
        periods
            .iter()
            .map(|&(sent, dirty)| {
                at += Duration::from_millis(1100);
                c.after_sync(at, sent, dirty, k);
                c.throttle
            })
            .collect()
    }

    const MIB: u64 = 1 << 20;
    /// A period that dirtied as many bytes as it sent (high), and one that dirtied a
    /// tenth (low).
    const HIGH: (u64, u64) = (64 * MIB, 64 * MIB / PAGE_SIZE);
    const LOW: (u64, u64) = (64 * MIB, 64 * MIB / PAGE_SIZE / 10);

    #[test]
    fn every_second_high_period_throttles_more() {
        assert_eq!(
            periods(&KNOBS, &[HIGH, HIGH, HIGH, HIGH, HIGH, HIGH]),
            [0, 20, 20, 30, 30, 40]
        );
        // Low periods neither count nor reset the count (QEMU's dirty_rate_high_cnt).
        assert_eq!(
            periods(&KNOBS, &[HIGH, LOW, LOW, HIGH, LOW, HIGH, HIGH]),
            [0, 0, 0, 20, 20, 20, 30]
        );
        // Exactly the threshold is not over it.
        let at_threshold = (64 * MIB, 32 * MIB / PAGE_SIZE);
        assert_eq!(periods(&KNOBS, &[at_threshold; 4]), [0; 4]);
        let k = ThrottleKnobs {
            threshold: 100,
            ..KNOBS
        };
        assert_eq!(periods(&k, &[HIGH; 4]), [0; 4]);
        let k = ThrottleKnobs { on: false, ..KNOBS };
        assert_eq!(periods(&k, &[HIGH; 4]), [0; 4]);
    }

    #[test]
    fn the_throttle_stops_at_its_maximum() {
        let k = ThrottleKnobs {
            initial: 90,
            increment: 7,
            max: 95,
            ..KNOBS
        };
        assert_eq!(periods(&k, &[HIGH; 6]), [0, 90, 90, 95, 95, 95]);
        let k = ThrottleKnobs {
            initial: 99,
            increment: 99,
            ..KNOBS
        };
        assert_eq!(periods(&k, &[HIGH; 4]), [0, 99, 99, 99]);
    }

    #[test]
    fn tailslow_steps_by_what_the_threshold_needs() {
        let k = ThrottleKnobs {
            tailslow: true,
            ..KNOBS
        };
        // At 20 the guest runs 80%; dirtying 1.25 times the threshold, 64% would do: a
        // step of 16 at most, so the increment (10); then at 30 (70%): 56% would do, 14.
        let dirty = 64 * MIB * 5 / 8 / PAGE_SIZE;
        assert_eq!(periods(&k, &[(64 * MIB, dirty); 4]), [0, 20, 20, 30]);
        // Dirtying just over the threshold: a step of 1 is enough.
        let dirty = (32 * MIB + 64 * PAGE_SIZE) / PAGE_SIZE;
        assert_eq!(
            periods(&k, &[(64 * MIB, dirty); 6]),
            [0, 20, 20, 21, 21, 22]
        );
    }

    #[test]
    fn short_periods_add_up() {
        let start = Instant::now();
        let mut c = AutoConverge::new(start);
        let mut throttles = Vec::new();
        // Passes of 400 ms: a period ends at the third sync (1.2 s), with all three.
        for i in 1..=6 {
            let at = start + Duration::from_millis(400 * i);
            c.after_sync(at, 16 * MIB, 16 * MIB / PAGE_SIZE / 3, &KNOBS);
            throttles.push(c.throttle);
        }
        // 16 MiB dirtied over 48 MiB sent is under the threshold: never high.
        assert_eq!(throttles, [0; 6]);
        let mut c = AutoConverge::new(start);
        let mut throttles = Vec::new();
        for i in 1..=6 {
            let at = start + Duration::from_millis(400 * i);
            c.after_sync(at, 16 * MIB, 16 * MIB / PAGE_SIZE, &KNOBS);
            throttles.push(c.throttle);
        }
        assert_eq!(throttles, [0, 0, 0, 0, 0, 20]);
    }
}
