//! Host network backends (QEMU's -netdev / netdev_add), the ones a vhost-user-net daemon
//! can serve: `tap` (by interface name, or an fd the client passed), and a UDP link to
//! another VM (`socket,udp=,localaddr=` and `dgram,local=,remote=`: one frame per
//! datagram, so a Flotilla VM and a QEMU VM can be joined too). The gateway opens them;
//! the daemon gets the fds.

use std::net::ToSocketAddrs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use ipc::NetBackendKind;
use serde_json::{Map, Value};

use super::error::NetError;
use crate::fdstore::inherited::{self, InheritedError};
use crate::fdstore::{Charge, NamedFds};

/// More queue pairs than any guest needs; a bound on fds opened for one request.
pub const MAX_QUEUE_PAIRS: u32 = 16;

/// Where a tap comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapSource {
    Ifname(String),
    /// On the command line: an inherited fd number. Over QMP: a getfd name.
    Fd(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendSpec {
    Tap { source: TapSource, queues: u32 },
    Udp { local: String, remote: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetdevSpec {
    pub id: String,
    /// Its type as given (tap, socket, dgram): QEMU's net client driver.
    pub driver: &'static str,
    pub backend: BackendSpec,
}

/// A net client as QEMU's `info network` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// Its name: the netdev's id (kept by a NIC after netdev_del, as QEMU keeps the
    /// net client of a NIC's deleted netdev until the NIC goes).
    pub name: String,
    /// QEMU's NetClientDriver name (tap, socket, dgram).
    pub driver: &'static str,
    /// QEMU's info_str for the backend.
    pub text: String,
    /// Its place in the order of making: QEMU lists its net clients in that order.
    pub made: u64,
    /// Whether a NIC has taken it: QEMU numbers a netdev's queues (index=) only then,
    /// and they keep their numbers when the NIC goes.
    pub numbered: bool,
}

/// The next net client's `made`.
pub fn next_made() -> u64 {
    static MADE: AtomicU64 = AtomicU64::new(0);
    MADE.fetch_add(1, Ordering::Relaxed)
}

/// `HOST:PORT` with the host's first IPv4 address, as QEMU prints a UDP peer
/// (inet_ntoa); as given if it does not resolve so.
fn numeric(addr: &str) -> String {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(|a| a.is_ipv4()))
        .map_or_else(|| addr.to_string(), |a| a.to_string())
}

/// A backend, opened.
pub struct Netdev {
    pub id: String,
    pub kind: NetBackendKind,
    /// One per queue pair (a tap), or the one socket.
    pub fds: Vec<OwnedFd>,
    /// For logs and `info network`.
    pub client: ClientInfo,
    /// Opened by netdev_add: its fds are charged to the fd budget while it exists.
    pub charge: Option<Charge>,
}

const TAP_KEYS: &[&str] = &[
    "ifname",
    "fd",
    "queues",
    "script",
    "downscript",
    "vhost",
    "vnet_hdr",
];
const SOCKET_KEYS: &[&str] = &["udp", "localaddr"];
const DGRAM_KEYS: &[&str] = &["local", "remote"];
/// Types QEMU knows that Flotilla has no daemon for.
const OTHER_TYPES: &[&str] = &[
    "user",
    "l2tpv3",
    "vde",
    "bridge",
    "hubport",
    "netmap",
    "vhost-user",
    "vhost-vdpa",
    "stream",
];

/// A `HOST:PORT` as QEMU checks it.
fn host_port(value: &str) -> Result<String, NetError> {
    if !value.contains(':') {
        return Err(NetError::NoPort(value.to_string()));
    }
    Ok(value.to_string())
}

/// One of dgram's `local`/`remote`: `{"type": "inet", "host": ..., "port": ...}`.
fn inet_address(key: &'static str, value: &Value) -> Result<String, NetError> {
    let Value::Object(o) = value else {
        return Err(NetError::InvalidTypeExpected {
            parameter: key.to_string(),
            expected: "object",
        });
    };
    match o.get("type").and_then(Value::as_str) {
        Some("inet") => {}
        Some(t) => {
            return Err(NetError::NotInet {
                key,
                kind: t.to_string(),
            })
        }
        None => return Err(NetError::MissingParameter(format!("{key}.type"))),
    }
    let host = o
        .get("host")
        .and_then(Value::as_str)
        .ok_or_else(|| NetError::MissingParameter(format!("{key}.host")))?;
    let port = match o.get("port") {
        Some(Value::String(p)) => p.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(NetError::MissingParameter(format!("{key}.port"))),
    };
    for k in o.keys() {
        if !["type", "host", "port", "numeric", "ipv4", "ipv6"].contains(&k.as_str()) {
            return Err(NetError::UnexpectedParameter(format!("{key}.{k}")));
        }
    }
    // An IPv6 literal goes in brackets so that HOST:PORT parses.
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "on" } else { "off" }.into()),
        _ => None,
    }
}

