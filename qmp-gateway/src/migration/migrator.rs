//! The gateway's migration layer: at most one migration at a time, out of this VM
//! (`outgoing`) or into it (`incoming`), each carried by a migration agent the gateway
//! starts for it. Here are what both share: the settings, the progress query-migrate
//! reports, the MIGRATION events, cancellation and the handles on vmm-core and the
//! disks the passes and the switch-over need.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ipc::{MachineShape, RunState};
use parking_lot::Mutex;
use serde_json::Value;

use super::agent::Agent;
use super::progress::{Progress, Status};
use super::settings::{Capability, MigrationSettings};
use crate::block::BlockLayer;
use crate::children::link::VmmLink;
use crate::children::sandbox::Policy;
use crate::events::{Event, EventBus, MigrationPass, MigrationStatusChange};

/// Why a migrate or migrate-incoming command is refused (QEMU's words).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("There's a migration process in progress")]
    InProgress,
    #[error("Guest is waiting for an incoming migration")]
    Incoming,
    #[error("Can't migrate the vm that was paused due to previous migration")]
    Migrated,
    #[error("'-incoming' was not specified on the command line")]
    NotIncoming,
    #[error("The incoming migration has already been started")]
    IncomingStarted,
    #[error("{0}")]
    Uri(#[from] super::uri::UriError),
    /// migrate-incoming's words for a scheme it does not know.
    #[error("unknown migration protocol: {0}")]
    UnknownProtocol(String),
    #[error("{0}")]
    Channel(String),
    #[error("starting the migration agent: {0}")]
    Agent(String),
    /// `migrate`'s blk or inc with the block capability or block-incremental set.
    #[error("Command options are incompatible with current migration capabilities")]
    BlockOptions,
    #[error("Enable postcopy with migrate_set_capability before the start of migration")]
    PostcopyOff,
    #[error("Postcopy must be started after migration has been started")]
    PostcopyNotStarted,
}

/// What the layer reaches: set once when the gateway is built.
pub struct Handles {
    pub vmm: Arc<VmmLink>,
    pub block: Arc<BlockLayer>,
    pub events: Arc<EventBus>,
    pub policy: Policy,
    pub agent_binary: PathBuf,
    /// Ends the gateway: the VM was to arrive by migration, and that failed.
    pub end_gateway: Box<dyn Fn(String) + Send + Sync>,
    /// The VM's run state as vmm-core last reported it.
    pub run_state: Box<dyn Fn() -> RunState + Send + Sync>,
    /// One round of the NICs' self-announcement (a VM that came in is somewhere new):
    /// true if sent, false if the VM does not run (nothing sent), None once the gateway
    /// is ending.
    pub announce: Arc<dyn Fn() -> Option<bool> + Send + Sync>,
    /// What the NICs' host sides keep, in launch order (the source's, the VM stopped).
    pub nics: Box<dyn Fn() -> Vec<ipc::MigratedNic> + Send + Sync>,
    /// The destination's NICs take up the source's.
    pub restore_nics: Box<dyn Fn(Vec<ipc::MigratedNic>) -> Result<(), String> + Send + Sync>,
    /// Postcopy's destination: the NICs' daemons get /dev/userfaultfd.
    pub userfault_nics: Box<UserfaultNics>,
}

