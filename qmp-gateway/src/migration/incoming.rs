//! A migration into this VM: the listener (or the stream) from the URI, guest RAM's
//! memfd from vmm-core, and an agent that receives on its own; its events drive the
//! rest on a thread here: the device state into vmm-core, the answer to the source, and
//! the VM running (or paused) once it is all here, and the NICs' announcements. A
//! failure ends the gateway, as it ends QEMU's destination: there is no VM to keep.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::{AgentEvent, AgentRequest, IncomingStart, MigratedState, RunState, VmmReply, VmmRequest};

use super::agent::Agent;
use super::migrator::{MigrateError, Migrator};
use super::progress::{Progress, Status, PAGE_SIZE};
use super::settings::Capability;
use super::uri::{self, MigrationUri, Opened};

pub fn start(
    m: &Arc<Migrator>,
    uri: &MigrationUri,
    named: impl FnOnce(&str) -> Result<OwnedFd, String>,
) -> Result<(), MigrateError> {
    let opened = uri::listen(uri, named).map_err(MigrateError::Channel)?;
    let (reply, fds) =
        m.h.vmm
            .request_with_fds(VmmRequest::IncomingMemory, &[])
            .map_err(|e| MigrateError::Agent(e.to_string()))?;
    let VmmReply::Memory { windows } = reply else {
        return Err(MigrateError::Agent(format!("vmm-core answered {reply:?}")));
    };
    let total: u64 = windows.iter().map(|w| w.size).sum();
    let start = IncomingStart {
        channel: opened.channel,
        windows,
        shape: m.shape.lock().clone(),
        decompress_threads: m.settings.lock().decompress_threads(),
    };
    let mut fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    fds.push(opened.fd.as_fd());
    let (tx, rx) = mpsc::channel();
    let deaths = {
        let (dtx, drx) = mpsc::channel::<String>();
        let tx = tx.clone();
        // The agent dying is a failure like any other.
        std::thread::Builder::new()
            .name("agent-deaths".into())
            .spawn(move || {
                if drx.recv().is_ok() {
                    let _ = tx.send(AgentEvent::Failed("the migration agent exited".into()));
                }
            })
            .map_err(|e| MigrateError::Agent(e.to_string()))?;
        dtx
    };
    let on_event = move |e: AgentEvent| {
        let _ = tx.send(e);
    };
    let (agent, _, _) = Agent::start(
        &m.h.agent_binary,
        "the incoming migration",
        &m.h.policy,
        on_event,
        deaths,
        AgentRequest::Incoming(start),
        &fds,
    )
    .map_err(|e| MigrateError::Agent(e.to_string()))?;
    let agent = Arc::new(agent);
    *m.agent.lock() = Some(agent.clone());
    m.with_progress(|p| {
        *p = Progress {
            started: Some(Instant::now()),
            ..Progress::default()
        };
        p.ram.total = total;
    });
    m.set_status(Status::Setup);
    let m = m.clone();
    std::thread::Builder::new()
        .name("incoming".into())
        .spawn(move || receive(&m, &agent, rx, opened))
        .map_err(|e| MigrateError::Agent(e.to_string()))?;
    Ok(())
}

