//! vCPUs: creation with their CPUID (at launch and, hot-added, later: `VcpuRecipe`),
//! power-on/reset state, the per-vCPU thread's run loop (exits to the port and MMIO
//! buses), and the control that parks, resumes and stops those threads (kicked out of
//! KVM_RUN with a signal).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kvm_bindings::{
    kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs, kvm_vcpu_events, CpuId, Msrs,
    KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use parking_lot::{Condvar, Mutex};

use crate::boot::BootEntry;
use crate::cpu::{boot_regs, cpuid, model, msrs};
use crate::devices::bus::Bus;
use crate::events::{EventSender, VmEvent};

#[derive(Debug, thiserror::Error)]
#[error("vCPU {vcpu}: {what}: {error}")]
pub struct VcpuError {
    pub vcpu: usize,
    pub what: &'static str,
    pub error: kvm_ioctls::Error,
}

/// What every vCPU of a VM is made from: KVM's supported CPUID as the CPU model has it
/// (each vCPU's topology leaves are rewritten for its index among `max` possible ones)
/// and the MSRs KVM lists that the model has (the boot MSRs are those of them it has;
/// the vCPUs' state is read and written with them). Kept, so that a vCPU added later is
/// made as the first ones were, without /dev/kvm.
pub struct VcpuRecipe {
    supported_cpuid: CpuId,
    model: ipc::CpuModel,
    msr_list: Vec<u32>,
    max: u32,
    /// The CPUID KVM holds for vCPU 0 once made, before it ever ran (`cpuid_leaves`).
    held: OnceLock<Vec<ipc::CpuidLeaf>>,
}

/// Why a vCPU could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("building the boot MSR list: {0}")]
    Msrs(String),
    #[error("{what}: {error}")]
    Kvm {
        what: &'static str,
        error: kvm_ioctls::Error,
    },
    /// KVM gave the vCPU a feature the CPU model turned off (kvm-pvm rewrites the
    /// instruction-set leaves from the host's CPU whatever the VMM sets).
    #[error(
        "--cpu turned off CPUID.{leaf:02X}H:{reg} bits {bits:#x}, but this host's KVM keeps \
         them set (the guest would have the feature): leave it on here"
    )]
    FeatureKept {
        vcpu: u32,
        leaf: u32,
        reg: ipc::CpuidReg,
        bits: u32,
    },
}

