//! The migration settings commands: QEMU 7.2's capabilities and parameters, and the
//! spec's older commands that each set one parameter (as QEMU 2.x-5.x mapped them onto
//! the parameters). The settings and their checks are in migration/settings.rs.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::migration::settings::{CapabilityStatus, ParameterChanges};
use crate::qmp::args::{serde_arguments, shared_members, Int, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{req, Ty};
use crate::qmp::types::SET_MIGRATION_PARAMETERS_MEMBERS;

#[derive(Debug, Deserialize)]
pub struct MigrateSetCapabilities {
    pub capabilities: Vec<CapabilityStatus>,
}

serde_arguments!(
    MigrateSetCapabilities,
    [req(
        "capabilities",
        Ty::Array(&Ty::Named("MigrationCapabilityStatus"))
    )]
);

shared_members!(ParameterChanges, SET_MIGRATION_PARAMETERS_MEMBERS);

/// migrate-set-cache-size's and migrate_set_speed's argument: a QMP int.
#[derive(Debug, Deserialize)]
pub struct IntValue {
    pub value: Int,
}

serde_arguments!(IntValue, [req("value", Ty::Int)]);

/// migrate_set_downtime's argument: seconds, a QMP number.
#[derive(Debug, Deserialize)]
pub struct Seconds {
    pub value: f64,
}

serde_arguments!(Seconds, [req("value", Ty::Number)]);

/// A settings value as the answer's JSON (cannot fail: no map in them has other keys
/// than strings).
fn answer(value: impl Serialize) -> QmpResult {
    serde_json::to_value(value)
        .map_err(|e| QmpError::generic(format!("internal error: an answer is not JSON: {e}")))
}

pub fn migrate_set_capabilities(c: &mut Ctx, a: MigrateSetCapabilities) -> QmpResult {
    c.gw.migration.lock().set_capabilities(&a.capabilities)?;
    Ok(json!({}))
}

pub fn query_migrate_capabilities(c: &mut Ctx, _: NoArgs) -> QmpResult {
    answer(c.gw.migration.lock().capabilities())
}

pub fn migrate_set_parameters(c: &mut Ctx, a: ParameterChanges) -> QmpResult {
    c.gw.migration.lock().set_parameters(&a)?;
    Ok(json!({}))
}

pub fn query_migrate_parameters(c: &mut Ctx, _: NoArgs) -> QmpResult {
    answer(c.gw.migration.lock().parameters())
}

/// The value's uint64 (QEMU put the int64 argument into the uint64 parameter: a
/// negative one is the uint64 of the same bits).
fn uint64(value: Int) -> u64 {
    value.0 as u64
}

/// migrate-set-cache-size: xbzrle-cache-size, with its checks.
pub fn migrate_set_cache_size(c: &mut Ctx, a: IntValue) -> QmpResult {
    let xbzrle_cache_size = Some(uint64(a.value));
    let change = ParameterChanges {
        xbzrle_cache_size,
        ..ParameterChanges::default()
    };
    migrate_set_parameters(c, change)
}

pub fn query_migrate_cache_size(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(json!(c.gw.migration.lock().xbzrle_cache_size()))
}

/// migrate_set_speed: max-bandwidth, in bytes per second.
pub fn migrate_set_speed(c: &mut Ctx, a: IntValue) -> QmpResult {
    let max_bandwidth = Some(uint64(a.value));
    migrate_set_parameters(
        c,
        ParameterChanges {
            max_bandwidth,
            ..ParameterChanges::default()
        },
    )
}

/// migrate_set_downtime: downtime-limit, given in seconds.
pub fn migrate_set_downtime(c: &mut Ctx, a: Seconds) -> QmpResult {
    c.gw.migration.lock().set_downtime_seconds(a.value)?;
    Ok(json!({}))
}