/// The agent's events until the migration arrived or failed. The listener or stream
/// (`opened`) stays open, and an exec: command alive, while the agent receives; then they
/// go (a unix: listener's socket file too), before a failure ends the gateway.
fn receive(m: &Migrator, agent: &Agent, events: mpsc::Receiver<AgentEvent>, opened: Opened) {
    let end = events.iter().find_map(|event| match event {
        AgentEvent::Connected => {
            m.set_status(Status::Active);
            None
        }
        AgentEvent::Progress { bytes, pages } => {
            m.with_progress(|p| {
                p.ram.transferred = bytes;
                p.ram.remaining = p.ram.total.saturating_sub(pages * PAGE_SIZE);
            });
            None
        }
        AgentEvent::PostcopyAdvised => {
            let advice = postcopy_advice(m);
            if let Err(e) = agent
                .link
                .request(AgentRequest::PostcopyAdvice(advice), &[])
            {
                log::warn!("migration: answering the source's postcopy advice: {e}");
            }
            None
        }
        AgentEvent::DisksArriving(disks) => {
            super::block::arriving(&m.h.block, agent, disks);
            None
        }
        AgentEvent::StateArrived {
            state,
            running,
            postcopy: false,
        } => Some(finish(m, agent, state, running, false)),
        // Postcopy: the VM runs, the rest of its memory follows.
        AgentEvent::StateArrived {
            state,
            running,
            postcopy: true,
        } => finish(m, agent, state, running, true).err().map(Err),
        AgentEvent::PostcopyDone => Some(
            (m.h.vmm.request(VmmRequest::PostcopyEnd, &[]))
                .map(drop)
                .map_err(|e| format!("ending postcopy: {e}")),
        ),
        AgentEvent::Failed(why) => Some(Err(why)),
    });
    drop(opened);
    match end {
        Some(Ok(())) => {
            m.with_progress(|p| {
                p.ram.remaining = 0;
                p.total_ms = p.started.map(|s| s.elapsed().as_millis() as u64);
            });
            m.set_status(Status::Completed);
            m.agent.lock().take();
            agent.stop(std::time::Duration::from_secs(2));
        }
        Some(Err(why)) => m.incoming_failed(format!("load of migration failed: {why}")),
        None => {}
    }
}

