//! The gateway's events: the one table of their names and argument types (query-events
//! and query-qmp-schema list it), the typed events the layers emit, and the bus that fans
//! every event out to each client that completed capabilities negotiation, through its
//! own bounded outbox, so a stuck client only loses itself.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

use crate::qmp::outbox::Outbox;
use crate::qmp::protocol;
use crate::qmp::qapi::{opt, req, Member, Ty, TypeDef, TypeKind};

/// An event as the schema describes it: its name, and the type of its data (none: the
/// event carries no data).
#[derive(Debug, Clone, Copy)]
pub struct EventDef {
    pub name: &'static str,
    pub data: Option<&'static TypeDef>,
}

impl EventDef {
    /// The schema's name of its data's type.
    pub fn arg_type(&self) -> &'static str {
        self.data.map_or("q_empty", |t| t.name)
    }
}

const fn def(name: &'static str, data: Option<&'static TypeDef>) -> EventDef {
    EventDef { name, data }
}

const fn data(name: &'static str, members: &'static [Member]) -> TypeDef {
    TypeDef {
        name,
        kind: TypeKind::Object(members),
    }
}

const SHUTDOWN_ARG: TypeDef = data(
    "q_obj_SHUTDOWN-arg",
    &[
        req("guest", Ty::Bool),
        req("reason", Ty::Named("ShutdownCause")),
    ],
);
const WRITE_THRESHOLD_ARG: TypeDef = data(
    "q_obj_BLOCK_WRITE_THRESHOLD-arg",
    &[
        req("node-name", Ty::Str),
        req("amount-exceeded", Ty::Int),
        req("write-threshold", Ty::Int),
    ],
);
const BLOCK_IO_ERROR_ARG: TypeDef = data(
    "q_obj_BLOCK_IO_ERROR-arg",
    &[
        req("device", Ty::Str),
        opt("node-name", Ty::Str),
        req("operation", Ty::Named("IoOperationType")),
        req("action", Ty::Named("BlockErrorAction")),
        opt("nospace", Ty::Bool),
        req("reason", Ty::Str),
    ],
);
const DAEMON_EXITED_MEMBERS: &[Member] = &[
    req("device", Ty::Str),
    opt("pid", Ty::Int),
    req("reason", Ty::Str),
    opt("restart-in-ms", Ty::Int),
];
const DAEMON_RESTARTED_MEMBERS: &[Member] = &[req("device", Ty::Str), req("pid", Ty::Int)];
const BLOCK_DAEMON_EXITED_ARG: TypeDef =
    data("q_obj_BLOCK_DAEMON_EXITED-arg", DAEMON_EXITED_MEMBERS);
const BLOCK_DAEMON_RESTARTED_ARG: TypeDef =
    data("q_obj_BLOCK_DAEMON_RESTARTED-arg", DAEMON_RESTARTED_MEMBERS);
const BLOCK_INFLIGHT_RESUMED_ARG: TypeDef = data(
    "q_obj_BLOCK_INFLIGHT_RESUMED-arg",
    &[
        req("device", Ty::Str),
        req("queue", Ty::Int),
        req("requests", Ty::Int),
    ],
);
const JOB_STATUS_CHANGE_ARG: TypeDef = data(
    "q_obj_JOB_STATUS_CHANGE-arg",
    &[req("id", Ty::Str), req("status", Ty::Named("JobStatus"))],
);
const BLOCK_JOB_ENDED_MEMBERS: &[Member] = &[
    req("type", Ty::Named("JobType")),
    req("device", Ty::Str),
    req("len", Ty::Int),
    req("offset", Ty::Int),
    req("speed", Ty::Int),
];
const BLOCK_JOB_COMPLETED_ARG: TypeDef = data(
    "q_obj_BLOCK_JOB_COMPLETED-arg",
    &[
        req("type", Ty::Named("JobType")),
        req("device", Ty::Str),
        req("len", Ty::Int),
        req("offset", Ty::Int),
        req("speed", Ty::Int),
        opt("error", Ty::Str),
    ],
);
const BLOCK_JOB_CANCELLED_ARG: TypeDef =
    data("q_obj_BLOCK_JOB_CANCELLED-arg", BLOCK_JOB_ENDED_MEMBERS);
