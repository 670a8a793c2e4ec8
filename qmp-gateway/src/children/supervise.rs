//! Supervision of the device daemons: a daemon that dies is reaped, announced, and
//! restarted after a backoff (at once, then doubling from 100 ms up to 1 s); one that
//! keeps dying right after it starts is given up on.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::daemon::{stop_slot, Daemon, DaemonKind};
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
    /// `failures`: a quick one adds to the count, one after a while starts it anew.
    pub fn reap<K: DaemonKind>(
        slot: &mut Option<Daemon<K>>,
        started: Instant,
        failures: &mut u32,
    ) -> Death {
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
    const EXITED: fn(DaemonExited) -> Event;
    const RESTARTED: fn(DaemonRestarted) -> Event;
    /// Why a restart failed.
    type Error: std::fmt::Display;

    fn events(&self) -> &EventBus;
    fn stopping(&self) -> bool;
    /// Reaps the dead daemon of device `id` and counts the death; None when the device
    /// is gone or its daemon is not to be restarted.
    fn reap(&self, id: &str) -> Option<Death>;
    /// Starts a new daemon for `id` and reconnects vmm-core; the new pid.
    fn restart(&self, id: &str) -> Result<u32, Self::Error>;
    /// Reports `id` dead again (a restart that failed is a death like any other).
    fn died(&self, id: &str);
}

/// Restarts `layer`'s daemons as their deaths arrive on `deaths`, with backoff, giving up
/// on one that keeps dying right after starting.
pub fn supervise<L: Supervised>(
    layer: Arc<L>,
    deaths: Receiver<String>,
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
    if delay.is_none() {
        log::error!(
            "{} {id}: the {} died {MAX_FAILURES} times in a row right after starting; not \
             restarting it",
            L::DEVICE,
            L::DAEMON
        );
    }
    layer.events().emit((L::EXITED)(DaemonExited {
        device: id.to_string(),
        pid: death.pid,
        reason: death.reason,
        restart_in_ms: delay.map(|d| d.as_millis() as u64),
    }));
    let Some(delay) = delay else {
        return;
    };
    std::thread::sleep(delay);
    if layer.stopping() {
        return;
    }
    match layer.restart(id) {
        Ok(pid) => layer.events().emit((L::RESTARTED)(DaemonRestarted {
            device: id.to_string(),
            pid,
        })),
        Err(e) => {
            log::warn!("{} {id}: restarting its {}: {e}", L::DEVICE, L::DAEMON);
            layer.died(id);
        }
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
