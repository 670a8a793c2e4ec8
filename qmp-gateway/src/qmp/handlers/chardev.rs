//! The chardev commands: chardev-add / chardev-remove, query-chardev,
//! query-chardev-backends, ringbuf-write / ringbuf-read (the chardev layer does the work).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::chardev::ringbuf::{base64_decode, base64_encode, utf8_bytes, utf8_text};
use crate::chardev::spec::{Backend, KINDS};
use crate::qmp::args::{from_checked, serde_arguments, Arguments, Int, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Member, Ty};

/// chardev-add: the id and QEMU's ChardevBackend union, read by the chardev layer.
pub struct ChardevAdd {
    id: String,
    backend: Value,
}

impl Arguments for ChardevAdd {
    const MEMBERS: &'static [Member] = &[
        req("id", Ty::Str),
        req("backend", Ty::Named("ChardevBackend")),
    ];

    fn decode(mut args: Map<String, Value>) -> Result<Self, QmpError> {
        let backend = args.remove("backend").unwrap_or(Value::Null);
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        let Id { id } = from_checked(args)?;
        Ok(ChardevAdd { id, backend })
    }

    #[cfg(test)]
    fn serde_fields() -> Option<&'static [&'static str]> {
        None
    }
}

#[derive(Debug, Deserialize)]
pub struct ChardevRemove {
    pub id: String,
}

serde_arguments!(ChardevRemove, [req("id", Ty::Str)]);

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    Utf8,
    Base64,
}

#[derive(Debug, Deserialize)]
pub struct RingbufWrite {
    pub device: String,
    pub data: String,
    pub format: Option<DataFormat>,
}

serde_arguments!(
    RingbufWrite,
    [
        req("device", Ty::Str),
        req("data", Ty::Str),
        opt("format", Ty::Named("DataFormat")),
    ]
);

#[derive(Debug, Deserialize)]
pub struct RingbufRead {
    pub device: String,
    pub size: Int,
    pub format: Option<DataFormat>,
}

serde_arguments!(
    RingbufRead,
    [
        req("device", Ty::Str),
        req("size", Ty::Int),
        opt("format", Ty::Named("DataFormat")),
    ]
);

pub fn chardev_add(c: &mut Ctx, a: ChardevAdd) -> QmpResult {
    let backend = Backend::from_qmp(a.backend)
        .map_err(|e| QmpError::generic(format!("Failed to add chardev '{}': {e}", a.id)))?;
    let added = c.gw.chardevs.add(&a.id, backend, false)?;
    Ok(match added.pty {
        Some(pty) => json!({ "pty": pty }),
        None => json!({}),
    })
}

pub fn chardev_remove(c: &mut Ctx, a: ChardevRemove) -> QmpResult {
    c.gw.chardevs.remove(&a.id)?;
    Ok(json!({}))
}

pub fn query_chardev(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(serde_json::to_value(c.gw.chardevs.query()).unwrap_or_default())
}

pub fn query_chardev_backends(_: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(KINDS.iter().map(|k| json!({ "name": k })).collect())
}

pub fn ringbuf_write(c: &mut Ctx, a: RingbufWrite) -> QmpResult {
    // The device is looked up before the data is decoded, as in QEMU.
    c.gw.chardevs.ring_write(&a.device, &[])?;
    let bytes = match a.format {
        Some(DataFormat::Base64) => {
            base64_decode(&a.data).map_err(|e| QmpError::generic(e.to_string()))?
        }
        _ => utf8_bytes(&a.data),
    };
    c.gw.chardevs.ring_write(&a.device, &bytes)?;
    Ok(json!({}))
}

pub fn ringbuf_read(c: &mut Ctx, a: RingbufRead) -> QmpResult {
    // An int64 beyond its range is refused by the checker; clamp what is left.
    let size = a.size.saturating_i64();
    let bytes = c.gw.chardevs.ring_read(&a.device, size)?;
    Ok(Value::String(match a.format {
        Some(DataFormat::Base64) => base64_encode(&bytes),
        _ => utf8_text(&bytes),
    }))
}