const BLOCK_JOB_READY_ARG: TypeDef = data("q_obj_BLOCK_JOB_READY-arg", BLOCK_JOB_ENDED_MEMBERS);
const BLOCK_JOB_PENDING_ARG: TypeDef = data(
    "q_obj_BLOCK_JOB_PENDING-arg",
    &[req("type", Ty::Named("JobType")), req("id", Ty::Str)],
);
const BLOCK_JOB_ERROR_ARG: TypeDef = data(
    "q_obj_BLOCK_JOB_ERROR-arg",
    &[
        req("device", Ty::Str),
        req("operation", Ty::Named("IoOperationType")),
        req("action", Ty::Named("BlockErrorAction")),
    ],
);
const NIC_RX_FILTER_CHANGED_ARG: TypeDef = data(
    "q_obj_NIC_RX_FILTER_CHANGED-arg",
    &[opt("name", Ty::Str), req("path", Ty::Str)],
);
const NET_DAEMON_EXITED_ARG: TypeDef = data("q_obj_NET_DAEMON_EXITED-arg", DAEMON_EXITED_MEMBERS);
const NET_DAEMON_RESTARTED_ARG: TypeDef =
    data("q_obj_NET_DAEMON_RESTARTED-arg", DAEMON_RESTARTED_MEMBERS);
const SANDBOX_VIOLATION_ARG: TypeDef = data(
    "q_obj_SANDBOX_VIOLATION-arg",
    &[
        req("process", Ty::Str),
        req("syscall", Ty::Str),
        req("number", Ty::Int),
        opt("device", Ty::Str),
    ],
);

const MIGRATION_ARG: TypeDef = data(
    "q_obj_MIGRATION-arg",
    &[req("status", Ty::Named("MigrationStatus"))],
);
const MIGRATION_PASS_ARG: TypeDef = data("q_obj_MIGRATION_PASS-arg", &[req("pass", Ty::Int)]);
const DEVICE_DELETED_ARG: TypeDef = data(
    "q_obj_DEVICE_DELETED-arg",
    &[opt("device", Ty::Str), req("path", Ty::Str)],
);

const STOP: EventDef = def("STOP", None);
const RESUME: EventDef = def("RESUME", None);
const RESET: EventDef = def("RESET", Some(&SHUTDOWN_ARG));
const SHUTDOWN: EventDef = def("SHUTDOWN", Some(&SHUTDOWN_ARG));
const POWERDOWN: EventDef = def("POWERDOWN", None);
const BALLOON_CHANGE_ARG: TypeDef = data("q_obj_BALLOON_CHANGE-arg", &[req("actual", Ty::Int)]);
const BALLOON_CHANGE: EventDef = def("BALLOON_CHANGE", Some(&BALLOON_CHANGE_ARG));
const BLOCK_WRITE_THRESHOLD: EventDef = def("BLOCK_WRITE_THRESHOLD", Some(&WRITE_THRESHOLD_ARG));
const BLOCK_IO_ERROR: EventDef = def("BLOCK_IO_ERROR", Some(&BLOCK_IO_ERROR_ARG));
// Events of our own are named by QMP's rule for downstream extensions: a reverse-domain
// prefix.
const BLOCK_DAEMON_EXITED: EventDef = def(
    "__io.flotilla_BLOCK_DAEMON_EXITED",
    Some(&BLOCK_DAEMON_EXITED_ARG),
);
const BLOCK_DAEMON_RESTARTED: EventDef = def(
    "__io.flotilla_BLOCK_DAEMON_RESTARTED",
    Some(&BLOCK_DAEMON_RESTARTED_ARG),
);
const BLOCK_INFLIGHT_RESUMED: EventDef = def(
    "__io.flotilla_BLOCK_INFLIGHT_RESUMED",
    Some(&BLOCK_INFLIGHT_RESUMED_ARG),
);
const JOB_STATUS_CHANGE: EventDef = def("JOB_STATUS_CHANGE", Some(&JOB_STATUS_CHANGE_ARG));
const BLOCK_JOB_COMPLETED: EventDef = def("BLOCK_JOB_COMPLETED", Some(&BLOCK_JOB_COMPLETED_ARG));
const BLOCK_JOB_CANCELLED: EventDef = def("BLOCK_JOB_CANCELLED", Some(&BLOCK_JOB_CANCELLED_ARG));
const BLOCK_JOB_READY: EventDef = def("BLOCK_JOB_READY", Some(&BLOCK_JOB_READY_ARG));
const BLOCK_JOB_ERROR: EventDef = def("BLOCK_JOB_ERROR", Some(&BLOCK_JOB_ERROR_ARG));
const BLOCK_JOB_PENDING: EventDef = def("BLOCK_JOB_PENDING", Some(&BLOCK_JOB_PENDING_ARG));
const NIC_RX_FILTER_CHANGED: EventDef =
    def("NIC_RX_FILTER_CHANGED", Some(&NIC_RX_FILTER_CHANGED_ARG));
