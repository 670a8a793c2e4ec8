//! qmp-gateway's command line: one command starts the whole VM, serves QMP, and on
//! quit, a signal, guest power-off or a vmm-core failure stops everything in order. The
//! whole command line is checked before any process starts (startup.rs); the QMP
//! listeners' limits (client slots, handshake time, fds per client) are options, and the
//! fd budget comes from RLIMIT_NOFILE once the VM runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ipc::host::VmArgs;
use ipc::process::{block_terminating_signals, init_logging};
use ipc::{ShutdownCause, VmmRequest};
use qmp_gateway::balloon::BalloonSpec;
use qmp_gateway::block::drive::DriveSpec;
use qmp_gateway::block::graph;
use qmp_gateway::block::options::NodeOptions;
use qmp_gateway::chardev::{self, Chardevs};
use qmp_gateway::children::ids::{self, IdRange};
use qmp_gateway::children::link::VmmLink;
use qmp_gateway::children::sandbox::{Mode, Policy};
use qmp_gateway::children::spawn::{spawn_child, Process};
use qmp_gateway::children::supervise::Supervised;
use qmp_gateway::children::vmm::VmmChild;
use qmp_gateway::cpu_model::CpuSpec;
use qmp_gateway::daemonize::{daemonize, Ready};
use qmp_gateway::devices::command_line::{CommandLineDevice, CommandLinePci};
use qmp_gateway::devices::placement::DeviceMemory;
use qmp_gateway::devices::spec::Model;
use qmp_gateway::devices::Backend;
use qmp_gateway::events::{Event, EventBus};
use qmp_gateway::fdstore::budget::process_fds;
use qmp_gateway::fdstore::command_line::AddFd;
use qmp_gateway::fdstore::{FdBudget, FdLimits, FdSets};
use qmp_gateway::gateway::{Binaries, ExitReason, Gateway, VmIdentity};
use qmp_gateway::launch::OpenedVm;
use qmp_gateway::machine_none::{self, Accel, MachineType};
use qmp_gateway::net::netdev::NetdevSpec;
use qmp_gateway::objects::ObjectSpec;
use qmp_gateway::pidfile::PidFile;
use qmp_gateway::qmp::server::{Server, ServerOptions};
use qmp_gateway::sockets::bind_private;
use qmp_gateway::startup;

