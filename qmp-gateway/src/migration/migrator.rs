//! The gateway's migration layer: at most one migration at a time, out of this VM
//! (`outgoing`) or into it (`incoming`), each carried by a migration agent the gateway
//! starts for it. Here are what both share: the settings, the progress query-migrate
//! reports, the MIGRATION events, cancellation and the handles on vmm-core and the
//! disks the passes and the switch-over need.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use ipc::{MachineShape, RunState};
use parking_lot::Mutex;
use serde_json::Value;

use super::agent::Agent;
use super::progress::{Progress, Status};
use super::settings::{Capability, MigrationSettings};
use super::uri::MigrationUri;
use super::{incoming, outgoing};
use crate::block::BlockLayer;
use crate::children::link::VmmLink;
use crate::children::sandbox::Policy;
use crate::events::{Event, EventBus, MigrationPass, MigrationStatusChange};
use crate::gateway::{ExitReason, RunStateView};

/// Why a migrate or migrate-incoming command is refused (QEMU's words).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("There's a migration process in progress")]
    InProgress,
    #[error("Guest is waiting for an incoming migration")]
    Incoming,
    #[error("'-incoming' was not specified on the command line")]
    NotIncoming,
    #[error("The incoming migration has already been started")]
    IncomingStarted,
    #[error("Block migration is not supported yet: {0}")]
    Block(&'static str),
    #[error("{0}")]
    Uri(#[from] super::uri::UriError),
    #[error("{0}")]
    Channel(String),
    #[error("starting the migration agent: {0}")]
    Agent(String),
}

/// What the layer reaches: set once when the gateway is built.
pub struct Handles {
    pub vmm: Arc<VmmLink>,
    pub block: Arc<BlockLayer>,
    pub events: Arc<EventBus>,
    pub policy: Policy,
    pub agent_binary: PathBuf,
    pub exit: mpsc::Sender<ExitReason>,
    pub run_state: RunStateView,
}

pub struct Migrator {
    pub(super) h: Handles,
    /// The gateway's migration settings (shared with the QMP commands that change them).
    pub settings: Arc<Mutex<MigrationSettings>>,
    progress: Mutex<Progress>,
    pub(super) cancel: AtomicBool,
    /// The agent of the migration under way.
    pub(super) agent: Mutex<Option<Arc<Agent>>>,
    /// The VM's shape, for the destination to check (set at launch).
    pub(super) shape: Mutex<MachineShape>,
    /// Destination: the incoming migration was started (migrate-incoming or --incoming).
    incoming_started: AtomicBool,
    /// Destination: run the VM once it arrived (no -S, or cont while in "inmigrate").
    pub(super) autostart: AtomicBool,
}

impl Migrator {
    pub fn new(h: Handles, settings: Arc<Mutex<MigrationSettings>>) -> Arc<Migrator> {
        Arc::new(Migrator {
            h,
            settings,
            progress: Mutex::default(),
            cancel: AtomicBool::new(false),
            agent: Mutex::new(None),
            shape: Mutex::new(MachineShape {
                memory: 0,
                vcpus: 0,
                disks: Vec::new(),
                nics: Vec::new(),
            }),
            incoming_started: AtomicBool::new(false),
            autostart: AtomicBool::new(true),
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
        {
            let mut p = self.progress.lock();
            if p.status == status {
                return;
            }
            p.status = status;
        }
        let running = status.in_progress() || status == Status::Setup;
        self.settings.lock().set_running(running);
        if self.settings.lock().capability(Capability::Events) {
            self.h.events.emit(Event::Migration(MigrationStatusChange {
                status: status.qmp_name(),
            }));
        }
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
        self.with_progress(|p| {
            p.error = Some(why);
            if let Some(s) = p.started {
                p.total_ms = Some(s.elapsed().as_millis() as u64);
            }
        });
        self.set_status(Status::Failed);
    }

    /// QMP migrate: checks, then the migration runs on a thread of its own (its
    /// failures show in query-migrate and the MIGRATION event, as in QEMU).
    pub fn migrate(
        self: &Arc<Self>,
        uri: &str,
        blk: bool,
        inc: bool,
        named: impl FnOnce(&str) -> Result<OwnedFd, String>,
    ) -> Result<(), MigrateError> {
        if self.h.run_state.get() == RunState::InMigrate {
            return Err(MigrateError::Incoming);
        }
        if self.in_progress() {
            return Err(MigrateError::InProgress);
        }
        let uri = MigrationUri::parse(uri)?;
        if blk || inc {
            return Err(MigrateError::Block(
                "copy the disks with drive-mirror, or use storage both hosts share",
            ));
        }
        // An fd: URI takes the named fd now, as QEMU does (the name is gone after).
        let named_fd = match &uri {
            MigrationUri::Fd(name) => Some(named(name).map_err(MigrateError::Channel)?),
            _ => None,
        };
        self.cancel.store(false, Ordering::SeqCst);
        *self.progress.lock() = Progress {
            started: Some(std::time::Instant::now()),
            ..Progress::default()
        };
        self.set_status(Status::Setup);
        let m = self.clone();
        std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || outgoing::run(&m, &uri, named_fd))
            .map_err(|e| MigrateError::Agent(e.to_string()))?;
        Ok(())
    }

    /// QMP migrate_cancel: a migration under way stops, the VM stays here (running as
    /// before); nothing happens when none runs.
    pub fn cancel(&self) {
        if !self.in_progress() {
            return;
        }
        self.cancel.store(true, Ordering::SeqCst);
        self.set_status(Status::Cancelling);
        // The agent may be in the middle of a pass or waiting for the destination:
        // ending it ends the call the migration thread waits on.
        if let Some(agent) = self.agent.lock().clone() {
            agent.kill();
        }
    }

    pub(super) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// migrate-incoming (or --incoming at start): the VM waits in "inmigrate" for a
    /// source on `uri`.
    pub fn incoming(
        self: &Arc<Self>,
        uri: &str,
        named: impl FnOnce(&str) -> Result<OwnedFd, String>,
    ) -> Result<(), MigrateError> {
        if self.h.run_state.get() != RunState::InMigrate {
            return Err(MigrateError::NotIncoming);
        }
        if self.incoming_started.swap(true, Ordering::SeqCst) {
            return Err(MigrateError::IncomingStarted);
        }
        let uri = MigrationUri::parse(uri).inspect_err(|_| {
            self.incoming_started.store(false, Ordering::SeqCst);
        })?;
        incoming::start(self, &uri, named).inspect_err(|_| {
            self.incoming_started.store(false, Ordering::SeqCst);
        })
    }

    /// cont or stop while the VM waits for its migration: whether it runs once here.
    pub fn set_autostart(&self, run: bool) {
        self.autostart.store(run, Ordering::SeqCst);
    }

    /// The destination's migration failed: the gateway ends, as QEMU's does.
    pub(super) fn incoming_failed(&self, why: String) {
        self.fail(why.clone());
        let _ = self.h.exit.send(ExitReason::IncomingFailed(why));
    }
}