pub type UserfaultNics = dyn Fn(std::os::fd::BorrowedFd<'_>) -> Result<(), String> + Send + Sync;

pub struct Migrator {
    pub(super) h: Handles,
    /// The gateway's migration settings (shared with the QMP commands that change them).
    pub settings: Arc<Mutex<MigrationSettings>>,
    pub(super) progress: Mutex<Progress>,
    /// Held while the status changes (and is announced), and while a cancel and the
    /// commitment to hand the VM over exclude each other.
    pub(super) transitions: Mutex<()>,
    pub(super) cancel: AtomicBool,
    /// The device state is on its way to the destination: too late to cancel.
    pub(super) committed: AtomicBool,
    /// migrate-continue came for the pre-switchover pause (pause-before-switchover).
    pub(super) switchover: AtomicBool,
    /// The outgoing migration's connection, for a cancel to shut down (what the agent
    /// waits on then ends, before the agent itself is known).
    pub(super) connection: Mutex<Option<OwnedFd>>,
    /// The agent of the migration under way.
    pub(super) agent: Mutex<Option<Arc<Agent>>>,
    /// The VM's shape, for the destination to check (set at launch).
    pub(super) shape: Mutex<MachineShape>,
    /// Destination: the incoming migration was started (migrate-incoming or --incoming).
    pub(super) incoming_started: AtomicBool,
    /// Destination: run the VM once it arrived (no -S, or cont while in "inmigrate").
    pub(super) autostart: AtomicBool,
    /// migrate-start-postcopy came: the migration under way switches to postcopy at
    /// its next chance.
    pub(super) start_postcopy: AtomicBool,
}

impl Migrator {
    pub fn new(h: Handles, settings: Arc<Mutex<MigrationSettings>>) -> Arc<Migrator> {
        Arc::new(Migrator {
            h,
            settings,
            progress: Mutex::default(),
            transitions: Mutex::new(()),
            cancel: AtomicBool::new(false),
            committed: AtomicBool::new(false),
            switchover: AtomicBool::new(false),
            connection: Mutex::new(None),
            agent: Mutex::new(None),
            shape: Mutex::new(MachineShape {
                memory: 0,
                vcpus: 0,
                disks: Vec::new(),
                nics: Vec::new(),
                dimms: Vec::new(),
            }),
            incoming_started: AtomicBool::new(false),
            autostart: AtomicBool::new(true),
            start_postcopy: AtomicBool::new(false),
        })
    }

    pub fn set_shape(&self, shape: MachineShape) {
        *self.shape.lock() = shape;
    }

    /// query-migrate.
    pub fn query(&self) -> Value {
        self.progress.lock().to_qmp()
    }

    pub fn in_progress(&self) -> bool {
        self.progress.lock().status.in_progress()
    }

    pub(super) fn with_progress<T>(&self, f: impl FnOnce(&mut Progress) -> T) -> T {
        f(&mut self.progress.lock())
    }

    /// A new status, announced when the `events` capability is on (as QEMU does).
    pub(super) fn set_status(&self, status: Status) {
        let _order = self.transitions.lock();
        self.change_status(status, |_| true);
    }

    /// Moves to `status` if the current one is `allowed`, with `transitions` held;
    /// whether it moved.
    pub(super) fn change_status(
        &self,
        status: Status,
        allowed: impl FnOnce(Status) -> bool,
    ) -> bool {
        {
            let mut p = self.progress.lock();
            if p.status == status || !allowed(p.status) {
                return false;
            }
            p.status = status;
        }
        ipc::tracepoint!(MigrateSetState, "state={}", status.qmp_name());
        // Capabilities are fixed while a migration out of this VM runs (QEMU's check
        // looks at its outgoing migration only).
        let outgoing = (self.h.run_state)() != RunState::InMigrate;
        let running = outgoing && (status.in_progress() || status == Status::Setup);
        self.settings.lock().set_running(running);
        if self.settings.lock().capability(Capability::Events) {
            self.h.events.emit(Event::Migration(MigrationStatusChange {
                status: status.qmp_name(),
            }));
        }
        true
    }

    pub(super) fn pass_event(&self, pass: u64) {
        if self.settings.lock().capability(Capability::Events) {
            self.h
                .events
                .emit(Event::MigrationPass(MigrationPass { pass }));
        }
    }

    /// Ends the migration as failed with `why` (query-migrate's error-desc).
    pub(super) fn fail(&self, why: String) {
        log::warn!("migration failed: {why}");
        self.failed(Some(why));
    }

    /// Ends the migration as failed, with query-migrate's error-desc if there is one.
    pub(super) fn failed(&self, why: Option<String>) {
        self.with_progress(|p| {
            p.error = why;
            if let Some(s) = p.started {
                p.total_ms = Some(s.elapsed().as_millis() as u64);
            }
        });
        self.set_status(Status::Failed);
    }

    /// QMP migrate_cancel: a migration out of this VM stops, the VM stays here (running
    /// as before). Nothing happens when none runs, on a destination (QEMU 7.2's cancel
    /// leaves an incoming migration be), or once the device state is on its way: the VM
    /// may run there already, and must not run here too.
    pub fn cancel(&self) {
        if (self.h.run_state)() == RunState::InMigrate {
            return;
        }
        {
            let _order = self.transitions.lock();
            if self.committed.load(Ordering::SeqCst) {
                return;
            }
            let under_way = |s: Status| {
                matches!(
                    s,
                    Status::Setup | Status::Active | Status::PreSwitchover | Status::Device
                )
            };
            if !self.change_status(Status::Cancelling, under_way) {
                return;
            }
            self.cancel.store(true, Ordering::SeqCst);
        }
        // The agent may be in the middle of a pass or waiting for the destination, or
        // still starting (waiting for the destination's verdict): shutting the
        // connection down and ending the agent end what the migration thread waits on.
        if let Some(fd) = self.connection.lock().as_ref() {
            // SAFETY: shutdown on a socket we hold a descriptor of; on a pipe it fails
            // with ENOTSOCK, and killing the agent is enough.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Some(agent) = self.agent.lock().clone() {
            agent.kill();
        }
    }

    /// migrate-continue: the migration paused in `state` goes on. QEMU 7.2's check and
    /// words: the status must be the one named (only pre-switchover pauses; naming the
    /// status a migration is in otherwise changes nothing).
    pub fn continue_from(&self, state: &str) -> Result<(), String> {
        let _order = self.transitions.lock();
        let status = self.progress.lock().status;
        if status.qmp_name() != state {
            return Err(format!(
                "Migration not in expected state: {}",
                status.qmp_name()
            ));
        }
        if status == Status::PreSwitchover {
            self.switchover.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    pub(super) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// The device state goes to the destination now, which runs the VM as soon as it
    /// has it: a cancel is too late from here on. False if a cancel came first.
    pub(super) fn commit(&self) -> bool {
        let _order = self.transitions.lock();
        if self.cancelled() {
            return false;
        }
        self.committed.store(true, Ordering::SeqCst);
        true
    }

    /// migrate-start-postcopy, checked as QEMU 7.2 checks it (the capability first); it
    /// is not an error once the migration ended or switched already (QEMU's either).
    pub fn start_postcopy(&self) -> Result<(), MigrateError> {
        if !self.settings.lock().capability(Capability::PostcopyRam) {
            return Err(MigrateError::PostcopyOff);
        }
        if self.progress.lock().status == Status::None {
            return Err(MigrateError::PostcopyNotStarted);
        }
        self.start_postcopy.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the migration under way should switch to postcopy now.
    pub(super) fn postcopy_requested(&self) -> bool {
        self.start_postcopy.load(Ordering::SeqCst)
    }

    /// Postcopy's destination: a vhost-user backend's mapping of guest RAM, which the
    /// agent needs to make its faults guest pages (vmm-core raises it while it restores
    /// the state, before the backend may touch memory: handed over on a thread of its
    /// own, as vmm-core's reader must not wait).
    pub fn postcopy_ranges(&self, backend: u32, ranges: Vec<ipc::userfault::MappedRange>) {
        let Some(agent) = self.agent.lock().clone() else {
            log::warn!("postcopy: backend {backend}'s mapping came without a migration");
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("postcopy-ranges".into())
            .spawn(move || {
                let request = ipc::AgentRequest::PostcopyRanges { backend, ranges };
                if let Err(e) = agent.link.request(request, &[]) {
                    log::error!("postcopy: backend {backend}'s mapping to the agent: {e}");
                }
            });
        if let Err(e) = spawned {
            log::error!("postcopy: backend {backend}'s mapping to the agent: {e}");
        }
    }

    /// cont or stop while the VM waits for its migration: whether it runs once here.
    pub fn set_autostart(&self, run: bool) {
        self.autostart.store(run, Ordering::SeqCst);
    }

    /// The destination's migration failed: the gateway ends, as QEMU's does (its agent
    /// first, reaped, so that nothing outlives it).
    pub(super) fn incoming_failed(&self, why: String) {
        if let Some(agent) = self.agent.lock().take() {
            agent.kill();
        }
        self.fail(why.clone());
        (self.h.end_gateway)(why);
    }
}
