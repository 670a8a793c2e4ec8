//! vmm-core's command line. On its own it builds a VM from paths and runs it; launched by
//! the gateway (`--control-fd`), it takes the VM's configuration and the files the
//! gateway opened from the control channel, and answers the gateway's requests.

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ipc::host::{parse_mac, VmArgs};
use ipc::process::{block_terminating_signals, init_logging, take_inherited_fd};
use ipc::{RemoteError, SerialSink};
use nix::sys::signal::SigSet;
use vmm_core::boot::BootImage;
use vmm_core::control::{Control, Launch};
use vmm_core::devices::serial::Console;
use vmm_core::events::{EventSender, VmEvent};
use vmm_core::migration::upgrade_shapes;
use vmm_core::vhost_user::MAX_QUEUES;
use vmm_core::{build_vm, BackendConnection, DiskConnection, NicConnection, Vm, VmConfig, VmExit};

#[derive(Parser, Debug)]
#[command(
    name = "vmm-core",
    about = "Flotilla's VM process: KVM vCPUs, guest memory, platform devices"
)]
struct Args {
    #[command(flatten)]
    trace: ipc::trace::TraceArgs,
    #[command(flatten)]
    vm: VmArgs,
    /// A virtio-blk disk served by a vhost-user backend listening on PATH:
    /// `PATH[,queues=N]`. May be given several times.
    #[arg(long, value_parser = parse_vhost_user_blk)]
    vhost_user_blk: Vec<(PathBuf, usize)>,
    /// A virtio-net NIC served by a vhost-user backend listening on PATH:
    /// `PATH[,mac=52:54:00:12:34:56][,queue-pairs=N]`. May be given several times.
    #[arg(long, value_parser = parse_vhost_user_net)]
    vhost_user_net: Vec<NetArg>,
    /// Run under the gateway: the control channel is this inherited socket, and the VM's
    /// configuration arrives on it (the VM options are then not allowed).
    #[arg(long, conflicts_with = "kernel")]
    control_fd: Option<RawFd>,
    /// Under the gateway, with no VM: answer one `ProbeCpuid` request (the CPUID a vCPU
    /// would get) and exit. Its sandbox allows only the two KVM ioctls that takes.
    #[arg(long, requires = "control_fd")]
    cpuid_only: bool,
    /// Under the gateway: sandbox this process (`enforce`, `log`; see the sandbox crate).
    #[arg(long, requires = "control_fd", value_parser = |s: &str| s.parse::<sandbox::Mode>())]
    sandbox: Option<sandbox::Mode>,
}

fn parse_vhost_user_blk(s: &str) -> Result<(PathBuf, usize), String> {
    let mut parts = s.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or("empty path")?;
    let mut queues = 1;
    for opt in parts {
        match opt.split_once('=') {
            Some(("queues", n)) => {
                queues = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_QUEUES).contains(n))
                    .ok_or_else(|| format!("queues={n}: 1 to {MAX_QUEUES}"))?
            }
            _ => return Err(format!("unknown option {opt} (expected queues=N)")),
        }
    }
    Ok((PathBuf::from(path), queues))
}

#[derive(Clone, Debug)]
struct NetArg {
    path: PathBuf,
    mac: [u8; 6],
    pairs: u16,
}

fn parse_vhost_user_net(s: &str) -> Result<NetArg, String> {
    let mut parts = s.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or("empty path")?;
    let mut arg = NetArg {
        path: PathBuf::from(path),
        mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
        pairs: 1,
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("mac", m)) => {
                arg.mac = parse_mac(m)
                    .ok_or_else(|| format!("mac={m}: six hex bytes separated by ':'"))?
            }
            Some(("queue-pairs", n)) => {
                arg.pairs = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=7).contains(n))
                    .ok_or_else(|| format!("queue-pairs={n}: 1 to 7"))?
            }
            _ => {
                return Err(format!(
                    "unknown option {opt} (expected mac= or queue-pairs=)"
                ))
            }
        }
    }
    Ok(arg)
}

fn forward_signals(events: EventSender, set: SigSet) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                events.send(VmEvent::Signal(sig as i32));
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot watch for signals: {e}");
    }
}

/// A backend listening on `path`, which is connected to again if it hangs up.
fn connect(what: &str, path: PathBuf) -> anyhow::Result<BackendConnection> {
    let stream =
        UnixStream::connect(&path).with_context(|| format!("{what} {}", path.display()))?;
    Ok(BackendConnection {
        stream,
        path: Some(path),
    })
}

