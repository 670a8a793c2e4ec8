//! What a chardev is to be, read once from either of its two forms: chardev-add's
//! ChardevBackend union (`{"type": "file", "data": {"out": ...}}`, QEMU 7.2's shape),
//! or the command line's `--chardev BACKEND,id=ID,...` (QEMU's -chardev options), which
//! is turned into the same union first.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ChardevError;
use super::ringbuf::DEFAULT_SIZE;
use super::stream::is_stream_socket;
use crate::keyval;

/// Where a socket or udp chardev's peer (or own end) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Inet {
        host: String,
        port: String,
    },
    /// A socket the gateway inherited as this fd number (the command line's fd=N, as
    /// libvirt passes its monitor's listening socket): the chardev owns it from then on.
    Fd(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Null,
    File {
        out: PathBuf,
        input: Option<PathBuf>,
        append: bool,
    },
    /// `path` both ways, or `path.in` and `path.out` where both exist (QEMU's pipe).
    Pipe(PathBuf),
    /// `memory` is ringbuf's alias (its filename says which was asked for).
    Ringbuf {
        size: usize,
        memory: bool,
    },
    Socket {
        addr: Address,
        server: bool,
        /// A server waits for its first client before the VM starts (command line only:
        /// chardev-add never waits, as in QEMU).
        wait: bool,
        /// A client connects again this many seconds after it lost (or never had) its
        /// server; 0: it fails instead.
        reconnect: u64,
        nodelay: bool,
    },
    Udp {
        remote: (String, String),
        local: Option<(String, String)>,
    },
    Pty,
    /// The gateway's own stdin and stdout.
    Stdio,
}

impl Backend {
    /// The kind's name, as query-chardev-backends lists it.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Null => "null",
            Backend::File { .. } => "file",
            Backend::Pipe(_) => "pipe",
            Backend::Ringbuf { memory: false, .. } => "ringbuf",
            Backend::Ringbuf { memory: true, .. } => "memory",
            Backend::Socket { .. } => "socket",
            Backend::Udp { .. } => "udp",
            Backend::Pty => "pty",
            Backend::Stdio => "stdio",
        }
    }
}

/// The kinds of backend the gateway has (query-chardev-backends; chardev-add's enum).
pub const KINDS: &[&str] = &[
    "file", "pipe", "socket", "udp", "pty", "null", "stdio", "ringbuf", "memory",
];

