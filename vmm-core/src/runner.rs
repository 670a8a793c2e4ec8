//! Runs a built VM: one thread per vCPU, and the control loop in the calling thread.
//! Everything that ends, pauses or resets the run arrives as a `VmEvent` (power-off,
//! reset requests, vCPU failures, signals, the gateway's requests) and is handled here,
//! in one place; the run state and the events the gateway sees follow from it.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc::{
    CpuState, DumpRequest, DumpStatus, RemoteError, RunState, ShutdownCause, VcpuInfo, VmmEvent,
    VmmReply, VmmRequest,
};

use crate::control::Control;
use crate::devices::virtio_balloon::BalloonHandle;
use crate::dump;
use crate::error::VmError;
use crate::events::VmEvent;
use crate::hotplug::HotplugError;
use crate::migration::{self, Answer, Outgoing};
use crate::postcopy;
use crate::vcpu::{self, Request, Vcpu, VcpuControl, VcpuError, VcpuThread};
use crate::vhost_user::Handover;
use crate::vm::Vm;

/// How a VM run ended, when it ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    PowerOff,
    Signal(i32),
    /// The gateway asked vmm-core to quit.
    Quit,
    /// The gateway hung up.
    ControlClosed,
}

fn remote(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::generic(e.to_string())
}

/// Gives a device's link thread the connection the gateway sent.
fn hand_over(
    to: Option<&Handover>,
    fds: Vec<OwnedFd>,
    what: &str,
) -> Result<VmmReply, RemoteError> {
    match (to, fds.into_iter().next()) {
        (Some(handover), Some(fd)) => {
            handover.hand_over(UnixStream::from(fd));
            Ok(VmmReply::Done)
        }
        (None, _) => Err(RemoteError::generic(format!(
            "{what} does not take connections from the gateway"
        ))),
        (_, None) => Err(RemoteError::generic("no connection came with the request")),
    }
}

/// QEMU's words for a VM without a balloon (the gateway answers them first).
fn no_balloon() -> RemoteError {
    RemoteError::generic("No balloon device has been activated")
}

impl Vm {
    /// Runs the guest until it powers off, a signal arrives, the gateway says quit or
    /// hangs up, or (without a gateway) something fails. With a gateway (`control`), the
    /// launch request `launch_id` is answered once the vCPU threads exist, and a failed
    /// vCPU leaves the VM stopped in "internal-error" for the gateway to reset or quit.
    pub fn run(mut self, control: Option<(&Control, u64)>) -> Result<VmExit, VmError> {
        vcpu::install_kick_handler().map_err(VmError::Thread)?;
        if let Some((console, serial)) = self.console.take() {
            console.start_input(serial).map_err(VmError::Serial)?;
        }
        let mut threads = VcpuThreads::start(&self)?;
        let mut runner = Runner {
            vm: self,
            control: control.map(|(c, _)| c),
            vcpus: threads.control.clone(),
            threads: &mut threads,
            state: RunState::Prelaunch,
            outgoing: Outgoing::default(),
            postcopy: None,
            arrived: false,
            dump: DumpState::default(),
        };
        // Started before the launch reply, so the gateway knows the run state by the time
        // it has that reply (the RunState event travels first on the same channel).
        if runner.vm.incoming {
            runner.set_state(RunState::InMigrate);
        } else if !runner.vm.start_paused {
            runner.cont_vcpus();
        }
        if let Some((control, launch_id)) = control {
            control
                .start_reader(runner.vm.events.clone())
                .map_err(VmError::Thread)?;
            let vcpus = runner
                .threads
                .thread_ids
                .iter()
                .map(|(&index, &thread_id)| VcpuInfo { index, thread_id })
                .collect();
            control.reply(launch_id, Ok(VmmReply::Launched { vcpus }));
        }
        let result = runner.event_loop();
        // Unregistered, guest RAM wakes a vCPU that waits for a page that will not come.
        drop(runner.postcopy.take());
        // The VM outlives its vCPU threads.
        let Runner { vm, .. } = runner;
        threads.stop();
        // KVM destroys the VM when its last descriptor closes, which takes 10-20 ms on
        // some hosts (kvm-pvm): the gateway hears first that the vCPUs have stopped for
        // good and every device has let go of its backend (the control channel closes),
        // so that it stops the daemons (which leave their images clean) meanwhile.
        let kvm_vm = vm.vm.clone();
        drop(vm);
        if let Some((control, _)) = control {
            control.hang_up();
        }
        drop(kvm_vm);
        result
    }
}