impl BackendSpec {
    /// How many fds opening it makes the gateway hold.
    pub fn fds(&self) -> usize {
        match self {
            BackendSpec::Tap { queues, .. } => *queues as usize,
            BackendSpec::Udp { .. } => 1,
        }
    }
}

impl NetdevSpec {
    /// From netdev_add's arguments (or the command line's, all values as strings).
    pub fn from_args(args: &Map<String, Value>) -> Result<NetdevSpec, NetError> {
        let kind = args
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| NetError::MissingParameter("type".into()))?;
        let id = args
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| NetError::MissingParameter("id".into()))?
            .to_string();
        if id.is_empty() || !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(NetError::NotAnIdentifier("id"));
        }
        let (driver, keys): (&'static str, &[&str]) = match kind {
            "tap" => ("tap", TAP_KEYS),
            "socket" => ("socket", SOCKET_KEYS),
            "dgram" => ("dgram", DGRAM_KEYS),
            t if OTHER_TYPES.contains(&t) => {
                return Err(NetError::BackendNotAvailable(t.to_string()))
            }
            t => {
                return Err(NetError::BadValue {
                    parameter: "type",
                    value: t.to_string(),
                })
            }
        };
        for k in args.keys() {
            if k != "type" && k != "id" && !keys.contains(&k.as_str()) {
                return Err(NetError::UnexpectedParameter(k.clone()));
            }
        }
        let get = |k: &str| -> Result<Option<String>, NetError> {
            match args.get(k) {
                None => Ok(None),
                Some(v) => text(v)
                    .map(Some)
                    .ok_or_else(|| NetError::InvalidType(k.to_string())),
            }
        };
        let backend = match kind {
            "tap" => {
                for (k, allowed) in [("script", "no"), ("downscript", "no"), ("vhost", "off")] {
                    if let Some(v) = get(k)? {
                        if v != allowed && !(k == "vhost" && v == "false") {
                            return Err(NetError::TapOptionNotSupported {
                                key: k,
                                value: v,
                                allowed,
                            });
                        }
                    }
                }
                if let Some(v) = get("vnet_hdr")? {
                    if v == "off" || v == "false" {
                        return Err(NetError::VnetHdrOff);
                    }
                }
                let queues = match get("queues")? {
                    None => 1,
                    Some(q) => q
                        .parse::<u32>()
                        .ok()
                        .filter(|q| (1..=MAX_QUEUE_PAIRS).contains(q))
                        .ok_or_else(|| NetError::Queues {
                            value: q.clone(),
                            max: MAX_QUEUE_PAIRS,
                        })?,
                };
                let source = match (get("ifname")?, get("fd")?) {
                    (Some(name), None) => TapSource::Ifname(name),
                    (None, Some(fd)) => TapSource::Fd(fd),
                    (Some(_), Some(_)) => return Err(NetError::IfnameWithFd),
                    (None, None) => return Err(NetError::TapWithoutSource),
                };
                if matches!(source, TapSource::Fd(_)) && queues > 1 {
                    return Err(NetError::FdWithQueues);
                }
                BackendSpec::Tap { source, queues }
            }
            "socket" => {
                let udp = get("udp")?.ok_or(NetError::SocketNotUdp)?;
                let local = get("localaddr")?.ok_or(NetError::NoLocaladdr)?;
                BackendSpec::Udp {
                    local: host_port(&local)?,
                    remote: host_port(&udp)?,
                }
            }
            _ => {
                let local = args.get("local").ok_or(NetError::NoDgramLocal)?;
                let remote = args.get("remote").ok_or(NetError::NoDgramRemote)?;
                BackendSpec::Udp {
                    local: inet_address("local", local)?,
                    remote: inet_address("remote", remote)?,
                }
            }
        };
        Ok(NetdevSpec {
            id,
            driver,
            backend,
        })
    }

    /// From the command line's `TYPE,id=ID,key=value,...` (dgram's addresses as
    /// `local.host=`, `local.port=`, `remote.host=`, `remote.port=`).
    pub fn parse_cli(s: &str) -> Result<NetdevSpec, String> {
        let mut parts = s.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut args = Map::new();
        args.insert("type".into(), Value::String(kind.into()));
        let mut local = Map::new();
        let mut remote = Map::new();
        for part in parts {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected key=value"))?;
            let v = Value::String(v.to_string());
            if let Some(sub) = k.strip_prefix("local.") {
                local.insert(sub.into(), v);
            } else if let Some(sub) = k.strip_prefix("remote.") {
                remote.insert(sub.into(), v);
            } else {
                args.insert(k.into(), v);
            }
        }
        for (k, m) in [("local", local), ("remote", remote)] {
            if !m.is_empty() {
                args.insert(k.into(), Value::Object(m));
            }
        }
        NetdevSpec::from_args(&args).map_err(|e| e.to_string())
    }

    pub fn queue_pairs(&self) -> u32 {
        match &self.backend {
            BackendSpec::Tap { queues, .. } => *queues,
            BackendSpec::Udp { .. } => 1,
        }
    }

    /// Opens the backend. `named`: a QMP client's getfd names (None on the command
    /// line, where `fd=` is an inherited descriptor number).
    pub fn open(&self, named: Option<&NamedFds>) -> Result<Netdev, NetError> {
        let (kind, fds, text) = match &self.backend {
            BackendSpec::Tap {
                source: TapSource::Ifname(name),
                queues,
            } => {
                let fds =
                    ipc::host::open_tap(name, *queues as usize).map_err(|error| NetError::Tap {
                        name: name.clone(),
                        error,
                    })?;
                // No script runs: QEMU's text for script=no.
                let text = format!("ifname={name},script=no,downscript=no");
                (NetBackendKind::Tap, fds, text)
            }
            BackendSpec::Tap {
                source: TapSource::Fd(fd),
                ..
            } => {
                let owned = match named {
                    Some(n) => n
                        .dup(fd)
                        .map_err(|_| NetError::NamedFdNotFound(fd.clone()))?,
                    None => inherited_fd(fd)?,
                };
                // QEMU prints the number the fd has in its process: ours here.
                let text = format!("fd={}", owned.as_raw_fd());
                (NetBackendKind::Tap, vec![owned], text)
            }
            BackendSpec::Udp { local, remote } => {
                let fd = ipc::host::open_datagram(local, remote).map_err(|error| {
                    NetError::Datagram {
                        local: local.clone(),
                        remote: remote.clone(),
                        error,
                    }
                })?;
                let text = match self.driver {
                    "socket" => format!("socket: udp={}", numeric(remote)),
                    _ => format!("udp={}/{}", numeric(local), numeric(remote)),
                };
                (NetBackendKind::Datagram, vec![fd], text)
            }
        };
        Ok(Netdev {
            id: self.id.clone(),
            kind,
            fds,
            client: ClientInfo {
                name: self.id.clone(),
                driver: self.driver,
                text,
                made: next_made(),
                numbered: false,
            },
            charge: None,
        })
    }
}

