//! net-daemon's command line. Under the gateway (`--control-fd`) the NIC's host side and
//! the vhost-user listener arrive as fds and the daemon opens nothing. On its own it
//! opens a tap (by name) or a UDP socket pair of addresses itself.

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use ipc::process::{block_terminating_signals, init_logging, take_inherited_fd};
use ipc::NetBackendKind;
use net_daemon::control;
use net_daemon::device::NetDevice;
use net_daemon::port::Port;

#[derive(Parser, Debug)]
#[command(name = "net-daemon", about = "Flotilla's vhost-user-net backend")]
struct Args {
    #[command(flatten)]
    trace: ipc::trace::TraceArgs,
    /// Run under the gateway: the control channel is this inherited socket.
    #[arg(long, conflicts_with_all = ["socket", "tap", "udp"])]
    control_fd: Option<RawFd>,
    /// Under the gateway: sandbox this process (`enforce`, `log`; see the sandbox crate).
    #[arg(long, requires = "control_fd", value_parser = |s: &str| s.parse::<sandbox::Mode>())]
    sandbox: Option<sandbox::Mode>,
    /// vhost-user socket to listen on.
    #[arg(long, required_unless_present = "control_fd")]
    socket: Option<PathBuf>,
    /// A tap device to open (it must exist, or the daemon needs the right to create it).
    #[arg(long, conflicts_with = "udp")]
    tap: Option<String>,
    /// A datagram link to another VM: `LOCAL_ADDR:PORT,REMOTE_ADDR:PORT`.
    #[arg(long)]
    udp: Option<String>,
    #[arg(long, default_value_t = 1)]
    queue_pairs: usize,
    /// The guest's MAC (for the receive filter; vmm-core tells the guest).
    #[arg(long, default_value = "52:54:00:12:34:56")]
    mac: String,
}

fn run_standalone(args: Args) -> anyhow::Result<()> {
    let Some(socket) = args.socket else {
        bail!("--socket is required");
    };
    let mac = ipc::host::parse_mac(&args.mac)
        .with_context(|| format!("--mac {}: expected six hex bytes", args.mac))?;
    let (fds, kind) = match (&args.tap, &args.udp) {
        (Some(t), None) => (
            ipc::host::open_tap(t, args.queue_pairs).with_context(|| format!("tap {t}"))?,
            NetBackendKind::Tap,
        ),
        (None, Some(u)) => {
            let (local, remote) = u
                .split_once(',')
                .context("--udp LOCAL_ADDR:PORT,REMOTE_ADDR:PORT")?;
            let s =
                ipc::host::open_datagram(local, remote).with_context(|| format!("--udp {u}"))?;
            (vec![s], NetBackendKind::Datagram)
        }
        _ => bail!("give --tap NAME or --udp LOCAL,REMOTE"),
    };
    let ports = fds
        .into_iter()
        .map(|fd| Port::new(fd, kind))
        .collect::<std::io::Result<Vec<_>>>()
        .context("host port")?;
    let signals = block_terminating_signals()?;
    let path = socket.clone();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            let _ = std::fs::remove_file(&path);
            std::process::exit(0);
        }
    });
    let device = NetDevice::new(ports, mac, true, None, None);
    // A socket file left by an earlier run would make bind fail.
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).context("vhost-user socket")?;
    log::info!("serving a NIC on {}", socket.display());
    vhost_backend::serve_forever(device, listener);
    Ok(())
}

fn run_controlled(fd: RawFd, mode: Option<sandbox::Mode>) -> anyhow::Result<()> {
    if let Some(mode) = mode {
        net_daemon::seccomp::enter(mode).context("sandbox")?;
    }
    // The gateway stops us through the control channel; its terminal signals are its own.
    block_terminating_signals()?;
    // A descriptor that is not a socket fails at the first receive.
    let stream = UnixStream::from(take_inherited_fd("--control-fd", fd)?);
    Ok(control::run(stream)?)
}

fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    // Before the sandbox: the trace page and log come from the gateway's descriptors.
    if let Err(e) = ipc::trace::start_child(ipc::trace::Process::NetDaemon, &args.trace) {
        eprintln!("net-daemon: error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match args.control_fd {
        Some(fd) => run_controlled(fd, args.sandbox),
        None => run_standalone(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("net-daemon: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
