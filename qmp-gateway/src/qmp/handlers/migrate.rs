//! The migration commands themselves: migrate, migrate-incoming, migrate_cancel,
//! query-migrate and migrate-start-postcopy (the settings' commands are in
//! migration.rs); and xen-save-devices-state / xen-load-devices-state, the device state
//! alone to and from a file. The migration runs on its own thread: migrate answers at once, and
//! its end shows in query-migrate and the MIGRATION event, as in QEMU.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use ipc::{RunState, VmmRequest};
use serde::Deserialize;
use serde_json::json;

use crate::fdstore::error::FdError;
use crate::migration::{device_file, device_state};
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

#[derive(Debug, Deserialize)]
pub struct MigrateContinue {
    pub state: String,
}

serde_arguments!(
    MigrateContinue,
    [req("state", Ty::Named("MigrationStatus"))]
);

/// migrate-continue: a migration paused before its switch-over (pause-before-switchover,
/// status pre-switchover) goes on.
pub fn migrate_continue(c: &mut Ctx, a: MigrateContinue) -> QmpResult {
    (c.gw.migrator)
        .continue_from(&a.state)
        .map_err(QmpError::generic)?;
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

#[derive(Debug, Deserialize)]
pub struct XenSaveDevicesState {
    pub filename: String,
    pub live: Option<bool>,
}

serde_arguments!(
    XenSaveDevicesState,
    [req("filename", Ty::Str), opt("live", Ty::Bool)]
);

#[derive(Debug, Deserialize)]
pub struct XenLoadDevicesState {
    pub filename: String,
}

serde_arguments!(XenLoadDevicesState, [req("filename", Ty::Str)]);

/// QEMU's words for a device state file it cannot open.
fn unable_to_open(path: &str, e: &std::io::Error) -> QmpError {
    QmpError::generic(format!("Unable to open {path}: {}", ipc::errno_text(e)))
}

/// xen-save-devices-state: what a migration carries for the devices (vmm-core's state,
/// the NICs' host sides), without guest RAM or disks, into a file the gateway makes
/// (0660, as QEMU's). A running VM is stopped for it and runs again, as in QEMU (STOP
/// and RESUME). With `live` (the default, QEMU's), a VM that was not running lets go of
/// its images, locks and all, for another host to take (libxl's migration), as QEMU 7.2
/// does; `cont` takes them back.
pub fn xen_save_devices_state(c: &mut Ctx, a: XenSaveDevicesState) -> QmpResult {
    match c.gw.run_state() {
        RunState::InMigrate => {
            return Err(QmpError::generic(
                "The VM is waiting for an incoming migration: it has no device state yet",
            ))
        }
        _ if c.gw.migrator.in_progress() => {
            return Err(QmpError::generic(
                "Cannot save the device state while a migration is in progress",
            ))
        }
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o660)
        .open(&a.filename)
        .map_err(|e| unable_to_open(&a.filename, &e))?;
    let running = c.gw.run_state() == RunState::Running;
    if running {
        c.gw.stop()?;
    }
    let saved = device_state::take(&c.gw.vmm, c.gw.net.migrated_nics());
    if running {
        c.gw.cont()?;
    }
    let bytes = device_file::encode(&saved?).map_err(|e| QmpError::generic(e.to_string()))?;
    // QEMU's QERR_IO_ERROR for a write that fails (a full disk).
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|_| QmpError::generic("An IO error has occurred"))?;
    if a.live.unwrap_or(true) && !running {
        c.gw.block.inactivate().map_err(|e| {
            QmpError::generic(format!(
                "qmp_xen_save_devices_state: bdrv_inactivate_all() failed ({e})"
            ))
        })?;
    }
    Ok(json!({}))
}

/// xen-load-devices-state: a file of xen-save-devices-state into this VM, stopped, with
/// its guest RAM as it is (QEMU's Xen flow brings RAM on its own; here the VM's own RAM
/// is the one the state goes with). vmm-core takes the state all or nothing; a file
/// from a VM of another shape (memory, vCPUs, devices, NICs) is refused saying how it
/// differs, and the VM is left as it was. `cont` runs it.
pub fn xen_load_devices_state(c: &mut Ctx, a: XenLoadDevicesState) -> QmpResult {
    match c.gw.run_state() {
        RunState::Running => {
            return Err(QmpError::generic(
                "Cannot update device state while vm is running",
            ))
        }
        RunState::InMigrate | RunState::FinishMigrate => {
            return Err(QmpError::generic(
                "Cannot update device state while the VM is migrating",
            ))
        }
        _ if c.gw.migrator.in_progress() => {
            return Err(QmpError::generic(
                "Cannot update device state while a migration is in progress",
            ))
        }
        _ => {}
    }
    let mut file = File::open(&a.filename).map_err(|e| unable_to_open(&a.filename, &e))?;
    let cannot = |why: String| {
        QmpError::generic(format!(
            "Cannot load the device state from {}: {why}",
            a.filename
        ))
    };
    let state = device_file::read(&mut file).map_err(|e| cannot(e.to_string()))?;
    let here = c.gw.net.migrated_nics().len();
    if state.nics.len() != here {
        return Err(cannot(format!(
            "its VM has {} NICs, this one {here}",
            state.nics.len()
        )));
    }
    c.gw.vmm
        .request(VmmRequest::LoadState(state.vmm), &[])
        .map_err(|e| cannot(QmpError::from(e).desc))?;
    c.gw.net
        .restore_migrated_nics(state.nics)
        .map_err(|e| cannot(format!("the NICs: {e}")))?;
    Ok(json!({}))
}