#[derive(Parser, Debug)]
#[command(
    name = "qmp-gateway",
    about = "Flotilla: start a VM and manage it over QMP"
)]
struct Args {
    #[command(flatten)]
    vm: VmArgs,
    /// A QMP Unix socket (mode 0600); may be given several times.
    #[arg(long)]
    qmp: Vec<PathBuf>,
    /// A QMP TCP listener, PORT or HOST:PORT (loopback when no host is given).
    #[arg(long)]
    qmp_tcp: Vec<String>,
    /// Most QMP clients served at once, over all listeners (fewer if RLIMIT_NOFILE has no
    /// room for them). When all are taken, a client that has not negotiated yet makes
    /// room for a newcomer.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    qmp_max_clients: u32,
    /// Seconds a QMP client has to negotiate capabilities before it is let go (0: no
    /// limit).
    #[arg(long, default_value_t = 5)]
    qmp_handshake_timeout: u32,
    /// Most file descriptors one QMP client may make the gateway hold (getfd, add-fd,
    /// netdev_add, and fds sent ahead of a command); all clients together hold at most
    /// what RLIMIT_NOFILE leaves.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    qmp_max_client_fds: u32,
    /// The VM's name (query-name).
    #[arg(long)]
    name: Option<String>,
    /// The VM's UUID (query-uuid).
    #[arg(long)]
    uuid: Option<String>,
    /// A virtio-blk disk: `file=PATH,format=raw[,id=ID][,readonly=on][,cache=writeback|
    /// none|unsafe][,discard=ignore|unmap][,detect-zeroes=off|on|unmap][,serial=S]
    /// [,queues=N][,node-name=NAME][,stats-intervals.N=SECS][,addr=SLOT]`
    /// (addr=: its slot on PCI bus 0, hex; default the lowest free). May be given several
    /// times.
    #[arg(long, value_parser = |s: &str| s.parse::<DriveSpec>())]
    drive: Vec<DriveSpec>,
    /// A host network backend: `tap,id=ID,ifname=NAME[,queues=N]`, `tap,id=ID,fd=N`
    /// (an inherited fd), `socket,id=ID,udp=HOST:PORT,localaddr=HOST:PORT` or
    /// `dgram,id=ID,local.host=H,local.port=P,remote.host=H,remote.port=P`. May be given
    /// several times.
    #[arg(long, value_parser = |s: &str| NetdevSpec::parse_cli(s))]
    netdev: Vec<NetdevSpec>,
    /// A device, as QEMU's -device (key=value with the driver first, or JSON), there from
    /// the start (as a migration's destination must have the source's): a disk
    /// `virtio-blk-pci,drive=NODE[,id=NAME][,bus=pci.0][,addr=SLOT][,serial=S]
    /// [,num-queues=N][,iothread=OBJECT]` over a --blockdev node; a NIC
    /// `virtio-net-pci,netdev=ID[,id=NAME][,bus=pci.0][,mac=52:54:00:12:34:56][,addr=SLOT]`,
    /// its queue pairs the netdev's queues; the balloon (one at most):
    /// `virtio-balloon-pci[,id=NAME]`; or a DIMM (with --memory's slots=):
    /// `pc-dimm,memdev=OBJECT[,id=NAME][,slot=N][,addr=GPA]`. Disks and NICs take addr='s
    /// slot, or the lowest free one after the --drive disks, in command-line order. May be
    /// given several times.
    #[arg(long, value_parser = |s: &str| s.parse::<CommandLineDevice>())]
    device: Vec<CommandLineDevice>,
    /// A block node, as QEMU's -blockdev (JSON, as libvirt writes it, or key=value):
    /// drivers file, host_device, raw and qcow2, with blockdev-add's options; a --device
    /// virtio-blk-pci's drive= names its node. May be given several times.
    #[arg(long, value_parser = cli_blockdev)]
    blockdev: Vec<(String, NodeOptions)>,
    /// A character device, as QEMU's -chardev: `null,id=ID`, `file,id=ID,path=PATH
    /// [,input-path=PATH][,append=on]`, `pipe,id=ID,path=PATH`, `ringbuf|memory,id=ID
    /// [,size=SIZE]`, `socket,id=ID,path=PATH|host=HOST,port=PORT[,server=on][,wait=off]
    /// [,reconnect=SECS][,nodelay=on]`, `udp,id=ID,port=PORT[,host=HOST][,localaddr=A]
    /// [,localport=P]`, `pty,id=ID`, `stdio,id=ID`; `--serial chardev:ID` puts the UART on
    /// one. May be given several times.
    #[arg(long, value_parser = |s: &str| qmp_gateway::chardev::spec::Backend::from_cli(s))]
    chardev: Vec<(String, qmp_gateway::chardev::spec::Backend)>,
    /// A monitor on a chardev, as QEMU's -mon: `chardev=ID[,mode=control|readline]
    /// [,id=NAME][,pretty=on|off]` (readline, HMP, is the default); on a socket chardev
    /// each client that connects gets a session of its own. May be given several times.
    #[arg(long, value_parser = |s: &str| qmp_gateway::monitor::MonSpec::from_cli(s))]
    mon: Vec<qmp_gateway::monitor::MonSpec>,
    /// An object, as QEMU's -object: `memory-backend-ram|memory-backend-memfd,id=ID,
    /// size=SIZE[,share=on][,prealloc=on]`, `memory-backend-file,id=ID,size=SIZE,
    /// mem-path=PATH[,share=on][,prealloc=on]`, `iothread,id=ID[,poll-max-ns=N]...` (what
    /// object-add takes). May be given several times.
    #[arg(long, value_parser = |s: &str| qmp_gateway::qmp::object_add::from_cli(s))]
    object: Vec<ObjectSpec>,
    /// An fd this process was started with, put in fd set N as add-fd puts a client's
    /// (QEMU's -add-fd): `set=N,fd=M[,opaque=TEXT]`; a /dev/fdset/N path (a --chardev
    /// file's) opens it. May be given several times.
    #[arg(long, value_parser = |s: &str| s.parse::<AddFd>())]
    add_fd: Vec<AddFd>,
    /// The vmm-core binary (default: next to this one).
    #[arg(long)]
    vmm_core: Option<PathBuf>,
    /// The block-daemon binary (default: next to this one).
    #[arg(long)]
    block_daemon: Option<PathBuf>,
    /// The net-daemon binary (default: next to this one).
    #[arg(long)]
    net_daemon: Option<PathBuf>,
    /// The migration-agent binary (default: next to this one).
    #[arg(long)]
    migration_agent: Option<PathBuf>,
    /// The VM arrives by migration, from URI (`tcp:HOST:PORT`, `unix:PATH`,
    /// `exec:COMMAND`), or `defer`: from the URI a later migrate-incoming names. It
    /// waits in run state "inmigrate" until then.
    #[arg(long)]
    incoming: Option<String>,
    /// How vmm-core and the daemons are sandboxed: `enforce` (namespaces, an empty root,
    /// no capabilities, Landlock, and a seccomp allowlist whose violation stops the
    /// process), `log` (the same, but the kernel only logs what the allowlist lacks) or
    /// `off`.
    #[arg(long, default_value = "enforce", value_parser = |s: &str| s.parse::<Mode>())]
    sandbox: Mode,
    /// The ids sandboxed children run as on the host when the gateway is root: FIRST-LAST;
    /// each child has a uid (and the gid of the same number) no other process has, for
    /// as long as it lives. Without root they run as the gateway's own user.
    #[arg(long, default_value_t = ids::DEFAULT_RANGE, value_parser = |s: &str| s.parse::<IdRange>())]
    sandbox_ids: IdRange,
    /// When the guest powers off, the VM stops (run state "shutdown") and the gateway
    /// stays, as QEMU's -no-shutdown: system_reset and cont run the guest again; quit or
    /// a signal ends it.
    #[arg(long)]
    no_shutdown: bool,
    /// The machine: `pc` (a VM) or `none` (no VM, as QEMU's -machine none: QMP is served,
    /// nothing runs; no vmm-core, no devices).
    #[arg(long, default_value = "pc", value_parser = |s: &str| s.parse::<MachineType>())]
    machine: MachineType,
    /// The accelerator: `kvm` (the default, and the only one a VM runs on) or `tcg`,
    /// taken with `--machine none` only (no guest code runs; libvirt probes an emulator
    /// once with each), as QEMU's -accel.
    #[arg(long, default_value = "kvm", value_parser = |s: &str| s.parse::<Accel>())]
    accel: Accel,
    /// The vCPUs' CPU model, as QEMU's -cpu: `host` (the host's CPU as KVM supports it)
    /// with `,FEATURE=on|off`, `,+FEATURE`, `,-FEATURE` (QEMU's feature names) and
    /// `,migratable=on|off`. A feature turned off is not in the vCPUs' CPUID; one
    /// turned on that the host lacks stays off (with QEMU's warning).
    #[arg(long, default_value = "host", value_parser = |s: &str| s.parse::<CpuSpec>())]
    cpu: CpuSpec,
    /// Become a daemon, as QEMU's -daemonize: this process exits 0 once the QMP listeners
    /// are bound and the VM is set up (non-zero, with the error, if that fails); the
    /// daemon runs in a session of its own with /dev/null as stdin, stdout and stderr.
    #[arg(long)]
    daemonize: bool,
    /// Write the gateway's pid to FILE and hold a lock on it while the gateway runs (a
    /// second gateway given the same file is refused); removed at exit. As QEMU's -pidfile.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// Trace events, as QEMU's -trace: `[enable=]PATTERN` (`*` and `?` wildcards; a
    /// leading `-` turns off), `events=FILE` (a pattern a line), `file=FILE` (where the
    /// lines of every process go; default stderr). May be given several times.
    #[arg(long)]
    trace: Vec<String>,
}