fn run_standalone(
    args: VmArgs,
    disks: Vec<(PathBuf, usize)>,
    nets: Vec<NetArg>,
) -> anyhow::Result<VmExit> {
    let signals = block_terminating_signals()?;
    let kernel = args.kernel.as_deref().context("--kernel is required")?;
    let boot = BootImage::open(kernel, args.initrd.as_deref(), &args.cmdline)?;
    let (console, _socket) = Console::open(&args.serial).context("serial console")?;
    let config = VmConfig {
        memory_mib: args.memory.mib,
        cpus: args.cpus,
        max_cpus: args.max_cpus.unwrap_or(args.cpus),
        added_cpus: Vec::new(),
        start_paused: args.start_paused,
        incoming: false,
        ram: None,
        memory_hotplug: args.memory.hotplug(),
        cpu: Default::default(),
    };
    // Standalone, a device's index is its place among its kind on the command line.
    let disks = (0..)
        .zip(disks)
        .map(|(index, (path, max_queues))| {
            Ok(DiskConnection {
                index,
                slot: None,
                backend: connect("vhost-user-blk", path)?,
                // Standalone, nobody names devices (there is no QMP).
                qdev_id: String::new(),
                max_queues,
                shape: None,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nics = (0..)
        .zip(nets)
        .map(|(index, n)| {
            Ok(NicConnection {
                index,
                slot: None,
                backend: connect("vhost-user-net", n.path)?,
                qdev_id: String::new(),
                mac: n.mac,
                queue_pairs: n.pairs,
                shape: None,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let kvm = kvm_ioctls::Kvm::new().context("opening /dev/kvm")?;
    let vm = build_vm(kvm, &config, boot, console, disks, nics)?;
    forward_signals(vm.event_sender(), signals);
    Ok(vm.run(None)?)
}

/// Builds the VM the gateway asked for from the fds it sent.
fn launch(launch: Launch) -> anyhow::Result<Vm> {
    let config = &launch.config;
    let mut fds = launch.fds.into_iter();
    let mut next = |what: &str| {
        fds.next()
            .with_context(|| format!("launch request lacks the {what} fd"))
    };
    // SAFETY: the gateway opened /dev/kvm for us; the descriptor is ours alone.
    let kvm = unsafe { kvm_ioctls::Kvm::from_raw_fd(next("/dev/kvm")?.into_raw_fd()) };
    let kernel = File::from(next("kernel")?);
    let initrd = match &config.initrd_path {
        Some(p) => Some((Path::new(p), File::from(next("initrd")?))),
        None => None,
    };
    let boot = BootImage::from_files(
        (Path::new(&config.kernel_path), kernel),
        initrd,
        &config.cmdline,
    )?;
    let console = match config.serial {
        SerialSink::Stdout => Console::stdout(),
        SerialSink::None => Console::none(),
        SerialSink::File => Console::file(File::from(next("console")?)),
        SerialSink::UnixListener => Console::listener(UnixListener::from(next("console")?)),
        SerialSink::Chardev => Console::stream(UnixStream::from(next("console")?))?,
    };
    // A live upgrade's guest RAM comes after the console's fd.
    let ram = match &config.upgrade {
        Some(_) => Some(File::from(next("guest RAM")?)),
        None => None,
    };
    let vm_config = VmConfig {
        memory_mib: config.memory_mib,
        cpus: config.cpus as usize,
        max_cpus: config.max_cpus as usize,
        added_cpus: config.added_cpus.clone(),
        start_paused: config.start_paused,
        incoming: config.incoming,
        ram,
        memory_hotplug: config.memory_hotplug,
        cpu: config.cpu.clone(),
    };
    // Before anything is built: a VM that would run out of descriptors half-way says so.
    let queues: Vec<usize> = (config.disks.iter().map(|d| d.max_queues as usize))
        .chain((config.nics.iter()).map(|n| 2 * usize::from(NicConnection::queue_pairs(n)) + 1))
        // The balloon: inflateq and deflateq.
        .chain(config.balloon.iter().map(|_| 2))
        .collect();
    // Every vCPU the VM may have (a hot-added one takes its files too).
    vmm_core::seccomp::ensure_open_files(vm_config.max_cpus, &queues)?;
    let (disk_shapes, nic_shapes) = match config.upgrade.clone() {
        Some(shapes) => {
            let (disks, nics) = upgrade_shapes(&config.disks, &config.nics, shapes)?;
            (
                disks.into_iter().map(Some).collect(),
                nics.into_iter().map(Some).collect(),
            )
        }
        None => (
            vec![None; config.disks.len()],
            vec![None; config.nics.len()],
        ),
    };
    let disks = (config.disks.iter().zip(disk_shapes))
        .map(|(d, shape)| {
            let stream = UnixStream::from(next(&format!("disk {}", d.id))?);
            Ok(DiskConnection::handed(d, stream, shape))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nics = (config.nics.iter().zip(nic_shapes))
        .map(|(n, shape)| {
            let stream = UnixStream::from(next(&format!("NIC {}", n.id))?);
            Ok(NicConnection::handed(n, stream, shape))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dimms = (config.dimms.iter())
        .map(|d| Ok((d, next(&format!("memory slot {}'s DIMM", d.slot))?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut vm = build_vm(kvm, &vm_config, boot, console, disks, nics)?;
    vm.no_shutdown = config.no_shutdown;
    if let Some(balloon) = &config.balloon {
        vmm_core::builder::attach_balloon(&mut vm, balloon)?;
    }
    // The launch's DIMMs are there from the start (no insert event), as QEMU's
    // -device pc-dimm; a migration or an upgrade brings their slots' state.
    for (dimm, fd) in dimms {
        vm.attach_dimm(dimm, vec![fd], false)
            .with_context(|| format!("the DIMM for memory slot {}", dimm.slot))?;
    }
    Ok(vm)
}

/// `--cpuid-only`: the CPUID vCPU 0 of a one-vCPU VM of the asked model gets, as a VM's
/// vCPUs are made (`VcpuRecipe::probe`), on the /dev/kvm the request carries: a VM with
/// one vCPU is made for it and never runs.
fn answer_cpuid_probe(fd: RawFd, mode: Option<sandbox::Mode>) -> anyhow::Result<VmExit> {
    if let Some(mode) = mode {
        vmm_core::seccomp::enter_cpuid_only(mode).context("sandbox")?;
    }
    let stream = UnixStream::from(take_inherited_fd("--control-fd", fd)?);
    let control = Control::new(stream);
    let (id, model, kvm) = control.receive_cpuid_probe()?;
    // SAFETY: the gateway opened /dev/kvm for us; the descriptor is ours alone.
    let kvm = unsafe { kvm_ioctls::Kvm::from_raw_fd(kvm.into_raw_fd()) };
    let answer = vmm_core::vcpu::VcpuRecipe::probe(&kvm, &model)
        .map(ipc::VmmReply::Cpuid)
        .map_err(|e| RemoteError::generic(e.to_string()));
    control.reply(id, answer);
    Ok(VmExit::Quit)
}

fn run_controlled(fd: RawFd, mode: Option<sandbox::Mode>) -> anyhow::Result<VmExit> {
    if let Some(mode) = mode {
        vmm_core::seccomp::enter(mode).context("sandbox")?;
    }
    let signals = block_terminating_signals()?;
    // A descriptor that is not a socket fails at the first receive.
    let stream = UnixStream::from(take_inherited_fd("--control-fd", fd)?);
    let control = Control::new(stream);
    let request = control.receive_launch()?;
    let id = request.id;
    let vm = match launch(request) {
        Ok(vm) => vm,
        Err(e) => {
            control.reply(id, Err(RemoteError::generic(format!("{e:#}"))));
            return Err(e);
        }
    };
    forward_signals(vm.event_sender(), signals);
    Ok(vm.run(Some((&control, id)))?)
}

fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    // Before the sandbox: the trace page and log come from the gateway's descriptors.
    if let Err(e) = ipc::trace::start_child(ipc::trace::Process::VmmCore, &args.trace) {
        eprintln!("vmm-core: error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match args.control_fd {
        Some(fd) if args.cpuid_only => answer_cpuid_probe(fd, args.sandbox),
        Some(fd) => run_controlled(fd, args.sandbox),
        None => run_standalone(args.vm, args.vhost_user_blk, args.vhost_user_net),
    };
    match result {
        Ok(VmExit::PowerOff | VmExit::Quit | VmExit::ControlClosed) => ExitCode::SUCCESS,
        Ok(VmExit::Signal(sig)) => {
            eprintln!("vmm-core: terminating on signal {sig}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmm-core: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