const NET_DAEMON_EXITED: EventDef = def(
    "__io.flotilla_NET_DAEMON_EXITED",
    Some(&NET_DAEMON_EXITED_ARG),
);
const NET_DAEMON_RESTARTED: EventDef = def(
    "__io.flotilla_NET_DAEMON_RESTARTED",
    Some(&NET_DAEMON_RESTARTED_ARG),
);
const SANDBOX_VIOLATION: EventDef = def(
    "__io.flotilla_SANDBOX_VIOLATION",
    Some(&SANDBOX_VIOLATION_ARG),
);
const MIGRATION: EventDef = def("MIGRATION", Some(&MIGRATION_ARG));
const MIGRATION_PASS: EventDef = def("MIGRATION_PASS", Some(&MIGRATION_PASS_ARG));
const DEVICE_DELETED: EventDef = def("DEVICE_DELETED", Some(&DEVICE_DELETED_ARG));
const ACPI_DEVICE_OST_ARG: TypeDef = data(
    "q_obj_ACPI_DEVICE_OST-arg",
    &[req("info", Ty::Named("ACPIOSTInfo"))],
);
const ACPI_DEVICE_OST: EventDef = def("ACPI_DEVICE_OST", Some(&ACPI_DEVICE_OST_ARG));
const DUMP_COMPLETED_ARG: TypeDef = data(
    "q_obj_DUMP_COMPLETED-arg",
    &[
        req("result", Ty::Named("DumpQueryResult")),
        opt("error", Ty::Str),
    ],
);
const DUMP_COMPLETED: EventDef = def("DUMP_COMPLETED", Some(&DUMP_COMPLETED_ARG));

/// Every event this gateway emits, in the order query-events lists them.
pub const EVENTS: &[EventDef] = &[
    STOP,
    RESUME,
    RESET,
    SHUTDOWN,
    POWERDOWN,
    BALLOON_CHANGE,
    BLOCK_WRITE_THRESHOLD,
    BLOCK_IO_ERROR,
    BLOCK_DAEMON_EXITED,
    BLOCK_DAEMON_RESTARTED,
    BLOCK_INFLIGHT_RESUMED,
    JOB_STATUS_CHANGE,
    BLOCK_JOB_COMPLETED,
    BLOCK_JOB_CANCELLED,
    BLOCK_JOB_READY,
    BLOCK_JOB_ERROR,
    BLOCK_JOB_PENDING,
    NIC_RX_FILTER_CHANGED,
    NET_DAEMON_EXITED,
    NET_DAEMON_RESTARTED,
    SANDBOX_VIOLATION,
    MIGRATION,
    MIGRATION_PASS,
    DEVICE_DELETED,
    ACPI_DEVICE_OST,
    DUMP_COMPLETED,
];

/// SHUTDOWN's and RESET's data.
#[derive(Debug, Clone, Serialize)]
pub struct ShutdownInfo {
    pub guest: bool,
    pub reason: &'static str,
}