impl Args {
    /// -S with an incoming migration: the VM stays paused once it arrived.
    fn start_paused_incoming(&self) -> bool {
        self.incoming.is_some() && self.vm.start_paused
    }
}

/// A --blockdev: its text (what QEMU's errors quote) and the node tree it describes.
fn cli_blockdev(s: &str) -> Result<(String, NodeOptions), String> {
    qmp_gateway::qmp::blockdev::parse_cli(s).map(|opts| (s.to_string(), opts))
}

/// A sibling binary of this one, unless given.
fn sibling(given: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p.clone()),
        None => Ok(std::env::current_exe()?
            .parent()
            .with_context(|| format!("locating {name} next to qmp-gateway"))?
            .join(name)),
    }
}

fn tcp_addr(spec: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(port) = spec.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    spec.parse()
        .with_context(|| format!("--qmp-tcp {spec}: expected PORT or HOST:PORT"))
}

/// What must be undone when the gateway ends, whatever the reason.
struct Cleanup {
    sockets: Vec<PathBuf>,
    /// vmm-core (the one running now, after any live upgrade).
    vmm: Option<Arc<VmmChild>>,
    /// Whether vmm-core was handed the VM: before that it holds nothing and is killed
    /// at once (our child, by pid) instead of waited for.
    launched: bool,
    /// Its block and net daemons stop after vmm-core, their frontend, has stopped its
    /// vCPUs for good: once it ended, or once it hung up (`released`).
    gateway: Option<Arc<Gateway>>,
    /// vmm-core hung up after its vCPUs stopped and its devices let go of their backends
    /// (its runner.rs), and only its own end is left (KVM's destruction of the VM, 10-20
    /// ms on some hosts): the daemons stop while it ends.
    released: bool,
}

