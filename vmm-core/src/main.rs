//! vmm-core's command line: build a VM from the options, run it, report how it ended.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use vmm_core::devices::serial::SerialConfig;
use vmm_core::events::{EventSender, VmEvent};
use vmm_core::{Vm, VmConfig, VmExit};

#[derive(Parser, Debug)]
#[command(
    name = "vmm-core",
    about = "Flotilla's VM process: KVM vCPUs, guest memory, platform devices"
)]
struct Args {
    /// Kernel to boot: a Linux bzImage or an ELF with a PVH entry note.
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: usize,
    /// Serial console (COM1): stdout, none, file:PATH or unix:PATH (vmm-core listens).
    #[arg(long, default_value = "stdout", value_parser = |s: &str| s.parse::<SerialConfig>())]
    serial: SerialConfig,
}

/// Signals that end the VM; blocked in every thread and taken by one waiter thread.
const TERMINATING: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

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

fn run(args: Args) -> anyhow::Result<VmExit> {
    let mut set = SigSet::empty();
    for s in TERMINATING {
        set.add(s);
    }
    // Block before any thread exists so every thread inherits the mask.
    set.thread_block()?;
    let vm = Vm::new(&VmConfig {
        memory_mib: args.memory,
        cpus: args.cpus,
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        serial: args.serial,
    })?;
    forward_signals(vm.event_sender(), set);
    Ok(vm.run()?)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(VmExit::PowerOff) => ExitCode::SUCCESS,
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
