//! Device daemons as the gateway runs them (a block daemon per disk, a net daemon per
//! NIC): the child process, its control link, and the private directory holding the
//! vhost-user sockets the gateway binds for them (the daemon gets the listening socket as
//! an fd; vmm-core gets a connected one).

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipc::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sandbox::{syscall_name, Policy, Process};
use crate::supervisor::{spawn_child, Link};

/// A daemon that dies this soon after starting counts towards giving up: a binary that
/// cannot start, or one that a request it restarts kills again at once.
pub const QUICK_DEATH: Duration = Duration::from_millis(300);
/// Quick deaths in a row after which the supervisor stops restarting a daemon.
pub const MAX_FAILURES: u32 = 10;

/// How long to wait before the n-th restart in a row: at once, then doubling from
/// 100 ms up to 1 s.
pub fn backoff(failures: u32) -> Duration {
    if failures <= 1 {
        Duration::ZERO
    } else {
        (Duration::from_millis(100) * 2u32.saturating_pow(failures - 2)).min(Duration::from_secs(1))
    }
}

/// A directory only the gateway's user may enter, removed with everything in it when
/// dropped.
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    pub fn create() -> std::io::Result<RuntimeDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let mut n = 0u32;
        loop {
            let path = base.join(format!("flotilla-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(RuntimeDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory now (the process may end without dropping it).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A running daemon, called with `R`, answering `T`, reporting events `E`.
pub struct Daemon<R, T, E>
where
    R: Message + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + 'static,
{
    pub link: Arc<Link<R, T, E>>,
    child: Mutex<Option<Process>>,
    /// Its binary's name and the device it serves, for violation reports.
    process: &'static str,
    device: String,
    policy: Policy,
    /// Set once the gateway stops it: its end is then no news.
    stopping: Arc<AtomicBool>,
    /// The call that asks it to quit.
    quit: fn() -> R,
}

/// How a child ended, as a person would say it.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

impl<R, T, E> Daemon<R, T, E>
where
    R: Message + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + 'static,
{
    /// Starts `binary` in gateway mode, sandboxed as `policy` says; `process` and
    /// `device` name it in logs and errors ("block-daemon", "d0"); `on_event` gets its
    /// events, `on_death` runs if its control channel closes without the gateway having
    /// stopped it.
    pub fn spawn(
        binary: &Path,
        process: &'static str,
        device: &str,
        policy: &Policy,
        quit: fn() -> R,
        on_event: impl Fn(E) + Send + 'static,
        on_death: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (child, conn) = spawn_child(binary, &[], policy.mode)?;
        let link = Link::new(format!("{process} of {device}"), conn);
        let stopping = Arc::new(AtomicBool::new(false));
        let expected = stopping.clone();
        link.start_reader(on_event, move |why| {
            if !expected.load(Ordering::SeqCst) {
                on_death(why);
            }
        })?;
        Ok(Daemon {
            link,
            child: Mutex::new(Some(child)),
            process,
            device: device.to_string(),
            policy: policy.clone(),
            stopping,
            quit,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Process::id)
    }

    /// Asks the daemon to quit (unless it is already gone) and waits for it, killing it
    /// (our child, by pid) after `grace`; says how it ended.
    pub fn stop(&self, grace: Duration) -> Option<String> {
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        self.stopping.store(true, Ordering::SeqCst);
        if !self.link.is_closed() {
            let _ = self.link.request((self.quit)(), &[]);
        }
        let deadline = Instant::now() + grace;
        let ended = loop {
            match child.try_wait() {
                Ok(Some(status)) => break describe(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    log::warn!("{} did not exit; killing it", self.link.name());
                    let _ = child.kill();
                    break child
                        .wait()
                        .map(describe)
                        .unwrap_or_else(|e| format!("lost: {e}"));
                }
            }
        };
        self.link.shutdown();
        Some(match child.violation() {
            Some(nr) => {
                self.policy.report(self.process, Some(&self.device), nr);
                format!("{ended}: sandbox violation, {}", syscall_name(nr))
            }
            None => ended,
        })
    }
}

impl<R, T, E> Drop for Daemon<R, T, E>
where
    R: Message + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + 'static,
{
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}