/// One thread per vCPU, and what drives them.
struct VcpuThreads {
    control: Arc<VcpuControl>,
    handles: Vec<JoinHandle<()>>,
    /// Host thread ids by vCPU index (what query-cpus-fast reports).
    thread_ids: BTreeMap<u32, i32>,
}

/// How long a new vCPU thread has to say who it is.
const THREAD_START: Duration = Duration::from_secs(10);

impl VcpuThreads {
    /// Starts the threads and returns once every one is parked and has published its id.
    fn start(vm: &Vm) -> Result<VcpuThreads, VmError> {
        let ids = vm.vcpus.keys().map(|&id| id as usize);
        let mut threads = VcpuThreads {
            control: Arc::new(VcpuControl::new(ids)),
            handles: Vec::new(),
            thread_ids: BTreeMap::new(),
        };
        let mut published = Vec::new();
        for (&index, vcpu) in &vm.vcpus {
            published.push((index, threads.spawn_thread(vm, index, vcpu.clone())?));
        }
        let generation = threads.control.request(Request::Pause);
        threads.control.wait_parked(generation);
        for (index, thread_id) in published {
            threads
                .thread_ids
                .insert(index, thread_id.load(Ordering::Acquire));
        }
        Ok(threads)
    }

    /// The thread of vCPU `index`; it publishes its host thread id into the atomic.
    fn spawn_thread(
        &mut self,
        vm: &Vm,
        index: u32,
        vcpu: Arc<parking_lot::Mutex<Vcpu>>,
    ) -> Result<Arc<AtomicI32>, VmError> {
        let thread_id = Arc::new(AtomicI32::new(0));
        let thread = VcpuThread {
            vcpu,
            thread_id: thread_id.clone(),
            control: self.control.clone(),
            pio: vm.pio.clone(),
            mmio: vm.mmio.clone(),
            events: vm.events.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || thread.run())
            .map_err(VmError::Thread)?;
        self.control
            .register_thread(std::os::unix::thread::JoinHandleExt::as_pthread_t(&handle));
        self.handles.push(handle);
        Ok(thread_id)
    }

    /// A vCPU added while the VM lives: its thread parks or runs as the others do (one
    /// that runs waits in KVM for the guest's INIT/SIPI). Returns its host thread id.
    fn add(
        &mut self,
        vm: &Vm,
        index: u32,
        vcpu: Arc<parking_lot::Mutex<Vcpu>>,
    ) -> Result<i32, VmError> {
        self.control.add_vcpu(index as usize);
        let thread_id = match self.spawn_thread(vm, index, vcpu) {
            Ok(t) => t,
            Err(e) => {
                self.control.remove_vcpu(index as usize);
                return Err(e);
            }
        };
        // Its first act is to publish its id; a thread that never does is stuck for good.
        let deadline = Instant::now() + THREAD_START;
        loop {
            match thread_id.load(Ordering::Acquire) {
                0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                0 => {
                    return Err(VmError::Thread(std::io::Error::other(format!(
                        "vCPU {index}'s thread did not start within {THREAD_START:?}"
                    ))))
                }
                tid => {
                    self.thread_ids.insert(index, tid);
                    return Ok(tid);
                }
            }
        }
    }

    /// Ends every thread and waits for it.
    fn stop(self) {
        let generation = self.control.request(Request::Exit);
        self.control.wait_parked(generation);
        for t in self.handles {
            let _ = t.join();
        }
    }
}

/// The control loop's state while the VM runs.
struct Runner<'a> {
    vm: Vm,
    control: Option<&'a Control>,
    vcpus: Arc<VcpuControl>,
    threads: &'a mut VcpuThreads,
    state: RunState,
    /// Dirty logging while this VM migrates away.
    outgoing: Outgoing,
    /// vmm-core's registered mapping while postcopy brings this VM's memory in.
    postcopy: Option<postcopy::Registered>,
    /// A migration's (or live upgrade's) state came into this VM.
    arrived: bool,
    /// The last dump-guest-memory's progress, and whether the end of the one running
    /// resumes the vCPUs it paused.
    dump: DumpState,
}

