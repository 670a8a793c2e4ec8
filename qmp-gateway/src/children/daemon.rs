//! A device daemon as the gateway runs it (a block daemon per disk, a net daemon per
//! NIC): the child process and its control link, stopped in order (asked to quit, then
//! killed after a grace period) with how it ended said the way a person would. Only the
//! end of a daemon that was serving goes to the supervisor: one that dies while it starts
//! makes its start fail, and whoever started it counts that (once).

use std::fmt::Debug;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use ipc::Connection;

use super::link::{Link, LinkError, Protocol};
use super::sandbox::{syscall_name, Policy};
use super::spare::Spare;
use super::spawn::{spawn_child, Process, SpawnError};

/// The host thread ids of process `pid`'s threads named `name` (their comm), lowest
/// first; none if the process is gone.
pub fn threads_named(pid: u32, name: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect();
    tids.sort_unstable();
    tids
}

/// A daemon's control protocol and what the gateway needs to run one.
pub trait DaemonKind: Protocol {
    /// Its binary's name, in logs, errors and violation reports ("block-daemon").
    const PROCESS: &'static str;
    /// What it is called in sentences ("block daemon").
    const NAME: &'static str;
    /// The call that asks it to quit.
    fn quit() -> Self::Call;
    /// Whether `answer` is the one its open call expects.
    fn opened(answer: &Self::Answer) -> bool;
}

/// Why a daemon could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("starting {}: {error}", binary.display())]
    Start { binary: PathBuf, error: SpawnError },
    #[error("{daemon} answered the {call} call with {reply}")]
    UnexpectedReply {
        daemon: String,
        call: &'static str,
        reply: String,
    },
    #[error("connecting to the {daemon} of {device}: {error}")]
    Connect {
        daemon: &'static str,
        device: String,
        error: std::io::Error,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("{0} panicked")]
    Panicked(&'static str),
}

/// How long a daemon that is asked to quit has before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Where a daemon is in its life, as its link's reader needs to know when the daemon
/// hangs up: starting (its start fails), serving (the supervisor hears of its death),
/// stopping (the gateway ended it: no news).
const STARTING: u8 = 0;
const SERVING: u8 = 1;
const STOPPING: u8 = 2;
/// It hung up before it was serving.
const DIED_STARTING: u8 = 3;

/// A running daemon.
pub struct Daemon<K: DaemonKind> {
    pub link: Arc<Link<K>>,
    child: Mutex<Option<Process>>,
    /// The device it serves, for violation reports.
    device: String,
    policy: Policy,
    /// STARTING, SERVING, STOPPING or DIED_STARTING.
    state: Arc<AtomicU8>,
}

/// How a child ended, as a person would say it.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

impl<K: DaemonKind> Daemon<K> {
    /// Starts `binary` in gateway mode, sandboxed as `policy` says, to serve `device`
    /// ("d0"), and opens it with `open` (and `fds`), its first call: returns the daemon,
    /// the open's answer and the fds it came with. `on_event` gets its events; if its
    /// control channel closes without the gateway having stopped it, the device's id
    /// goes to `deaths`.
    pub fn start(
        binary: &Path,
        device: &str,
        policy: &Policy,
        on_event: impl Fn(K::Event) + Send + 'static,
        deaths: Sender<String>,
        open: K::Call,
        fds: &[BorrowedFd],
    ) -> Result<(Self, K::Answer, Vec<OwnedFd>), DaemonError> {
        Self::spawn_ahead(binary, device, policy, on_event, deaths)?.open(open, fds)
    }

    /// The first half of `start`: the process started and sandboxed, its first call
    /// still to come (`open`), so that what the call needs can be got ready meanwhile.
    /// Dropped unopened, it is told to quit (and killed if it does not).
    pub fn spawn_ahead(
        binary: &Path,
        device: &str,
        policy: &Policy,
        on_event: impl Fn(K::Event) + Send + 'static,
        deaths: Sender<String>,
    ) -> Result<Self, DaemonError> {
        Self::spawn(binary, device, policy, on_event, deaths).map_err(|error| DaemonError::Start {
            binary: binary.to_path_buf(),
            error,
        })
    }

    /// The second half of `start`: the first call, `open` with `fds`.
    pub fn open(
        self,
        open: K::Call,
        fds: &[BorrowedFd],
    ) -> Result<(Self, K::Answer, Vec<OwnedFd>), DaemonError> {
        let daemon = self;
        let (answer, answer_fds) = daemon.link.request_with_fds(open, fds)?;
        if !K::opened(&answer) {
            return Err(daemon.unexpected("open", &answer));
        }
        // From now on its death is the supervisor's news, unless it came already.
        if let Err(DIED_STARTING) =
            daemon
                .state
                .compare_exchange(STARTING, SERVING, Ordering::SeqCst, Ordering::SeqCst)
        {
            return Err(LinkError::Exited(daemon.link.name().to_string()).into());
        }
        Ok((daemon, answer, answer_fds))
    }