impl From<ipc::ShutdownCause> for ShutdownInfo {
    fn from(cause: ipc::ShutdownCause) -> Self {
        ShutdownInfo {
            guest: cause.is_guest(),
            reason: cause.qmp_name(),
        }
    }
}

/// What the guest's balloon driver says the VM has now: RAM less the ballooned pages.
#[derive(Debug, Clone, Serialize)]
pub struct BalloonChange {
    pub actual: u64,
}

/// A node's write threshold was crossed (and is now cleared).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct WriteThreshold {
    pub node_name: String,
    pub amount_exceeded: u64,
    pub write_threshold: u64,
}

/// A disk's image failed a request (QEMU's BLOCK_IO_ERROR), or its daemon is gone.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockIoError {
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// "read" or "write" (IoOperationType).
    pub operation: &'static str,
    /// "report", "ignore" or "stop" (BlockErrorAction).
    pub action: &'static str,
    /// Whether the image was out of space; present where the disk keeps an I/O status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nospace: Option<bool>,
    /// What failed, as strerror says it.
    pub reason: String,
}

/// A device daemon ended on its own (or failed to start).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DaemonExited {
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// How it ended.
    pub reason: String,
    /// When the supervisor restarts it; absent when it gave up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_in_ms: Option<u64>,
}

/// A new daemon serves the device.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonRestarted {
    pub device: String,
    pub pid: u32,
}

/// A new block daemon found requests its predecessor had taken and not completed in a
/// queue's inflight region, and started them again.
#[derive(Debug, Clone, Serialize)]
pub struct InflightResumed {
    pub device: String,
    pub queue: u32,
    pub requests: u32,
}

/// A job moved to another state (JobStatus).
#[derive(Debug, Clone, Serialize)]
pub struct JobStatusChange {
    pub id: String,
    pub status: &'static str,
}

impl JobStatusChange {
    pub fn new(id: &str, status: &'static str) -> JobStatusChange {
        JobStatusChange {
            id: id.to_string(),
            status,
        }
    }
}

/// A block job waits for job-finalize (BLOCK_JOB_PENDING).
#[derive(Debug, Clone, Serialize)]
pub struct JobPending {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
}

/// A block job ended (BLOCK_JOB_COMPLETED, BLOCK_JOB_CANCELLED) or caught up
/// (BLOCK_JOB_READY, never with an error).
#[derive(Debug, Clone, Serialize)]
pub struct BlockJobData {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The job's id (QEMU's name for it here).
    pub device: String,
    pub len: u64,
    pub offset: u64,
    pub speed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A block job's copy failed (BLOCK_JOB_ERROR).
#[derive(Debug, Clone, Serialize)]
pub struct JobError {
    pub device: String,
    pub operation: &'static str,
    pub action: &'static str,
}

/// The guest changed a NIC's receive filter (sent once until query-rx-filter reads it).
#[derive(Debug, Clone, Serialize)]
pub struct NicRxFilterChanged {
    pub name: String,
    /// The NIC's QOM path.
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationStatusChange {
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationPass {
    pub pass: u64,
}

/// A device (or its virtio backend, which has no id) left the guest for good.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDeleted {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub path: String,
}

/// What the guest's _OST said about a hotplug slot (QMP's ACPIOSTInfo).
#[derive(Debug, Clone, Serialize)]
pub struct AcpiOstInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub slot: String,
    #[serde(rename = "slot-type")]
    pub slot_type: &'static str,
    pub source: i64,
    pub status: i64,
}

/// A child was stopped by its seccomp filter.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxViolation {
    pub process: String,
    pub syscall: String,
    pub number: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// An event, with its data.