impl Runner<'_> {
    fn notify(&self, event: VmmEvent) {
        match self.control {
            Some(c) => c.event(event),
            None => log::debug!("{event:?}"),
        }
    }

    /// The balloon, unless the VM has none (or the guest ejected it).
    fn balloon(&self) -> Option<&BalloonHandle> {
        self.vm.balloon.as_ref().filter(|b| b.present())
    }

    fn set_state(&mut self, state: RunState) {
        if self.state != state {
            self.state = state;
            // The balloon serves its rings only while the VM runs, as the vCPUs do.
            if let Some(balloon) = &self.vm.balloon {
                balloon.set_running(state == RunState::Running);
            }
            // Input reaches the devices only while it runs, as in QEMU.
            self.vm.input.set_running(state == RunState::Running);
            self.notify(VmmEvent::RunState(state));
        }
    }

    fn pause_vcpus(&self) {
        let generation = self.vcpus.request(Request::Pause);
        self.vcpus.wait_parked(generation);
    }

    fn cont_vcpus(&mut self) {
        self.vcpus.request(Request::Run);
        self.set_state(RunState::Running);
    }

    fn stop(&mut self) {
        match self.state {
            RunState::Running => {
                self.pause_vcpus();
                self.set_state(RunState::Paused);
            }
            // A migration that failed with the VM stopped before it: paused again.
            RunState::FinishMigrate => self.set_state(RunState::Paused),
            _ => {}
        }
    }

    fn cont(&mut self) -> Result<(), RemoteError> {
        match self.state {
            RunState::Running => Ok(()),
            RunState::Paused
            | RunState::Prelaunch
            | RunState::FinishMigrate
            | RunState::PostMigrate => {
                self.cont_vcpus();
                Ok(())
            }
            RunState::InternalError | RunState::Shutdown => Err(RemoteError::generic(
                "Resetting the Virtual Machine is required",
            )),
            RunState::InMigrate => Err(RemoteError::generic(
                "the VM has not arrived yet (its migration is not complete)",
            )),
        }
    }

    /// A platform reset; the VM keeps its run state, except that a VM that cannot run
    /// (failed, shut down) comes back ready to start, as QEMU's does.
    fn reset(&mut self, cause: ShutdownCause) -> Result<(), VmError> {
        self.pause_vcpus();
        self.vm.reset()?;
        // The reset finished the removals the guest had not (as QEMU's, before its
        // RESET event).
        self.let_go_ejected();
        // Reset requests raised by the old boot (a second write to the reset register,
        // say) are stale; anything else still matters.
        let pending: Vec<VmEvent> = self.vm.events_rx.try_iter().collect();
        pending
            .into_iter()
            .filter(|e| !matches!(e, VmEvent::Reset(_)))
            .for_each(|e| self.vm.events.send(e));
        self.notify(VmmEvent::Reset(cause));
        match self.state {
            RunState::Running => {
                self.vcpus.request(Request::Run);
            }
            RunState::InternalError | RunState::Shutdown => self.set_state(RunState::Prelaunch),
            RunState::Paused
            | RunState::Prelaunch
            | RunState::InMigrate
            | RunState::FinishMigrate
            | RunState::PostMigrate => {}
        }
        Ok(())
    }

    /// Devices neither come nor go while the VM migrates (the destination is built with
    /// the devices the migration started with; a device added while postcopy brings the
    /// pages in would map guest RAM without waiting for them); QEMU's words.
    fn devices_may_change(&self, command: &str) -> Result<(), RemoteError> {
        let migrating = self.outgoing.is_active()
            || self.state == RunState::InMigrate
            || self.postcopy.is_some();
        match migrating {
            true => Err(RemoteError::generic(format!(
                "{command} not allowed while migrating"
            ))),
            false => Ok(()),
        }
    }

    /// `DiskAttach` / `NicAttach`, running or not: the VM takes the device, and the
    /// guest learns of it when it runs.
    fn hot_attach(
        &mut self,
        attach: impl FnOnce(&mut Vm) -> Result<u8, HotplugError>,
    ) -> Result<VmmReply, RemoteError> {
        self.devices_may_change("device_add")?;
        // A device the guest ejected goes first: its slot, its BAR's range and the
        // addresses of its doorbells may be the new one's.
        self.let_go_ejected();
        let slot = attach(&mut self.vm).map_err(remote)?;
        log::info!("a device was hot-plugged into PCI slot {slot}");
        Ok(VmmReply::Done)
    }

    /// `MemoryAttach`, running or not: the DIMM is mapped, in KVM and in every backend
    /// before the guest is told.
    fn attach_dimm(
        &mut self,
        dimm: &ipc::DimmLaunch,
        fds: Vec<OwnedFd>,
    ) -> Result<VmmReply, RemoteError> {
        self.devices_may_change("device_add")?;
        // A DIMM the guest ejected goes first: its slot and range may be the new one's.
        self.let_go_ejected_dimms();
        self.vm.attach_dimm(dimm, fds, true).map_err(remote)?;
        log::info!(
            "a DIMM of {:#x} bytes was hot-plugged into memory slot {} at {:#x}",
            dimm.size,
            dimm.slot,
            dimm.addr
        );
        Ok(VmmReply::Done)
    }

    /// The DIMMs the guest ejected are let go of (out of the backends and KVM,
    /// unmapped), and only then does the gateway hear of them: their backends are free.
    fn let_go_ejected_dimms(&mut self) {
        for slot in self.vm.let_go_ejected_dimms() {
            log::info!("the guest ejected the DIMM in memory slot {slot}; its memory is gone");
            self.notify(VmmEvent::MemoryEjected { slot });
        }
    }

    /// The devices the guest ejected (or a reset removed) are let go of, and only then
    /// does the gateway hear of them: their daemons are its to stop.
    fn let_go_ejected(&mut self) {
        for slot in self.vm.let_go_ejected() {
            log::info!("the guest ejected the PCI function in slot {slot}; its device is gone");
            self.notify(VmmEvent::DeviceEjected { slot });
        }
    }

    /// cpu-add (or device_add of a CPU): vCPU `index` with its thread, and the guest told.
    /// Not while the VM migrates away, nor once a migration's state came in (before, a
    /// destination is given the source's vCPUs this way: the state tells the guest).
    fn cpu_add(&mut self, index: u32) -> Result<VmmReply, RemoteError> {
        if self.arrived {
            return Err(RemoteError::generic("cpu-add not allowed while migrating"));
        }
        if self.state != RunState::InMigrate {
            self.devices_may_change("cpu-add")?;
        }
        let vcpu = self.vm.add_vcpu(index).map_err(remote)?;
        let thread_id = match self.threads.add(&self.vm, index, vcpu) {
            Ok(t) => t,
            Err(e) => {
                self.vm.drop_vcpu(index);
                return Err(remote(e));
            }
        };
        if self.state != RunState::InMigrate {
            self.vm.announce_vcpu(index);
        }
        log::info!("vCPU {index} added (thread {thread_id})");
        Ok(VmmReply::VcpuAdded(VcpuInfo { index, thread_id }))
    }

    fn query_cpus(&self) -> Result<Vec<CpuState>, RemoteError> {
        let running = self.state == RunState::Running;
        if running {
            self.pause_vcpus();
        }
        let sampled: Result<Vec<CpuState>, VcpuError> = self
            .vm
            .vcpus
            .iter()
            .map(|(index, vcpu)| {
                let thread_id = self.threads.thread_ids.get(index).copied().unwrap_or(0);
                let vcpu = vcpu.lock();
                vcpu.sample().map(|(pc, halted)| CpuState {
                    index: *index,
                    thread_id,
                    pc,
                    halted,
                })
            })
            .collect();
        if running {
            self.vcpus.request(Request::Run);
        }
        sampled.map_err(|e| RemoteError::generic(e.to_string()))
    }

    /// An NMI to every vCPU (KVM_NMI needs each vCPU out of KVM_RUN for a moment).
    fn inject_nmi(&self) -> Result<(), RemoteError> {
        let running = self.state == RunState::Running;
        if running {
            self.pause_vcpus();
        }
        let result = self
            .vm
            .vcpus
            .values()
            .try_for_each(|v| v.lock().nmi())
            .map_err(|e| RemoteError::generic(e.to_string()));
        if running {
            self.vcpus.request(Request::Run);
        }
        result
    }

    /// auto-converge: throttled vCPUs are kicked by a thread of their control's, which
    /// ends when the throttle goes back to 0.
    fn set_throttle(&self, percent: u8) {
        if let Err(e) = self.vcpus.set_throttle(percent) {
            log::error!("auto-converge: starting the throttle thread: {e}");
        }
    }

    /// `VmmRequest::PostcopyListen`, with /dev/userfaultfd in `fds`.
    fn postcopy_listen(&mut self, fds: Vec<OwnedFd>) -> Answer {
        let refused = |why: &str| (Err(RemoteError::generic(why)), Vec::new());
        if self.state != RunState::InMigrate {
            return refused("postcopy listens only on a VM waiting for its migration");
        }
        if self.postcopy.is_some() {
            return refused("postcopy is listening already");
        }
        let control = self.control.cloned();
        let events: crate::events::PostcopyEvents = Arc::new(move |event| match &control {
            Some(c) => c.event(event),
            None => log::debug!("{event:?}"),
        });
        match postcopy::listen(&self.vm, fds.into_iter().next(), events) {
            Ok((reply, fds, registered)) => {
                self.postcopy = Some(registered);
                (Ok(reply), fds)
            }
            Err(e) => (Err(RemoteError::generic(e.to_string())), Vec::new()),
        }
    }

    /// xen-load-devices-state: a saved state into the stopped VM (QEMU's words while it
    /// runs). Not while it migrates: the stream's own state goes in (or out) then.
    fn load_state(&mut self, state: &[u8]) -> Result<(), RemoteError> {
        match self.state {
            RunState::Running => Err(RemoteError::generic(
                "Cannot update device state while vm is running",
            )),
            RunState::InMigrate | RunState::FinishMigrate => Err(RemoteError::generic(
                "Cannot update device state while the VM is migrating",
            )),
            _ => (self.vm.load_state(state)).map_err(|e| RemoteError::generic(e.to_string())),
        }
    }

    /// A migration's requests, which may answer with fds.
    fn handle_migration(&mut self, request: VmmRequest) -> Answer {
        let done = || (Ok(VmmReply::Done), Vec::new());
        match request {
            VmmRequest::MigrationStart => self.outgoing.start(&self.vm),
            VmmRequest::DirtyLogSync => self.outgoing.sync(&self.vm),
            VmmRequest::MigrationEnd => {
                self.set_throttle(0);
                self.outgoing.end(&self.vm)
            }
            VmmRequest::Throttle { percent } => {
                self.set_throttle(percent);
                done()
            }
            VmmRequest::MigrationStop => {
                if self.state == RunState::Running {
                    self.pause_vcpus();
                }
                self.set_state(RunState::FinishMigrate);
                done()
            }
            VmmRequest::SaveState => match self.state {
                RunState::Running => (
                    Err(RemoteError::generic(
                        "the VM must be stopped to save its state",
                    )),
                    Vec::new(),
                ),
                _ => match self.vm.save_state() {
                    Ok(state) => (Ok(VmmReply::State(state)), Vec::new()),
                    Err(e) => (Err(RemoteError::generic(e.to_string())), Vec::new()),
                },
            },
            VmmRequest::MigrationCompleted => {
                self.set_state(RunState::PostMigrate);
                done()
            }
            VmmRequest::IncomingMemory => migration::incoming_memory(&self.vm),
            // Harmless when postcopy is not listening (a cleanup after a failure).
            VmmRequest::PostcopyEnd => {
                if let Some(registered) = self.postcopy.take() {
                    postcopy::end(&self.vm, registered);
                }
                done()
            }
            VmmRequest::UpgradeInfo => migration::upgrade_info(&self.vm),
            VmmRequest::RestoreState(state) => match self.state {
                RunState::InMigrate => match self.vm.restore_state(&state) {
                    Ok(()) => {
                        self.arrived = true;
                        // Upgraded: the backends are ours now.
                        self.vm.connect_pending_backends();
                        done()
                    }
                    Err(e) => (Err(RemoteError::generic(e.to_string())), Vec::new()),
                },
                _ => (
                    Err(RemoteError::generic(
                        "the VM is not waiting for a migration",
                    )),
                    Vec::new(),
                ),
            },
            VmmRequest::IncomingCompleted { run } => {
                if self.state != RunState::InMigrate {
                    return (
                        Err(RemoteError::generic(
                            "the VM is not waiting for a migration",
                        )),
                        Vec::new(),
                    );
                }
                if run {
                    self.cont_vcpus();
                } else {
                    self.set_state(RunState::Paused);
                }
                done()
            }
            other => (
                Err(RemoteError::generic(format!(
                    "{other:?} is not a migration request"
                ))),
                Vec::new(),
            ),
        }
    }

    fn handle_request(
        &mut self,
        request: VmmRequest,
        fds: Vec<OwnedFd>,
    ) -> Result<Answer, VmError> {
        if matches!(
            request,
            VmmRequest::MigrationStart
                | VmmRequest::DirtyLogSync
                | VmmRequest::MigrationEnd
                | VmmRequest::MigrationStop
                | VmmRequest::Throttle { .. }
                | VmmRequest::SaveState
                | VmmRequest::MigrationCompleted
                | VmmRequest::IncomingMemory
                | VmmRequest::RestoreState(_)
                | VmmRequest::IncomingCompleted { .. }
                | VmmRequest::UpgradeInfo
                | VmmRequest::PostcopyEnd
        ) {
            return Ok(self.handle_migration(request));
        }
        if let VmmRequest::PostcopyListen = request {
            return Ok(self.postcopy_listen(fds));
        }
        let reply = match request {
            VmmRequest::Launch(_) => Err(RemoteError::generic("the VM is already launched")),
            VmmRequest::Stop => {
                self.dump.resume = false;
                self.stop();
                Ok(VmmReply::Done)
            }
            VmmRequest::Cont => {
                self.dump.resume = false;
                self.cont().map(|()| VmmReply::Done)
            }
            VmmRequest::SystemReset => {
                self.reset(ShutdownCause::HostQmpSystemReset)?;
                Ok(VmmReply::Done)
            }
            VmmRequest::SystemPowerdown => {
                self.vm.pm.lock().press_power_button();
                self.notify(VmmEvent::Powerdown);
                Ok(VmmReply::Done)
            }
            VmmRequest::QueryCpus => self.query_cpus().map(VmmReply::Cpus),
            VmmRequest::QueryPci => Ok(VmmReply::Pci(self.vm.pci.lock().describe())),
            VmmRequest::InjectNmi => self.inject_nmi().map(|()| VmmReply::Done),
            VmmRequest::DiskConfigChanged { disk } => match self.vm.disks.get(&disk) {
                Some(d) => {
                    d.config.raise();
                    Ok(VmmReply::Done)
                }
                None => Err(RemoteError::generic(format!("no disk {disk}"))),
            },
            VmmRequest::NicSetLink { nic, up } => {
                match self.vm.nics.get(&nic).map(|n| &n.link_state) {
                    Some(l) => {
                        l.set(up);
                        Ok(VmmReply::Done)
                    }
                    None => Err(RemoteError::generic(format!("no NIC {nic}"))),
                }
            }
            // A removed device's index finds nothing: nothing reconnects it.
            VmmRequest::DiskReconnect { disk } => match self.vm.disks.get(&disk) {
                Some(d) => hand_over(d.handover.as_ref(), fds, &format!("disk {disk}")),
                None => Err(RemoteError::generic(format!("no disk {disk}"))),
            },
            VmmRequest::NicReconnect { nic } => match self.vm.nics.get(&nic) {
                Some(n) => hand_over(n.handover.as_ref(), fds, &format!("NIC {nic}")),
                None => Err(RemoteError::generic(format!("no NIC {nic}"))),
            },
            VmmRequest::BalloonTarget { pages } => match self.balloon() {
                Some(balloon) => {
                    balloon.set_target(pages);
                    Ok(VmmReply::Done)
                }
                None => Err(no_balloon()),
            },
            VmmRequest::CpuAdd { index } => self.cpu_add(index),
            VmmRequest::MemorySave { addr, size, vcpu } => self
                .memory_save(addr, size, vcpu, fds)
                .map(|()| VmmReply::Done),
            VmmRequest::DumpGuestMemory(request) => {
                self.dump_start(&request, fds).map(|()| VmmReply::Done)
            }
            VmmRequest::QueryDump => Ok(VmmReply::Dump(*self.dump.progress.lock())),
            VmmRequest::QueryRegisters { index } => self.query_registers(index),
            VmmRequest::QueryPageTables { index } => self.query_page_tables(index),
            VmmRequest::LoadState(state) => self.load_state(&state).map(|()| VmmReply::Done),
            VmmRequest::Input(steps) => {
                let dropped = self.vm.input.push(steps);
                if dropped > 0 {
                    log::debug!("input: {dropped} steps dropped, the queue is full");
                }
                Ok(VmmReply::Done)
            }
            VmmRequest::QueryBalloon => match self.balloon() {
                Some(balloon) => Ok(VmmReply::Balloon {
                    actual_bytes: balloon.actual_bytes(),
                }),
                None => Err(no_balloon()),
            },
            VmmRequest::DiskAttach(disk) => self.hot_attach(|vm| vm.hot_attach_disk(&disk, fds)),
            VmmRequest::NicAttach(nic) => self.hot_attach(|vm| vm.hot_attach_nic(&nic, fds)),
            VmmRequest::RequestUnplug { slot } => (self.devices_may_change("device_del"))
                .and_then(|()| self.vm.request_unplug(slot).map_err(remote))
                .map(|()| VmmReply::Done),
            VmmRequest::MemoryAttach(dimm) => self.attach_dimm(&dimm, fds),
            VmmRequest::MemoryUnplug { slot } => (self.devices_may_change("device_del"))
                .and_then(|()| self.vm.request_dimm_unplug(slot).map_err(remote))
                .map(|()| VmmReply::Done),
            VmmRequest::QueryAcpiSlots => Ok(VmmReply::AcpiSlots {
                dimms: self.vm.memory_slots_ost(),
                cpus: self.vm.cpu_hotplug.lock().ospm_status(),
            }),
            VmmRequest::QueryCpuid => (self.vm.recipe.cpuid_leaves())
                .map(VmmReply::Cpuid)
                .ok_or_else(|| RemoteError::generic("vCPU 0 was never made")),
            // Quit and Retire are answered by the event loop, which then ends.
            VmmRequest::Quit(_) | VmmRequest::Retire => Ok(VmmReply::Done),
            _ => Err(RemoteError::generic("a migration request out of place")),
        };
        Ok((reply, Vec::new()))
    }

    fn event_loop(&mut self) -> Result<VmExit, VmError> {
        loop {
            // The sender half lives in `self.vm`, so recv only fails if that is gone.
            let Ok(event) = self.vm.events_rx.recv() else {
                return Ok(VmExit::PowerOff);
            };
            match event {
                VmEvent::PowerOff => {
                    self.notify(VmmEvent::Shutdown(ShutdownCause::GuestShutdown));
                    // -no-shutdown: the VM stops (after the SHUTDOWN event, as QEMU's
                    // STOP follows it) until the gateway resets or quits it.
                    if self.vm.no_shutdown && self.control.is_some() {
                        self.pause_vcpus();
                        self.set_state(RunState::Shutdown);
                        continue;
                    }
                    return Ok(VmExit::PowerOff);
                }
                VmEvent::Signal(sig) => {
                    self.notify(VmmEvent::Shutdown(ShutdownCause::HostSignal));
                    return Ok(VmExit::Signal(sig));
                }
                VmEvent::VcpuFailed { vcpu, reason } => {
                    if self.control.is_none() {
                        return Err(VmError::VcpuFailed { vcpu, reason });
                    }
                    log::error!("vCPU {vcpu}: {reason}");
                    self.pause_vcpus();
                    self.set_state(RunState::InternalError);
                    self.notify(VmmEvent::VcpuFailed {
                        vcpu: vcpu as u32,
                        reason,
                    });
                }
                VmEvent::Reset(source) => {
                    log::info!("guest reset ({source})");
                    self.reset(ShutdownCause::GuestReset)?;
                }
                VmEvent::Control { id, request, fds } => {
                    let request = *request;
                    let quit = matches!(request, VmmRequest::Quit(_) | VmmRequest::Retire);
                    if let VmmRequest::Quit(cause) = request {
                        self.notify(VmmEvent::Shutdown(cause));
                    }
                    let (result, reply_fds) = self.handle_request(request, fds)?;
                    if let Some(c) = self.control {
                        let fds: Vec<_> = reply_fds.iter().map(|f| f.as_fd()).collect();
                        c.reply_with_fds(id, result, &fds);
                    }
                    if quit {
                        return Ok(VmExit::Quit);
                    }
                }
                VmEvent::ControlClosed => return Ok(VmExit::ControlClosed),
                VmEvent::BalloonChanged { actual_bytes } => {
                    self.notify(VmmEvent::BalloonChanged { actual_bytes })
                }
                VmEvent::DeviceEjected => self.let_go_ejected(),
                VmEvent::MemoryEjected => self.let_go_ejected_dimms(),
                VmEvent::DumpFinished { error } => self.dump_finished(error),
                VmEvent::AcpiOst { slot, ost } => self.notify(VmmEvent::AcpiOst { slot, ost }),
            }
        }
    }
}

