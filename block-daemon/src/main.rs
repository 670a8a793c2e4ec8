//! block-daemon's command line: serve one image over a vhost-user-blk socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use block_daemon::backend::{BlkBackend, QUEUE_SIZE};
use block_daemon::disk::{CacheMode, Disk};
use block_daemon::engine::sync::SyncEngine;
use block_daemon::engine::uring::UringEngine;
use block_daemon::engine::Engine;
use block_daemon::stats::Stats;
use clap::{Parser, ValueEnum};
use nix::sys::signal::{SigSet, Signal};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Cache {
    /// Host page cache; flushes reach the disk.
    Writeback,
    /// O_DIRECT; flushes reach the disk.
    None,
    /// Host page cache; flushes ignored.
    Unsafe,
    /// O_DIRECT; flushes ignored.
    Directsync,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EngineKind {
    /// io_uring: many requests in flight per queue.
    Uring,
    /// One request at a time per queue, in the queue thread.
    Sync,
}

#[derive(Parser, Debug)]
#[command(name = "block-daemon", about = "Flotilla's vhost-user-blk backend")]
struct Args {
    /// vhost-user socket to listen on.
    #[arg(long)]
    socket: PathBuf,
    /// Raw image file or block device.
    #[arg(long)]
    image: PathBuf,
    #[arg(long)]
    read_only: bool,
    #[arg(long, default_value_t = 1)]
    queues: usize,
    #[arg(long, value_enum, default_value_t = Cache::Writeback)]
    cache: Cache,
    #[arg(long, value_enum, default_value_t = EngineKind::Uring)]
    engine: EngineKind,
    /// What GET_ID reports (at most 20 bytes).
    #[arg(long, default_value = "flotilla-disk")]
    id: String,
}

fn engines(
    kind: EngineKind,
    disk: &Arc<Disk>,
    queues: usize,
) -> anyhow::Result<Vec<Box<dyn Engine>>> {
    (0..queues)
        .map(|_| -> anyhow::Result<Box<dyn Engine>> {
            Ok(match kind {
                EngineKind::Uring => Box::new(
                    UringEngine::new(disk.clone(), QUEUE_SIZE as u32)
                        .context("io_uring (try --engine sync)")?,
                ),
                EngineKind::Sync => Box::new(SyncEngine::new(disk.clone())),
            })
        })
        .collect()
}

fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=64).contains(&args.queues),
        "--queues {}: 1 to 64",
        args.queues
    );
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block()?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!args.read_only)
        .open(&args.image)
        .with_context(|| format!("image {}", args.image.display()))?;
    let cache = match args.cache {
        Cache::Writeback => CacheMode::Writeback,
        Cache::None => CacheMode::Direct,
        Cache::Unsafe => CacheMode::NoFlush,
        Cache::Directsync => CacheMode::DirectNoFlush,
    };
    let disk = Arc::new(Disk::new(file, args.read_only, cache, &args.id)?);
    let backend = BlkBackend::new(
        disk.clone(),
        engines(args.engine, &disk, args.queues)?,
        Arc::new(Stats::default()),
    );
    let mut daemon = VhostUserDaemon::new(
        "block-daemon".into(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| anyhow::anyhow!("vhost-user daemon: {e}"))?;
    let handlers = daemon.get_epoll_handlers();
    for (q, fd) in backend.notifiers() {
        handlers[0]
            .register_listener(fd, EventSet::IN, backend.completion_event(q))
            .context("watching I/O completions")?;
    }
    let socket = args.socket.clone();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            let _ = std::fs::remove_file(&socket);
            std::process::exit(0);
        }
    });
    let mut listener = Listener::new(&args.socket, true).context("vhost-user socket")?;
    log::info!(
        "serving {} ({} sectors) on {}",
        args.image.display(),
        disk.capacity_sectors(),
        args.socket.display(),
    );
    daemon
        .start(&mut listener)
        .map_err(|e| anyhow::anyhow!("accepting the frontend: {e}"))?;
    let result = daemon.wait();
    let _ = std::fs::remove_file(&args.socket);
    match result {
        // The frontend going away (its VM ended) is the normal end of service.
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("vhost-user connection: {e}")),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("block-daemon: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
