//! The host threads behind iothread objects. Every disk has a block daemon of its own
//! (isolation per device), and each block daemon serves its rings on one resident I/O
//! thread that it starts before anything else (vhost-backend's `start_resident_thread`).
//! An iothread object is such a thread: object-add starts a block daemon for it,
//! sandboxed as any, with no disk yet; the first disk placed on the iothread
//! (device_add iothread=) is served by that very daemon, on that very thread, so the
//! thread-id query-iothreads gave before the disk came is the one that serves it. Once
//! its daemon serves a disk, the iothread's thread is the I/O thread of the daemon of a
//! disk placed on it (a restarted daemon is a new process: a new thread); once no disk
//! is on it any more, a new daemon is started to wait for the next one. object-del of an
//! iothread no disk uses stops its daemon. Each iothread holds a process, so there are
//! at most `MAX_IOTHREADS`. What the block layer does for them: iothread_host.rs.

use std::collections::BTreeMap;
use std::time::Duration;

use ipc::process::IO_THREAD_NAME;

use crate::children::daemon::threads_named;
use crate::children::spare::Spare;

/// Most iothread objects alive at once (each holds a block daemon): one for each disk
/// bus 0 has room for.
pub const MAX_IOTHREADS: usize = 32;

/// The iothreads by id: the daemon that waits for the iothread's first disk, or None
/// while disks are placed on it (their daemons are its threads).
#[derive(Default)]
pub struct IoThreads {
    pub(super) waiting: BTreeMap<String, Option<Spare>>,
}

/// Why an iothread's thread could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IoThreadError {
    #[error("too many iothreads ({MAX_IOTHREADS}): delete some with object-del first")]
    TooMany,
    #[error("starting the block daemon of iothread '{id}': {error}")]
    Start {
        id: String,
        error: crate::children::spawn::SpawnError,
    },
    #[error("the block daemon of iothread '{0}' ended as it started")]
    Ended(String),
    #[error("the block daemon of iothread '{0}' started no I/O thread")]
    NoThread(String),
}

/// How long a new daemon has to start its I/O thread (its exec and sandbox come first).
pub(super) const THREAD_START: Duration = Duration::from_secs(10);

/// Where an iothread's thread is: its process and thread ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostThread {
    pub pid: u32,
    pub tid: u32,
}

/// The resident I/O thread of block daemon `pid`, if it runs.
pub(super) fn io_thread_of(pid: u32) -> Option<HostThread> {
    let tid = *threads_named(pid, IO_THREAD_NAME).first()?;
    Some(HostThread { pid, tid })
}