#[derive(Debug, Clone)]
pub enum Event {
    Stop,
    Resume,
    Reset(ShutdownInfo),
    Shutdown(ShutdownInfo),
    Powerdown,
    /// Rate-limited, as in QEMU (`THROTTLED`).
    BalloonChange(BalloonChange),
    BlockWriteThreshold(WriteThreshold),
    BlockIoError(BlockIoError),
    BlockDaemonExited(DaemonExited),
    BlockDaemonRestarted(DaemonRestarted),
    BlockInflightResumed(InflightResumed),
    JobStatusChange(JobStatusChange),
    BlockJobCompleted(BlockJobData),
    BlockJobCancelled(BlockJobData),
    BlockJobReady(BlockJobData),
    BlockJobError(JobError),
    /// A job waits for job-finalize (auto-finalize false).
    BlockJobPending(JobPending),
    NicRxFilterChanged(NicRxFilterChanged),
    NetDaemonExited(DaemonExited),
    NetDaemonRestarted(DaemonRestarted),
    SandboxViolation(SandboxViolation),
    /// A migration's status changed (only with the `events` capability, as in QEMU).
    Migration(MigrationStatusChange),
    /// A migration's dirty-page pass began (its sync count).
    MigrationPass(MigrationPass),
    DeviceDeleted(DeviceDeleted),
    AcpiDeviceOst(AcpiOstInfo),
    /// dump-guest-memory ended: its progress (query-dump's), and why it failed.
    DumpCompleted {
        result: serde_json::Value,
        error: Option<String>,
    },
}

impl Event {
    /// Its row of the table.
    pub fn def(&self) -> &'static EventDef {
        match self {
            Event::Stop => &STOP,
            Event::Resume => &RESUME,
            Event::Reset(_) => &RESET,
            Event::Shutdown(_) => &SHUTDOWN,
            Event::Powerdown => &POWERDOWN,
            Event::BalloonChange(_) => &BALLOON_CHANGE,
            Event::BlockWriteThreshold(_) => &BLOCK_WRITE_THRESHOLD,
            Event::BlockIoError(_) => &BLOCK_IO_ERROR,
            Event::BlockDaemonExited(_) => &BLOCK_DAEMON_EXITED,
            Event::BlockDaemonRestarted(_) => &BLOCK_DAEMON_RESTARTED,
            Event::BlockInflightResumed(_) => &BLOCK_INFLIGHT_RESUMED,
            Event::JobStatusChange(_) => &JOB_STATUS_CHANGE,
            Event::BlockJobCompleted(_) => &BLOCK_JOB_COMPLETED,
            Event::BlockJobCancelled(_) => &BLOCK_JOB_CANCELLED,
            Event::BlockJobReady(_) => &BLOCK_JOB_READY,
            Event::BlockJobError(_) => &BLOCK_JOB_ERROR,
            Event::BlockJobPending(_) => &BLOCK_JOB_PENDING,
            Event::NicRxFilterChanged(_) => &NIC_RX_FILTER_CHANGED,
            Event::NetDaemonExited(_) => &NET_DAEMON_EXITED,
            Event::NetDaemonRestarted(_) => &NET_DAEMON_RESTARTED,
            Event::SandboxViolation(_) => &SANDBOX_VIOLATION,
            Event::Migration(_) => &MIGRATION,
            Event::MigrationPass(_) => &MIGRATION_PASS,
            Event::DeviceDeleted(_) => &DEVICE_DELETED,
            Event::AcpiDeviceOst(_) => &ACPI_DEVICE_OST,
            Event::DumpCompleted { .. } => &DUMP_COMPLETED,
        }
    }

    /// Its data as QMP carries it ("data"), if it has any.
    pub fn data(&self) -> Option<Value> {
        // Serializing these plain structs cannot fail.
        match self {
            Event::Stop | Event::Resume | Event::Powerdown => None,
            Event::Reset(d) | Event::Shutdown(d) => serde_json::to_value(d).ok(),
            Event::BalloonChange(d) => serde_json::to_value(d).ok(),
            Event::BlockWriteThreshold(d) => serde_json::to_value(d).ok(),
            Event::BlockIoError(d) => serde_json::to_value(d).ok(),
            Event::BlockDaemonExited(d) | Event::NetDaemonExited(d) => serde_json::to_value(d).ok(),
            Event::BlockDaemonRestarted(d) | Event::NetDaemonRestarted(d) => {
                serde_json::to_value(d).ok()
            }
            Event::BlockInflightResumed(d) => serde_json::to_value(d).ok(),
            Event::JobStatusChange(d) => serde_json::to_value(d).ok(),
            Event::BlockJobCompleted(d) | Event::BlockJobCancelled(d) => {
                serde_json::to_value(d).ok()
            }
            Event::BlockJobReady(d) => serde_json::to_value(d).ok(),
            Event::BlockJobError(d) => serde_json::to_value(d).ok(),
            Event::BlockJobPending(d) => serde_json::to_value(d).ok(),
            Event::NicRxFilterChanged(d) => serde_json::to_value(d).ok(),
            Event::SandboxViolation(d) => serde_json::to_value(d).ok(),
            Event::Migration(d) => serde_json::to_value(d).ok(),
            Event::MigrationPass(d) => serde_json::to_value(d).ok(),
            Event::DeviceDeleted(d) => serde_json::to_value(d).ok(),
            Event::AcpiDeviceOst(d) => Some(serde_json::json!({ "info": d })),
            Event::DumpCompleted { result, error } => Some(match error {
                Some(e) => serde_json::json!({ "result": result, "error": e }),
                None => serde_json::json!({ "result": result }),
            }),
        }
    }
}

