//! device_add and device_del. device_add's arguments are open (each model has its own
//! properties) and read as QEMU 7.2 reads them, through QemuOpts (devices/spec.rs),
//! not by the table's checker: its members are only what the schema shows.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::qmp::args::serde_arguments;
use crate::qmp::context::{Ctx, Handler};
use crate::qmp::protocol::QmpResult;
use crate::qmp::qapi::{opt, req, Member, Ty};

/// device_add's handler: every argument goes to the device's model.
pub struct DeviceAdd;

/// What QEMU's schema declares (the properties are 'gen': false's any).
const DEVICE_ADD_MEMBERS: &[Member] = &[
    req("driver", Ty::Str),
    opt("bus", Ty::Str),
    opt("id", Ty::Str),
];

impl Handler for DeviceAdd {
    fn members(&self) -> &'static [Member] {
        DEVICE_ADD_MEMBERS
    }

    fn run(&self, ctx: &mut Ctx, args: Map<String, Value>) -> QmpResult {
        ctx.gw.device_add(&args)?;
        Ok(json!({}))
    }

    #[cfg(test)]
    fn serde_fields(&self) -> Option<&'static [&'static str]> {
        None
    }

    #[cfg(test)]
    fn decodes(&self, _: Map<String, Value>) -> Result<(), crate::qmp::protocol::QmpError> {
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
pub struct DeviceDel {
    pub id: String,
}

serde_arguments!(DeviceDel, [req("id", Ty::Str)]);

pub fn device_del(c: &mut Ctx, a: DeviceDel) -> QmpResult {
    c.gw.device_del(&a.id)?;
    Ok(json!({}))
}
