//! Character devices: the gateway opens each chardev's backend (null, file, pipe,
//! ringbuf/memory, socket, udp, pty, stdio) and moves its bytes; a frontend (the guest's
//! UART in vmm-core) is connected to one by a socketpair that carries the byte stream both
//! ways. The registry holds them by id (QEMU's chardev-add / chardev-remove /
//! query-chardev), with which frontend holds each, bounded in number and in the bytes
//! their ring buffers may hold. A monitor (--mon) is a frontend too: a socket chardev
//! hands it each connection, any other kind carries its bytes as for the UART. The QMP
//! listeners are listed beside them under QEMU's labels (listeners.rs), and add_client
//! gives either kind a connection.

pub mod console;
mod error;
mod io;
pub mod linger;
pub mod listeners;
mod open;
pub mod ringbuf;
pub mod spec;
mod stream;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

pub use error::{ChardevError, MAX_CHARDEVS, MAX_RING_BYTES};
pub use listeners::{Handoff, Presence, QmpListener};
use ringbuf::Ring;
use spec::Backend;
pub use stream::Stream;

/// One chardev.
struct Chardev {
    backend: Backend,
    worker: io::Worker,
    ring: Option<Arc<Mutex<Ring>>>,
    /// The frontend that holds it (e.g. "serial0", the UART), if any.
    frontend: Option<String>,
    /// A socket the gateway bound for it, removed with it.
    socket_path: Option<PathBuf>,
}