/// The events the guest can make as often as it likes, and how often each may go out, as
/// QEMU 7.2 limits them (monitor_qapi_event_conf; of its list, only these are ours): the
/// first goes out at once; then, until the period is over, later ones wait, each
/// replacing the one before, and the last goes out when the period ends (starting
/// another).
const THROTTLED: &[(&str, Duration)] = &[("BALLOON_CHANGE", Duration::from_secs(1))];

type Clients = Arc<Mutex<Vec<Weak<Outbox>>>>;
/// Per throttled event whose period runs: the line waiting for its end, if any.
type Held = Arc<Mutex<HashMap<&'static str, Option<Vec<u8>>>>>;

#[derive(Default)]
pub struct EventBus {
    clients: Clients,
    held: Held,
}

/// Puts `line` in every subscriber's outbox (dropping those gone).
fn send(clients: &Clients, line: Vec<u8>) {
    clients.lock().retain(|c| match c.upgrade() {
        Some(outbox) => outbox.push(line.clone()),
        None => false,
    });
}

/// The end of `name`'s periods: what waited goes out and starts another, until a period
/// passes with nothing.
fn throttle_periods(clients: Clients, held: Held, name: &'static str, period: Duration) {
    loop {
        std::thread::sleep(period);
        let waiting = {
            let mut held = held.lock();
            match held.get_mut(name).and_then(Option::take) {
                Some(line) => line,
                None => {
                    held.remove(name);
                    return;
                }
            }
        };
        send(&clients, waiting);
    }
}

impl EventBus {
    /// Queues `first` (the capabilities reply) for `outbox`, then every event from now
    /// on: both under the bus's lock, so no event is lost between the two, and none goes
    /// before the reply.
    pub fn subscribe(&self, outbox: &Arc<Outbox>, first: Vec<u8>) {
        let mut clients = self.clients.lock();
        outbox.push(first);
        clients.retain(|c| c.strong_count() > 0);
        clients.push(Arc::downgrade(outbox));
    }

    pub fn emit(&self, event: Event) {
        let name = event.def().name;
        let line = protocol::event(name, event.data());
        let Some(&(_, period)) = THROTTLED.iter().find(|(n, _)| *n == name) else {
            return send(&self.clients, line);
        };
        {
            let mut held = self.held.lock();
            if let Some(waiting) = held.get_mut(name) {
                *waiting = Some(line);
                return;
            }
            held.insert(name, None);
        }
        send(&self.clients, line);
        let (clients, held) = (self.clients.clone(), self.held.clone());
        let timer = std::thread::Builder::new()
            .name("event-throttle".into())
            .spawn(move || throttle_periods(clients, held, name, period));
        if let Err(e) = timer {
            log::error!("{name}: no thread for its rate limit ({e}): sent unlimited");
            self.held.lock().remove(name);
        }
    }

