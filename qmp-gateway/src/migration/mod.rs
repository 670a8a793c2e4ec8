//! The gateway's migration layer. For now its settings: the capabilities and parameters
//! QMP's migrate-set-capabilities and migrate-set-parameters change (QEMU 7.2's, with
//! its checks), which the migration reads as it runs.

pub mod settings;

pub use settings::{Capability, MigrationSettings, SettingsError};
