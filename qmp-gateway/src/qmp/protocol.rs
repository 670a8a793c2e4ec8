//! QMP on the wire, as QEMU 7.2 speaks it: the greeting, the request envelope and its
//! errors, responses and timestamped events, each one line ending in "\r\n".

use ipc::ErrorClass;
use serde_json::{json, Map, Value};

/// The QEMU version whose QMP behaviour we reproduce, reported in the greeting.
pub const QEMU_VERSION: (u64, u64, u64) = (7, 2, 0);
pub const PACKAGE: &str = concat!(" (flotilla ", env!("CARGO_PKG_VERSION"), ")");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    pub fn not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }
}

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.desc)
    }
}

impl From<ipc::RemoteError> for QmpError {
    fn from(e: ipc::RemoteError) -> Self {
        QmpError {
            class: e.class,
            desc: e.desc,
        }
    }
}

pub type QmpResult = Result<Value, QmpError>;

/// A well-formed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub command: String,
    pub arguments: Map<String, Value>,
    pub id: Option<Value>,
    pub oob: bool,
}

/// A request that could not be accepted, with its id when it had one.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub error: QmpError,
    pub id: Option<Value>,
}

fn reject(desc: impl Into<String>, id: &Option<Value>) -> Rejected {
    Rejected {
        error: QmpError::generic(desc),
        id: id.clone(),
    }
}

/// Parses one JSON value from the stream into a request. `oob_enabled`: the client
/// negotiated the "oob" capability, so `exec-oob` is a known member.
pub fn parse_request(text: &[u8], oob_enabled: bool) -> Result<Request, Rejected> {
    let value: Value = serde_json::from_slice(text).map_err(|e| Rejected {
        error: QmpError::generic(format!("JSON parse error, {e}")),
        id: None,
    })?;
    let Value::Object(obj) = value else {
        return Err(reject("QMP input must be a JSON object", &None));
    };
    let id = obj.get("id").cloned();
    let mut execute = None;
    let mut exec_oob = None;
    let mut arguments = Map::new();
    // Taken apart in key order (so the first bad member is the one QEMU names), the
    // arguments moved rather than copied.
    for (key, v) in obj {
        match key.as_str() {
            "execute" => execute = Some(v),
            "exec-oob" if oob_enabled => exec_oob = Some(v),
            "arguments" => match v {
                Value::Object(a) => arguments = a,
                _ => {
                    return Err(reject(
                        "QMP input member 'arguments' must be an object",
                        &id,
                    ))
                }
            },
            "id" => {}
            other => {
                return Err(reject(
                    format!("QMP input member '{other}' is unexpected"),
                    &id,
                ))
            }
        }
    }
    let (name, oob, member) = match (execute, exec_oob) {
        (Some(_), Some(_)) => {
            return Err(reject(
                "QMP input member 'execute' clashes with 'exec-oob'",
                &id,
            ))
        }
        (Some(v), None) => (v, false, "execute"),
        (None, Some(v)) => (v, true, "exec-oob"),
        (None, None) => return Err(reject("QMP input lacks member 'execute'", &id)),
    };
    let Value::String(command) = name else {
        return Err(reject(
            format!("QMP input member '{member}' must be a string"),
            &id,
        ));
    };
    Ok(Request {
        command,
        arguments,
        id,
        oob,
    })
}

fn line(value: Value) -> Vec<u8> {
    let mut out = value.to_string().into_bytes();
    out.extend_from_slice(b"\r\n");
    out
}

pub fn response(result: QmpResult, id: Option<Value>) -> Vec<u8> {
    let mut obj = Map::new();
    match result {
        Ok(v) => {
            obj.insert("return".into(), v);
        }
        Err(e) => {
            obj.insert(
                "error".into(),
                json!({"class": e.class.as_str(), "desc": e.desc}),
            );
        }
    }
    if let Some(id) = id {
        obj.insert("id".into(), id);
    }
    line(Value::Object(obj))
}

pub fn event(name: &str, data: Option<Value>) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut obj = Map::new();
    obj.insert("event".into(), json!(name));
    if let Some(d) = data {
        obj.insert("data".into(), d);
    }
    obj.insert(
        "timestamp".into(),
        json!({"seconds": now.as_secs(), "microseconds": now.subsec_micros()}),
    );
    line(Value::Object(obj))
}

pub fn version() -> Value {
    let (major, minor, micro) = QEMU_VERSION;
    json!({"qemu": {"major": major, "minor": minor, "micro": micro}, "package": PACKAGE})
}

pub fn greeting() -> Vec<u8> {
    greeting_offering(true)
}

/// The greeting, offering OOB or not (QEMU offers it only on chardevs that can run in
/// its monitor I/O thread: not on a ringbuf).
pub fn greeting_offering(oob: bool) -> Vec<u8> {
    let capabilities: &[&str] = if oob { &["oob"] } else { &[] };
    line(json!({"QMP": {"version": version(), "capabilities": capabilities}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, oob: bool) -> String {
        parse_request(text.as_bytes(), oob).unwrap_err().error.desc
    }

    #[test]
    fn envelope_errors_match_qemu() {
        assert_eq!(err("[1,2]", false), "QMP input must be a JSON object");
        assert_eq!(err("42", false), "QMP input must be a JSON object");
        assert_eq!(
            err(r#"{"execute":1}"#, false),
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            err(r#"{"foo":1}"#, false),
            "QMP input member 'foo' is unexpected"
        );
        assert_eq!(
            err(r#"{"execute":"x","arguments":[]}"#, false),
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            err(r#"{"execute":"x","arguments":null}"#, false),
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            err(r#"{"exec-oob":"x"}"#, false),
            "QMP input member 'exec-oob' is unexpected"
        );
        assert_eq!(
            err(r#"{"execute":"x","exec-oob":"x"}"#, true),
            "QMP input member 'execute' clashes with 'exec-oob'"
        );
        assert_eq!(
            err(r#"{"id":1}"#, false),
            "QMP input lacks member 'execute'"
        );
        assert!(err("{invalid}", false).starts_with("JSON parse error, "));
    }

    #[test]
    fn ids_are_kept_whatever_they_are() {
        let r = parse_request(br#"{"execute":"q","id":{"a":[1,null]}}"#, false).unwrap();
        assert_eq!(r.id, Some(json!({"a":[1,null]})));
        let rej = parse_request(br#"{"execute":"q","id":"x","bogus":1}"#, false).unwrap_err();
        assert_eq!(rej.id, Some(json!("x")));
        let out = response(Err(rej.error), rej.id);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], json!("x"));
        assert_eq!(v["error"]["class"], json!("GenericError"));
        assert!(out.ends_with(b"\r\n"));
    }

    #[test]
    fn exec_oob_is_accepted_once_negotiated() {
        let r = parse_request(br#"{"exec-oob":"query-status"}"#, true).unwrap();
        assert!(r.oob);
        assert_eq!(r.command, "query-status");
    }

    #[test]
    fn events_carry_wall_clock_timestamps() {
        let v: Value =
            serde_json::from_slice(&event("RESET", Some(json!({"guest": true})))).unwrap();
        assert_eq!(v["event"], "RESET");
        assert!(v["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
        assert!(v["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
        let v: Value = serde_json::from_slice(&event("STOP", None)).unwrap();
        assert!(v.get("data").is_none());
    }
}