    /// Lets every subscriber's writer flush what it has, then close.
    pub fn close_all(&self) -> Vec<Arc<Outbox>> {
        self.clients
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .inspect(|o| o.close())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::types::TYPES;
    use serde_json::json;

    fn exited(pid: Option<u32>, restart_in_ms: Option<u64>) -> DaemonExited {
        DaemonExited {
            device: "d0".into(),
            pid,
            reason: "killed by signal 9".into(),
            restart_in_ms,
        }
    }

    fn io_error() -> BlockIoError {
        BlockIoError {
            device: "d0".into(),
            node_name: Some("disk0".into()),
            operation: "write",
            action: "stop",
            nospace: Some(true),
            reason: "No space left on device".into(),
        }
    }

    fn ended(error: Option<&str>) -> BlockJobData {
        BlockJobData {
            kind: "mirror",
            device: "j".into(),
            len: 2,
            offset: 1,
            speed: 0,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn balloon_change_goes_out_at_most_once_a_second_the_latest_last() {
        use crate::qmp::conn::Conn;
        use std::io::BufRead;
        use std::os::unix::net::UnixStream;
        use std::time::Instant;

        let bus = EventBus::default();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let outbox = Arc::new(Outbox::new(Conn::Unix(ours)));
        bus.subscribe(&outbox, b"{}\r\n".to_vec());
        let writer = outbox.clone();
        std::thread::spawn(move || writer.run_writer());
        let mut lines = std::io::BufReader::new(theirs).lines();
        let mut next = || -> (Value, Instant) {
            let line = lines.next().unwrap().unwrap();
            (serde_json::from_str(&line).unwrap(), Instant::now())
        };
        next();
        let start = Instant::now();
        let change = |actual| Event::BalloonChange(BalloonChange { actual });
        for actual in [3, 2, 1] {
            bus.emit(change(actual));
        }
        bus.emit(Event::Stop);
        let (first, at) = next();
        assert_eq!(first["data"], json!({"actual": 3}));
        assert!(at - start < Duration::from_millis(500));
        // Others are not held.
        assert_eq!(next().0["event"], "STOP");
        let (last, at) = next();
        assert_eq!(last["data"], json!({"actual": 1}), "2 was replaced");
        assert!(at - start >= Duration::from_millis(950), "{:?}", at - start);
        // A second later with nothing waiting, the next goes out at once again.
        std::thread::sleep(Duration::from_millis(2100));
        let start = Instant::now();
        bus.emit(change(5));
        let (again, at) = next();
        assert_eq!(again["data"], json!({"actual": 5}));
        assert!(at - start < Duration::from_millis(500));
        outbox.close();
    }

    #[test]
    fn every_event_is_in_the_table_once() {
        let names: Vec<&str> = EVENTS.iter().map(|e| e.name).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        let samples = [
            Event::Stop,
            Event::Resume,
            Event::Reset(ipc::ShutdownCause::GuestReset.into()),
            Event::Shutdown(ipc::ShutdownCause::HostQmpQuit.into()),
            Event::Powerdown,
            Event::BalloonChange(BalloonChange { actual: 1 << 20 }),
            Event::BlockWriteThreshold(WriteThreshold {
                node_name: "n".into(),
                amount_exceeded: 1,
                write_threshold: 2,
            }),
            Event::BlockIoError(io_error()),
            Event::BlockDaemonExited(exited(Some(7), Some(0))),
            Event::BlockDaemonRestarted(DaemonRestarted {
                device: "d0".into(),
                pid: 8,
            }),
            Event::BlockInflightResumed(InflightResumed {
                device: "d0".into(),
                queue: 1,
                requests: 16,
            }),
            Event::JobStatusChange(JobStatusChange::new("j", "ready")),
            Event::BlockJobCompleted(ended(Some("Input/output error"))),
            Event::BlockJobCancelled(ended(None)),
            Event::BlockJobReady(ended(None)),
            Event::BlockJobError(JobError {
                device: "j".into(),
                operation: "read",
                action: "stop",
            }),
            Event::BlockJobPending(JobPending {
                kind: "stream",
                id: "j".into(),
            }),
            Event::NicRxFilterChanged(NicRxFilterChanged {
                name: "nic0".into(),
                path: "/machine/peripheral/nic0/virtio-backend".into(),
            }),
            Event::NetDaemonExited(exited(None, None)),
            Event::NetDaemonRestarted(DaemonRestarted {
                device: "nic0".into(),
                pid: 9,
            }),
            Event::SandboxViolation(SandboxViolation {
                process: "vmm-core".into(),
                syscall: "socket".into(),
                number: 41,
                device: None,
            }),
            Event::Migration(MigrationStatusChange { status: "active" }),
            Event::MigrationPass(MigrationPass { pass: 2 }),
            Event::DeviceDeleted(DeviceDeleted {
                device: Some("vb".into()),
                path: "/machine/peripheral/vb".into(),
            }),
            Event::AcpiDeviceOst(AcpiOstInfo {
                device: Some("d1".into()),
                slot: "0".into(),
                slot_type: "DIMM",
                source: 1,
                status: 0,
            }),
            Event::DumpCompleted {
                result: serde_json::json!({"status": "failed", "completed": 0, "total": 4096}),
                error: Some("dump: failed to write the core: No space left on device".into()),
            },
        ];
        let emitted: Vec<&str> = samples.iter().map(|e| e.def().name).collect();
        assert_eq!(emitted, names);
        // Each one's data is what its type says (the checker QMP arguments go through).
        for e in &samples {
            let def = e.def();
            match (e.data(), def.data.map(|t| t.kind)) {
                (None, None) => {}
                (Some(Value::Object(data)), Some(TypeKind::Object(members))) => TYPES
                    .check_members(members, &data, "")
                    .unwrap_or_else(|err| panic!("{}: {}", def.name, err.desc)),
                (data, _) => panic!("{}: data {data:?} against {}", def.name, def.arg_type()),
            }
        }
    }

    #[test]
    fn data_reads_as_before() {
        assert_eq!(Event::Stop.data(), None);
        assert_eq!(
            Event::Shutdown(ipc::ShutdownCause::GuestShutdown.into()).data(),
            Some(json!({"guest": true, "reason": "guest-shutdown"}))
        );
        assert_eq!(
            Event::BlockDaemonExited(exited(Some(7), Some(100))).data(),
            Some(
                json!({"device": "d0", "pid": 7, "reason": "killed by signal 9",
                        "restart-in-ms": 100})
            )
        );
        assert_eq!(
            Event::NetDaemonExited(exited(None, None)).data(),
            Some(json!({"device": "d0", "reason": "killed by signal 9"}))
        );
        assert_eq!(
            Event::BlockWriteThreshold(WriteThreshold {
                node_name: "n".into(),
                amount_exceeded: 1,
                write_threshold: 2,
            })
            .data(),
            Some(json!({"node-name": "n", "amount-exceeded": 1, "write-threshold": 2}))
        );
        assert_eq!(
            Event::BlockIoError(io_error()).data(),
            Some(
                json!({"device": "d0", "node-name": "disk0", "operation": "write",
                        "action": "stop", "nospace": true,
                        "reason": "No space left on device"})
            )
        );
        assert_eq!(
            Event::BlockInflightResumed(InflightResumed {
                device: "d0".into(),
                queue: 1,
                requests: 16,
            })
            .data(),
            Some(json!({"device": "d0", "queue": 1, "requests": 16}))
        );
        assert_eq!(
            Event::DeviceDeleted(DeviceDeleted {
                device: None,
                path: "/machine/peripheral-anon/device[0]/virtio-backend".into(),
            })
            .data(),
            Some(json!({"path": "/machine/peripheral-anon/device[0]/virtio-backend"}))
        );
        assert_eq!(
            Event::SandboxViolation(SandboxViolation {
                process: "block-daemon".into(),
                syscall: "socket".into(),
                number: 41,
                device: Some("d0".into()),
            })
            .data(),
            Some(
                json!({"process": "block-daemon", "syscall": "socket", "number": 41,
                        "device": "d0"})
            )
        );
    }
}