impl Cleanup {
    /// Waits for vmm-core to exit, killing it (by pid: our child) after `grace`.
    fn reap(&mut self, grace: Duration) {
        let Some(vmm) = self.vmm.clone() else {
            return;
        };
        let mut process = vmm.process.lock();
        let Some(child) = process.as_mut() else {
            return;
        };
        if !self.launched {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        // Woken by its end (a pidfd), not by a timer: each millisecond here is one the
        // emulator's end takes longer (libvirt's destroy waits for the whole of it).
        match child.wait_until(Instant::now() + grace) {
            Ok(Some(status)) => {
                if !status.success() {
                    log::warn!("vmm-core exited with {status}");
                }
            }
            _ => {
                log::warn!("vmm-core did not exit; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let gateway = self.gateway.take();
        // The block daemons (which leave their images clean) and the net daemons stop at
        // the same time, not one after the other.
        let stop_daemons = || {
            if let Some(gw) = &gateway {
                std::thread::scope(|scope| {
                    scope.spawn(|| gw.net.shutdown());
                    gw.block.shutdown();
                });
                gw.chardevs.shutdown();
            }
        };
        if self.released {
            std::thread::scope(|scope| {
                scope.spawn(stop_daemons);
                self.reap(Duration::from_secs(5));
            });
        } else {
            self.reap(Duration::from_secs(5));
            stop_daemons();
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// The fd budget, from RLIMIT_NOFILE and what the running VM holds now; says its numbers.
fn fd_budget(args: &Args) -> anyhow::Result<Arc<FdBudget>> {
    let (nofile, open) = process_fds().context("RLIMIT_NOFILE")?;
    let devices = args.drive.len() + args.device.len();
    let limits = FdLimits::derive(
        nofile,
        open,
        devices,
        args.qmp_max_clients as usize,
        args.qmp_max_client_fds as usize,
    )?;
    if limits.clients < args.qmp_max_clients as usize {
        log::warn!(
            "RLIMIT_NOFILE {nofile} has room for {} QMP clients at once, not the {} asked for",
            limits.clients,
            args.qmp_max_clients
        );
    }
    log::info!(
        "QMP: {} clients at once, {} fds per client, {} for all clients (RLIMIT_NOFILE {nofile}; \
         {} kept for the VM's own files, restarts and client connections)",
        limits.clients,
        limits.per_client,
        limits.total,
        limits.reserved
    );
    Ok(FdBudget::new(limits))
}

/// The options that describe a VM, which --machine none has none of.
fn refuse_vm_options(args: &Args) -> anyhow::Result<()> {
    let given = [
        ("--kernel", args.vm.kernel.is_some()),
        ("--initrd", args.vm.initrd.is_some()),
        ("--drive", !args.drive.is_empty()),
        ("--device", !args.device.is_empty()),
        ("--netdev", !args.netdev.is_empty()),
        ("--incoming", args.incoming.is_some()),
    ];
    match given.iter().find(|(_, given)| *given) {
        Some((option, _)) => bail!("--machine none runs no VM: {option} is not taken"),
        None => Ok(()),
    }
}

/// Puts the VM together and has vmm-core launch it: the disks, NICs, balloon and DIMMs
/// the command line gives, placed on bus 0 in launch order.
#[allow(clippy::too_many_arguments)]
fn launch_vm(
    args: &Args,
    gw: &Arc<Gateway>,
    link: &Arc<VmmLink>,
    vmm_child: &VmmChild,
    mut vm: OpenedVm,
    netdevs: Vec<qmp_gateway::net::netdev::Netdev>,
    pci: &[CommandLinePci],
    balloon: Option<BalloonSpec>,
) -> anyhow::Result<()> {
    // Bus 0's slots from 1, in launch order: the --drive disks, then the --device disks
    // and NICs in their order (addr= keeps its slot).
    for (i, spec) in args.drive.iter().enumerate() {
        let (ticket, slot) = gw.devices.lock().launch(Model::Blk, None, spec.slot)?;
        let placed = (slot, ticket.qom_path.clone());
        let (disk, stream) = gw.block.add_drive(i, spec, &gw.fdsets, placed)?;
        gw.devices
            .lock()
            .added(&ticket, Backend::Disk(disk.clone()));
        vm.add_disk(disk, stream);
    }
    for netdev in netdevs {
        gw.net.add_netdev(netdev)?;
    }
    // vmm-core takes the disks' connections before the NICs'.
    let mut nics = Vec::new();
    for device in pci {
        let text = &device.text;
        let made = gw.launch_device(&device.spec, vm.config.cpus);
        match made.with_context(|| format!("--device {text}"))? {
            (Backend::Disk(disk), stream) => vm.add_disk(disk, stream),
            (Backend::Nic(nic), stream) => nics.push((nic, stream)),
            (other, _) => bail!("--device {text}: made {other:?}"),
        }
    }
    for (nic, stream) in nics {
        vm.add_nic(nic, stream);
    }
    // The balloon is vmm-core's own device, in the next slot.
    if let Some(b) = balloon {
        let (ticket, slot) = gw
            .devices
            .lock()
            .launch(Model::Balloon, b.id.as_deref(), None)?;
        let launch = ipc::BalloonLaunch {
            slot: Some(slot),
            qdev_id: b.id.unwrap_or_default(),
        };
        gw.devices
            .lock()
            .added(&ticket, Backend::Balloon(launch.clone()));
        vm.config.balloon = Some(launch);
    }
    // The command line's DIMMs, placed as device_add places them (in the launch's
    // device memory).
    let memory = DeviceMemory::of(vm.config.memory_mib << 20, vm.config.memory_hotplug);
    for dimm in qmp_gateway::devices::command_line::dimms(&args.device) {
        let (dimm, fd) = gw.launch_dimm(dimm, &memory).context("--device pc-dimm")?;
        vm.add_dimm(&dimm, fd);
    }
    vm.config.incoming = args.incoming.is_some();
    vm.config.no_shutdown = args.no_shutdown;
    vm.config.cpu = args.cpu.model();
    gw.set_no_shutdown(args.no_shutdown);
    gw.migrator.set_shape(vm.shape());
    if args.start_paused_incoming() {
        gw.migrator.set_autostart(false);
    }
    let vcpus = vm.launch(link).context("vmm-core")?;
    vm.drop_backend_connections();
    *vmm_child.launch.lock() = Some(vm);
    gw.set_vcpus(vcpus);
    let cpuid = gw.guest_cpuid().context("vmm-core's CPUID")?;
    warn_unsupported_features(&args.cpu, &cpuid);
    Ok(())
}

/// QEMU's warnings for the features `--cpu` turned on that the vCPUs cannot have.
fn warn_unsupported_features(cpu: &CpuSpec, cpuid: &qmp_gateway::cpuid_features::GuestCpuid) {
    for w in cpu.unsupported(cpuid) {
        eprintln!("qmp-gateway: warning: {w}");
    }
}

/// The none machine's CPUID (query-cpu-model-expansion of the host model): under KVM,
/// a vmm-core started for it alone says what a VM's vCPU would get; under TCG there is
/// no host model (cpu_models.rs refuses it in QEMU's words for making such a vCPU).
fn probe_cpuid(args: &Args, gw: &Gateway) -> anyhow::Result<()> {
    if args.accel != Accel::Kvm {
        return Ok(());
    }
    let binary = sibling(&args.vmm_core, "vmm-core")?;
    let leaves =
        qmp_gateway::children::cpuid_probe::probe_cpuid(&binary, args.sandbox, args.cpu.model())?;
    let cpuid = qmp_gateway::cpuid_features::GuestCpuid(leaves);
    warn_unsupported_features(&args.cpu, &cpuid);
    gw.set_guest_cpuid(cpuid);
    Ok(())
}

/// A daemon has no terminal: QEMU refuses stdio with -daemonize, and so do we (the
/// default --serial stdout included: vmm-core would keep writing to the caller's stdout).
fn refuse_stdio_when_daemonized(args: &Args) -> anyhow::Result<()> {
    if !args.daemonize {
        return Ok(());
    }
    if args.machine == MachineType::Pc && args.vm.serial == ipc::host::SerialConfig::Stdout {
        bail!("--serial stdout: cannot use stdio with --daemonize");
    }
    let stdio =
        (args.chardev.iter()).find(|(_, b)| *b == qmp_gateway::chardev::spec::Backend::Stdio);
    if let Some((id, _)) = stdio {
        bail!("--chardev stdio,id={id}: cannot use stdio with --daemonize");
    }
    Ok(())
}

/// `ready`: the daemon's promise to its first process (--daemonize), kept once the QMP
/// listeners serve.
fn run(args: Args, ready: Option<Ready>) -> anyhow::Result<ExitReason> {
    for w in &args.cpu.warnings {
        eprintln!("qmp-gateway: warning: {w}");
    }
    if let Some(u) = &args.uuid {
        if !qmp_gateway::ids::valid_uuid(u) {
            bail!("--uuid {u}: not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
        }
    }
    refuse_stdio_when_daemonized(&args)?;
    // Locked before anything is bound, as QEMU's: a second gateway given the same file
    // is refused before it could take the first one's sockets. Removed last.
    let _pidfile = (args.pidfile.as_deref())
        .map(PidFile::create)
        .transpose()
        .context("cannot create PID file")?;
    let signals = block_terminating_signals()?;
    // Before any child starts: each gets the trace state page and log at its start.
    qmp_gateway::trace::start(&args.trace)?;

    let mut cleanup = Cleanup {
        sockets: Vec::new(),
        vmm: None,
        launched: false,
        gateway: None,
        released: false,
    };
    let mut unix_listeners = Vec::new();
    for path in &args.qmp {
        unix_listeners.push(bind_private(path).context("--qmp")?);
        // Absolute: a daemon moves to / once it is ready.
        cleanup.sockets.push(std::path::absolute(path)?);
    }
    let mut tcp_listeners = Vec::new();
    for spec in &args.qmp_tcp {
        let addr = tcp_addr(spec)?;
        tcp_listeners.push(TcpListener::bind(addr).with_context(|| format!("--qmp-tcp {spec}"))?);
    }
    let mut vm = match args.machine {
        MachineType::Pc if args.accel == Accel::Tcg => bail!(
            "--accel tcg: Flotilla runs guests on KVM only; tcg is taken with --machine none \
             (no guest code runs)"
        ),
        MachineType::Pc => Some(OpenedVm::open(&args.vm)?),
        MachineType::None => {
            refuse_vm_options(&args)?;
            None
        }
    };
    // The chardevs, and the UART on its own, before any process starts (the gateway
    // takes them over once it is made). The none machine has no UART.
    let chardevs = Chardevs::default();
    // The inherited fds of --add-fd, before the chardevs open /dev/fdset/N paths.
    let fdsets = Arc::new(FdSets::default());
    qmp_gateway::fdstore::command_line::take(&fdsets, &args.add_fd)
        .map_err(|(at, e)| anyhow::anyhow!("--add-fd {at}: {e}"))?;
    chardevs.use_fdsets(fdsets.clone());
    let serial = match vm {
        Some(_) => &args.vm.serial,
        None => &ipc::host::SerialConfig::None,
    };
    let console = chardev::console::open_command_line(&chardevs, &args.chardev, serial)
        .context("--chardev/--serial")?;
    if let (Some(vm), Some(console)) = (vm.as_mut(), console) {
        vm.set_console(console);
    }
    // Each monitor's chardev is its own from now on.
    qmp_gateway::monitor::claim(&chardevs, &args.mon).context("--mon")?;
    // Every device is checked before any process starts (the netdevs are opened).
    let (pci, balloon) = qmp_gateway::devices::command_line::split(&args.device)
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let specs: Vec<_> = pci.iter().map(|d| d.spec.clone()).collect();
    let netdevs = startup::check(&args.drive, &args.netdev, &specs)?;

    if args.sandbox != Mode::Off {
        ids::configure(args.sandbox_ids)?;
    }
    let (link, vmm_child) = match vm {
        Some(_) => {
            let binary = sibling(&args.vmm_core, "vmm-core")?;
            let (child, conn) = spawn_child(&binary, &[], args.sandbox)
                .with_context(|| format!("starting {}", binary.display()))?;
            let vmm_child = Arc::new(VmmChild::new(binary));
            *vmm_child.process.lock() = Some(child);
            cleanup.vmm = Some(vmm_child.clone());
            (VmmLink::new("vmm-core", conn), vmm_child)
        }
        None => {
            let link = machine_none::start(args.vm.start_paused).context("machine none")?;
            // No VM: the binary is started only for the CPUID (cpuid_probes.rs).
            let binary = sibling(&args.vmm_core, "vmm-core")?;
            (link, Arc::new(VmmChild::new(binary)))
        }
    };
    let (exit_tx, exit_rx) = mpsc::channel();
    let events = Arc::new(EventBus::default());
    let gw = Arc::new(
        Gateway::new(
            VmIdentity {
                name: args.name.clone(),
                uuid: args
                    .uuid
                    .clone()
                    .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into()),
            },
            link.clone(),
            vmm_child.clone(),
            exit_tx,
            Binaries {
                block_daemon: sibling(&args.block_daemon, "block-daemon")?,
                net_daemon: sibling(&args.net_daemon, "net-daemon")?,
                migration_agent: sibling(&args.migration_agent, "migration-agent")?,
            },
            events.clone(),
            args.sandbox,
            fdsets,
        )
        .context("runtime directory")?,
    );
    cleanup.gateway = Some(gw.clone());
    gw.chardevs.adopt(chardevs);
    gw.set_self(&gw);
    gw.set_accel(args.accel);
    gw.set_cpu_model(args.cpu.model());
    if let Some(pid) = vmm_child.pid() {
        gw.set_vmm_pid(pid);
    }
    {
        let (on_event, on_closed) = (gw.clone(), gw.clone());
        link.start_reader(
            move |e| on_event.on_vmm_event(e),
            move |why| on_closed.request_exit(ExitReason::VmmExited(why)),
        )?;
    }
    if args.incoming.is_some() {
        // The source holds the images' locks until the switch-over.
        gw.block.open_inactive();
    }
    // The command line's objects (iothreads and memory backends: the devices use them),
    // as QEMU creates them before its devices.
    for spec in &args.object {
        let id = spec.id().to_string();
        gw.objects
            .add(spec.clone())
            .with_context(|| format!("--object {id}"))?;
    }
    // The --blockdev nodes, as blockdev-add makes them (the VM's own: charged to no
    // client), before the --drive disks, as QEMU makes them.
    for (text, opts) in &args.blockdev {
        gw.block
            .blockdev_add(opts, &gw.fdsets, &mut graph::uncharged)
            .with_context(|| format!("--blockdev {text}"))?;
    }
    match vm {
        Some(vm) => {
            launch_vm(&args, &gw, &link, &vmm_child, vm, netdevs, &pci, balloon)?;
            cleanup.launched = true;
        }
        None => probe_cpuid(&args, &gw).context("--machine none")?,
    }
    // From now on a block daemon that dies is restarted (vmm-core is there to reconnect).
    gw.block.start_supervisor()?;
    gw.block.start_job_watcher()?;
    gw.net.start_supervisor()?;

    let signal_gw = gw.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                signal_gw.request_exit(ExitReason::Signal(sig as i32));
            }
        })?;
    match args.incoming.as_deref() {
        None | Some("defer") => {}
        Some(uri) => gw
            .migrator
            .incoming(uri, |_| {
                Err("fd: needs a client: use --incoming defer".into())
            })
            .with_context(|| format!("--incoming {uri}"))?,
    }
    let budget = fd_budget(&args)?;
    let server = Server::new(
        gw.clone(),
        ServerOptions {
            max_clients: budget.limits().clients,
            handshake: (args.qmp_handshake_timeout > 0)
                .then(|| Duration::from_secs(args.qmp_handshake_timeout.into())),
            budget,
        },
    );
    // Each listener is a chardev too, under QEMU's label for a -qmp's.
    let mut labels = (0..).map(chardev::listeners::compat_label);
    for (l, path) in unix_listeners.into_iter().zip(&args.qmp) {
        let filename = format!("disconnected:unix:{},server=on", path.display());
        let label = labels.next().unwrap_or_default();
        let chardev = gw
            .chardevs
            .add_qmp_listener(&label, filename, server.handoff())
            .context("--qmp")?;
        server.serve_unix(l, chardev)?;
    }
    for l in tcp_listeners {
        let a = l.local_addr()?;
        let filename = format!("disconnected:tcp:{}:{},server=on", a.ip(), a.port());
        let label = labels.next().unwrap_or_default();
        let chardev = gw
            .chardevs
            .add_qmp_listener(&label, filename, server.handoff())
            .context("--qmp-tcp")?;
        server.serve_tcp(l, chardev)?;
    }
    qmp_gateway::monitor::start(&server, &args.mon).context("--mon")?;
    if let Some(ready) = ready {
        ready.done().context("daemonize")?;
    }

    let reason = exit_rx
        .recv()
        .unwrap_or(ExitReason::VmmExited("event channel closed".into()));
    log::debug!("ending: {reason:?}");
    match &reason {
        ExitReason::Quit => {
            let _ = link.request(VmmRequest::Quit(ShutdownCause::HostQmpQuit), &[]);
        }
        ExitReason::Signal(sig) => {
            eprintln!("qmp-gateway: terminating on signal {sig}");
            let _ = link.request(VmmRequest::Quit(ShutdownCause::HostSignal), &[]);
        }
        ExitReason::GuestPoweroff => {}
        ExitReason::IncomingFailed(why) => {
            eprintln!("qmp-gateway: error: {why}");
            let _ = link.request(VmmRequest::Quit(ShutdownCause::HostError), &[]);
        }
        ExitReason::VmmExited(_) => {
            cleanup.reap(Duration::from_secs(5));
            let violation = vmm_child
                .process
                .lock()
                .as_ref()
                .and_then(Process::violation);
            if let Some(nr) = violation {
                Policy {
                    mode: args.sandbox,
                    events: events.clone(),
                }
                .report("vmm-core", None, nr);
            }
            // vmm-core cannot report its own end: the gateway does.
            gw.events
                .emit(Event::Shutdown(ShutdownCause::HostError.into()));
        }
    }
    // vmm-core's last events (SHUTDOWN) reach the clients before they are closed. It
    // hangs up once its vCPUs have stopped for good and its devices let go of their
    // backends, before it ends: one that does not within the grace is killed.
    cleanup.released = cleanup.launched && link.wait_closed(Duration::from_secs(5));
    if !cleanup.released {
        cleanup.reap(Duration::ZERO);
        link.wait_closed(Duration::from_secs(1));
    }
    link.shutdown();
    // Give every client's writer a moment to deliver the last replies and events.
    let outboxes = gw.events.close_all();
    let deadline = Instant::now() + Duration::from_secs(2);
    for outbox in &outboxes {
        outbox.wait_finished(deadline);
    }
    drop(cleanup);
    Ok(reason)
}

fn main() -> ExitCode {
    // Before anything is opened: the descriptors a migration's fd:N may name.
    qmp_gateway::fdstore::inherited::record_left_open();
    init_logging();
    let args = Args::parse();
    // Before anything starts a thread or a child: a fork keeps only the calling thread.
    let ready = match args.daemonize {
        true => match daemonize() {
            Ok(ready) => Some(ready),
            Err(e) => {
                eprintln!("qmp-gateway: error: {e}");
                return ExitCode::FAILURE;
            }
        },
        false => None,
    };
    // A start refused below is told to the monitor's client (chardev/linger.rs).
    let listeners = chardev::linger::inherited_listeners(args.chardev.iter().map(|(_, b)| b));
    match run(args, ready) {
        Ok(ExitReason::VmmExited(why)) => {
            eprintln!("qmp-gateway: error: vmm-core exited unexpectedly: {why}");
            ExitCode::FAILURE
        }
        Ok(ExitReason::IncomingFailed(_)) => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qmp-gateway: error: {e:#}");
            chardev::linger::until_client_pending(&listeners, chardev::linger::LINGER);
            ExitCode::FAILURE
        }
    }
}
