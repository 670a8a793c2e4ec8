//! The gateway's shared state: what it knows about the VM (identity, run state, vCPU
//! threads), the link to vmm-core, the block and network layers, the migration settings,
//! the fd sets, the event bus, and how the gateway is asked to end. vmm-core's events
//! become QMP events here.
//!
//! The run state is vmm-core's, with one of the gateway's own on top: io-error, while the
//! VM is stopped because a disk failed a request whose error policy says stop. The block
//! layer asks for that stop; a thread of its own here carries it out (vmm-core stops the
//! vCPUs as for QMP stop), so that no daemon's event reader waits for vmm-core. `cont`
//! clears it and has the disks retry what they hold.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, OnceLock, Weak};

use ipc::{RunState, ShutdownCause, VcpuInfo, VmmEvent, VmmRequest};
use parking_lot::Mutex;

use crate::block::BlockLayer;
use crate::chardev::Chardevs;
use crate::children::link::{LinkError, VmmLink};
use crate::children::sandbox::{Mode, Policy};
use crate::children::spawn::host_tid;
use crate::children::vmm::VmmChild;
use crate::devices::Devices;
use crate::events::{Event, EventBus};
use crate::fdstore::FdSets;
use crate::migration::{Handles, MigrationSettings, Migrator};
use crate::net::NetLayer;
use crate::objects::Objects;

/// Why the gateway is ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// QMP quit (or HMP quit).
    Quit,
    Signal(i32),
    /// The guest powered off.
    GuestPoweroff,
    /// vmm-core went away on its own.
    VmmExited(String),
    /// The VM was to arrive by migration, and that failed (QEMU's destination ends too).
    IncomingFailed(String),
}

/// The binaries the gateway starts besides vmm-core.
pub struct Binaries {
    pub block_daemon: PathBuf,
    pub net_daemon: PathBuf,
    pub migration_agent: PathBuf,
}

pub struct VmIdentity {
    pub name: Option<String>,
    pub uuid: String,
}

struct Status {
    run_state: RunState,
    /// The VM was stopped for a disk's error (shown as io-error while it is paused).
    io_error: bool,
    /// In the order they came: the launch's by index, then the added ones (cpus.rs).
    vcpus: Vec<VcpuInfo>,
    /// The QOM paths of vCPUs added by device_add (others have the launch's kind).
    vcpu_paths: BTreeMap<u32, String>,
}

/// Stops the VM for a disk's error, each time the block layer asks, if it runs.
fn stop_for_io_errors(
    requests: mpsc::Receiver<()>,
    status: Arc<Mutex<Status>>,
    vmm: Arc<VmmLink>,
    block: std::sync::Weak<BlockLayer>,
) {
    for () in requests {
        {
            let mut s = status.lock();
            // Already stopped (by a client, or by an earlier error): it stays as it is,
            // as in QEMU.
            if s.run_state != RunState::Running {
                continue;
            }
            s.io_error = true;
        }
        if let Err(e) = vmm.request(VmmRequest::Stop, &[]) {
            log::error!("stopping the VM after a disk error: {e}");
            continue;
        }
        // As a client's stop (and QEMU's on an error): the other requests finish.
        if let Some(block) = block.upgrade() {
            block.drain();
        }
    }
}

pub struct Gateway {
    pub identity: VmIdentity,
    status: Arc<Mutex<Status>>,
    pub vmm: Arc<VmmLink>,
    /// vmm-core's process and what a successor needs (a live upgrade).
    pub vmm_child: Arc<VmmChild>,
    /// The gateway itself, for what outlives a call (a live upgrade's new reader).
    this: OnceLock<Weak<Gateway>>,
    /// How children are sandboxed.
    sandbox: Mode,
    pub block: Arc<BlockLayer>,
    pub net: Arc<NetLayer>,
    /// The PCI devices on bus 0: slots, ids, what vmm-core has of each.
    pub devices: Mutex<Devices>,
    /// The migration's capabilities and parameters.
    pub migration: Arc<Mutex<MigrationSettings>>,
    /// Migrations out of and into this VM.
    pub migrator: Arc<Migrator>,
    pub fdsets: Arc<FdSets>,
    /// The character devices (chardev-add, --chardev) and the frontends they serve.
    pub chardevs: Chardevs,
    /// What object-add created.
    pub objects: Objects,
    pub events: Arc<EventBus>,
    /// Non-detached dump-guest-memory calls wait here for their dump's end.
    pub dumps: crate::dump::DumpWaiter,
    exit: mpsc::Sender<ExitReason>,
    /// --no-shutdown: a guest power-off leaves the VM stopped (vmm-core's "shutdown")
    /// instead of ending the gateway.
    no_shutdown: AtomicBool,
    /// --accel: KVM for a VM; TCG only with the none machine (query-kvm says which).
    accel: OnceLock<crate::machine_none::Accel>,
    vmm_pid: AtomicU32,
    /// The CPUID vmm-core's vCPUs get, asked once (cpus.rs): it does not change while
    /// the VM lives, and vCPUs added later get the same.
    pub(crate) cpuid: OnceLock<crate::cpuid_features::GuestCpuid>,
    /// --cpu: the CPU model of the vCPUs (of the none machine's, which has none).
    cpu_model: OnceLock<ipc::CpuModel>,
    /// Other models' CPUID, probed for query-cpu-model-expansion (cpuid_probes.rs).
    pub(crate) cpuid_probes: crate::cpuid_probes::CpuidProbes,
}

