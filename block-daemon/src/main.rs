//! block-daemon's command line. Under the gateway (`--control-fd`) the image and the
//! vhost-user listener arrive as fds and the daemon opens no paths. On its own it serves
//! one or more exports, each an image on its own vhost-user socket, to frontends one
//! after another (`--once`: only the first of each), until a signal ends it.

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use block_daemon::control;
use block_daemon::engine::EngineKind;
use block_daemon::export::{
    parse_cache, parse_engine, parse_format, parse_poll, Export, ExportSpec,
};
use block_daemon::paths::FormatName;
use clap::Parser;
use ipc::process::{block_terminating_signals, init_logging, take_inherited_fd};

#[derive(Parser, Debug)]
#[command(name = "block-daemon", about = "Flotilla's vhost-user-blk backend")]
struct Args {
    #[command(flatten)]
    trace: ipc::trace::TraceArgs,
    /// Run under the gateway: the control channel is this inherited socket, and the node
    /// to serve arrives on it (only --engine may be given with it).
    #[arg(long, conflicts_with_all = ["socket", "image", "export"])]
    control_fd: Option<RawFd>,
    /// Under the gateway: sandbox this process (`enforce`, `log`; see the sandbox crate).
    #[arg(long, requires = "control_fd", value_parser = |s: &str| s.parse::<sandbox::Mode>())]
    sandbox: Option<sandbox::Mode>,
    /// An export: `socket=PATH,image=PATH[,format=raw|qcow2][,read-only=on][,queues=N]
    /// [,cache=writeback|none|unsafe|direct-no-flush][,engine=uring|sync][,id=SERIAL]
    /// [,discard=unmap|ignore][,poll-us=N]`. May be given several times.
    #[arg(long, value_parser = |s: &str| s.parse::<ExportSpec>())]
    export: Vec<ExportSpec>,
    /// One export's vhost-user socket (with --image and the options below).
    #[arg(long, requires = "image")]
    socket: Option<PathBuf>,
    /// One export's image file or block device.
    #[arg(long, requires = "socket")]
    image: Option<PathBuf>,
    /// The image's format: raw, or qcow2 (its backing files are opened by the names its
    /// header gives, relative to its directory).
    #[arg(long, default_value = "raw", value_parser = |s: &str| parse_format(s))]
    format: FormatName,
    #[arg(long)]
    read_only: bool,
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// writeback, none (O_DIRECT), unsafe (flushes ignored) or direct-no-flush.
    #[arg(long, default_value = "writeback", value_parser = |s: &str| parse_cache(s))]
    cache: block_daemon::disk::CacheMode,
    /// uring (many requests in flight per queue) or sync (one at a time per queue).
    #[arg(long, default_value = "uring", value_parser = |s: &str| parse_engine(s))]
    engine: EngineKind,
    /// What GET_ID reports (at most 20 bytes).
    #[arg(long, default_value = "flotilla-disk")]
    id: String,
    /// Guest discards are ignored (QEMU discard=ignore) instead of deallocating.
    #[arg(long)]
    discard_ignore: bool,
    /// Microseconds each queue is watched for new requests (and, while requests are in
    /// the kernel, for their completions) after its last batch (0 or off: polling off,
    /// every request waits for a kick, every completion for the worker to wake).
    #[arg(long, default_value = "32", value_parser = |s: &str| parse_poll(s))]
    poll_us: std::time::Duration,
    /// End when each export's first frontend has disconnected (by default the daemon
    /// keeps serving: a frontend may reconnect, or another come).
    #[arg(long)]
    once: bool,
}

fn run_standalone(args: Args) -> anyhow::Result<()> {
    let mut specs = args.export;
    if let (Some(socket), Some(image)) = (args.socket, args.image) {
        let spec = ExportSpec {
            socket,
            image,
            format: args.format,
            read_only: args.read_only,
            queues: args.queues,
            cache: args.cache,
            engine: args.engine,
            id: args.id,
            discard_unmap: !args.discard_ignore,
            poll: args.poll_us,
        };
        spec.check().map_err(anyhow::Error::msg)?;
        specs.push(spec);
    }
    if specs.is_empty() {
        bail!("nothing to serve: give --export (or --socket and --image), or --control-fd");
    }
    let signals = block_terminating_signals()?;
    let sockets: Vec<PathBuf> = specs.iter().map(|s| s.socket.clone()).collect();
    // All exports open (and listen) before any is served: a bad one fails the start.
    let mut exports = Vec::new();
    for spec in specs {
        match Export::open(spec) {
            Ok(e) => exports.push(e),
            Err(e) => {
                for s in &sockets {
                    let _ = std::fs::remove_file(s);
                }
                return Err(e.into());
            }
        }
    }
    let disks: Vec<_> = exports.iter().map(Export::disk).collect();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            for s in &sockets {
                let _ = std::fs::remove_file(s);
            }
            // Each image is left clean (qcow2: nothing reserved, not dirty).
            for d in &disks {
                if let Err(e) = d.close() {
                    log::error!("closing an image: {e}");
                }
            }
            std::process::exit(0);
        }
    });
    let mut threads = Vec::new();
    for e in exports {
        log::info!(
            "serving {} ({} sectors) on {}",
            e.spec.image.display(),
            e.capacity_sectors(),
            e.spec.socket.display(),
        );
        let once = args.once;
        threads.push(std::thread::spawn(move || e.serve(once)));
    }
    let mut failed = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log::error!("{e}");
                failed = Some(e.to_string());
            }
            Err(_) => failed = Some("an export's thread panicked".into()),
        }
    }
    match failed {
        Some(e) => bail!("{e}"),
        None => Ok(()),
    }
}

fn run_controlled(
    fd: RawFd,
    engine: EngineKind,
    mode: Option<sandbox::Mode>,
) -> anyhow::Result<()> {
    if let Some(mode) = mode {
        block_daemon::seccomp::enter(mode).context("sandbox")?;
    }
    // The gateway stops us through the control channel; its terminal signals are its own.
    block_terminating_signals()?;
    // A descriptor that is not a socket fails at the first receive.
    let stream = UnixStream::from(take_inherited_fd("--control-fd", fd)?);
    Ok(control::run(stream, engine)?)
}

fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    // Before the sandbox: the trace page and log come from the gateway's descriptors.
    if let Err(e) = ipc::trace::start_child(ipc::trace::Process::BlockDaemon, &args.trace) {
        eprintln!("block-daemon: error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match args.control_fd {
        Some(fd) => run_controlled(fd, args.engine, args.sandbox),
        None => run_standalone(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("block-daemon: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
