//! A migration out of this VM, on its own thread: connect, start dirty logging and the
//! agent, passes until what is left fits the downtime limit (with auto-converge's CPU
//! throttle when it does not converge), then the stop-and-copy: vCPUs stopped, disks
//! drained, the last dirty pages, the device state, the destination's answer. Whatever
//! fails or is cancelled on the way leaves the VM here as it was: logging off, the agent
//! gone, the vCPUs running again if they ran.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::{AgentReply, AgentRequest, OutgoingStart, PassReport, RunState, VmmReply, VmmRequest};

use super::agent::Agent;
use super::migrator::Migrator;
use super::progress::{Status, PAGE_SIZE};
use super::settings::Capability;
use super::uri::{self, MigrationUri, Opened};

/// How long one SendPass call works before reporting back.
const PASS_BUDGET_MS: u32 = 100;
/// The final pass runs with the VM stopped: it works in longer calls.
const FINAL_BUDGET_MS: u32 = 1000;
/// Passes after which a migration that does not converge is helped by auto-converge.
const PASSES_BEFORE_THROTTLE: u64 = 2;

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

pub fn run(m: &Arc<Migrator>, uri: &MigrationUri, named_fd: Option<OwnedFd>) {
    let running_before = m.h.run_state.get() == RunState::Running;
    let mut logging = false;
    let mut stopped = false;
    let mut inactive = false;
    let result = migrate(
        m,
        uri,
        named_fd,
        running_before,
        (&mut logging, &mut stopped, &mut inactive),
    );
    // Whatever happened, the agent goes.
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
    // The VM stays here: its disks' locks back, logging off, running again if it ran.
    if inactive {
        if let Err(e) = m.h.block.activate() {
            // Someone took them meanwhile: the VM cannot safely write its disks.
            log::error!("migration: taking the disks' locks back: {e}");
        }
    }
    if logging {
        if let Err(e) = m.h.vmm.request(VmmRequest::MigrationEnd, &[]) {
            log::error!("migration: turning dirty logging off: {e}");
        }
    }
    if stopped && running_before {
        if let Err(e) = m.h.vmm.request(VmmRequest::Cont, &[]) {
            log::error!("migration: resuming the VM: {e}");
        }
        m.h.block.cont();
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
    if let Err(Stop::Failed(why)) = result {
        m.fail(why);
    } else {
        m.set_status(Status::Cancelled);
    }
}

fn check_cancel(m: &Migrator) -> Result<(), Stop> {
    match m.cancelled() {
        true => Err(Stop::Cancelled),
        false => Ok(()),
    }
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
    running_before: bool,
    (logging, stopped, inactive): (&mut bool, &mut bool, &mut bool),
) -> Result<(), Stop> {
    let mut named_fd = named_fd;
    let mut opened: Opened = uri::connect(uri, |_| {
        named_fd
            .take()
            .ok_or_else(|| "the named fd was already taken".to_string())
    })
    .map_err(Stop::Failed)?;
    check_cancel(m)?;
    let (reply, fds) = m.h.vmm.request_with_fds(VmmRequest::MigrationStart, &[])?;
    *logging = true;
    let VmmReply::Migration {
        windows,
        bitmap_len,
    } = reply
    else {
        return Err(Stop::Failed(format!("vmm-core answered {reply:?}")));
    };
    let (settings, shape) = (m.settings.lock().clone(), m.shape.lock().clone());
    let xbzrle = settings.capability(Capability::Xbzrle);
    let total: u64 = windows.iter().map(|w| w.size).sum();
    m.with_progress(|p| {
        p.ram.total = total;
        p.ram.remaining = total;
        p.xbzrle = xbzrle.then(|| super::progress::Xbzrle {
            cache_size: settings.xbzrle_cache_size(),
            ..Default::default()
        });
    });
    let start = OutgoingStart {
        channel: opened.channel,
        windows,
        log_len: bitmap_len,
        shape,
        xbzrle_cache: xbzrle.then(|| settings.xbzrle_cache_size()),
    };
    let mut fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    fds.push(opened.fd.as_fd());
    let (events, deaths) = (|_| {}, std::sync::mpsc::channel().0);
    let (agent, _, _) = Agent::start(
        &m.h.agent_binary,
        "the migration",
        &m.h.policy,
        events,
        deaths,
        AgentRequest::Outgoing(start),
        &fds,
    )
    .map_err(|e| match e {
        crate::children::daemon::DaemonError::Link(crate::children::link::LinkError::Remote(r)) => {
            Stop::Failed(r.desc)
        }
        other => Stop::Failed(other.to_string()),
    })?;
    let agent = Arc::new(agent);
    *m.agent.lock() = Some(agent.clone());
    check_cancel(m)?;
    let setup_ms = m.with_progress(|p| p.started.map_or(0, |s| s.elapsed().as_millis() as u64));
    m.with_progress(|p| p.setup_ms = setup_ms);
    m.set_status(Status::Active);

    precopy(m, &agent)?;

    // The stop-and-copy.
    let downtime_start = Instant::now();
    m.h.vmm.request(VmmRequest::MigrationStop, &[])?;
    *stopped = true;
    m.h.block.drain();
    check_cancel(m)?;
    m.set_status(Status::Device);
    sync(m)?;
    send_pass(m, &agent, false, FINAL_BUDGET_MS, true)?;
    let state = match m.h.vmm.request(VmmRequest::SaveState, &[])? {
        VmmReply::State(s) => s,
        other => return Err(Stop::Failed(format!("vmm-core answered {other:?}"))),
    };
    check_cancel(m)?;
    // The destination takes the disks' locks when it has the state: ours go first.
    m.h.block.inactivate()?;
    *inactive = true;
    agent_call(
        m,
        &agent,
        AgentRequest::Finish {
            state,
            running: running_before,
        },
    )?;
    // The VM runs there now.
    opened.reap();
    let downtime = downtime_start.elapsed().as_millis() as u64;
    if let Err(e) = m.h.vmm.request(VmmRequest::MigrationEnd, &[]) {
        log::warn!("migration: turning dirty logging off: {e}");
    }
    *logging = false;
    if let Err(e) = m.h.vmm.request(VmmRequest::MigrationCompleted, &[]) {
        log::warn!("migration: marking the VM postmigrate: {e}");
    }
    m.with_progress(|p| {
        p.downtime_ms = Some(downtime);
        p.ram.remaining = 0;
        p.total_ms = p.started.map(|s| s.elapsed().as_millis() as u64);
    });
    m.set_status(Status::Completed);
    Ok(())
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

/// One whole pass, in calls of `budget_ms`; returns its bytes and how long it took.
fn send_pass(
    m: &Migrator,
    agent: &Agent,
    first: bool,
    budget_ms: u32,
    stopped: bool,
) -> Result<(u64, Duration), Stop> {
    let started = Instant::now();
    let mut bytes = 0;
    let mut pages = 0;
    loop {
        check_cancel(m)?;
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
        pages += report.normal_pages + report.zero_pages + report.xbzrle_pages;
        m.with_progress(|p| {
            p.add(&report, stopped);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            p.ram.pages_per_second = (pages as f64 / secs) as u64;
        });
        if report.remaining_pages == 0 {
            return Ok((bytes, started.elapsed()));
        }
    }
}

/// Passes until the dirty pages left would take no longer than the downtime limit to
/// send at the bandwidth the last pass reached.
fn precopy(m: &Migrator, agent: &Agent) -> Result<(), Stop> {
    let mut first = true;
    let mut passes = 0u64;
    let mut throttle = 0u8;
    loop {
        let (bytes, took) = send_pass(m, agent, first, PASS_BUDGET_MS, false)?;
        first = false;
        passes += 1;
        let pass_start = Instant::now();
        let dirty = sync(m)?;
        let bandwidth = bytes as f64 / took.as_secs_f64().max(1e-3);
        let expected_ms = (dirty * PAGE_SIZE) as f64 / bandwidth.max(1.0) * 1000.0;
        let (limit_ms, auto_converge, initial, increment, max) = {
            let s = m.settings.lock();
            (
                s.downtime_limit_ms(),
                s.capability(Capability::AutoConverge),
                s.cpu_throttle_initial(),
                s.cpu_throttle_increment(),
                s.max_cpu_throttle(),
            )
        };
        m.with_progress(|p| {
            p.ram.bandwidth = bandwidth;
            p.expected_downtime_ms = expected_ms as u64;
            p.ram.dirty_pages_rate =
                (dirty as f64 / (took + pass_start.elapsed()).as_secs_f64().max(1e-3)) as u64;
        });
        if expected_ms <= limit_ms as f64 {
            if throttle > 0 {
                set_throttle(m, 0)?;
            }
            return Ok(());
        }
        // Not converging: auto-converge slows the vCPUs down, more each pass.
        if auto_converge && passes >= PASSES_BEFORE_THROTTLE {
            throttle = if throttle == 0 {
                initial
            } else {
                throttle.saturating_add(increment).min(max)
            };
            set_throttle(m, throttle)?;
        }
    }
}

/// auto-converge's CPU throttle (percent of each vCPU's time spent stopped).
fn set_throttle(m: &Migrator, percent: u8) -> Result<(), Stop> {
    m.h.vmm.request(VmmRequest::Throttle { percent }, &[])?;
    m.with_progress(|p| p.cpu_throttle = percent);
    Ok(())
}
