//! The migration commands themselves: migrate, migrate-incoming, migrate_cancel,
//! query-migrate and migrate-start-postcopy (the settings' commands are in
//! migration.rs). The migration runs on its own thread: migrate answers at once, and
//! its end shows in query-migrate and the MIGRATION event, as in QEMU.

use serde::Deserialize;
use serde_json::json;

use crate::fdstore::error::FdError;
use crate::qmp::args::{serde_arguments, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};

#[derive(Debug, Deserialize)]
pub struct Migrate {
    pub uri: String,
    pub blk: Option<bool>,
    pub inc: Option<bool>,
    pub detach: Option<bool>,
    pub resume: Option<bool>,
}

serde_arguments!(
    Migrate,
    [
        req("uri", Ty::Str),
        opt("blk", Ty::Bool),
        opt("inc", Ty::Bool),
        opt("detach", Ty::Bool),
        opt("resume", Ty::Bool),
    ]
);

#[derive(Debug, Deserialize)]
pub struct MigrateIncoming {
    pub uri: String,
}

serde_arguments!(MigrateIncoming, [req("uri", Ty::Str)]);

/// An fd: URI's descriptor: the client's named fd, which the migration takes (QEMU's
/// monitor_get_fd removes it from the monitor, and words its absence so).
pub fn take_named(c: &Ctx, name: &str) -> Result<std::os::fd::OwnedFd, String> {
    let fd = c.named_fds.dup(name).map_err(|e| match e {
        FdError::NameNotFound(_) => format!("File descriptor named '{name}' has not been found"),
        other => other.to_string(),
    })?;
    let _ = c.named_fds.close(name);
    Ok(fd)
}

pub fn migrate(c: &mut Ctx, a: Migrate) -> QmpResult {
    if a.resume == Some(true) {
        // Resuming needs a postcopy migration that paused; none can here.
        return Err(QmpError::generic(
            "Cannot resume if there is no paused migration",
        ));
    }
    let migrator = c.gw.migrator.clone();
    migrator
        .migrate(
            &a.uri,
            a.blk.unwrap_or(false),
            a.inc.unwrap_or(false),
            |name| take_named(c, name),
        )
        .map_err(|e| QmpError::generic(e.to_string()))?;
    // detach is the only behaviour there is (QEMU ignores it too).
    let _ = a.detach;
    Ok(json!({}))
}

pub fn migrate_incoming(c: &mut Ctx, a: MigrateIncoming) -> QmpResult {
    let migrator = c.gw.migrator.clone();
    migrator
        .incoming(&a.uri, |name| take_named(c, name))
        .map_err(|e| QmpError::generic(e.to_string()))?;
    Ok(json!({}))
}

pub fn migrate_cancel(c: &mut Ctx, _: NoArgs) -> QmpResult {
    c.gw.migrator.cancel();
    Ok(json!({}))
}

pub fn query_migrate(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(c.gw.migrator.query())
}

/// Our extension's argument: the vmm-core binary to upgrade to (default: the running
/// one's).
#[derive(Debug, Deserialize)]
pub struct VmmUpgrade {
    pub binary: Option<String>,
}

serde_arguments!(VmmUpgrade, [opt("binary", Ty::Str)]);

/// Our extension: a new vmm-core process takes over the running VM (upgrade.rs).
pub fn vmm_upgrade(c: &mut Ctx, a: VmmUpgrade) -> QmpResult {
    let done = crate::upgrade::upgrade(c.gw, a.binary.map(std::path::PathBuf::from))
        .map_err(|e| QmpError::generic(e.to_string()))?;
    Ok(json!({
        "pid": done.pid,
        "downtime-us": done.downtime.as_micros() as u64,
    }))
}

pub fn migrate_start_postcopy(c: &mut Ctx, _: NoArgs) -> QmpResult {
    c.gw.migrator
        .start_postcopy()
        .map_err(|e| QmpError::generic(e.to_string()))?;
    Ok(json!({}))
}
