//! The chardev commands: chardev-add / chardev-remove, query-chardev,
//! query-chardev-backends, ringbuf-write / ringbuf-read (the chardev layer does the work),
//! and add_client (a named fd becomes a connection of a chardev: of a monitor's, a new
//! QMP or HMP session; spice and vnc answered as QEMU 7.2 without those displays).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::chardev::ringbuf::{base64_decode, base64_encode, utf8_bytes, utf8_text};
use crate::chardev::spec::{Backend, KINDS};
use crate::chardev::ChardevError;
use crate::qmp::args::{from_checked, serde_arguments, Arguments, Int, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Member, Ty};
use ipc::ErrorClass;

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
    // An fd address names a socket the gateway inherited: the command line's alone (a
    // client must not make a chardev take over an fd of the gateway's own).
    if a.backend.pointer("/data/addr/type") == Some(&json!("fd")) {
        return Err(QmpError::generic(format!(
            "Failed to add chardev '{}': an fd address is taken on the command line only \
             (--chardev socket,fd=N)",
            a.id
        )));
    }
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

#[derive(Debug, Deserialize)]
pub struct AddClient {
    pub protocol: String,
    pub fdname: String,
    pub skipauth: Option<bool>,
    pub tls: Option<bool>,
}

serde_arguments!(
    AddClient,
    [
        req("protocol", Ty::Str),
        req("fdname", Ty::Str),
        opt("skipauth", Ty::Bool),
        opt("tls", Ty::Bool),
    ]
);

/// add_client as QEMU 7.2's qmp_add_client: the calling client's named fd is taken
/// first (and closed on any error); skipauth and tls matter only to displays.
pub fn add_client(c: &mut Ctx, a: AddClient) -> QmpResult {
    let fd = c.named_fds.take(&a.fdname).map_err(|_| {
        QmpError::generic(format!(
            "File descriptor named '{}' has not been found",
            a.fdname
        ))
    })?;
    let fd = fd.into_fd();
    match a.protocol.as_str() {
        "spice" => Err(QmpError {
            class: ErrorClass::DeviceNotActive,
            desc: "SPICE is not in use".into(),
        }),
        // QEMU has no VNC display to give it to either: it answers {} and keeps the fd
        // unused; the gateway closes it.
        "vnc" => Ok(json!({})),
        protocol => match c.gw.chardevs.add_client(protocol, fd) {
            Ok(()) => Ok(json!({})),
            Err(ChardevError::NotFound(_)) => Err(QmpError::generic(format!(
                "protocol '{protocol}' is invalid"
            ))),
            Err(e) => Err(e.into()),
        },
    }
}