/// dump-guest-memory's state between requests.
struct DumpState {
    progress: dump::Progress,
    /// The running dump paused the vCPUs, and nothing since said stop or cont.
    resume: bool,
}

impl Default for DumpState {
    fn default() -> DumpState {
        DumpState {
            progress: dump::no_dump_yet(),
            resume: false,
        }
    }
}

/// The file a memsave or dump request carries.
fn target_file(fds: Vec<OwnedFd>) -> Result<std::fs::File, RemoteError> {
    fds.into_iter()
        .next()
        .map(std::fs::File::from)
        .ok_or_else(|| RemoteError::generic("no file came with the request"))
}

impl Runner<'_> {
    /// The registers of the vCPUs named (all: None), read with their threads parked (a
    /// running VM is paused for the moment it takes).
    fn read_cpus(&self, only: Option<u32>) -> Result<Vec<dump::elf::CpuRegs>, RemoteError> {
        self.parked(|| {
            self.vm
                .vcpus
                .iter()
                .filter(|(index, _)| only.is_none_or(|o| o == **index))
                .map(|(_, vcpu)| dump::read_cpu(&vcpu.lock()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(remote)
        })
    }

    /// `read` with the vCPU threads parked (a running VM is paused for the moment).
    fn parked<T>(&self, read: impl FnOnce() -> T) -> T {
        let running = self.state == RunState::Running;
        if running {
            self.pause_vcpus();
        }
        let out = read();
        if running {
            self.vcpus.request(Request::Run);
        }
        out
    }

    /// HMP info mem / info tlb: one vCPU's page-table leaves.
    fn query_page_tables(&self, index: u32) -> Result<VmmReply, RemoteError> {
        let cpus = self.read_cpus(Some(index))?;
        let cpu = (cpus.first())
            .ok_or_else(|| RemoteError::generic(format!("CPU#{index} not available")))?;
        dump::page_tables(self.vm.ram.memory(), cpu)
            .map(VmmReply::PageTables)
            .map_err(remote)
    }

    /// HMP info registers: one vCPU's registers.
    fn query_registers(&self, index: u32) -> Result<VmmReply, RemoteError> {
        let vcpu = (self.vm.vcpus.get(&index))
            .ok_or_else(|| RemoteError::generic(format!("CPU#{index} not available")))?;
        self.parked(|| dump::registers::read(&vcpu.lock()))
            .map(|r| VmmReply::Registers(Box::new(r)))
            .map_err(remote)
    }

    /// memsave (`vcpu` given) or pmemsave, into the file in `fds`.
    fn memory_save(
        &self,
        addr: u64,
        size: u64,
        vcpu: Option<u32>,
        fds: Vec<OwnedFd>,
    ) -> Result<(), RemoteError> {
        let regs = match vcpu {
            Some(index) if !self.vm.vcpus.contains_key(&index) => {
                return Err(RemoteError::generic(
                    "Parameter 'cpu-index' expects a CPU number",
                ))
            }
            Some(index) => self.read_cpus(Some(index))?.first().map(dump::paging_regs),
            None => None,
        };
        let mut file = target_file(fds)?;
        dump::save(self.vm.ram.memory(), &mut file, addr, size, regs.as_ref()).map_err(remote)
    }

    /// dump-guest-memory: the vCPUs stop (if they ran) and their registers are read, the
    /// core is planned, and a thread writes it; its end (`dump_finished`) resumes them.
    fn dump_start(&mut self, request: &DumpRequest, fds: Vec<OwnedFd>) -> Result<(), RemoteError> {
        if self.state == RunState::InMigrate {
            return Err(RemoteError::generic(
                "Dump not allowed during incoming migration.",
            ));
        }
        if self.dump.progress.lock().status == DumpStatus::Active {
            return Err(RemoteError::generic(
                "There is a dump in process, please wait.",
            ));
        }
        let file = target_file(fds)?;
        let resume = self.state == RunState::Running;
        if resume {
            self.pause_vcpus();
            self.set_state(RunState::Paused);
        }
        let started = self.dump_plan_and_start(request, file);
        match started {
            Ok(()) => self.dump.resume = resume,
            Err(_) => {
                dump::refused(&self.dump.progress);
                if resume {
                    self.cont_vcpus();
                }
            }
        }
        started
    }

    fn dump_plan_and_start(
        &mut self,
        request: &DumpRequest,
        file: std::fs::File,
    ) -> Result<(), RemoteError> {
        let cpus = self.read_cpus(None)?;
        let memory = self.vm.ram.memory().clone();
        let plan = dump::plan(&memory, &cpus, request).map_err(RemoteError::generic)?;
        let events = self.vm.events.clone();
        dump::start(
            memory,
            plan,
            file,
            self.dump.progress.clone(),
            move |error| events.send(VmEvent::DumpFinished { error }),
        )
        .map_err(|e| RemoteError::generic(format!("dump: starting its thread: {e}")))
    }

    /// The dump's thread ended: DUMP_COMPLETED, then the vCPUs run again if it stopped
    /// them (QEMU's order).
    fn dump_finished(&mut self, error: Option<String>) {
        let progress = *self.dump.progress.lock();
        self.notify(VmmEvent::DumpCompleted { progress, error });
        if std::mem::take(&mut self.dump.resume) && self.state == RunState::Paused {
            self.cont_vcpus();
        }
    }
}
