//! dump-guest-memory's side in the gateway: the calls that wait for their dump's end (a
//! dump without `detach` answers once it is written, as QEMU's), and query-dump's shape.
//! vmm-core writes the dump; the gateway opens its file (handlers/dump.rs).

use std::time::Duration;

use ipc::DumpProgress;
use parking_lot::{Condvar, Mutex, MutexGuard};
use serde_json::{json, Value};

/// Counts the dumps that ended (with the last one's error), for callers that wait for
/// the next end.
#[derive(Default)]
pub struct DumpWaiter {
    ended: Mutex<(u64, Option<String>)>,
    changed: Condvar,
}

impl DumpWaiter {
    /// How many dumps ended so far: a caller starting one waits for a larger count.
    pub fn ended(&self) -> u64 {
        self.ended.lock().0
    }

    /// vmm-core said a dump ended (its DUMP_COMPLETED went out), failed with `error`.
    pub fn finished(&self, error: Option<String>) {
        let mut ended = self.ended.lock();
        *ended = (ended.0 + 1, error);
        self.changed.notify_all();
    }

    /// Waits until more than `seen` dumps ended, or `alive` says vmm-core is gone
    /// (asked after each quiet second): the dump's result, its error if it failed.
    pub fn wait_past(&self, seen: u64, alive: impl Fn() -> bool) -> Result<(), String> {
        let mut ended = self.ended.lock();
        while ended.0 <= seen {
            let quiet = self
                .changed
                .wait_for(&mut ended, Duration::from_secs(1))
                .timed_out();
            // Asked without the lock: the end's news takes it on the thread that also
            // brings vmm-core's answer.
            if quiet && ended.0 <= seen && !MutexGuard::unlocked(&mut ended, &alive) {
                return Err("dump: vmm-core went away while it wrote the dump".into());
            }
        }
        match &ended.1 {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// QMP's DumpQueryResult.
pub fn query_result(p: &DumpProgress) -> Value {
    json!({
        "status": p.status.qmp_name(),
        "completed": p.completed,
        "total": p.total,
    })
}