/// Whether this side takes a postcopy migration the source advises: the capability
/// must be on (QEMU's rule: both sides or neither) and /dev/userfaultfd there.
fn postcopy_advice(m: &Migrator) -> Result<(), String> {
    if !m.settings.lock().capability(Capability::PostcopyRam) {
        return Err(
            "the source may switch to postcopy, but postcopy-ram is off at the destination".into(),
        );
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(ipc::userfault::DEVICE)
        .map(drop)
        .map_err(|e| format!("postcopy needs {}: {e}", ipc::userfault::DEVICE))
}

/// Postcopy, before the state is restored: the daemons get /dev/userfaultfd, vmm-core
/// registers guest RAM and has the backends do the same, and the agent gets every
/// userfaultfd (the backends' mappings follow as vmm-core's events, `postcopy_ranges`).
fn listen(m: &Migrator, agent: &Agent) -> Result<(), String> {
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(ipc::userfault::DEVICE)
        .map_err(|e| format!("postcopy needs {}: {e}", ipc::userfault::DEVICE))?;
    m.h.block
        .userfault(device.as_fd())
        .map_err(|e| e.to_string())?;
    (m.h.userfault_nics)(device.as_fd())?;
    let (reply, fds) =
        m.h.vmm
            .request_with_fds(VmmRequest::PostcopyListen, &[device.as_fd()])
            .map_err(|e| e.to_string())?;
    let VmmReply::Postcopy { ranges, backends } = reply else {
        return Err(format!("vmm-core answered {reply:?}"));
    };
    let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    agent
        .link
        .request(
            AgentRequest::PostcopyFaults {
                vmm: ranges,
                backends: backends.len() as u32,
            },
            &fds,
        )
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The state into vmm-core; the source is told; the VM runs if it ran there and is
/// allowed to here. With `postcopy`, the pages still missing are waited for as they are
/// touched (`listen`), and the migration goes on (postcopy-active).
fn finish(
    m: &Migrator,
    agent: &Agent,
    state: Vec<u8>,
    running: bool,
    postcopy: bool,
) -> Result<(), String> {
    let refuse = |why: String| {
        let _ = agent
            .link
            .request(AgentRequest::Resumed(Err(why.clone())), &[]);
        Err(why)
    };
    let state = match MigratedState::decode(&state) {
        Ok(s) => s,
        Err(e) => return refuse(e.to_string()),
    };
    // Read once: whether the VM runs here decides when the disks are taken.
    let run = running && m.autostart.load(Ordering::SeqCst);
    // The disks' images are ours now (the source let go of them before it sent the
    // state): their locks, and daemons that serve them for real. With
    // late-block-activate a VM that does not run yet takes them at `cont` (QEMU 7.2's
    // process_incoming_migration_bh): the source may still take them back meanwhile.
    let late = m.settings.lock().capability(Capability::LateBlockActivate) && !run;
    if !late {
        if let Err(e) = m.h.block.activate() {
            return refuse(e.to_string());
        }
    }
    // The NICs filter as the guest had them filter (before vmm-core replays the
    // driver's features to them as it restores the devices), their links as they were.
    let restored = (m.h.restore_nics)(state.nics)
        .map_err(|e| format!("the NICs: {e}"))
        .and_then(|()| match postcopy {
            true => listen(m, agent),
            false => Ok(()),
        })
        .and_then(|()| {
            (m.h.vmm.request(VmmRequest::RestoreState(state.vmm), &[]))
                .map(drop)
                .map_err(|e| e.to_string())
        });
    if let Err(why) = restored {
        if postcopy {
            if let Err(e) = m.h.vmm.request(VmmRequest::PostcopyEnd, &[]) {
                log::error!("migration: ending postcopy: {e}");
            }
        }
        // The source takes its disks back: let go of them first.
        if !late {
            if let Err(e) = m.h.block.inactivate() {
                log::error!("migration: handing the disks back: {e}");
            }
        }
        return refuse(why);
    }
    agent
        .link
        .request(AgentRequest::Resumed(Ok(())), &[])
        .map_err(|e| e.to_string())?;
    if postcopy {
        // QEMU's order: the status, then the VM running.
        m.set_status(Status::PostcopyActive);
    }
    m.h.vmm
        .request(VmmRequest::IncomingCompleted { run }, &[])
        .map_err(|e| e.to_string())?;
    announce(m.h.announce.clone());
    Ok(())
}

/// The NICs announce the VM's new place, as QEMU's destination does, on a thread of its
/// own: a round now, then one after each of these pauses (QEMU's defaults:
/// announce-initial 50 ms, announce-step 100 ms, announce-rounds 5, announce-max 550 ms).
/// While the VM does not run, the rounds due are held and go once it runs, as QEMU's
/// NICs queue what they cannot send while the VM is stopped.
fn announce(round: Arc<dyn Fn() -> Option<bool> + Send + Sync>) {
    const PAUSES_MS: [u64; 5] = [0, 50, 150, 250, 350];
    const HELD_POLL: Duration = Duration::from_millis(50);
    /// The rounds still due after sending what can be; None once the gateway ends.
    fn send(round: &dyn Fn() -> Option<bool>, due: u32) -> Option<u32> {
        let mut due = due;
        while due > 0 && round()? {
            due -= 1;
        }
        Some(due)
    }
    let spawned = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || {
            let mut due = 0;
            for ms in PAUSES_MS {
                std::thread::sleep(Duration::from_millis(ms));
                let Some(left) = send(&*round, due + 1) else {
                    return;
                };
                due = left;
            }
            while due > 0 {
                std::thread::sleep(HELD_POLL);
                let Some(left) = send(&*round, due) else {
                    return;
                };
                due = left;
            }
        });
    if let Err(e) = spawned {
        log::warn!("migration: announcing the NICs: {e}");
    }
}

impl Migrator {
    /// migrate-incoming (or --incoming at start): the VM waits in "inmigrate" for a
    /// source on `uri`.
    pub fn incoming(
        self: &Arc<Self>,
        uri: &str,
        named: impl FnOnce(&str) -> Result<OwnedFd, String>,
    ) -> Result<(), MigrateError> {
        // QEMU's order: once started (and after it arrived), that is the answer.
        if self.incoming_started.load(Ordering::SeqCst) {
            return Err(MigrateError::IncomingStarted);
        }
        if (self.h.run_state)() != RunState::InMigrate {
            return Err(MigrateError::NotIncoming);
        }
        if self.incoming_started.swap(true, Ordering::SeqCst) {
            return Err(MigrateError::IncomingStarted);
        }
        let uri = MigrationUri::parse(uri).map_err(|e| {
            self.incoming_started.store(false, Ordering::SeqCst);
            match e {
                super::uri::UriError::Protocol => MigrateError::UnknownProtocol(uri.to_string()),
                other => other.into(),
            }
        })?;
        start(self, &uri, named).inspect_err(|_| {
            self.incoming_started.store(false, Ordering::SeqCst);
        })
    }
}