impl VcpuRecipe {
    /// For a VM of at most `max` vCPUs of `cpu` on `kvm`.
    pub fn new(kvm: &Kvm, max: u32, cpu: &ipc::CpuModel) -> Result<VcpuRecipe, RecipeError> {
        let kvm_err = |what| move |error| RecipeError::Kvm { what, error };
        let supported_cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("reading supported CPUID"))?;
        let msr_list = kvm
            .get_msr_index_list()
            .map_err(kvm_err("reading the MSR index list"))?;
        Ok(VcpuRecipe {
            supported_cpuid,
            model: cpu.clone(),
            msr_list: model::msrs(msr_list.as_slice(), cpu),
            max,
            held: OnceLock::new(),
        })
    }

    /// The CPUID vCPU 0 of a one-vCPU VM of `cpu` gets on `kvm`, made as a VM's vCPU 0
    /// is (in a VM with the in-kernel irqchip, without memory: neither changes CPUID),
    /// as KVM holds it: for the none machine, which has no VM. A feature the model turns
    /// off that KVM kept is in the answer, not refused: the caller says what it means.
    pub fn probe(kvm: &Kvm, cpu: &ipc::CpuModel) -> Result<Vec<ipc::CpuidLeaf>, RecipeError> {
        let kvm_err = |what| move |error| RecipeError::Kvm { what, error };
        let recipe = VcpuRecipe::new(kvm, 1, cpu)?;
        let vm = kvm.create_vm().map_err(kvm_err("creating the VM"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("creating the in-kernel irqchip"))?;
        let (_, held) = recipe.made(&vm, 0)?;
        Ok(leaves(&held))
    }

    /// The MSRs of KVM's list the vCPUs have.
    pub fn msr_list(&self) -> &[u32] {
        &self.msr_list
    }

    /// vCPU `id`'s CPUID: its topology, then the model's features turned off (after, so
    /// that what the topology sets, such as hypervisor and ht, can be turned off too).
    fn cpuid(&self, id: u32) -> CpuId {
        model::cpuid(
            &cpuid::for_vcpu(&self.supported_cpuid, id, self.max),
            &self.model,
        )
    }

    /// The CPUID vCPU 0 got, as KVM holds it (every vCPU's but for its APIC id in the
    /// topology leaves): QMP's view of the CPU model, qom-get of its features, and what
    /// a migration's two ends compare. What KVM holds, not what was set: kvm-pvm puts
    /// the host's instruction-set bits back (SSE3, AVX2...), which the guest then has.
    /// Read when vCPU 0 was made, before it ran (the bits a guest changes by running,
    /// such as OSXSAVE, are at their power-on values). None before vCPU 0 is made.
    pub fn cpuid_leaves(&self) -> Option<Vec<ipc::CpuidLeaf>> {
        self.held.get().cloned()
    }

    /// vCPU `id`, in its power-on state; refused if KVM kept a feature the model turned
    /// off (what the vCPU reads back is what the guest sees).
    pub fn make(&self, vm: &VmFd, id: u32) -> Result<Vcpu, RecipeError> {
        let (vcpu, held) = self.made(vm, id)?;
        if let Some(b) = model::kept(&held, &self.model) {
            return Err(RecipeError::FeatureKept {
                vcpu: id,
                leaf: b.leaf,
                reg: b.reg,
                bits: b.mask,
            });
        }
        if id == 0 {
            // vCPU 0 is made once, at the VM's build.
            let _ = self.held.set(leaves(&held));
        }
        Ok(vcpu)
    }

    /// vCPU `id` with its CPUID set, and the CPUID KVM then holds for it.
    fn made(&self, vm: &VmFd, id: u32) -> Result<(Vcpu, CpuId), RecipeError> {
        let cpuid = self.cpuid(id);
        let boot_msrs =
            msrs::boot_msrs(&self.msr_list).map_err(|e| RecipeError::Msrs(e.to_string()))?;
        let vcpu = Vcpu::new(vm, id as usize, &cpuid, boot_msrs)?;
        let held = (vcpu.fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)).map_err(|error| {
            VcpuError {
                vcpu: id as usize,
                what: "reading CPUID back",
                error,
            }
        })?;
        Ok((vcpu, held))
    }
}

fn leaves(cpuid: &CpuId) -> Vec<ipc::CpuidLeaf> {
    cpuid
        .as_slice()
        .iter()
        .map(|e| ipc::CpuidLeaf {
            function: e.function,
            index: e.index,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        })
        .collect()
}

/// State captured right after creation, restored on every reset.
struct PowerOnState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    lapic: kvm_lapic_state,
}

pub struct Vcpu {
    pub id: usize,
    fd: VcpuFd,
    power_on: PowerOnState,
    boot_msrs: Msrs,
}

// Local APIC register offsets and LVT delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0b100 << 8;
const APIC_MODE_EXTINT: u32 = 0b111 << 8;
const APIC_LVT_MASKED: u32 = 1 << 16;

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

impl Vcpu {
    pub fn new(vm: &VmFd, id: usize, cpuid: &CpuId, boot_msrs: Msrs) -> Result<Self, VcpuError> {
        let err = |what| {
            move |error| VcpuError {
                vcpu: id,
                what,
                error,
            }
        };
        let fd = vm.create_vcpu(id as u64).map_err(err("creating"))?;
        fd.set_cpuid2(cpuid).map_err(err("setting CPUID"))?;
        let power_on = PowerOnState {
            regs: fd.get_regs().map_err(err("reading registers"))?,
            sregs: fd.get_sregs().map_err(err("reading segment registers"))?,
            lapic: fd.get_lapic().map_err(err("reading the local APIC"))?,
        };
        Ok(Vcpu {
            id,
            fd,
            power_on,
            boot_msrs,
        })
    }