/// The members ChardevCommon gives every backend: a log file, which we do not keep.
#[derive(Debug, Default, Deserialize)]
struct Common {
    logfile: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FileData {
    #[serde(flatten)]
    common: Common,
    #[serde(rename = "in")]
    input: Option<String>,
    out: String,
    append: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct HostdevData {
    #[serde(flatten)]
    common: Common,
    device: String,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
enum AddressData {
    Inet(InetData),
    Unix(UnixData),
    Fd(FdData),
}

#[derive(Debug, Deserialize)]
struct FdData {
    str: String,
}

#[derive(Debug, Deserialize)]
struct InetData {
    host: String,
    port: String,
}

#[derive(Debug, Deserialize)]
struct UnixData {
    path: String,
    #[serde(rename = "abstract")]
    is_abstract: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SocketData {
    #[serde(flatten)]
    common: Common,
    addr: AddressData,
    tls_creds: Option<String>,
    server: Option<bool>,
    wait: Option<bool>,
    nodelay: Option<bool>,
    telnet: Option<bool>,
    tn3270: Option<bool>,
    websocket: Option<bool>,
    reconnect: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct UdpData {
    #[serde(flatten)]
    common: Common,
    remote: AddressData,
    local: Option<AddressData>,
}

#[derive(Debug, Deserialize)]
struct RingbufData {
    #[serde(flatten)]
    common: Common,
    size: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
enum BackendData {
    File(FileData),
    Pipe(HostdevData),
    Socket(SocketData),
    Udp(UdpData),
    Pty(Common),
    Null(Common),
    Stdio(Common),
    Ringbuf(RingbufData),
    Memory(RingbufData),
}

/// A ringbuf's size: QEMU's power of two, of the int64 read as QEMU's size_t (so a
/// size of 2^63 and more from the command line is a power of two, then too big for the
/// registry's bound). (QEMU takes 0 and then fails on the first write; it is refused
/// here with the same words.)
fn ring_size(size: Option<i64>) -> Result<usize, ChardevError> {
    match size.map(|s| s as u64) {
        None => Ok(DEFAULT_SIZE),
        Some(s) if s.is_power_of_two() => usize::try_from(s).map_err(|_| ChardevError::RingbufSize),
        Some(_) => Err(ChardevError::RingbufSize),
    }
}

fn inet(addr: AddressData, what: &str) -> Result<(String, String), ChardevError> {
    match addr {
        AddressData::Inet(i) => Ok((i.host, i.port)),
        AddressData::Unix(_) | AddressData::Fd(_) => Err(ChardevError::Unsupported(format!(
            "a udp chardev's {what} address must be inet"
        ))),
    }
}

fn no_log(common: &Common) -> Result<(), ChardevError> {
    match common.logfile {
        Some(_) => Err(ChardevError::Unsupported("logfile".into())),
        None => Ok(()),
    }
}

impl Backend {
    /// chardev-add's `backend`, already checked against the ChardevBackend union.
    pub fn from_qmp(backend: Value) -> Result<Backend, ChardevError> {
        let data: BackendData = serde_json::from_value(backend)
            .map_err(|e| ChardevError::Unsupported(format!("backend: {e}")))?;
        Ok(match data {
            BackendData::File(f) => {
                no_log(&f.common)?;
                Backend::File {
                    out: f.out.into(),
                    input: f.input.map(PathBuf::from),
                    append: f.append.unwrap_or(false),
                }
            }
            BackendData::Pipe(p) => {
                no_log(&p.common)?;
                Backend::Pipe(p.device.into())
            }
            BackendData::Socket(s) => {
                no_log(&s.common)?;
                for (name, on) in [
                    ("telnet", s.telnet),
                    ("tn3270", s.tn3270),
                    ("websocket", s.websocket),
                ] {
                    if on == Some(true) {
                        return Err(ChardevError::Unsupported(name.into()));
                    }
                }
                if s.tls_creds.is_some() {
                    return Err(ChardevError::Unsupported("tls-creds".into()));
                }
                let addr = match s.addr {
                    AddressData::Inet(i) => Address::Inet {
                        host: i.host,
                        port: i.port,
                    },
                    AddressData::Unix(u) if u.is_abstract == Some(true) => {
                        return Err(ChardevError::Unsupported("abstract".into()))
                    }
                    AddressData::Unix(u) => Address::Unix(u.path.into()),
                    AddressData::Fd(f) => Address::Fd(f.str.parse().map_err(|_| {
                        ChardevError::Invalid(format!("Unable to parse FD number {}", f.str))
                    })?),
                };
                let server = s.server.unwrap_or(true);
                let reconnect = s.reconnect.unwrap_or(0);
                // QEMU's checks (char-socket.c), in its words.
                if server && reconnect > 0 {
                    return Err(ChardevError::Invalid(
                        "'reconnect' option is incompatible with 'server' option".into(),
                    ));
                }
                Backend::Socket {
                    addr,
                    server,
                    wait: s.wait.unwrap_or(true),
                    reconnect: reconnect.max(0) as u64,
                    nodelay: s.nodelay.unwrap_or(false),
                }
            }
            BackendData::Udp(u) => {
                no_log(&u.common)?;
                Backend::Udp {
                    remote: inet(u.remote, "remote")?,
                    local: u.local.map(|l| inet(l, "local")).transpose()?,
                }
            }
            BackendData::Pty(c) => {
                no_log(&c)?;
                Backend::Pty
            }
            BackendData::Null(c) => {
                no_log(&c)?;
                Backend::Null
            }
            BackendData::Stdio(c) => {
                no_log(&c)?;
                Backend::Stdio
            }
            BackendData::Ringbuf(r) => {
                no_log(&r.common)?;
                Backend::Ringbuf {
                    size: ring_size(r.size)?,
                    memory: false,
                }
            }
            BackendData::Memory(r) => {
                no_log(&r.common)?;
                Backend::Ringbuf {
                    size: ring_size(r.size)?,
                    memory: true,
                }
            }
        })
    }

    /// `--chardev BACKEND,id=ID,...` (QEMU's -chardev options for the backends we have):
    /// the id and the backend.
    pub fn from_cli(s: &str) -> Result<(String, Backend), String> {
        let mut opts = keyval::split_options(s).into_iter();
        let kind = opts.next().unwrap_or_default();
        let mut id = None;
        let mut o = Map::new();
        for part in opts {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected key=value"))?;
            if k == "id" {
                id = Some(v.to_string());
            } else {
                o.insert(k.into(), Value::String(v.into()));
            }
        }
        let id = id.ok_or("chardev: no id specified")?;
        let data = cli_data(&kind, o)?;
        let backend =
            Backend::from_qmp(json!({"type": kind, "data": data})).map_err(|e| e.to_string())?;
        Ok((id, backend))
    }
}

/// A QemuOpts boolean.
fn cli_bool(k: &str, v: &str) -> Result<Value, String> {
    keyval::boolean(v)
        .map(Value::Bool)
        .ok_or_else(|| format!("Parameter '{k}' expects 'on' or 'off'"))
}

/// The ChardevBackend data of a -chardev's options (QEMU's qemu_chr_parse_* for each
/// kind): every option must be one the kind takes.
fn cli_data(kind: &str, mut o: Map<String, Value>) -> Result<Value, String> {
    let mut take = |k: &str| o.remove(k).and_then(|v| v.as_str().map(str::to_string));
    let data = match kind {
        "null" | "pty" | "stdio" => json!({}),
        "file" => {
            let out = take("path").ok_or("chardev: file: no filename given")?;
            let mut d = json!({"out": out});
            if let Some(i) = take("input-path") {
                d["in"] = i.into();
            }
            if let Some(a) = take("append") {
                d["append"] = cli_bool("append", &a)?;
            }
            d
        }
        "pipe" => json!({"device": take("path").ok_or("chardev: pipe: no device path given")?}),
        // QEMU's qemu_chr_parse_ringbuf: a QemuOpts size, 0 meaning none given, into
        // ChardevRingbuf's int64 (where 2^63 and above wrap).
        "ringbuf" | "memory" => match take("size") {
            Some(s) => match ipc::host::parse_size(&s, 1) {
                Ok(0) => json!({}),
                Ok(n) => json!({"size": n as i64}),
                Err(e) => return Err(e.option_message("size", &s)),
            },
            None => json!({}),
        },
        "socket" => {
            let fd = take("fd");
            let addr = match (take("path"), take("host"), take("port")) {
                (None, None, None) if fd.is_some() => {
                    let text = fd.unwrap_or_default();
                    // Checked now, before the gateway opens files of its own: fd N is
                    // then one it inherited, never one of its own.
                    let n: i32 = text
                        .parse()
                        .map_err(|_| format!("Unable to parse FD number {text}"))?;
                    if !is_stream_socket(n) {
                        return Err(format!("File descriptor '{n}' is not a socket"));
                    }
                    json!({"type": "fd", "data": {"str": text}})
                }
                _ if fd.is_some() => {
                    return Err("None or one of 'path', 'fd' or 'host' option required.".into())
                }
                (Some(path), None, None) => json!({"type": "unix", "data": {"path": path}}),
                (None, host, Some(port)) => json!({"type": "inet",
                    "data": {"host": host.unwrap_or_default(), "port": port}}),
                (None, _, None) => return Err("chardev: socket: no port given".into()),
                _ => return Err("chardev: socket: path= and host=/port= exclude each other".into()),
            };
            let mut d = json!({"addr": addr, "server": false});
            for k in ["server", "wait", "nodelay", "telnet"] {
                if let Some(v) = take(k) {
                    d[k] = cli_bool(k, &v)?;
                }
            }
            if let Some(r) = take("reconnect") {
                d["reconnect"] = r
                    .parse::<i64>()
                    .map_err(|_| "Parameter 'reconnect' expects a number".to_string())?
                    .into();
            }
            d
        }
        "udp" => {
            let host = take("host").unwrap_or_else(|| "localhost".into());
            let port = take("port").ok_or("chardev: udp: remote port not specified")?;
            let mut d = json!({"remote": {"type": "inet", "data": {"host": host, "port": port}}});
            let (la, lp) = (take("localaddr"), take("localport"));
            if la.is_some() || lp.is_some() {
                d["local"] = json!({"type": "inet", "data": {
                    "host": la.unwrap_or_default(), "port": lp.unwrap_or_else(|| "0".into())}});
            }
            d
        }
        other => return Err(format!("'{other}' is not a valid char driver name")),
    };
    match o.keys().next() {
        Some(k) => Err(format!("Invalid parameter '{k}'")),
        None => Ok(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_reads_as_chardev_add() {
        let (id, b) = Backend::from_cli("socket,id=c,path=/tmp/a,,b,server=on,wait=off").unwrap();
        assert_eq!(id, "c");
        assert_eq!(
            b,
            Backend::Socket {
                addr: Address::Unix("/tmp/a,b".into()),
                server: true,
                wait: false,
                reconnect: 0,
                nodelay: false
            }
        );
        let (_, b) = Backend::from_cli("socket,id=t,host=127.0.0.1,port=5,reconnect=2").unwrap();
        assert!(matches!(
            b,
            Backend::Socket {
                server: false,
                reconnect: 2,
                ..
            }
        ));
        let (_, b) = Backend::from_cli("memory,id=m,size=4k").unwrap();
        assert_eq!(
            b,
            Backend::Ringbuf {
                size: 4096,
                memory: true
            }
        );
        let (_, b) = Backend::from_cli("file,id=f,path=/x,append=on").unwrap();
        assert_eq!(
            b,
            Backend::File {
                out: "/x".into(),
                input: None,
                append: true
            }
        );
        let (_, b) = Backend::from_cli("udp,id=u,port=9,localport=8").unwrap();
        assert_eq!(
            b,
            Backend::Udp {
                remote: ("localhost".into(), "9".into()),
                local: Some((String::new(), "8".into()))
            }
        );
        for (bad, why) in [
            ("null", "chardev: no id specified"),
            ("null,id=a,x=1", "Invalid parameter 'x'"),
            (
                "ringbuf,id=a,size=1000",
                "size of ringbuf chardev must be power of two",
            ),
            ("vc,id=a", "'vc' is not a valid char driver name"),
            (
                "socket,id=a,host=h,port=1,telnet=on",
                "telnet is not supported by Flotilla's chardevs",
            ),
            (
                "socket,id=a,path=/p,server=on,reconnect=1",
                "'reconnect' option is incompatible with 'server' option",
            ),
            ("file,id=a", "chardev: file: no filename given"),
        ] {
            assert_eq!(Backend::from_cli(bad).unwrap_err(), why, "{bad}");
        }
    }

    /// `size=` as qemu-system-x86_64 7.2's -chardev ringbuf reads it (every form probed
    /// there; ipc::host::size's tests have the parser's own cases).
    #[test]
    fn ringbuf_sizes_read_as_qemus() {
        let size = |text: &str| match Backend::from_cli(&format!("ringbuf,id=r,size={text}")) {
            Ok((_, Backend::Ringbuf { size, .. })) => Ok(size),
            Ok((_, other)) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        let expects = "Parameter 'size' expects a non-negative number below 2^64";
        let two = "size of ringbuf chardev must be power of two";
        for (text, want) in [
            ("64k", Ok(64 << 10)),
            ("64K", Ok(64 << 10)),
            ("64m", Ok(64 << 20)),
            ("0.5k", Ok(512)),
            ("1.", Ok(1)),
            ("0x1000", Ok(0x1000)),
            ("64b", Ok(64)),
            ("64B", Ok(64)),
            (" 64", Ok(64)),
            ("+4", Ok(4)),
            // 0 is QEMU's "no size": the default.
            ("0", Ok(DEFAULT_SIZE)),
            // QEMU's int64 and then size_t: a power of two (too big for the registry).
            ("1T", Ok(1 << 40)),
            ("1E", Ok(1 << 60)),
            ("8E", Ok(1 << 63)),
            ("1.5M", Err(two.to_string())),
            ("100", Err(two.to_string())),
            ("18446744073709551615", Err(two.to_string())),
            ("1.5", Err(expects.to_string())),
            ("-1", Err(expects.to_string())),
            ("", Err(expects.to_string())),
            (".5k", Err(expects.to_string())),
            ("1e3", Err(expects.to_string())),
            ("64KiB", Err(expects.to_string())),
            ("0x1.8k", Err(expects.to_string())),
            (
                "18446744073709551616",
                Err("Value '18446744073709551616' is out of range for parameter 'size'".into()),
            ),
            (
                "16E",
                Err("Value '16E' is out of range for parameter 'size'".into()),
            ),
        ] {
            assert_eq!(size(text), want, "size={text}");
        }
    }

    #[test]
    fn qmp_backends_keep_qemus_defaults() {
        let b = Backend::from_qmp(json!({"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": "/s"}}}}))
        .unwrap();
        // server and wait default to true (QEMU's ChardevSocket).
        assert!(matches!(
            b,
            Backend::Socket {
                server: true,
                wait: true,
                ..
            }
        ));
        let b = Backend::from_qmp(json!({"type": "ringbuf", "data": {}})).unwrap();
        assert_eq!(
            b,
            Backend::Ringbuf {
                size: DEFAULT_SIZE,
                memory: false
            }
        );
        for size in [0, -4, 3] {
            assert!(Backend::from_qmp(json!({"type": "memory", "data": {"size": size}})).is_err());
        }
    }
}