impl Drop for Chardev {
    fn drop(&mut self) {
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A row of query-chardev.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChardevInfo {
    pub label: String,
    pub filename: String,
    #[serde(rename = "frontend-open")]
    pub frontend_open: bool,
}

/// What chardev-add made: a pty's slave path, if it made a pty.
#[derive(Debug)]
pub struct Added {
    pub pty: Option<String>,
}

#[derive(Default)]
pub struct Chardevs {
    map: Mutex<BTreeMap<String, Chardev>>,
    /// The QMP listeners (compat_monitorN), apart: they have no backend of their own.
    listeners: Mutex<Vec<Arc<QmpListener>>>,
    /// The fd sets a file backend's /dev/fdset/N path is opened from, as QEMU's
    /// qemu_open (the gateway's add-fd sets, with the command line's --add-fd).
    fdsets: std::sync::OnceLock<Arc<crate::fdstore::FdSets>>,
}

/// How a monitor reads its chardev.
pub enum MonitorLink {
    /// A socket chardev: each connection goes to the handoff given.
    Connections,
    /// Any other: its bytes, through this end of a socketpair; and whether a QMP
    /// monitor may offer OOB on it (QEMU does on all but a ringbuf).
    Bytes(OwnedFd, bool),
}

impl Chardevs {
    /// The fd sets /dev/fdset/N paths are opened from (set once).
    pub fn use_fdsets(&self, sets: Arc<crate::fdstore::FdSets>) {
        let _ = self.fdsets.set(sets);
    }

    /// Opens `backend` as chardev `id`. `waits`: a socket server waits for its first
    /// client (the command line's wait=on; chardev-add never waits, as in QEMU).
    pub fn add(&self, id: &str, backend: Backend, waits: bool) -> Result<Added, ChardevError> {
        let mut map = self.map.lock();
        if map.contains_key(id) || self.listener(id).is_some() {
            return Err(ChardevError::Duplicate(id.into()));
        }
        if map.len() >= MAX_CHARDEVS {
            return Err(ChardevError::TooMany(id.into()));
        }
        if backend == Backend::Stdio && map.values().any(|c| c.backend == Backend::Stdio) {
            return Err(ChardevError::StdioTaken);
        }
        if let Backend::Ringbuf { size, .. } = backend {
            let taken: usize = map
                .values()
                .filter_map(|c| c.ring.as_ref().map(|r| r.lock().size()))
                .sum();
            if taken + size > MAX_RING_BYTES {
                return Err(ChardevError::RingBytes {
                    id: id.into(),
                    taken,
                });
            }
        }
        let failed = |why: String| ChardevError::Open { id: id.into(), why };
        let fdsets = self.fdsets.get().map(|s| &**s);
        let made = open::open(&backend, waits, fdsets).map_err(failed)?;
        let socket_path = made.socket_path;
        let worker =
            io::start(id, made.opened, made.filename).map_err(|e| failed(e.to_string()))?;
        map.insert(
            id.into(),
            Chardev {
                backend,
                worker,
                ring: made.ring,
                frontend: None,
                socket_path,
            },
        );
        Ok(Added { pty: made.pty })
    }

    pub fn remove(&self, id: &str) -> Result<(), ChardevError> {
        let mut map = self.map.lock();
        match map.get(id) {
            // A QMP listener's monitor holds it for good.
            None if self.listener(id).is_some() => Err(ChardevError::Busy(id.into())),
            None => Err(ChardevError::NotFound(id.into())),
            Some(c) if c.frontend.is_some() => Err(ChardevError::Busy(id.into())),
            Some(_) => {
                // Its thread ends and its files close as it drops.
                map.remove(id);
                Ok(())
            }
        }
    }

    pub fn query(&self) -> Vec<ChardevInfo> {
        let mut rows: Vec<ChardevInfo> = self
            .map
            .lock()
            .iter()
            .map(|(id, c)| ChardevInfo {
                label: id.clone(),
                filename: c.worker.live.filename.lock().clone(),
                frontend_open: c.frontend.is_some(),
            })
            .collect();
        rows.extend(self.listeners.lock().iter().map(|l| ChardevInfo {
            label: l.label.clone(),
            filename: l.filename(),
            frontend_open: true,
        }));
        rows.sort_by(|a, b| a.label.cmp(&b.label));
        rows
    }

    fn listener(&self, label: &str) -> Option<Arc<QmpListener>> {
        self.listeners
            .lock()
            .iter()
            .find(|l| l.label == label)
            .cloned()
    }

    /// Lists a QMP listener as chardev `label` (its filename `disconnected` while no
    /// client is connected); add_client's connections to it go to `handoff`.
    pub fn add_qmp_listener(
        &self,
        label: &str,
        disconnected: String,
        handoff: Handoff,
    ) -> Result<Arc<QmpListener>, ChardevError> {
        if self.map.lock().contains_key(label) || self.listener(label).is_some() {
            return Err(ChardevError::Duplicate(label.into()));
        }
        let l = Arc::new(QmpListener::new(label.into(), disconnected, handoff));
        self.listeners.lock().push(l.clone());
        Ok(l)
    }

    /// Reserves chardev `id` for monitor `frontend` (QEMU's -mon: before anything else
    /// takes it); `connect_monitor` connects it once the monitor can serve. A socket
    /// chardev accepts no connection until then.
    pub fn claim(&self, id: &str, frontend: &str) -> Result<(), ChardevError> {
        self.reserve(id, frontend)?;
        if let Some(c) = self.map.lock().get(id) {
            if matches!(c.backend, Backend::Socket { .. }) {
                c.worker.live.reserve_for_monitor();
            }
        }
        Ok(())
    }

    /// Marks chardev `id` as `frontend`'s; Busy if it has a frontend.
    fn reserve(&self, id: &str, frontend: &str) -> Result<(), ChardevError> {
        let mut map = self.map.lock();
        let c = map
            .get_mut(id)
            .ok_or_else(|| ChardevError::NotFound(id.into()))?;
        if c.frontend.is_some() {
            return Err(ChardevError::Busy(id.into()));
        }
        c.frontend = Some(frontend.into());
        Ok(())
    }

    /// Connects the monitor that claimed chardev `id`: a socket chardev hands it each
    /// connection through `handoff`; any other gives it a byte stream.
    pub fn connect_monitor(&self, id: &str, handoff: Handoff) -> Result<MonitorLink, ChardevError> {
        let oob = {
            let map = self.map.lock();
            let c = map
                .get(id)
                .ok_or_else(|| ChardevError::NotFound(id.into()))?;
            if matches!(c.backend, Backend::Socket { .. }) {
                c.worker.live.set_handoff(handoff);
                return Ok(MonitorLink::Connections);
            }
            !matches!(c.backend, Backend::Ringbuf { .. })
        };
        Ok(MonitorLink::Bytes(self.connect_bytes(id)?, oob))
    }

    /// add_client: `fd` becomes a connection of chardev `id`: one more client of a QMP
    /// listener, or the connection of a socket chardev that has none (QEMU's
    /// qemu_chr_add_client). NotFound: there is no such chardev.
    pub fn add_client(&self, id: &str, fd: OwnedFd) -> Result<(), ChardevError> {
        if let Some(l) = self.listener(id) {
            let stream = Stream::from_fd(fd).map_err(|_| ChardevError::AddClient)?;
            l.add_client(stream);
            return Ok(());
        }
        let live = match self.map.lock().get(id) {
            Some(c) if matches!(c.backend, Backend::Socket { .. }) => c.worker.live.clone(),
            Some(_) => return Err(ChardevError::AddClient),
            None => return Err(ChardevError::NotFound(id.into())),
        };
        let stream = Stream::from_fd(fd).map_err(|_| ChardevError::AddClient)?;
        if live.add_client(stream) {
            Ok(())
        } else {
            Err(ChardevError::AddClient)
        }
    }

    /// Connects `frontend` (e.g. "serial0") to chardev `id`: the frontend's end of a new
    /// socketpair, which the chardev's other end serves.
    pub fn attach(&self, id: &str, frontend: &str) -> Result<OwnedFd, ChardevError> {
        self.reserve(id, frontend)?;
        self.connect_bytes(id).inspect_err(|_| {
            if let Some(c) = self.map.lock().get_mut(id) {
                c.frontend = None;
            }
        })
    }

    /// The frontend's end of a new socketpair whose other end chardev `id` serves.
    fn connect_bytes(&self, id: &str) -> Result<OwnedFd, ChardevError> {
        let map = self.map.lock();
        let c = map
            .get(id)
            .ok_or_else(|| ChardevError::NotFound(id.into()))?;
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| ChardevError::Invalid(format!("socketpair: {e}")))?;
        c.worker.live.set_frontend(Some(ours.into()));
        Ok(theirs.into())
    }

    /// The ringbuf chardev `id`'s buffer (QEMU's lookup and words).
    fn ring(&self, id: &str) -> Result<Arc<Mutex<Ring>>, ChardevError> {
        let map = self.map.lock();
        let c = map
            .get(id)
            .ok_or_else(|| ChardevError::DeviceNotFound(id.into()))?;
        c.ring
            .clone()
            .ok_or_else(|| ChardevError::NotRingbuf(id.into()))
    }

    /// ringbuf-write: `bytes` join the buffer, as the frontend's output does.
    pub fn ring_write(&self, id: &str, bytes: &[u8]) -> Result<(), ChardevError> {
        self.ring(id)?.lock().write(bytes);
        Ok(())
    }

    /// ringbuf-read: takes up to `size` bytes.
    pub fn ring_read(&self, id: &str, size: i64) -> Result<Vec<u8>, ChardevError> {
        let ring = self.ring(id)?;
        if size <= 0 {
            return Err(ChardevError::ReadSize);
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let bytes = ring.lock().read(size);
        Ok(bytes)
    }

    /// Takes over `other`'s chardevs (those the command line opened before the gateway
    /// was made).
    pub fn adopt(&self, other: Chardevs) {
        self.map
            .lock()
            .extend(std::mem::take(&mut *other.map.lock()));
    }

    /// Every chardev ends (the gateway is ending): sockets it bound are removed.
    pub fn shutdown(&self) {
        std::mem::take(&mut *self.map.lock());
        std::mem::take(&mut *self.listeners.lock());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("flotilla-chardev-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A unix socket server at `path` that does not wait for its first client.
    fn unix_server(path: &std::path::Path) -> Backend {
        Backend::Socket {
            addr: spec::Address::Unix(path.to_path_buf()),
            server: true,
            wait: false,
            reconnect: 0,
            nodelay: false,
        }
    }

    /// A monitor's socket chardev leaves a client pending until the monitor serves (as
    /// QEMU's, whose monitor accepts once its main loop runs): a start that fails meanwhile
    /// never closes that client's connection before its error is written.
    #[test]
    fn a_monitors_socket_accepts_only_once_the_monitor_serves() {
        let c = Chardevs::default();
        let dir = scratch("mon");
        let path = dir.join("m");
        let server = unix_server(&path);
        c.add("m", server, false).unwrap();
        c.claim("m", "monitor0").unwrap();
        let _client = UnixStream::connect(&path).unwrap();
        let filename = || {
            c.query()
                .iter()
                .find(|i| i.label == "m")
                .unwrap()
                .filename
                .clone()
        };
        // Given time, the chardev's thread would have taken it: it must not.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            filename(),
            format!("disconnected:unix:{},server=on", path.display())
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let handoff: Handoff = Arc::new(move |_stream, _| {
            let _ = tx.lock().send(());
        });
        assert!(matches!(
            c.connect_monitor("m", handoff).unwrap(),
            MonitorLink::Connections
        ));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the pending client handed to the monitor");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_registry_refuses_as_qemu_and_stays_bounded() {
        let c = Chardevs::default();
        c.add("a", Backend::Null, false).unwrap();
        assert_eq!(
            c.add("a", Backend::Null, false).unwrap_err().to_string(),
            "Chardev with id 'a' already exists"
        );
        let fe = c.attach("a", "serial0").unwrap();
        assert_eq!(
            c.remove("a").unwrap_err().to_string(),
            "Chardev 'a' is busy"
        );
        assert_eq!(
            c.remove("b").unwrap_err().to_string(),
            "Chardev 'b' not found"
        );
        assert_eq!(
            c.ring_read("a", 1).unwrap_err().to_string(),
            "a is not a ringbuf device"
        );
        assert_eq!(
            c.ring_read("zz", 1).unwrap_err().to_string(),
            "Device 'zz' not found"
        );
        let err = c
            .add(
                "f",
                Backend::File {
                    out: "/nonexistent/x".into(),
                    input: None,
                    append: false,
                },
                false,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Failed to add chardev 'f': Could not open '/nonexistent/x': No such file or directory"
        );
        for i in 1..MAX_CHARDEVS {
            c.add(&format!("n{i}"), Backend::Null, false).unwrap();
        }
        assert!(matches!(
            c.add("over", Backend::Null, false),
            Err(ChardevError::TooMany(_))
        ));
        drop(fe);
        c.shutdown();
        let big = Backend::Ringbuf {
            size: MAX_RING_BYTES / 2,
            memory: false,
        };
        c.add("r1", big.clone(), false).unwrap();
        c.add("r2", big.clone(), false).unwrap();
        assert!(matches!(
            c.add(
                "r3",
                Backend::Ringbuf {
                    size: 1,
                    memory: false
                },
                false
            ),
            Err(ChardevError::RingBytes { .. })
        ));
        assert_eq!(
            c.ring_read("r1", 0).unwrap_err().to_string(),
            "size must be greater than zero"
        );
    }

    /// Reads from `r` until `want` came (5 s at most).
    fn expect(r: &mut impl Read, want: &[u8]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut b = [0u8; 256];
        while !got.windows(want.len()).any(|w| w == want) {
            assert!(std::time::Instant::now() < deadline, "got {got:?}");
            if let Ok(n) = r.read(&mut b) {
                got.extend_from_slice(&b[..n]);
            }
        }
    }

    /// A frontend's end, reading with a timeout.
    fn frontend(c: &Chardevs, id: &str) -> UnixStream {
        let fe = UnixStream::from(c.attach(id, "serial0").unwrap());
        fe.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        fe
    }

    #[test]
    fn file_pipe_udp_pty_and_tcp_carry_a_frontends_bytes_both_ways() {
        let dir = scratch("both-ways");
        let c = Chardevs::default();
        // file: output appended to out, input read from in.
        let (out, input) = (dir.join("out"), dir.join("in"));
        std::fs::write(&out, b"kept:").unwrap();
        std::fs::write(&input, b"from-file").unwrap();
        let file = Backend::File {
            out: out.clone(),
            input: Some(input),
            append: true,
        };
        c.add("f", file, false).unwrap();
        let mut fe = frontend(&c, "f");
        fe.write_all(b"to-file").unwrap();
        expect(&mut fe, b"from-file");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read(&out).unwrap() != b"kept:to-file" {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        // pipe: path.in and path.out.
        let pipe = dir.join("p");
        for end in ["p.in", "p.out"] {
            let path = std::ffi::CString::new(dir.join(end).to_str().unwrap()).unwrap();
            // SAFETY: a valid C string.
            assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        }
        c.add("p", Backend::Pipe(pipe), false).unwrap();
        let mut fe = frontend(&c, "p");
        let mut pin = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("p.in"))
            .unwrap();
        let mut pout = std::fs::File::open(dir.join("p.out")).unwrap();
        pin.write_all(b"into-pipe").unwrap();
        expect(&mut fe, b"into-pipe");
        fe.write_all(b"out-of-pipe").unwrap();
        expect(&mut pout, b"out-of-pipe");
        // udp: datagrams to and from the remote.
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = peer.local_addr().unwrap().port().to_string();
        let udp = Backend::Udp {
            remote: ("127.0.0.1".into(), port),
            local: Some(("127.0.0.1".into(), "0".into())),
        };
        c.add("u", udp, false).unwrap();
        let mut fe = frontend(&c, "u");
        fe.write_all(b"datagram").unwrap();
        let mut b = [0u8; 64];
        let (n, from) = peer.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"datagram");
        peer.send_to(b"reply", from).unwrap();
        expect(&mut fe, b"reply");
        // pty: the slave's side, once opened.
        c.add("t", Backend::Pty, false).unwrap();
        let path = c
            .query()
            .into_iter()
            .find(|i| i.label == "t")
            .unwrap()
            .filename;
        let slave_path = path.strip_prefix("pty:").unwrap().to_string();
        let mut fe = frontend(&c, "t");
        let mut slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slave_path)
            .unwrap();
        slave.write_all(b"typed").unwrap();
        expect(&mut fe, b"typed");
        // The master looks for its slave every second.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut slave_in = slave.try_clone().unwrap();
        let reader = std::thread::spawn(move || expect(&mut slave_in, b"shown"));
        while !reader.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing reached the pty"
            );
            fe.write_all(b"shown").unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        reader.join().unwrap();
        // tcp: a client of a server here.
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let client = Backend::Socket {
            addr: spec::Address::Inet {
                host: "127.0.0.1".into(),
                port: addr.port().to_string(),
            },
            server: false,
            wait: false,
            reconnect: 0,
            nodelay: true,
        };
        c.add("c", client, false).unwrap();
        let (mut conn, peer_addr) = server.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert_eq!(
            c.query()
                .into_iter()
                .find(|i| i.label == "c")
                .unwrap()
                .filename,
            format!("tcp:{peer_addr} <-> {addr}")
        );
        let mut fe = frontend(&c, "c");
        fe.write_all(b"over-tcp").unwrap();
        expect(&mut conn, b"over-tcp");
        conn.write_all(b"back").unwrap();
        expect(&mut fe, b"back");
        c.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_frontend_output_reaches_a_ring_and_a_socket_client_both_ways() {
        let c = Chardevs::default();
        c.add(
            "r",
            Backend::Ringbuf {
                size: 16,
                memory: false,
            },
            false,
        )
        .unwrap();
        let mut fe = UnixStream::from(c.attach("r", "serial0").unwrap());
        fe.write_all(b"0123456789abcdefXY").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 16 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            got.extend(c.ring_read("r", 100).unwrap());
        }
        // The ring kept the newest 16 (or fewer, if read between the writes).
        assert!(b"0123456789abcdefXY".ends_with(&got[got.len().saturating_sub(2)..]));

        let dir = scratch("sock");
        let path = dir.join("s");
        let server = unix_server(&path);
        c.add("s", server, false).unwrap();
        assert_eq!(
            c.query().iter().find(|i| i.label == "s").unwrap().filename,
            format!("disconnected:unix:{},server=on", path.display())
        );
        let mut fe = UnixStream::from(c.attach("s", "serial0").unwrap());
        for round in 0..2 {
            let mut client = UnixStream::connect(&path).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            // Once accepted, output reaches the client.
            let want = format!("line {round}\n");
            let mut buf = vec![0u8; want.len()];
            loop {
                fe.write_all(want.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                let mut b = [0u8; 256];
                client.set_nonblocking(true).unwrap();
                if let Ok(n) = client.read(&mut b) {
                    buf = b[..n].to_vec();
                    break;
                }
            }
            assert!(String::from_utf8_lossy(&buf).contains(&want));
            assert_eq!(
                c.query().iter().find(|i| i.label == "s").unwrap().filename,
                format!("unix:{},server=on", path.display())
            );
            client.set_nonblocking(false).unwrap();
            client.write_all(b"in").unwrap();
            let mut b = [0u8; 2];
            fe.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            fe.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"in");
            // The client leaves; the next one is served.
        }
        drop(fe);
        c.shutdown();
        assert!(!path.exists(), "the socket is removed with its chardev");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// What a frontend wrote just before it went (a guest's last console line before it
    /// powered off) still reaches the backend when the chardevs stop at the gateway's
    /// end, even if the backend was not taking output right then.
    #[test]
    fn the_last_output_goes_out_at_the_stop() {
        use std::os::fd::AsRawFd;
        let dir = scratch("last-output");
        for end in ["p.in", "p.out"] {
            let path = std::ffi::CString::new(dir.join(end).to_str().unwrap()).unwrap();
            // SAFETY: a valid C string.
            assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        }
        let c = Chardevs::default();
        c.add("p", Backend::Pipe(dir.join("p")), false).unwrap();
        let mut fe = frontend(&c, "p");
        let mut pout = std::fs::File::open(dir.join("p.out")).unwrap();
        // A pipe that holds one page: the rest waits in the chardev and its frontend's
        // socket until the reader below reads.
        // SAFETY: fcntl on an open fd.
        let size = unsafe { libc::fcntl(pout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        assert_eq!(size, 4096);
        let sent: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        fe.write_all(&sent).unwrap();
        drop(fe);
        let mut got = Vec::new();
        std::thread::scope(|s| {
            s.spawn(|| c.shutdown());
            pout.read_to_end(&mut got).unwrap();
        });
        assert_eq!(got.len(), sent.len());
        assert!(got == sent);
        let _ = std::fs::remove_dir_all(dir);
    }
}
