//! A device daemon as the gateway runs it (a block daemon per disk, a net daemon per
//! NIC): the child process and its control link, stopped in order (asked to quit, then
//! killed after a grace period) with how it ended said the way a person would.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::link::{Link, Protocol};
use super::sandbox::{syscall_name, Policy};
use super::spawn::{spawn_child, Process, SpawnError};

/// A daemon's control protocol and what the gateway needs to run one.
pub trait DaemonKind: Protocol {
    /// Its binary's name, in logs, errors and violation reports ("block-daemon").
    const PROCESS: &'static str;
    /// The call that asks it to quit.
    fn quit() -> Self::Call;
}

/// How long a daemon that is asked to quit has before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running daemon.
pub struct Daemon<K: DaemonKind> {
    pub link: Arc<Link<K>>,
    child: Mutex<Option<Process>>,
    /// The device it serves, for violation reports.
    device: String,
    policy: Policy,
    /// Set once the gateway stops it: its end is then no news.
    stopping: Arc<AtomicBool>,
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
    /// ("d0"); `on_event` gets its events, `on_death` runs if its control channel closes
    /// without the gateway having stopped it.
    pub fn spawn(
        binary: &Path,
        device: &str,
        policy: &Policy,
        on_event: impl Fn(K::Event) + Send + 'static,
        on_death: impl FnOnce(String) + Send + 'static,
    ) -> Result<Self, SpawnError> {
        let (child, conn) = spawn_child(binary, &[], policy.mode)?;
        let link = Link::new(format!("{} of {device}", K::PROCESS), conn);
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
            device: device.to_string(),
            policy: policy.clone(),
            stopping,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().as_ref().map(Process::id)
    }

    /// Asks the daemon to quit (unless it is already gone) and waits for it, killing it
    /// (our child, by pid) after `grace`; says how it ended.
    pub fn stop(&self, grace: Duration) -> Option<String> {
        let mut child = self.child.lock().take()?;
        self.stopping.store(true, Ordering::SeqCst);
        if !self.link.is_closed() {
            let _ = self.link.request(K::quit(), &[]);
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
                self.policy.report(K::PROCESS, Some(&self.device), nr);
                format!("{ended}: sandbox violation, {}", syscall_name(nr))
            }
            None => ended,
        })
    }
}

impl<K: DaemonKind> Drop for Daemon<K> {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// Stops the daemon in `slot`, if one runs; says how it ended.
pub fn stop_slot<K: DaemonKind>(slot: &mut Option<Daemon<K>>) -> Option<String> {
    slot.take().and_then(|d| d.stop(STOP_GRACE))
}
