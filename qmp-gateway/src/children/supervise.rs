//! Supervision of the device daemons: a daemon that dies is reaped, announced, and
//! restarted after a backoff (at once, then doubling from 100 ms up to 1 s); one that
//! keeps dying right after it starts, or cannot be started at all, is given up on after
//! ten such deaths in a row (a start that fails is one), and its layer is told.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::daemon::{serves, stop_slot, Daemon, DaemonKind};
use crate::events::{DaemonExited, DaemonRestarted, Event, EventBus};

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

/// What the supervisor learns from a layer when one of its daemons died.
pub struct Death {
    pub pid: Option<u32>,
    /// How it ended ("killed by signal 9", "failed to start", ...).
    pub reason: String,
    /// Quick deaths in a row, this one included.
    pub failures: u32,
}

impl Death {
    /// Reaps the dead daemon in `slot` (started at `started`) and counts the death in
    /// `failures`: a quick one, or a start that failed (an empty slot), adds to the
    /// count, one after a while starts it anew. None if `slot` holds a daemon that
    /// serves: the news was of one it replaced.
    pub fn reap<K: DaemonKind>(
        slot: &mut Option<Daemon<K>>,
        started: Instant,
        failures: &mut u32,
    ) -> Option<Death> {
        if serves(slot) {
            return None;
        }
        let failed_start = slot.is_none();
        let pid = slot.as_ref().and_then(Daemon::pid);
        let reason = stop_slot(slot).unwrap_or_else(|| "failed to start".into());
        *failures = if failed_start || started.elapsed() < QUICK_DEATH {
            *failures + 1
        } else {
            1
        };
        Some(Death {
            pid,
            reason,
            failures: *failures,
        })
    }
}

/// A supervised layer's side of its supervision: where its daemons' deaths are
/// reported (by their device's id), whether it is stopping, and its event bus.
pub struct Supervision {
    events: Arc<EventBus>,
    deaths: Sender<String>,
    /// Taken by the supervisor when it starts.
    receiver: Mutex<Option<Receiver<String>>>,
    stopping: AtomicBool,
}

impl Supervision {
    pub fn new(events: Arc<EventBus>) -> Supervision {
        let (deaths, receiver) = mpsc::channel();
        Supervision {
            events,
            deaths,
            receiver: Mutex::new(Some(receiver)),
            stopping: AtomicBool::new(false),
        }
    }

    /// Where a daemon's death is reported.
    pub fn deaths(&self) -> Sender<String> {
        self.deaths.clone()
    }

    /// From now on a death is no news: the layer is shutting down.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// A layer (block, net) whose devices are each served by a daemon the gateway restarts.
pub trait Supervised: Send + Sync + Sized + 'static {
    /// The device kind, for log lines ("disk").
    const DEVICE: &'static str;
    /// The daemon that serves one.
    type Daemon: DaemonKind;
    /// The supervisor thread's name.
    const THREAD: &'static str;
    /// The events for a daemon's exit and its replacement.
    const EXITED: fn(DaemonExited) -> Event;
    const RESTARTED: fn(DaemonRestarted) -> Event;
    /// Why a restart failed.
    type Error: std::fmt::Display;

    fn supervision(&self) -> &Supervision;
    /// Reaps the dead daemon of device `id` and counts the death; None when the device
    /// is gone or its daemon is not to be restarted.
    fn reap(&self, id: &str) -> Option<Death>;
    /// Starts a new daemon for `id` and reconnects vmm-core; the new pid. None, and
    /// nothing done, if a restart asked for over QMP came first (while the supervisor
    /// waited out its backoff): its daemon serves, or its failure was answered.
    fn restart(&self, id: &str) -> Result<Option<u32>, Self::Error>;
    /// The supervisor gave up on `id`'s daemon (its EXITED event had no restart): the
    /// device has no daemon until one is started over QMP.
    fn gave_up(&self, _id: &str) {}

    /// Restarts the layer's daemons as their deaths arrive, with backoff, giving up on
    /// one that keeps dying right after starting (once; later calls do nothing).
    fn start_supervisor(self: &Arc<Self>) -> std::io::Result<()> {
        let Some(deaths) = self.supervision().receiver.lock().take() else {
            return Ok(());
        };
        let layer = self.clone();
        std::thread::Builder::new()
            .name(Self::THREAD.into())
            .spawn(move || {
                for id in deaths {
                    if layer.supervision().stopping() {
                        return;
                    }
                    on_death(&*layer, &id);
                }
            })?;
        Ok(())
    }
}

fn on_death<L: Supervised>(layer: &L, id: &str) {
    let Some(mut death) = layer.reap(id) else {
        return;
    };
    let supervision = layer.supervision();
    loop {
        let delay = (death.failures < MAX_FAILURES).then(|| backoff(death.failures));
        if delay.is_none() {
            log::error!(
                "{} {id}: the {} died {MAX_FAILURES} times in a row right after starting, or \
                 could not be started; not restarting it",
                L::DEVICE,
                L::Daemon::NAME
            );
        }
        supervision.events.emit((L::EXITED)(DaemonExited {
            device: id.to_string(),
            pid: death.pid,
            reason: death.reason,
            restart_in_ms: delay.map(|d| d.as_millis() as u64),
        }));
        let Some(delay) = delay else {
            layer.gave_up(id);
            return;
        };
        std::thread::sleep(delay);
        if supervision.stopping() {
            return;
        }
        let restarted = layer.restart(id);
        ipc::tracepoint!(
            ChildRestart,
            "daemon={} device={id} failures={} result={}",
            L::Daemon::NAME,
            death.failures,
            match &restarted {
                Ok(Some(pid)) => format!("pid {pid}"),
                Ok(None) => "restarted over QMP first".into(),
                Err(e) => format!("failed: {e}"),
            }
        );
        let error = match restarted {
            Ok(None) => {
                log::info!(
                    "{} {id}: a restart asked for over QMP came first; leaving its {} be",
                    L::DEVICE,
                    L::Daemon::NAME
                );
                return;
            }
            Ok(Some(pid)) => {
                supervision.events.emit((L::RESTARTED)(DaemonRestarted {
                    device: id.to_string(),
                    pid,
                }));
                return;
            }
            Err(e) => e,
        };
        log::warn!(
            "{} {id}: restarting its {}: {error}",
            L::DEVICE,
            L::Daemon::NAME
        );
        // A start that failed is a quick death like any other: counted, and retried
        // after the backoff, until the give-up.
        let Some(failed) = layer.reap(id) else {
            return;
        };
        death = Death {
            reason: format!("failed to start: {error}"),
            ..failed
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_once_then_doubles_up_to_a_second() {
        let delays: Vec<u128> = (1..=7).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(1));
    }
}
