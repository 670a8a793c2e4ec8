//! Live upgrade of vmm-core (`__io.flotilla_vmm-upgrade`): a new vmm-core, from the same
//! binary or another, takes over the running VM on this host. Guest RAM is not copied:
//! the new vmm-core maps the same memfd. It is launched (and its devices shaped as the
//! running ones) while the guest still runs; then the pause: vCPUs stopped, disks
//! drained, the state saved from the old vmm-core and restored into the new one, the old
//! one retired, and the guest runs again. The device daemons stay: each accepts the new
//! vmm-core's connection once the old one has gone, and goes on from the rings in
//! memory. The DIMMs' memory (pc-dimm) is the gateway's memory backend objects': the
//! new vmm-core is launched with it, and their slots' state comes with the VM's state.
//! Until the state is in the new vmm-core, any failure leaves the old one running the VM.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::{RunState, VmmEvent, VmmReply, VmmRequest};
use parking_lot::Mutex;

use crate::children::link::LinkError;
use crate::children::spawn::{spawn_child, SpawnError};
use crate::gateway::{ExitReason, Gateway};
use crate::launch::LaunchError;

/// How long a retired vmm-core has to exit before it is killed.
const RETIRE_GRACE: Duration = Duration::from_secs(5);

/// One upgrade or device change (device_add, device_del, an ejection) at a time: an
/// upgrade launches the devices there are.
pub(crate) static CHANGING: Mutex<()> = Mutex::new(());

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("the VM cannot be upgraded while it is {0}")]
    State(&'static str),
    #[error("There's a migration process in progress")]
    Migrating,
    #[error("the gateway is ending")]
    Ending,
    #[error("starting {}: {error}", binary.display())]
    Start { binary: PathBuf, error: SpawnError },
    #[error("the new vmm-core: {0}")]
    Launch(#[from] LaunchError),
    #[error("{0}")]
    Link(#[from] LinkError),
    #[error("the new vmm-core refused the VM's state: {0}")]
    Restore(String),
    #[error("a new connection to a device daemon: {0}")]
    Backend(String),
    #[error("{0}")]
    Other(String),
}

/// What the upgrade did.
pub struct Upgraded {
    pub pid: u32,
    /// From the vCPUs' stop to their run in the new vmm-core.
    pub downtime: Duration,
}

/// Replaces vmm-core with a new process of `binary` (the running one's when None).
pub fn upgrade(gw: &Gateway, binary: Option<PathBuf>) -> Result<Upgraded, UpgradeError> {
    let _one = CHANGING.lock();
    let gw = gw.arc().ok_or(UpgradeError::Ending)?;
    let running = match gw.run_state() {
        RunState::Running => true,
        RunState::Paused | RunState::Prelaunch => false,
        other => return Err(UpgradeError::State(other.qmp_name())),
    };
    if gw.migrator.in_progress() {
        return Err(UpgradeError::Migrating);
    }
    let binary = binary.unwrap_or_else(|| gw.vmm_child.binary.lock().clone());

    // While the guest runs: guest RAM and the devices' shapes from the running
    // vmm-core, fresh connections to the daemons, the new vmm-core launched.
    let (reply, fds) = gw.vmm.request_with_fds(VmmRequest::UpgradeInfo, &[])?;
    let (VmmReply::Upgrade { links }, Some(memfd)) = (reply, fds.into_iter().next()) else {
        return Err(UpgradeError::Other(
            "vmm-core did not hand over guest memory".into(),
        ));
    };
    let mut backends: Vec<OwnedFd> = gw
        .block
        .frontend_connections()
        .map_err(|e| UpgradeError::Backend(e.to_string()))?;
    backends.extend(
        gw.net
            .frontend_connections()
            .map_err(|e| UpgradeError::Backend(e.to_string()))?,
    );
    let mode = gw.sandbox_mode();
    let (process, conn) = spawn_child(&binary, &[], mode).map_err(|error| UpgradeError::Start {
        binary: binary.clone(),
        error,
    })?;
    let new_pid = process.id();
    let new_process = Arc::new(Mutex::new(Some(process)));
    let kill_new = || {
        if let Some(mut p) = new_process.lock().take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    };
    // The new vmm-core's events reach the gateway once it has the VM: until then it
    // waits in "inmigrate", which is not the VM's state.
    let (on_event, on_closed) = (gw.clone(), gw.clone());
    let previous = gw
        .vmm
        .replace(
            conn,
            move |e| match e {
                VmmEvent::RunState(RunState::InMigrate) => {}
                other => on_event.on_vmm_event(other),
            },
            move |why| on_closed.request_exit(ExitReason::VmmExited(why)),
        )
        .map_err(|e| UpgradeError::Other(format!("reading the new vmm-core: {e}")))?;
    let launched = {
        let launch = gw.vmm_child.launch.lock();
        match launch.as_ref() {
            Some(l) => gw
                .dimm_memory(&l.dimm_memdevs)
                .map_err(LaunchError::DimmMemory)
                .and_then(|dimms| l.upgrade(&gw.vmm, &memfd, links, &backends, &dimms)),
            None => Err(LaunchError::UnexpectedReply("no launch to repeat".into())),
        }
    };
    drop(backends);
    let vcpus = match launched {
        Ok(v) => v,
        Err(e) => {
            gw.vmm.restore(previous);
            kill_new();
            return Err(e.into());
        }
    };

    // The pause.
    let paused = Instant::now();
    let old = previous.0.clone();
    let mut steps = Vec::new();
    let handed = (|| {
        gw.vmm.request_on(&old, VmmRequest::MigrationStop, &[])?;
        steps.push(("stop", paused.elapsed()));
        gw.block.drain();
        steps.push(("drain", paused.elapsed()));
        // The new vmm-core negotiates the driver's features with the NICs' daemons again,
        // which would otherwise take it for a driver starting over and drop the receive
        // filters the guest programmed.
        let filters = gw.net.rx_filters();
        (gw.net.restore_rx_filters(filters))
            .map_err(|e| UpgradeError::Other(format!("the NICs' receive filters: {e}")))?;
        let state = match gw.vmm.request_on(&old, VmmRequest::SaveState, &[])?.0 {
            VmmReply::State(s) => s,
            other => return Err(UpgradeError::Other(format!("vmm-core answered {other:?}"))),
        };
        steps.push(("save", paused.elapsed()));
        gw.vmm
            .request(VmmRequest::RestoreState(state), &[])
            .map_err(|e| UpgradeError::Restore(e.to_string()))?;
        steps.push(("restore", paused.elapsed()));
        Ok(())
    })();
    if let Err(e) = handed {
        // The old vmm-core still has the VM: it runs on.
        gw.vmm.restore(previous);
        kill_new();
        if running {
            let _ = gw.vmm.request(VmmRequest::Cont, &[]);
            gw.block.cont();
        }
        return Err(e);
    }
    // The new one has the VM: the old one goes (its backend connections close, so the
    // daemons take the new ones), and the VM runs where it ran.
    if let Err(e) = gw.vmm.request_on(&old, VmmRequest::Retire, &[]) {
        log::warn!("retiring the previous vmm-core: {e}");
    }
    let old_process =
        std::mem::replace(&mut *gw.vmm_child.process.lock(), new_process.lock().take());
    steps.push(("retire", paused.elapsed()));
    gw.vmm
        .request(VmmRequest::IncomingCompleted { run: running }, &[])?;
    let downtime = paused.elapsed();
    steps.push(("run", downtime));
    if running {
        gw.block.cont();
    }
    *gw.vmm_child.binary.lock() = binary;
    gw.set_vmm_pid(new_pid);
    gw.set_vcpus(vcpus);
    if let Some(mut p) = old_process {
        reap(&mut p);
    }
    let steps: Vec<String> = steps
        .iter()
        .map(|(what, at)| format!("{what} {}us", at.as_micros()))
        .collect();
    log::info!(
        "vmm-core upgraded: pid {new_pid}, the guest paused {} us ({})",
        downtime.as_micros(),
        steps.join(", ")
    );
    Ok(Upgraded {
        pid: new_pid,
        downtime,
    })
}

/// Waits for the retired vmm-core, killing it (our child, by pid) if it lingers.
fn reap(p: &mut crate::children::spawn::Process) {
    let deadline = Instant::now() + RETIRE_GRACE;
    loop {
        match p.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                log::warn!("the retired vmm-core did not exit; killing it");
                let _ = p.kill();
                let _ = p.wait();
                return;
            }
        }
    }
}
