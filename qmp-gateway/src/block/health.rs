//! A disk's health as QMP shows it, and what a failure does on the gateway's side. The
//! daemon reports every request the image failed (with what its werror=/rerror= policy
//! did about it); here that becomes QEMU's BLOCK_IO_ERROR event, the disk's I/O status
//! (query-block's io-status: ok, failed, nospace) and, when the action was to stop, a
//! request to stop the VM (the gateway's run state becomes io-error). `cont` clears the
//! status and has the daemon retry what it holds. A daemon the supervisor gave up on
//! leaves the disk failed too, until a new one serves it.
//!
//! The daemons' event readers call in here: nothing here waits for a daemon or takes
//! the block layer's lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use ipc::{errno_text, ErrorAction, IoOperation, OnError};
use parking_lot::Mutex;

use crate::events::{BlockIoError, Event, EventBus};

/// QEMU's BlockDeviceIoStatus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    Ok,
    Failed,
    Nospace,
}

impl IoStatus {
    pub fn qmp_name(&self) -> &'static str {
        match self {
            IoStatus::Ok => "ok",
            IoStatus::Failed => "failed",
            IoStatus::Nospace => "nospace",
        }
    }
}

struct State {
    io_status: IoStatus,
    /// The supervisor gave up on the daemon (or a requested restart failed): no
    /// daemon will serve the disk until one is started over QMP.
    daemon_lost: bool,
    /// The daemon reported a request it holds (action stop) since the last `cont`.
    holds_requests: bool,
    /// The disk's root node (the BlockBackend's root, which QEMU's event names): an
    /// external snapshot puts a new one over it.
    node: String,
}

/// One disk's health.
pub struct Health {
    device: String,
    on_read_error: OnError,
    on_write_error: OnError,
    /// Its drive was deleted (HMP drive_del): an anonymous BlockBackend with no node,
    /// whose errors are reported (QEMU sets both actions to report).
    no_medium: AtomicBool,
    state: Mutex<State>,
    events: Arc<EventBus>,
    /// Where a request to stop the VM goes (the gateway's run-state keeper).
    stop_vm: Sender<()>,
}

impl Health {
    pub fn new(
        device: &str,
        node: &str,
        on_read_error: OnError,
        on_write_error: OnError,
        events: Arc<EventBus>,
        stop_vm: Sender<()>,
    ) -> Arc<Health> {
        Arc::new(Health {
            device: device.to_string(),
            on_read_error,
            on_write_error,
            no_medium: AtomicBool::new(false),
            state: Mutex::new(State {
                io_status: IoStatus::Ok,
                daemon_lost: false,
                holds_requests: false,
                node: node.to_string(),
            }),
            events,
            stop_vm,
        })
    }

    /// Whether the disk keeps an I/O status (QEMU's blk_iostatus_is_enabled: an error
    /// may stop the VM).
    fn tracks_status(&self) -> bool {
        !self.no_medium.load(Ordering::Relaxed)
            && (self.on_write_error.may_stop() || self.on_read_error == OnError::Stop)
    }

    /// The disk's drive was deleted: it has no name, no node and no I/O status.
    pub fn medium_removed(&self) {
        self.no_medium.store(true, Ordering::Relaxed);
        self.state.lock().io_status = IoStatus::Ok;
    }