    /// `spawn_ahead` with the process of `spare` (`Spares::take` gave it for this binary
    /// and sandbox mode) instead of a new one: `device`'s daemon from now on, its first
    /// call still to come.
    pub fn from_spare(
        spare: Spare,
        device: &str,
        policy: &Policy,
        on_event: impl Fn(K::Event) + Send + 'static,
        deaths: Sender<String>,
    ) -> Result<Self, DaemonError> {
        let (child, conn, binary) = spare.into_parts();
        Self::adopt(child, conn, device, policy, on_event, deaths)
            .map_err(|error| DaemonError::Start { binary, error })
    }

    fn spawn(
        binary: &Path,
        device: &str,
        policy: &Policy,
        on_event: impl Fn(K::Event) + Send + 'static,
        deaths: Sender<String>,
    ) -> Result<Self, SpawnError> {
        let (child, conn) = spawn_child(binary, &[], policy.mode)?;
        Self::adopt(child, conn, device, policy, on_event, deaths)
    }

    /// A started child as `device`'s daemon: its control channel read from now on.
    fn adopt(
        child: Process,
        conn: Connection,
        device: &str,
        policy: &Policy,
        on_event: impl Fn(K::Event) + Send + 'static,
        deaths: Sender<String>,
    ) -> Result<Self, SpawnError> {
        let link = Link::new(format!("{} of {device}", K::PROCESS), conn);
        let state = Arc::new(AtomicU8::new(STARTING));
        let seen = state.clone();
        let id = device.to_string();
        link.start_reader(on_event, move |why| {
            match seen.compare_exchange(STARTING, DIED_STARTING, Ordering::SeqCst, Ordering::SeqCst)
            {
                // Its start fails, and is counted by whoever started it.
                Ok(_) => {}
                Err(SERVING) => {
                    log::warn!("{why}");
                    let _ = deaths.send(id);
                }
                // The gateway stopped it.
                Err(_) => {}
            }
        })?;
        Ok(Daemon {
            link,
            child: Mutex::new(Some(child)),
            device: device.to_string(),
            policy: policy.clone(),
            state,
        })
    }

    /// The error for an answer `call` did not expect.
    pub fn unexpected(&self, call: &'static str, answer: &impl Debug) -> DaemonError {
        DaemonError::UnexpectedReply {
            daemon: self.link.name().to_string(),
            call,
            reply: format!("{answer:?}"),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().as_ref().map(Process::id)
    }

    /// Asks the daemon to quit (unless it is already gone) and waits for it, killing it
    /// (our child, by pid) after `grace`; says how it ended.
    pub fn stop(&self, grace: Duration) -> Option<String> {
        let mut child = self.child.lock().take()?;
        self.state.store(STOPPING, Ordering::SeqCst);
        if !self.link.is_closed() {
            let _ = self.link.request(K::quit(), &[]);
        }
        let ended = match child.wait_until(Instant::now() + grace) {
            Ok(Some(status)) => describe(status),
            _ => {
                log::warn!("{} did not exit; killing it", self.link.name());
                let _ = child.kill();
                child
                    .wait()
                    .map(describe)
                    .unwrap_or_else(|e| format!("lost: {e}"))
            }
        };
        self.link.shutdown();
        Some(match child.violation() {
            Some(nr) => {
                self.policy.report(K::PROCESS, Some(&self.device), nr);
                format!("{ended}: sandbox violation, {}", syscall_name(nr))
            }
            None => ended,
        })
    }
}

impl<K: DaemonKind> Daemon<K> {
    /// Kills the daemon at once (our child, by pid), without asking: for one that may be
    /// in the middle of a long call (a migration agent being cancelled).
    pub fn kill(&self) -> Option<String> {
        let mut child = self.child.lock().take()?;
        self.state.store(STOPPING, Ordering::SeqCst);
        let _ = child.kill();
        let ended = child
            .wait()
            .map(describe)
            .unwrap_or_else(|e| format!("lost: {e}"));
        self.link.shutdown();
        Some(ended)
    }
}

impl<K: DaemonKind> Drop for Daemon<K> {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// A connection to the vhost-user socket the gateway bound for `device`'s daemon, for
/// vmm-core.
pub fn connect<K: DaemonKind>(socket: &Path, device: &str) -> Result<UnixStream, DaemonError> {
    UnixStream::connect(socket).map_err(|error| DaemonError::Connect {
        daemon: K::NAME,
        device: device.to_string(),
        error,
    })
}

/// True if `slot` holds a daemon whose link is still open: one that serves.
pub fn serves<K: DaemonKind>(slot: &Option<Daemon<K>>) -> bool {
    slot.as_ref().is_some_and(|d| !d.link.is_closed())
}

/// Stops the daemon in `slot`, if one runs; says how it ended.
pub fn stop_slot<K: DaemonKind>(slot: &mut Option<Daemon<K>>) -> Option<String> {
    slot.take().and_then(|d| d.stop(STOP_GRACE))
}
