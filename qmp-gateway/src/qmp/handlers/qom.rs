//! QOM introspection of the types the VM is made of (qom_types.rs): qom-list-types,
//! device-list-properties, qom-list-properties, with QEMU 7.2's filters and errors.

use ipc::ErrorClass;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::qmp::args::serde_arguments;
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};
use crate::qom_types::{self, QomType, QOM_TYPES};

#[derive(Debug, Deserialize)]
pub struct QomListTypes {
    pub implements: Option<String>,
    #[serde(rename = "abstract")]
    pub include_abstract: Option<bool>,
}

serde_arguments!(
    QomListTypes,
    [opt("implements", Ty::Str), opt("abstract", Ty::Bool)]
);

/// device-list-properties' and qom-list-properties' arguments.
#[derive(Debug, Deserialize)]
pub struct TypeName {
    pub typename: String,
}

serde_arguments!(TypeName, [req("typename", Ty::Str)]);

fn type_info(t: &QomType) -> Value {
    let mut v = json!({"name": t.name});
    if t.is_abstract {
        v["abstract"] = json!(true);
    }
    if let Some(p) = t.parent {
        v["parent"] = json!(p);
    }
    v
}

pub fn qom_list_types(_: &mut Ctx, a: QomListTypes) -> QmpResult {
    let include_abstract = a.include_abstract.unwrap_or(false);
    Ok(QOM_TYPES
        .iter()
        .filter(|t| include_abstract || !t.is_abstract)
        .filter(|t| {
            a.implements
                .as_deref()
                .is_none_or(|i| qom_types::implements(t, i))
        })
        .map(type_info)
        .collect())
}

fn not_found(desc: String) -> QmpError {
    QmpError {
        class: ErrorClass::DeviceNotFound,
        desc,
    }
}

pub fn device_list_properties(_: &mut Ctx, a: TypeName) -> QmpResult {
    let t = qom_types::find(&a.typename)
        .ok_or_else(|| not_found(format!("Device '{}' not found", a.typename)))?;
    if t.is_abstract || !t.is_device() {
        return Err(QmpError::generic(
            "Parameter 'typename' expects a non-abstract device type",
        ));
    }
    Ok(Value::Array(t.property_infos()))
}

pub fn qom_list_properties(_: &mut Ctx, a: TypeName) -> QmpResult {
    let t = qom_types::find(&a.typename)
        .ok_or_else(|| not_found(format!("Class '{}' not found", a.typename)))?;
    Ok(Value::Array(t.property_infos()))
}