    /// query-block's io-status, if the disk shows one: as QEMU does, or "failed" while
    /// no daemon serves it.
    pub fn io_status(&self) -> Option<&'static str> {
        let state = self.state.lock();
        if state.daemon_lost {
            return Some(IoStatus::Failed.qmp_name());
        }
        self.tracks_status().then_some(state.io_status.qmp_name())
    }

    /// The daemon reports a request the image failed with `errno`, and what it did.
    pub fn io_error(&self, operation: IoOperation, action: ErrorAction, errno: i32) {
        let nospace = errno == libc::ENOSPC;
        if action == ErrorAction::Stop {
            // The status first, so that a client seeing the event sees it too; the
            // first error's kind stays until cont (QEMU's blk_iostatus_set_err).
            let mut state = self.state.lock();
            state.holds_requests = true;
            if state.io_status == IoStatus::Ok && self.tracks_status() {
                state.io_status = if nospace {
                    IoStatus::Nospace
                } else {
                    IoStatus::Failed
                };
            }
        }
        self.emit(
            operation,
            action,
            nospace,
            errno_text(&std::io::Error::from_raw_os_error(errno)),
        );
        // BLOCK_IO_ERROR goes before STOP, as in QEMU.
        if action == ErrorAction::Stop {
            let _ = self.stop_vm.send(());
        }
    }

    /// The disk's root node is `node` from now on (an external snapshot, or its undo).
    pub fn set_node(&self, node: &str) {
        self.state.lock().node = node.to_string();
    }

    fn emit(&self, operation: IoOperation, action: ErrorAction, nospace: bool, reason: String) {
        let node = self.state.lock().node.clone();
        let no_medium = self.no_medium.load(Ordering::Relaxed);
        self.events.emit(Event::BlockIoError(BlockIoError {
            device: if no_medium { "" } else { &self.device }.to_string(),
            node_name: (!no_medium).then_some(node),
            operation: operation.qmp_name(),
            action: action.qmp_name(),
            nospace: self.tracks_status().then_some(nospace),
            reason,
        }));
    }

    /// No daemon will serve the disk (the supervisor gave up, or a restart asked for
    /// failed): the disk is failed, and the clients hear of it. The guest's requests
    /// wait in the rings (a new daemon starts them), so the guest has been told
    /// nothing: the action is "report", to the clients alone.
    pub fn daemon_lost(&self, why: &str) {
        self.state.lock().daemon_lost = true;
        self.emit(
            IoOperation::Write,
            ErrorAction::Report,
            false,
            format!("the block daemon is not running: {why}"),
        );
    }

    /// A daemon serves the disk again.
    pub fn daemon_back(&self) {
        self.state.lock().daemon_lost = false;
    }

    /// QMP cont: the status is ok again (QEMU resets it before the VM runs). Whether the
    /// daemon holds requests to start again.
    pub fn cont(&self) -> bool {
        let mut state = self.state.lock();
        state.io_status = IoStatus::Ok;
        std::mem::take(&mut state.holds_requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn health(on_write_error: OnError) -> (Arc<Health>, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let h = Health::new(
            "d0",
            "disk0",
            OnError::Report,
            on_write_error,
            Arc::new(EventBus::default()),
            tx,
        );
        (h, rx)
    }

    #[test]
    fn a_stop_sets_the_status_once_and_stops_the_vm() {
        let (h, stops) = health(OnError::Enospc);
        assert_eq!(h.io_status(), Some("ok"));
        h.io_error(IoOperation::Write, ErrorAction::Stop, libc::ENOSPC);
        h.io_error(IoOperation::Write, ErrorAction::Stop, libc::EIO);
        assert_eq!(
            h.io_status(),
            Some("nospace"),
            "the first error's kind stays"
        );
        assert_eq!(stops.try_iter().count(), 2);
        assert!(h.cont(), "it holds requests");
        assert_eq!(h.io_status(), Some("ok"));
        assert!(!h.cont());
        // A report neither sets the status nor stops anything.
        h.io_error(IoOperation::Write, ErrorAction::Report, libc::EIO);
        assert_eq!(h.io_status(), Some("ok"));
        assert_eq!(stops.try_iter().count(), 0);
    }

    #[test]
    fn a_disk_without_medium_has_no_status() {
        let (h, _stops) = health(OnError::Stop);
        assert_eq!(h.io_status(), Some("ok"));
        h.medium_removed();
        assert_eq!(h.io_status(), None);
    }

    #[test]
    fn no_status_where_nothing_stops_but_a_lost_daemon_shows() {
        let (h, _stops) = health(OnError::Report);
        assert_eq!(h.io_status(), None);
        h.daemon_lost("given up");
        assert_eq!(h.io_status(), Some("failed"));
        h.daemon_back();
        assert_eq!(h.io_status(), None);
    }
}