impl Gateway {
    /// `block_daemon`, `net_daemon`: the binaries disks and NICs are served by;
    /// `fdsets`: the add-fd sets (the command line's --add-fd in them already).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: VmIdentity,
        vmm: Arc<VmmLink>,
        vmm_child: Arc<VmmChild>,
        exit: mpsc::Sender<ExitReason>,
        binaries: Binaries,
        events: Arc<EventBus>,
        sandbox: Mode,
        fdsets: Arc<FdSets>,
    ) -> std::io::Result<Gateway> {
        let Binaries {
            block_daemon,
            net_daemon,
            migration_agent,
        } = binaries;
        let policy = Policy {
            mode: sandbox,
            events: events.clone(),
        };
        let status = Arc::new(Mutex::new(Status {
            run_state: RunState::Prelaunch,
            io_error: false,
            vcpus: Vec::new(),
            vcpu_paths: BTreeMap::new(),
        }));
        let (stop_vm, stop_requests) = mpsc::channel();
        let block = Arc::new(BlockLayer::new(
            events.clone(),
            vmm.clone(),
            block_daemon,
            policy.clone(),
            stop_vm,
        )?);
        let net = Arc::new(NetLayer::new(
            events.clone(),
            vmm.clone(),
            net_daemon,
            policy.clone(),
        )?);
        let migration = Arc::new(Mutex::new(MigrationSettings::default()));
        let migrator = Migrator::new(
            Handles {
                vmm: vmm.clone(),
                block: block.clone(),
                events: events.clone(),
                policy: policy.clone(),
                agent_binary: migration_agent,
                end_gateway: {
                    let exit = exit.clone();
                    Box::new(move |why| {
                        let _ = exit.send(ExitReason::IncomingFailed(why));
                    })
                },
                run_state: {
                    let status = status.clone();
                    Box::new(move || status.lock().run_state)
                },
                nics: {
                    let net = Arc::downgrade(&net);
                    Box::new(move || net.upgrade().map(|n| n.migrated_nics()).unwrap_or_default())
                },
                restore_nics: {
                    let net = Arc::downgrade(&net);
                    Box::new(move |nics| match net.upgrade() {
                        Some(n) => n.restore_migrated_nics(nics).map_err(|e| e.to_string()),
                        None => Err("the gateway is ending".into()),
                    })
                },
                userfault_nics: {
                    let net = Arc::downgrade(&net);
                    Box::new(move |device| match net.upgrade() {
                        Some(n) => n.userfault(device),
                        None => Err("the gateway is ending".into()),
                    })
                },
                announce: {
                    let (net, status) = (Arc::downgrade(&net), status.clone());
                    Arc::new(move || {
                        let net = net.upgrade()?;
                        let running = status.lock().run_state == RunState::Running;
                        if running {
                            net.announce();
                        }
                        Some(running)
                    })
                },
            },
            migration.clone(),
        );
        {
            let (status, vmm, block) = (status.clone(), vmm.clone(), Arc::downgrade(&block));
            // Ends when the block layer (which holds the sender) goes.
            std::thread::Builder::new()
                .name("io-error-stop".into())
                .spawn(move || stop_for_io_errors(stop_requests, status, vmm, block))?;
        }
        // An iothread's thread is a block daemon's.
        let objects = Objects::new(block.clone());
        let chardevs = Chardevs::default();
        chardevs.use_fdsets(fdsets.clone());
        Ok(Gateway {
            identity,
            status,
            block,
            net,
            devices: Mutex::new(Devices::default()),
            vmm,
            vmm_child,
            this: OnceLock::new(),
            sandbox,
            migration,
            migrator,
            fdsets,
            chardevs,
            objects,
            events,
            dumps: Default::default(),
            exit,
            no_shutdown: AtomicBool::new(false),
            accel: OnceLock::new(),
            vmm_pid: AtomicU32::new(0),
            cpuid: OnceLock::new(),
            cpu_model: OnceLock::new(),
            cpuid_probes: Default::default(),
        })
    }

    /// Records --cpu's model (once, at the start).
    pub fn set_cpu_model(&self, model: ipc::CpuModel) {
        let _ = self.cpu_model.set(model);
    }

    /// --cpu's model (the host's, all features, if never set).
    pub fn cpu_model(&self) -> &ipc::CpuModel {
        static HOST: ipc::CpuModel = ipc::CpuModel { off: Vec::new() };
        self.cpu_model.get().unwrap_or(&HOST)
    }

    /// Records the Arc the gateway lives in (once, right after it is made).
    pub fn set_self(&self, me: &Arc<Gateway>) {
        let _ = self.this.set(Arc::downgrade(me));
    }

    pub fn sandbox_mode(&self) -> Mode {
        self.sandbox
    }

    pub fn arc(&self) -> Option<Arc<Gateway>> {
        self.this.get().and_then(Weak::upgrade)
    }

    pub fn run_state(&self) -> RunState {
        self.status.lock().run_state
    }

    /// The run state as QMP names it: vmm-core's, or io-error while the VM is paused
    /// for a disk's error.
    pub fn run_state_name(&self) -> &'static str {
        let s = self.status.lock();
        if s.io_error && s.run_state == RunState::Paused {
            "io-error"
        } else {
            s.run_state.qmp_name()
        }
    }

    /// QMP cont: the vCPUs run again, the disks' I/O status is cleared and the requests
    /// they hold after an error are started again (one that fails again stops the VM
    /// again).
    /// QMP stop: the vCPUs stop, then the disks finish what the guest asked of them.
    pub fn stop(&self) -> Result<(), LinkError> {
        // A VM still arriving by migration stays paused once here (QEMU's autostart).
        if self.run_state() == RunState::InMigrate {
            self.migrator.set_autostart(false);
            return Ok(());
        }
        self.vmm.request(VmmRequest::Stop, &[])?;
        self.block.drain();
        Ok(())
    }

    pub fn cont(&self) -> Result<(), LinkError> {
        match self.run_state() {
            // A VM still arriving by migration runs once here.
            RunState::InMigrate => {
                self.migrator.set_autostart(true);
                return Ok(());
            }
            // Its state is on its way out: running it now would fork it.
            RunState::FinishMigrate => {
                return Err(LinkError::Remote(ipc::RemoteError::generic(
                    "the VM is being migrated: it cannot run until the migration ends",
                )))
            }
            // It left: it may run here again only with its disks back, which fails
            // while the destination holds them (QEMU's "Failed to get \"write\" lock").
            RunState::PostMigrate => {
                self.block
                    .activate()
                    .map_err(|e| LinkError::Remote(ipc::RemoteError::generic(e.to_string())))?;
            }
            // Images xen-save-devices-state let go of (`live`): taken back, as QEMU's
            // cont does (bdrv_activate_all).
            _ if self.block.inactive() => {
                self.block
                    .activate()
                    .map_err(|e| LinkError::Remote(ipc::RemoteError::generic(e.to_string())))?;
            }
            _ => {}
        }
        self.vmm.request(VmmRequest::Cont, &[])?;
        self.status.lock().io_error = false;
        self.block.cont();
        Ok(())
    }

    pub fn vcpus(&self) -> Vec<VcpuInfo> {
        self.status.lock().vcpus.clone()
    }

    /// Records vmm-core's pid, to translate the thread ids it reports.
    pub fn set_vmm_pid(&self, pid: u32) {
        self.vmm_pid.store(pid, Ordering::Relaxed);
    }

    /// A vCPU thread's host id from the id vmm-core reports (its own PID namespace's).
    pub fn host_tid(&self, tid: i32) -> i32 {
        match self.vmm_pid.load(Ordering::Relaxed) {
            0 => tid,
            pid => host_tid(pid, tid),
        }
    }

    pub fn set_vcpus(&self, mut vcpus: Vec<VcpuInfo>) {
        for v in &mut vcpus {
            v.thread_id = self.host_tid(v.thread_id);
        }
        let mut status = self.status.lock();
        // A new vmm-core (a live upgrade) lists them by index: the order they came stays.
        let place = |index: u32| status.vcpus.iter().position(|v| v.index == index);
        vcpus.sort_by_key(|v| place(v.index).unwrap_or(usize::MAX));
        status.vcpus = vcpus;
    }

    /// A vCPU added while the VM lives (its thread id as vmm-core reports it), with the
    /// QOM path device_add gave it.
    pub fn push_vcpu(&self, mut vcpu: VcpuInfo, qom_path: Option<String>) {
        vcpu.thread_id = self.host_tid(vcpu.thread_id);
        let mut status = self.status.lock();
        status.vcpus.push(vcpu);
        if let Some(path) = qom_path {
            status.vcpu_paths.insert(vcpu.index, path);
        }
    }

    /// A vCPU's QOM path: device_add's, or the launch's kind (/machine/unattached/...).
    pub fn vcpu_qom_path(&self, index: u32) -> String {
        match self.status.lock().vcpu_paths.get(&index) {
            Some(path) => path.clone(),
            None => format!("/machine/unattached/device[{index}]"),
        }
    }

    /// QEMU's -no-shutdown: the gateway outlives the guest's power-off.
    pub fn set_no_shutdown(&self, on: bool) {
        self.no_shutdown.store(on, Ordering::Relaxed);
    }

    /// The accelerator the command line chose (set once, at start).
    pub fn set_accel(&self, accel: crate::machine_none::Accel) {
        let _ = self.accel.set(accel);
    }

    pub fn accel(&self) -> crate::machine_none::Accel {
        self.accel.get().copied().unwrap_or_default()
    }

    pub fn request_exit(&self, reason: ExitReason) {
        let _ = self.exit.send(reason);
    }

    /// Turns an event from vmm-core into QMP events (and, for a guest power-off, the
    /// gateway's end).
    pub fn on_vmm_event(&self, event: VmmEvent) {
        match event {
            VmmEvent::RunState(new) => {
                self.devices.lock().set_running(new == RunState::Running);
                let old = {
                    let mut s = self.status.lock();
                    if new == RunState::Running {
                        s.io_error = false;
                    }
                    std::mem::replace(&mut s.run_state, new)
                };
                if old == RunState::Running && new != RunState::Running {
                    self.events.emit(Event::Stop);
                } else if new == RunState::Running && old != RunState::Running {
                    self.events.emit(Event::Resume);
                }
            }
            VmmEvent::Reset(c) => self.events.emit(Event::Reset(c.into())),
            VmmEvent::Shutdown(c) => {
                self.events.emit(Event::Shutdown(c.into()));
                if c == ShutdownCause::GuestShutdown && !self.no_shutdown.load(Ordering::Relaxed) {
                    self.request_exit(ExitReason::GuestPoweroff);
                }
            }
            VmmEvent::Powerdown => self.events.emit(Event::Powerdown),
            VmmEvent::DumpCompleted { progress, error } => {
                self.events.emit(Event::DumpCompleted {
                    result: crate::dump::query_result(&progress),
                    error: error.clone(),
                });
                self.dumps.finished(error);
            }
            VmmEvent::BalloonChanged { actual_bytes } => {
                self.events
                    .emit(Event::BalloonChange(crate::events::BalloonChange {
                        actual: actual_bytes,
                    }))
            }
            VmmEvent::PostcopyRanges { backend, ranges } => {
                self.migrator.postcopy_ranges(backend, ranges)
            }
            VmmEvent::VcpuFailed { vcpu, reason } => {
                log::error!("vCPU {vcpu} failed: {reason}; the VM is stopped (internal-error)");
            }
            // Finished away from this reader: the removal waits for a daemon, and for
            // locks held across calls to vmm-core, whose answers this reader brings.
            VmmEvent::DeviceEjected { slot } => match self.arc() {
                Some(gw) => {
                    let spawned = std::thread::Builder::new()
                        .name("device-ejected".into())
                        .spawn(move || gw.device_ejected(slot));
                    if let Err(e) = spawned {
                        log::error!("slot {slot} was ejected, but it cannot be removed: {e}");
                    }
                }
                None => log::info!("the guest ejected the PCI device in slot {slot}"),
            },
            VmmEvent::AcpiOst { slot, ost } => self.acpi_ost(slot, ost),
            // As DeviceEjected: the DIMM's backend and its event, away from this reader.
            VmmEvent::MemoryEjected { slot } => match self.arc() {
                Some(gw) => {
                    let spawned = std::thread::Builder::new()
                        .name("dimm-ejected".into())
                        .spawn(move || gw.dimm_ejected(slot));
                    if let Err(e) = spawned {
                        log::error!(
                            "memory slot {slot} was ejected, but it cannot be removed: {e}"
                        );
                    }
                }
                None => log::info!("the guest ejected the DIMM in memory slot {slot}"),
            },
        }
    }
}
