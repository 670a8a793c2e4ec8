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

use serde_json::json;

use crate::events::EventBus;
use crate::qmp::protocol::QmpError;
use crate::sandbox::{syscall_name, Policy, Process};
use crate::supervisor::{spawn_child, Link};

/// A daemon that dies this soon after starting counts towards giving up: a binary that
/// cannot start, or one that a request it restarts kills again at once.
const QUICK_DEATH: Duration = Duration::from_millis(300);
/// Quick deaths in a row after which the supervisor stops restarting a daemon.
const MAX_FAILURES: u32 = 10;

/// How long to wait before the n-th restart in a row: at once, then doubling from
/// 100 ms up to 1 s.
fn backoff(failures: u32) -> Duration {
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

/// What the supervisor learns from a layer when one of its daemons died.
pub struct Death {
    pub pid: Option<u32>,
    /// How it ended ("killed by signal 9", "failed to start", ...).
    pub reason: String,
    /// Quick deaths in a row, this one included.
    pub failures: u32,
}

/// Stops the daemon in `slot`, if one runs; says how it ended.
pub fn stop_slot<R, T, E>(slot: &mut Option<Daemon<R, T, E>>) -> Option<String>
where
    R: Message + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + 'static,
{
    slot.take().and_then(|d| d.stop(Duration::from_secs(2)))
}

impl Death {
    /// Reaps the dead daemon in `slot` (started at `started`) and counts the death in
    /// `failures`: a quick one adds to the count, one after a while starts it anew.
    pub fn reap<R, T, E>(
        slot: &mut Option<Daemon<R, T, E>>,
        started: Instant,
        failures: &mut u32,
    ) -> Death
    where
        R: Message + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + 'static,
    {
        let pid = slot.as_ref().and_then(Daemon::pid);
        let reason = stop_slot(slot).unwrap_or_else(|| "failed to start".into());
        *failures = if started.elapsed() < QUICK_DEATH {
            *failures + 1
        } else {
            1
        };
        Death {
            pid,
            reason,
            failures: *failures,
        }
    }
}

/// A layer (block, net) whose devices are each served by a daemon the gateway restarts.
pub trait Supervised: Send + Sync + 'static {
    /// The device kind and the daemon, for log lines ("disk", "block daemon").
    const DEVICE: &'static str;
    const DAEMON: &'static str;
    /// The events for a daemon's exit and its replacement.
    const EXITED: &'static str;
    const RESTARTED: &'static str;

    fn events(&self) -> &EventBus;
    fn stopping(&self) -> bool;
    /// Reaps the dead daemon of device `id` and counts the death; None when the device
    /// is gone or its daemon is not to be restarted.
    fn reap(&self, id: &str) -> Option<Death>;
    /// Starts a new daemon for `id` and reconnects vmm-core; the new pid.
    fn restart(&self, id: &str) -> Result<u32, QmpError>;
    /// Reports `id` dead again (a restart that failed is a death like any other).
    fn died(&self, id: &str);
}

/// Restarts `layer`'s daemons as their deaths arrive on `deaths`, with backoff, giving up
/// on one that keeps dying right after starting.
pub fn supervise<L: Supervised>(
    layer: Arc<L>,
    deaths: std::sync::mpsc::Receiver<String>,
    thread: &str,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            for id in deaths {
                if layer.stopping() {
                    return;
                }
                on_death(&*layer, &id);
            }
        })?;
    Ok(())
}

fn on_death<L: Supervised>(layer: &L, id: &str) {
    let Some(death) = layer.reap(id) else {
        return;
    };
    let delay = (death.failures < MAX_FAILURES).then(|| backoff(death.failures));
    let mut data = json!({"device": id, "reason": death.reason});
    if let Some(pid) = death.pid {
        data["pid"] = json!(pid);
    }
    match delay {
        Some(d) => data["restart-in-ms"] = json!(d.as_millis() as u64),
        None => log::error!(
            "{} {id}: the {} died {MAX_FAILURES} times in a row right after starting; not \
             restarting it",
            L::DEVICE,
            L::DAEMON
        ),
    }
    layer.events().emit(L::EXITED, Some(data));
    let Some(delay) = delay else {
        return;
    };
    std::thread::sleep(delay);
    if layer.stopping() {
        return;
    }
    match layer.restart(id) {
        Ok(pid) => layer
            .events()
            .emit(L::RESTARTED, Some(json!({"device": id, "pid": pid}))),
        Err(e) => {
            log::warn!(
                "{} {id}: restarting its {}: {}",
                L::DEVICE,
                L::DAEMON,
                e.desc
            );
            layer.died(id);
        }
    }
}
