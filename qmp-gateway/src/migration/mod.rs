//! The gateway's migration layer: its settings (the capabilities and parameters QMP's
//! migrate-set-capabilities and migrate-set-parameters change, QEMU 7.2's with its
//! checks), and the migrations themselves (`migrator`): out of this VM (`outgoing`) or
//! into it (`incoming`), each carried by a migration agent (`agent`) on a connection
//! made from the URI (`uri`), with the progress query-migrate reports (`progress`) and
//! the disks a block migration copies (`block`); the device state both carry
//! (`device_state`) and xen-save-devices-state's file of it alone (`device_file`).

pub mod agent;
pub mod block;
pub mod device_file;
pub mod device_state;
pub mod incoming;
pub mod migrator;
pub mod outgoing;
pub mod progress;
pub mod settings;
pub mod uri;

pub use migrator::{Handles, MigrateError, Migrator};
pub use settings::{Capability, MigrationSettings, SettingsError};