    /// Names a failed ioctl of this vCPU.
    pub(crate) fn err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let vcpu = self.id;
        move |error| VcpuError { vcpu, what, error }
    }

    /// Puts the vCPU in its power-on state. The boot vCPU (`entry` given) is then set up
    /// to enter the kernel; the others wait for INIT/SIPI from the guest.
    pub fn reset(&mut self, entry: Option<&BootEntry>) -> Result<(), VcpuError> {
        let fd = &self.fd;
        fd.set_vcpu_events(&kvm_vcpu_events::default())
            .map_err(self.err("clearing pending events"))?;
        let mut lapic = self.power_on.lapic;
        // Virtual wire mode: the boot CPU takes PIC interrupts on LINT0; every CPU has
        // NMI on LINT1 (as the MADT says).
        let lint0 = if entry.is_some() {
            APIC_MODE_EXTINT
        } else {
            APIC_MODE_EXTINT | APIC_LVT_MASKED
        };
        set_lapic_reg(&mut lapic, APIC_LVT_LINT0, lint0);
        set_lapic_reg(&mut lapic, APIC_LVT_LINT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic)
            .map_err(self.err("setting the local APIC"))?;
        fd.set_fpu(&boot_regs::boot_fpu())
            .map_err(self.err("setting the FPU"))?;
        let set = fd
            .set_msrs(&self.boot_msrs)
            .map_err(self.err("setting MSRs"))?;
        if set != self.boot_msrs.as_slice().len() {
            let index = self.boot_msrs.as_slice()[set].index;
            log::warn!("vCPU {}: KVM refused boot MSR {index:#x}", self.id);
        }
        match entry {
            Some(entry) => {
                fd.set_sregs(&boot_regs::boot_sregs(entry, self.power_on.sregs))
                    .map_err(self.err("setting segment registers"))?;
                fd.set_regs(&boot_regs::boot_regs(entry))
                    .map_err(self.err("setting registers"))?;
                fd.set_mp_state(kvm_mp_state {
                    mp_state: KVM_MP_STATE_RUNNABLE,
                })
                .map_err(self.err("setting the MP state"))?;
            }
            None => {
                fd.set_sregs(&self.power_on.sregs)
                    .map_err(self.err("setting segment registers"))?;
                fd.set_regs(&self.power_on.regs)
                    .map_err(self.err("setting registers"))?;
                fd.set_mp_state(kvm_mp_state {
                    mp_state: KVM_MP_STATE_UNINITIALIZED,
                })
                .map_err(self.err("setting the MP state"))?;
            }
        }
        Ok(())
    }
}

impl Vcpu {
    /// Where the vCPU is and whether it sits in HLT; only while its thread is parked.
    pub fn sample(&self) -> Result<(u64, bool), VcpuError> {
        let rip = self
            .fd
            .get_regs()
            .map_err(self.err("reading registers"))?
            .rip;
        let mp = self
            .fd
            .get_mp_state()
            .map_err(self.err("reading the MP state"))?;
        Ok((rip, mp.mp_state == KVM_MP_STATE_HALTED))
    }

    /// The KVM vCPU, for reading and writing its state while its thread is parked.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Queues an NMI (delivered when the vCPU next runs).
    pub fn nmi(&self) -> Result<(), VcpuError> {
        self.fd.nmi().map_err(self.err("injecting an NMI"))
    }
}

/// What the control loop asks of the vCPU threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Run,
    Pause,
    Exit,
}

struct ControlState {
    request: Request,
    generation: u64,
    /// The generation at which each vCPU (by id) last parked (or exited).
    parked: BTreeMap<usize, u64>,
}

/// Shared between the control loop and the vCPU threads.
pub struct VcpuControl {
    state: Mutex<ControlState>,
    cv: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
    /// auto-converge's throttle: the percentage of its time a vCPU sleeps.
    throttle: AtomicU8,
    /// Whether the ticker, the thread that kicks throttled vCPUs, runs.
    ticking: AtomicBool,
}

/// The timeslice a throttled vCPU runs in (QEMU's CPU_THROTTLE_TIMESLICE_NS).
pub const THROTTLE_TIMESLICE: Duration = Duration::from_millis(10);

impl VcpuControl {
    /// For the vCPUs with these ids.
    pub fn new(ids: impl IntoIterator<Item = usize>) -> Self {
        VcpuControl {
            state: Mutex::new(ControlState {
                request: Request::Pause,
                generation: 0,
                parked: ids.into_iter().map(|id| (id, 0)).collect(),
            }),
            cv: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            throttle: AtomicU8::new(0),
            ticking: AtomicBool::new(false),
        }
    }