/// `fd=N` on the command line: a descriptor the gateway's parent left open for it.
fn inherited_fd(text: &str) -> Result<OwnedFd, NetError> {
    let fd: i32 = text
        .parse()
        .ok()
        .filter(|fd| *fd > 2)
        .ok_or_else(|| NetError::BadInheritedFd(text.to_string()))?;
    inherited::take(fd).map_err(|e| match e {
        InheritedError::NotOpen(n) => NetError::InheritedFdClosed(n),
        InheritedError::Taken(n) => NetError::InheritedFdTaken(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetdevSpec, String> {
        NetdevSpec::from_args(v.as_object().unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn command_line_and_qmp_forms() {
        assert_eq!(
            NetdevSpec::parse_cli("tap,id=n0,ifname=flt0,queues=2,script=no,downscript=no")
                .unwrap(),
            NetdevSpec {
                id: "n0".into(),
                driver: "tap",
                backend: BackendSpec::Tap {
                    source: TapSource::Ifname("flt0".into()),
                    queues: 2
                }
            }
        );
        let dgram = NetdevSpec::parse_cli(
            "dgram,id=d,local.type=inet,local.host=127.0.0.1,local.port=5000,remote.type=inet,remote.host=127.0.0.1,remote.port=5001",
        )
        .unwrap();
        assert_eq!(
            dgram.backend,
            BackendSpec::Udp {
                local: "127.0.0.1:5000".into(),
                remote: "127.0.0.1:5001".into()
            }
        );
        let socket = parse(json!({"type": "socket", "id": "s", "udp": "127.0.0.1:5001", "localaddr": "127.0.0.1:5000"})).unwrap();
        assert_eq!(socket.backend, dgram.backend);
        let qmp = parse(json!({"type": "dgram", "id": "d",
            "local": {"type": "inet", "host": "127.0.0.1", "port": "5000"},
            "remote": {"type": "inet", "host": "127.0.0.1", "port": 5001}}))
        .unwrap();
        assert_eq!(qmp.backend, dgram.backend);
        assert_eq!(
            parse(json!({"type": "tap", "id": "t", "fd": "tapfd"}))
                .unwrap()
                .backend,
            BackendSpec::Tap {
                source: TapSource::Fd("tapfd".into()),
                queues: 1
            }
        );
    }

    #[test]
    fn bad_arguments_get_qemus_errors() {
        let cases = [
            (json!({"id": "x"}), "Parameter 'type' is missing"),
            (json!({"type": "tap"}), "Parameter 'id' is missing"),
            (
                json!({"type": "bogus", "id": "x"}),
                "Parameter 'type' does not accept value 'bogus'",
            ),
            (
                json!({"type": "tap", "id": "x", "bogus": 1}),
                "Parameter 'bogus' is unexpected",
            ),
            (
                json!({"type": "tap", "id": "x", "udp": "a:1"}),
                "Parameter 'udp' is unexpected",
            ),
            (
                json!({"type": "socket", "id": "x", "udp": "nothost", "localaddr": "127.0.0.1:1"}),
                "host address 'nothost' doesn't contain ':' separating host from port",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(parse(args.clone()).unwrap_err(), want, "{args}");
        }
        for bad in [
            json!({"type": "user", "id": "x"}),
            json!({"type": "tap", "id": "x"}),
            json!({"type": "tap", "id": "x", "ifname": "a", "queues": 0}),
            json!({"type": "tap", "id": "x", "ifname": "a", "queues": "99"}),
            json!({"type": "tap", "id": "x", "ifname": "a", "vhost": "on"}),
            json!({"type": "tap", "id": "x", "ifname": "a", "script": "/etc/qemu-ifup"}),
            json!({"type": "tap", "id": "x", "fd": "f", "queues": 2}),
            json!({"type": "socket", "id": "x", "udp": "127.0.0.1:1"}),
            json!({"type": "dgram", "id": "x", "local": "127.0.0.1:1", "remote": {}}),
            json!({"type": "dgram", "id": "x", "local": {"type": "unix", "path": "/x"}, "remote": {}}),
            json!({"type": "tap", "id": "9x", "ifname": "a"}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad} was accepted");
        }
        assert!(NetdevSpec::parse_cli("tap,id=n0,ifname").is_err());
    }

    #[test]
    fn opening_a_tap_that_cannot_exist_is_an_error_not_a_panic() {
        let spec = NetdevSpec::parse_cli("tap,id=n0,ifname=this/is/bad").unwrap();
        assert!(spec.open(None).is_err());
        let spec = NetdevSpec::parse_cli("tap,id=n0,fd=1").unwrap();
        assert!(spec.open(None).is_err());
    }
}
