//! block-daemon's command line. Under the gateway (`--control-fd`) the image and the
//! vhost-user listener arrive as fds and the daemon opens no paths; on its own it opens
//! the image and listens on a socket path, and ends when its frontend disconnects.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use block_daemon::backend::{BlkBackend, Policy, QUEUE_SIZE};
use block_daemon::disk::{CacheMode, Disk};
use block_daemon::engine::{self, EngineKind};
use block_daemon::stats::Stats;
use block_daemon::{control, serve};
use clap::{Parser, ValueEnum};
use nix::sys::signal::{SigSet, Signal};
use vhost::vhost_user::Listener;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Cache {
    /// Host page cache; flushes reach the disk.
    Writeback,
    /// O_DIRECT; flushes reach the disk.
    None,
    /// Host page cache; flushes ignored.
    Unsafe,
    /// O_DIRECT; flushes ignored.
    DirectNoFlush,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Engine {
    /// io_uring: many requests in flight per queue.
    Uring,
    /// One request at a time per queue, in the queue thread.
    Sync,
}

#[derive(Parser, Debug)]
#[command(name = "block-daemon", about = "Flotilla's vhost-user-blk backend")]
struct Args {
    /// Run under the gateway: the control channel is this inherited socket, and the node
    /// to serve arrives on it (the other options except --engine are then not allowed).
    #[arg(long, conflicts_with_all = ["socket", "image"])]
    control_fd: Option<RawFd>,
    /// vhost-user socket to listen on.
    #[arg(long, required_unless_present = "control_fd")]
    socket: Option<PathBuf>,
    /// Raw image file or block device.
    #[arg(long, required_unless_present = "control_fd")]
    image: Option<PathBuf>,
    #[arg(long)]
    read_only: bool,
    #[arg(long, default_value_t = 1)]
    queues: usize,
    #[arg(long, value_enum, default_value_t = Cache::Writeback)]
    cache: Cache,
    #[arg(long, value_enum, default_value_t = Engine::Uring)]
    engine: Engine,
    /// What GET_ID reports (at most 20 bytes).
    #[arg(long, default_value = "flotilla-disk")]
    id: String,
    /// Guest discards are ignored (QEMU discard=ignore) instead of deallocating.
    #[arg(long)]
    discard_ignore: bool,
}

fn engine_kind(e: Engine) -> EngineKind {
    match e {
        Engine::Uring => EngineKind::Uring,
        Engine::Sync => EngineKind::Sync,
    }
}

fn block_terminating_signals() -> anyhow::Result<SigSet> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block()?;
    Ok(signals)
}

fn run_standalone(args: Args) -> anyhow::Result<()> {
    let (Some(socket), Some(image)) = (args.socket, args.image) else {
        bail!("--socket and --image are required");
    };
    anyhow::ensure!(
        (1..=64).contains(&args.queues),
        "--queues {}: 1 to 64",
        args.queues
    );
    let signals = block_terminating_signals()?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!args.read_only)
        .open(&image)
        .with_context(|| format!("image {}", image.display()))?;
    let cache = match args.cache {
        Cache::Writeback => CacheMode::Writeback,
        Cache::None => CacheMode::Direct,
        Cache::Unsafe => CacheMode::NoFlush,
        Cache::DirectNoFlush => CacheMode::DirectNoFlush,
    };
    let disk = Arc::new(Disk::new(file, args.read_only, cache, &args.id)?);
    let engines = engine::per_queue(
        engine_kind(args.engine),
        &disk,
        args.queues,
        QUEUE_SIZE as u32,
    )
    .context("I/O engine (try --engine sync)")?;
    let policy = Policy {
        discard_unmap: !args.discard_ignore,
        ..Policy::default()
    };
    let backend = BlkBackend::new(disk.clone(), engines, Arc::new(Stats::default()), policy)
        .context("throttle timer")?;
    let path = socket.clone();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            let _ = std::fs::remove_file(&path);
            std::process::exit(0);
        }
    });
    let mut listener = Listener::new(&socket, true).context("vhost-user socket")?;
    log::info!(
        "serving {} ({} sectors) on {}",
        image.display(),
        disk.capacity_sectors(),
        socket.display(),
    );
    let result = serve::serve_one(&backend, &mut listener);
    let _ = std::fs::remove_file(&socket);
    Ok(result?)
}

fn run_controlled(fd: RawFd, engine: Engine) -> anyhow::Result<()> {
    // The gateway stops us through the control channel; its terminal signals are its own.
    block_terminating_signals()?;
    // SAFETY: fcntl on an arbitrary number only queries it.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("--control-fd {fd}: not an open file descriptor");
    }
    // SAFETY: the gateway handed us this descriptor to own; checked open above, and a
    // non-socket fails at the first receive.
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(control::run(stream, engine_kind(engine))?)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let args = Args::parse();
    let result = match args.control_fd {
        Some(fd) => run_controlled(fd, args.engine),
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