    /// Sets the throttle (0 to 99 percent). A throttle starts the ticker if it does not
    /// run: a thread that kicks every vCPU once a period, a timeslice to run and its
    /// share of sleep (QEMU's cpu_throttle_timer_tick), until the throttle is 0 again.
    pub fn set_throttle(self: &Arc<Self>, percent: u8) -> std::io::Result<()> {
        // SeqCst here and in `tick`: one of the two sees the other's store.
        self.throttle.store(percent.min(99), Ordering::SeqCst);
        if percent == 0 || self.ticking.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let control = self.clone();
        let started = std::thread::Builder::new()
            .name("throttle".into())
            .spawn(move || control.tick());
        if started.is_err() {
            self.throttle.store(0, Ordering::SeqCst);
            self.ticking.store(false, Ordering::SeqCst);
        }
        started.map(drop)
    }

    /// The ticker's loop.
    fn tick(&self) {
        loop {
            let p = u32::from(self.throttle.load(Ordering::SeqCst));
            if p == 0 {
                self.ticking.store(false, Ordering::SeqCst);
                // A throttle set meanwhile saw the ticker running and started none.
                if self.throttle() == 0 || self.ticking.swap(true, Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            std::thread::sleep(THROTTLE_TIMESLICE * 100 / (100 - p));
            self.kick();
        }
    }

    pub fn throttle(&self) -> u8 {
        self.throttle.load(Ordering::Acquire)
    }

    /// Kicks every vCPU out of KVM_RUN without changing the request (a throttled vCPU
    /// then sleeps its share of the timeslice).
    pub fn kick(&self) {
        for t in self.threads.lock().iter() {
            // SAFETY: as in `request`: our own live vCPU threads, handler installed.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// A kicked vCPU's share of sleep while throttled: p / (100 - p) of a timeslice
    /// for each timeslice it ran, as QEMU's cpu_throttle does; false if not throttled.
    /// A request other than Run (pause, exit) ends the sleep at once.
    fn throttle_sleep(&self) -> bool {
        let p = u32::from(self.throttle());
        if p == 0 {
            return false;
        }
        let until = std::time::Instant::now() + THROTTLE_TIMESLICE * p / (100 - p);
        let mut st = self.state.lock();
        while st.request == Request::Run && !self.cv.wait_until(&mut st, until).timed_out() {}
        true
    }

    /// A vCPU added while the others run: requests wait for it too from now on (its
    /// thread parks or runs as the others do once it starts).
    pub fn add_vcpu(&self, id: usize) {
        self.state.lock().parked.insert(id, 0);
    }

    /// A vCPU whose thread could not be started after all.
    pub fn remove_vcpu(&self, id: usize) {
        self.state.lock().parked.remove(&id);
        self.cv.notify_all();
    }

    pub fn register_thread(&self, thread: libc::pthread_t) {
        self.threads.lock().push(thread);
    }

    /// Posts a request and kicks every vCPU out of KVM_RUN; returns its generation.
    pub fn request(&self, request: Request) -> u64 {
        let generation = {
            let mut st = self.state.lock();
            st.request = request;
            st.generation += 1;
            st.generation
        };
        self.cv.notify_all();
        for t in self.threads.lock().iter() {
            // SAFETY: the thread ids belong to vCPU threads we spawned and have not
            // joined; the kick signal's handler is installed before they start.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
        generation
    }

    /// Waits until every vCPU parked (or exited) after request `generation`.
    pub fn wait_parked(&self, generation: u64) {
        let mut st = self.state.lock();
        while st.parked.values().any(|g| *g < generation) {
            self.cv.wait(&mut st);
        }
    }

    /// Blocks while paused. Returns false when the thread must exit. A vCPU that
    /// stopped on its own (`stopped_at` = the generation it stopped in) waits for a
    /// newer request before running again.
    fn wait_runnable(&self, id: usize, stopped_at: Option<u64>) -> (bool, u64) {
        let mut st = self.state.lock();
        loop {
            match st.request {
                Request::Exit => {
                    let generation = st.generation;
                    st.parked.insert(id, generation);
                    self.cv.notify_all();
                    return (false, st.generation);
                }
                Request::Run if stopped_at != Some(st.generation) => return (true, st.generation),
                _ => {
                    // Announced once per request: parked vCPUs that woke each other
                    // again and again would spin (two of them burnt two host CPUs
                    // while the VM was stopped).
                    if st.parked.get(&id) != Some(&st.generation) {
                        let generation = st.generation;
                        st.parked.insert(id, generation);
                        self.cv.notify_all();
                    }
                    self.cv.wait(&mut st);
                }
            }
        }
    }
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_bindings::kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {
    // Setting immediate_exit makes a KVM_RUN that is about to start return at once, so a
    // kick that lands between our check of the request and the ioctl is not lost.
    let run = KVM_RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, valid while the
        // thread runs (set at thread start, cleared before the Vcpu can be dropped).
        unsafe { (*run).immediate_exit = 1 };
    }
}

/// Installs the kick handler (without SA_RESTART, so KVM_RUN returns EINTR).
pub fn install_kick_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with a plain handler and empty mask is valid.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Everything a vCPU thread needs.
pub struct VcpuThread {
    pub vcpu: Arc<Mutex<Vcpu>>,
    /// Where the thread publishes its host thread id.
    pub thread_id: Arc<AtomicI32>,
    pub control: Arc<VcpuControl>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub events: EventSender,
}

enum Outcome {
    /// Kicked out of KVM_RUN: look at the control request.
    Kicked,
    /// Stopped by a guest event (power-off, reset request) or a failure.
    Stopped,
}

impl VcpuThread {
    pub fn run(self) {
        // SAFETY: gettid has no preconditions.
        self.thread_id
            .store(unsafe { libc::gettid() }, Ordering::Release);
        let id = self.vcpu.lock().id;
        KVM_RUN.with(|r| r.set(self.vcpu.lock().fd.get_kvm_run()));
        let mut stopped_at = None;
        loop {
            let (run, generation) = self.control.wait_runnable(id, stopped_at);
            if !run {
                break;
            }
            stopped_at = None;
            let outcome = {
                let mut vcpu = self.vcpu.lock();
                self.run_until_stop(&mut vcpu)
            };
            match outcome {
                Outcome::Kicked => {
                    // A kick that came during the sleep was the ticker's (a request is
                    // seen by wait_runnable, after this): left pending it would end the
                    // next KVM_RUN at once for another sleep, and a vCPU throttled to
                    // half its time or more would never run (QEMU too drops the ticks
                    // of a vCPU that still sleeps).
                    if self.control.throttle_sleep() {
                        self.vcpu.lock().fd.set_kvm_immediate_exit(0);
                    }
                }
                Outcome::Stopped => stopped_at = Some(generation),
            }
        }
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    }

    fn fail(&self, vcpu: &mut Vcpu, reason: String) -> Outcome {
        let rip = vcpu
            .fd
            .get_regs()
            .map(|r| format!(" at rip={:#x}", r.rip))
            .unwrap_or_default();
        self.events.send(VmEvent::VcpuFailed {
            vcpu: vcpu.id,
            reason: format!("{reason}{rip}"),
        });
        Outcome::Stopped
    }

    fn run_until_stop(&self, vcpu: &mut Vcpu) -> Outcome {
        loop {
            let failure = match vcpu.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.pio.read(u64::from(port), data);
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.pio.write(u64::from(port), data);
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.mmio.read(addr, data);
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.mmio.write(addr, data);
                    continue;
                }
                // With the in-kernel LAPIC, HLT waits in KVM; an exit is spurious.
                Ok(VcpuExit::Hlt) | Ok(VcpuExit::IoapicEoi(_)) => continue,
                Ok(VcpuExit::Intr) => return Outcome::Kicked,
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => {
                        self.events.send(VmEvent::PowerOff);
                        return Outcome::Stopped;
                    }
                    KVM_SYSTEM_EVENT_RESET => {
                        self.events.send(VmEvent::Reset("KVM system event"));
                        return Outcome::Stopped;
                    }
                    KVM_SYSTEM_EVENT_CRASH => "guest crash (KVM_SYSTEM_EVENT_CRASH)".to_string(),
                    other => format!("unknown system event {other}"),
                },
                Ok(VcpuExit::Shutdown) => "triple fault (KVM_EXIT_SHUTDOWN)".to_string(),
                Ok(VcpuExit::InternalError) => internal_error(vcpu.fd.get_kvm_run()),
                Ok(VcpuExit::FailEntry(reason, cpu)) => format!(
                    "VM entry failed (KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x} on host cpu {cpu})"
                ),
                Ok(other) => format!("unexpected exit {other:?}"),
                Err(e) if e.errno() == libc::EINTR => {
                    vcpu.fd.set_kvm_immediate_exit(0);
                    return Outcome::Kicked;
                }
                // An AP's first KVM_RUN after INIT can return EAGAIN: try again.
                Err(e) if e.errno() == libc::EAGAIN => continue,
                Err(e) => format!("KVM_RUN failed: {e}"),
            };
            return self.fail(vcpu, failure);
        }
    }
}

fn internal_error(run: &mut kvm_bindings::kvm_run) -> String {
    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the live member.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let what = match internal.suberror {
        1 => "instruction emulation failed",
        2 => "exception while delivering an exception",
        3 => "failed to deliver an event",
        4 => "unexpected exit reason",
        _ => "unknown",
    };
    let n = (internal.ndata as usize).min(internal.data.len());
    let data: Vec<String> = internal.data[..n]
        .iter()
        .map(|d| format!("{d:#x}"))
        .collect();
    format!(
        "KVM_EXIT_INTERNAL_ERROR suberror {} ({what}), data [{}]",
        internal.suberror,
        data.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::{CpuModel, CpuidBits, CpuidReg};

    /// Feature bits of leaves 1, 7 and 0x80000001 turned off one at a time: either the
    /// vCPU is made and KVM holds its CPUID without the bit, or it is refused: never a
    /// vCPU with a feature it was told not to have. Which is host-dependent: KVM on
    /// VMX/SVM takes the VMM's CPUID as set (none of these bits is one KVM updates at
    /// run time), so every vCPU is made; kvm-pvm sets the host's instruction-set bits
    /// again (leaves 1.ECX, 7, 0xD; measured here: fpu, avx2, arch-capabilities kept;
    /// hypervisor and lahf-lm cleared), so those are refused.
    /// The none machine's probe answers what a VM's vCPU 0 holds, and that is KVM's
    /// read-back, not what was set (they differ on kvm-pvm).
    #[test]
    fn the_probe_answers_what_a_vms_vcpu_0_holds() {
        let kvm = Kvm::new().unwrap_or_else(|e| panic!("this test needs /dev/kvm: {e}"));
        let model = CpuModel::default();
        let probed = VcpuRecipe::probe(&kvm, &model).unwrap();
        let recipe = VcpuRecipe::new(&kvm, 1, &model).unwrap();
        assert_eq!(recipe.cpuid_leaves(), None, "before vCPU 0 is made");
        let vcpu = recipe.make(&crate::test_kvm::vm(), 0).unwrap();
        let held = vcpu
            .fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        assert_eq!(recipe.cpuid_leaves(), Some(leaves(&held)));
        assert_eq!(Some(probed), recipe.cpuid_leaves());
    }

    #[test]
    fn a_vcpu_never_has_a_feature_turned_off() {
        let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
        let kvm = Kvm::new().unwrap_or_else(|e| panic!("this test needs /dev/kvm: {e}"));
        let vm = crate::test_kvm::vm();
        // (leaf, register, bit, whether kvm-pvm keeps it)
        for (id, (leaf, reg, bit, pvm_keeps)) in (0..).zip([
            (1, CpuidReg::Ecx, 31, false),
            (1, CpuidReg::Edx, 0, true),
            (7, CpuidReg::Edx, 29, true),
            (7, CpuidReg::Ebx, 5, true),
            (0x8000_0001, CpuidReg::Ecx, 0, false),
        ]) {
            let b = CpuidBits {
                leaf,
                subleaf: 0,
                reg,
                mask: 1 << bit,
            };
            let model = CpuModel { off: vec![b] };
            let recipe = VcpuRecipe::new(&kvm, 8, &model).unwrap();
            let made = recipe.make(&vm, id);
            assert_eq!(made.is_err(), pvm && pvm_keeps, "{b:?}");
            match made {
                Ok(vcpu) => {
                    let held = vcpu
                        .fd
                        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                        .unwrap();
                    assert_eq!(model::kept(&held, &model), None, "{b:?}");
                }
                Err(e @ RecipeError::FeatureKept { .. }) => {
                    let (leaf, reg, bits) = (b.leaf, b.reg, b.mask);
                    let want = format!(
                        "--cpu turned off CPUID.{leaf:02X}H:{reg} bits {bits:#x}, but this \
                         host's KVM keeps them set (the guest would have the feature): leave \
                         it on here"
                    );
                    assert_eq!(e.to_string(), want);
                }
                Err(e) => panic!("{b:?}: {e}"),
            }
        }
    }
}
