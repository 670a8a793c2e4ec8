//! A chardev's open backend and the thread that moves its bytes: the frontend's output
//! (a UART's, read from its end of a socketpair) to the backend, and the backend's input
//! to the frontend. Each direction holds at most one read's worth of bytes: while they
//! wait (a socket client that does not read, a guest that does not drain its UART), that
//! side is not read, so the peer waits, as with QEMU's chardevs. Without a frontend the
//! backend's input is left where it is (QEMU reads none either), but a socket's peer
//! that goes is seen (its filename says disconnected, as QEMU's). A socket server takes
//! one client at a time (later ones wait in the backlog) and drops output while it has
//! none; a client connects again `reconnect` seconds after it lost its server. A socket
//! chardev whose frontend is a monitor hands each connection it gets to the monitor
//! (the handoff) instead of moving its bytes, and watches it only for its end, so the
//! monitor reads the socket itself (fds sent with SCM_RIGHTS included).

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::listeners::Handoff;
use super::ringbuf::Ring;
use super::spec::Address;
use super::stream::Stream;
use crate::poll_fd;

/// Bytes read at a time from either side.
const CHUNK: usize = 4096;

/// How long a stopping chardev spends sending what its frontend wrote last (a guest's
/// last console lines before it powered off); a backend that takes none is left.
const LAST_OUTPUT: Duration = Duration::from_secs(1);

pub(super) enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// The backend, opened (by chardev/open.rs).
pub(super) enum Opened {
    Null,
    Ring(Arc<Mutex<Ring>>),
    /// file and pipe: where output goes, where input comes from (the same fd for a pipe
    /// opened as one path).
    Files {
        out: File,
        input: Option<File>,
    },
    Stdio,
    Server {
        listener: Listener,
        conn: Option<Stream>,
        nodelay: bool,
    },
    Client {
        addr: Address,
        conn: Option<Stream>,
        reconnect: u64,
        nodelay: bool,
        /// When to try again (a client with reconnect and no server).
        retry: Option<Instant>,
    },
    Udp(UdpSocket),
    /// The master side; connected while a slave is open (QEMU's pty drops output
    /// otherwise, and looks again every second).
    Pty {
        master: File,
        connected: bool,
    },
}

/// What the registry and the thread share: the filename query-chardev shows (it
/// changes as sockets connect), and the thread's orders.
pub(super) struct Live {
    pub filename: Mutex<String>,
    orders: Mutex<Orders>,
    /// Written to wake the thread for its orders.
    wake: UnixStream,
}

#[derive(Default)]
struct Orders {
    stop: bool,
    /// A frontend to take (Some(None): the frontend left).
    frontend: Option<Option<OwnedFd>>,
    /// A monitor to hand connections to.
    handoff: Option<Handoff>,
    /// A monitor claimed the chardev and will serve it: no connection is accepted until
    /// its handoff comes (as QEMU's monitor accepts only once its main loop runs; a start
    /// that fails meanwhile leaves a client's connection pending, never closed before
    /// the failure was written to the log libvirt then reads).
    for_monitor: bool,
    /// A connection to take if there is none (add_client), and where to say whether it
    /// was taken.
    client: Option<(Stream, SyncSender<bool>)>,
}

impl Live {
    fn order(&self, f: impl FnOnce(&mut Orders)) {
        f(&mut self.orders.lock());
        let _ = (&self.wake).write(&[1]);
    }

    pub fn stop(&self) {
        self.order(|o| o.stop = true);
    }

    pub fn set_frontend(&self, fd: Option<OwnedFd>) {
        self.order(|o| o.frontend = Some(fd));
    }

    /// A monitor will serve the chardev (`for_monitor`).
    pub fn reserve_for_monitor(&self) {
        self.order(|o| o.for_monitor = true);
    }

    pub fn set_handoff(&self, handoff: Handoff) {
        self.order(|o| o.handoff = Some(handoff));
    }

    /// Makes `stream` the chardev's connection if it has none (QEMU's add_client to a
    /// socket chardev); false if it has one, or is no socket chardev, or its thread did
    /// not answer.
    pub fn add_client(&self, stream: Stream) -> bool {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.order(|o| o.client = Some((stream, tx)));
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or(false)
    }
}

/// The thread of a chardev, ended when this is dropped.
pub(super) struct Worker {
    pub live: Arc<Live>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.live.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_nonblocking(fd: BorrowedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we hold, with no pointers.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads or writes an fd without taking it over.
fn fd_read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn fd_write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The filename QEMU 7.2 shows for a socket chardev (char-socket.c's
/// qemu_chr_compute_filename when connected, qemu_chr_socket_address when not).
fn socket_filename(opened: &Opened) -> Option<String> {
    Some(match opened {
        Opened::Server { listener, conn, .. } => match (listener, conn) {
            // A connection's own address: the socket's path, or none for one that
            // add_client brought.
            (Listener::Unix(_, p), Some(c)) => c.filename(true, Some(p))?,
            (Listener::Tcp(_), Some(c)) => c.filename(true, None)?,
            (Listener::Unix(_, p), None) => {
                format!("disconnected:unix:{},server=on", p.display())
            }
            (Listener::Tcp(l), None) => {
                let a = l.local_addr().ok()?;
                format!("disconnected:tcp:{}:{},server=on", a.ip(), a.port())
            }
        },
        Opened::Client { addr, conn, .. } => match (addr, conn) {
            // The connection's own addresses (a client's Unix socket has no path: QEMU
            // shows "unix:").
            (_, Some(c)) => c.filename(false, None)?,
            (Address::Unix(p), None) => format!("disconnected:unix:{}", p.display()),
            (Address::Inet { host, port }, None) => format!("disconnected:tcp:{host}:{port}"),
            (Address::Fd(n), None) => format!("disconnected:fd:{n}"),
        },
        _ => return None,
    })
}

/// Connects a client socket (QEMU's words on failure).
pub(super) fn connect(addr: &Address, nodelay: bool) -> Result<Stream, String> {
    match addr {
        Address::Unix(p) => UnixStream::connect(p).map(Stream::Unix).map_err(|e| {
            format!(
                "Failed to connect to '{}': {}",
                p.display(),
                ipc::errno_text(&e)
            )
        }),
        // An inherited socket is connected once, by whoever passed it.
        Address::Fd(n) => Err(format!("File descriptor '{n}' is no longer connected")),
        Address::Inet { host, port } => {
            let failed = |e: io::Error| {
                format!(
                    "Failed to connect to '{host}:{port}': {}",
                    ipc::errno_text(&e)
                )
            };
            let target = format!("{host}:{port}");
            let addrs = target.to_socket_addrs().map_err(|e| {
                format!(
                    "address resolution failed for {target}: {}",
                    ipc::errno_text(&e)
                )
            })?;
            let mut last = io::Error::from(ErrorKind::NotFound);
            for a in addrs {
                match TcpStream::connect(a) {
                    Ok(s) => {
                        let _ = s.set_nodelay(nodelay);
                        return Ok(Stream::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(failed(last))
        }
    }
}

impl Opened {
    /// Makes the fds the thread polls non-blocking.
    fn prepare(&self) -> io::Result<()> {
        match self {
            Opened::Files { out, input } => {
                set_nonblocking(out.as_fd())?;
                if let Some(i) = input {
                    set_nonblocking(i.as_fd())?;
                }
            }
            Opened::Server { listener, conn, .. } => {
                match listener {
                    Listener::Unix(l, _) => l.set_nonblocking(true)?,
                    Listener::Tcp(l) => l.set_nonblocking(true)?,
                }
                if let Some(c) = conn {
                    set_nonblocking(c.file())?;
                }
            }
            Opened::Client { conn: Some(c), .. } => set_nonblocking(c.file())?,
            Opened::Udp(s) => s.set_nonblocking(true)?,
            Opened::Pty { master, .. } => set_nonblocking(master.as_fd())?,
            _ => {}
        }
        Ok(())
    }

    /// Where input comes from now.
    fn input_fd(&self) -> Option<RawFd> {
        match self {
            Opened::Files { input, .. } => input.as_ref().map(|f| f.as_raw_fd()),
            Opened::Stdio => Some(0),
            Opened::Server { conn, .. } | Opened::Client { conn, .. } => {
                conn.as_ref().map(|c| c.file().as_raw_fd())
            }
            Opened::Udp(s) => Some(s.as_raw_fd()),
            Opened::Pty { master, connected } => connected.then(|| master.as_raw_fd()),
            Opened::Null | Opened::Ring(_) => None,
        }
    }

    /// Where output goes now (None: it is dropped, or kept in the ring).
    fn output_fd(&self) -> Option<RawFd> {
        match self {
            Opened::Files { out, .. } => Some(out.as_raw_fd()),
            Opened::Stdio => Some(1),
            Opened::Server { conn, .. } | Opened::Client { conn, .. } => {
                conn.as_ref().map(|c| c.file().as_raw_fd())
            }
            Opened::Udp(s) => Some(s.as_raw_fd()),
            Opened::Pty { master, connected } => connected.then(|| master.as_raw_fd()),
            Opened::Null | Opened::Ring(_) => None,
        }
    }

    /// The connection (or input) ended: a socket waits for its next client, or connects
    /// again later; a file's input ends.
    fn lost_input(&mut self) {
        match self {
            Opened::Server { conn, .. } => *conn = None,
            Opened::Client {
                conn,
                reconnect,
                retry,
                ..
            } => {
                *conn = None;
                if *reconnect > 0 {
                    *retry = Some(Instant::now() + Duration::from_secs(*reconnect));
                }
            }
            Opened::Files { input, .. } => *input = None,
            Opened::Pty { connected, .. } => *connected = false,
            _ => {}
        }
    }

    /// A pty's slave is open when its master does not hang up.
    fn check_pty(&mut self) {
        if let Opened::Pty { master, connected } = self {
            let mut p = libc::pollfd {
                fd: master.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one pollfd, no wait.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            *connected = n > 0 && p.revents & libc::POLLHUP == 0;
        }
    }
}

/// Starts the thread of a chardev whose backend is `opened`.
pub(super) fn start(name: &str, mut opened: Opened, filename: String) -> io::Result<Worker> {
    opened.prepare()?;
    opened.check_pty();
    let (wake, woken) = UnixStream::pair()?;
    wake.set_nonblocking(true)?;
    woken.set_nonblocking(true)?;
    let live = Arc::new(Live {
        filename: Mutex::new(socket_filename(&opened).unwrap_or(filename)),
        orders: Mutex::new(Orders::default()),
        wake,
    });
    let shared = live.clone();
    let thread = std::thread::Builder::new()
        .name(format!("chardev-{name}"))
        .spawn(move || Pump::new(opened, shared, woken).run())?;
    Ok(Worker {
        live,
        thread: Some(thread),
    })
}

/// The thread's state: the backend, the frontend, and what waits for each.
struct Pump {
    opened: Opened,
    live: Arc<Live>,
    woken: UnixStream,
    frontend: Option<OwnedFd>,
    /// A monitor that takes the connections (instead of a byte frontend).
    handoff: Option<Handoff>,
    /// A monitor claimed the chardev (Orders::for_monitor).
    for_monitor: bool,
    /// The frontend's output not yet taken by the backend.
    to_backend: Vec<u8>,
    /// The backend's input not yet taken by the frontend.
    to_frontend: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Wake,
    FrontIn,
    FrontOut,
    BackIn,
    BackOut,
    Accept,
    /// A socket's peer, watched for its going while no frontend reads it.
    Hangup,
}

impl Pump {
    fn new(opened: Opened, live: Arc<Live>, woken: UnixStream) -> Pump {
        Pump {
            opened,
            live,
            woken,
            frontend: None,
            handoff: None,
            for_monitor: false,
            to_backend: Vec::new(),
            to_frontend: Vec::new(),
        }
    }

    fn refresh_filename(&self) {
        if let Some(f) = socket_filename(&self.opened) {
            *self.live.filename.lock() = f;
        }
    }

    fn run(mut self) {
        loop {
            {
                let mut orders = self.live.orders.lock();
                if orders.stop {
                    drop(orders);
                    return self.send_last_output();
                }
                if let Some(fe) = orders.frontend.take() {
                    if let Some(fd) = &fe {
                        if let Err(e) = set_nonblocking(fd.as_fd()) {
                            log::warn!("chardev frontend: {e}");
                        }
                    }
                    self.frontend = fe;
                    self.to_frontend.clear();
                }
                let handoff = orders.handoff.take();
                let client = orders.client.take();
                self.for_monitor |= orders.for_monitor;
                drop(orders);
                if let Some(h) = handoff {
                    self.handoff = Some(h);
                    // A connection that came first (wait=on, a client chardev) goes now.
                    self.hand_over();
                }
                if let Some((stream, answer)) = client {
                    let _ = answer.send(self.take_client(stream));
                }
            }
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let mut slots: Vec<Slot> = Vec::new();
            let mut add = |fd: RawFd, events: i16, slot: Slot| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                slots.push(slot);
            };
            add(self.woken.as_raw_fd(), libc::POLLIN, Slot::Wake);
            if let Some(fe) = &self.frontend {
                if self.to_backend.is_empty() {
                    add(fe.as_raw_fd(), libc::POLLIN, Slot::FrontIn);
                }
                if !self.to_frontend.is_empty() {
                    add(fe.as_raw_fd(), libc::POLLOUT, Slot::FrontOut);
                } else if let Some(i) = self.opened.input_fd() {
                    add(i, libc::POLLIN, Slot::BackIn);
                }
            }
            if self.frontend.is_none() {
                if let Opened::Server { conn: Some(c), .. } | Opened::Client { conn: Some(c), .. } =
                    &self.opened
                {
                    add(c.file().as_raw_fd(), libc::POLLRDHUP, Slot::Hangup);
                }
            }
            if !self.to_backend.is_empty() {
                match self.opened.output_fd() {
                    Some(o) => add(o, libc::POLLOUT, Slot::BackOut),
                    None => self.to_backend.clear(),
                }
            }
            let monitor_pending = self.for_monitor && self.handoff.is_none();
            if let Opened::Server {
                listener,
                conn: None,
                ..
            } = &self.opened
            {
                // Not while a monitor is to come: see Orders::for_monitor.
                if !monitor_pending {
                    let fd = match listener {
                        Listener::Unix(l, _) => l.as_raw_fd(),
                        Listener::Tcp(l) => l.as_raw_fd(),
                    };
                    add(fd, libc::POLLIN, Slot::Accept);
                }
            }
            let timeout = match &self.opened {
                Opened::Client {
                    retry: Some(at), ..
                } => at
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(1000) as i32,
                Opened::Pty {
                    connected: false, ..
                } => 1000,
                _ => -1,
            };
            // SAFETY: fds is a valid array of its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                log::error!("chardev poll: {e}");
                return;
            }
            self.on_timer();
            for (p, slot) in fds.iter().zip(&slots) {
                if p.revents == 0 {
                    continue;
                }
                match slot {
                    Slot::Wake => {
                        let mut b = [0u8; 64];
                        while matches!((&self.woken).read(&mut b), Ok(n) if n > 0) {}
                    }
                    Slot::FrontIn => {
                        self.read_frontend();
                    }
                    Slot::FrontOut => self.flush_frontend(),
                    Slot::BackIn => self.read_backend(),
                    Slot::BackOut => self.flush_backend(),
                    Slot::Accept => self.accept(),
                    Slot::Hangup => {
                        if p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                            self.opened.lost_input();
                            self.refresh_filename();
                        }
                    }
                }
            }
        }
    }

    fn on_timer(&mut self) {
        match &mut self.opened {
            Opened::Pty {
                connected: false, ..
            } => self.opened.check_pty(),
            Opened::Client {
                addr,
                conn,
                retry,
                reconnect,
                nodelay,
            } if retry.is_some_and(|at| at <= Instant::now()) => {
                match connect(addr, *nodelay) {
                    Ok(c) => {
                        if let Err(e) = set_nonblocking(c.file()) {
                            log::warn!("chardev: {e}");
                        }
                        *conn = Some(c);
                        *retry = None;
                    }
                    Err(_) => *retry = Some(Instant::now() + Duration::from_secs(*reconnect)),
                }
                self.refresh_filename();
                self.hand_over();
            }
            _ => {}
        }
    }

    /// The connection just made goes to the monitor, if one takes them; the chardev
    /// keeps a handle to see its end.
    fn hand_over(&mut self) {
        let Some(handoff) = &self.handoff else {
            return;
        };
        let (Opened::Server { conn, .. } | Opened::Client { conn, .. }) = &mut self.opened else {
            return;
        };
        let Some(c) = conn.as_ref() else { return };
        match c.try_clone() {
            Ok(theirs) => {
                // The monitor reads it blocking; this side only polls.
                if let Stream::Unix(s) = &theirs {
                    let _ = s.set_nonblocking(false);
                } else if let Stream::Tcp(s) = &theirs {
                    let _ = s.set_nonblocking(false);
                }
                handoff(theirs, None);
            }
            Err(e) => {
                log::warn!("chardev: handing a connection to its monitor: {e}");
                self.opened.lost_input();
                self.refresh_filename();
            }
        }
    }

    /// add_client: `stream` becomes the connection of a socket chardev that has none.
    fn take_client(&mut self, stream: Stream) -> bool {
        let (Opened::Server { conn, .. } | Opened::Client { conn, .. }) = &mut self.opened else {
            return false;
        };
        if conn.is_some() {
            return false;
        }
        if let Err(e) = set_nonblocking(stream.file()) {
            log::warn!("chardev client: {e}");
            return false;
        }
        *conn = Some(stream);
        if let Opened::Client { retry, .. } = &mut self.opened {
            *retry = None;
        }
        self.refresh_filename();
        self.hand_over();
        true
    }

    fn accept(&mut self) {
        let Opened::Server {
            listener,
            conn,
            nodelay,
        } = &mut self.opened
        else {
            return;
        };
        let accepted = match listener {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(*nodelay);
                Stream::Tcp(s)
            }),
        };
        match accepted {
            Ok(s) => {
                if let Err(e) = set_nonblocking(s.file()) {
                    log::warn!("chardev client: {e}");
                    return;
                }
                *conn = Some(s);
                self.refresh_filename();
                self.hand_over();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => log::warn!("chardev accept: {e}"),
        }
    }

    /// At the stop: what the frontend wrote and nobody read yet goes to the backend,
    /// within [`LAST_OUTPUT`] (the frontend's process may be gone, its bytes still in
    /// the socket).
    fn send_last_output(&mut self) {
        let deadline = Instant::now() + LAST_OUTPUT;
        loop {
            self.flush_backend();
            if !self.to_backend.is_empty() {
                let Some(fd) = self.opened.output_fd() else {
                    return;
                };
                let writable = Instant::now() < deadline
                    && matches!(poll_fd::wait(fd, libc::POLLOUT, Some(deadline)), Ok(true));
                if !writable {
                    return;
                }
            } else if self.read_frontend() == 0 {
                return;
            }
        }
    }

    /// Reads one chunk of the frontend's output and sends it on; how many bytes came.
    fn read_frontend(&mut self) -> usize {
        let Some(fe) = &self.frontend else { return 0 };
        let mut buf = [0u8; CHUNK];
        match fd_read(fe.as_raw_fd(), &mut buf) {
            Ok(0) => {
                // The frontend's process is gone; a new one comes with set_frontend.
                self.frontend = None;
                0
            }
            Ok(n) => {
                self.send_frontend_output(&buf[..n]);
                n
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => 0,
            Err(_) => {
                self.frontend = None;
                0
            }
        }
    }

    fn send_frontend_output(&mut self, bytes: &[u8]) {
        match &self.opened {
            Opened::Ring(r) => r.lock().write(bytes),
            _ if self.opened.output_fd().is_none() => {}
            _ => {
                self.to_backend.extend_from_slice(bytes);
                self.flush_backend();
            }
        }
    }

    fn flush_backend(&mut self) {
        let Some(fd) = self.opened.output_fd() else {
            self.to_backend.clear();
            return;
        };
        while !self.to_backend.is_empty() {
            match fd_write(fd, &self.to_backend) {
                Ok(n) => {
                    self.to_backend.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    // A socket whose client left, a udp peer that refuses: the output
                    // is dropped, as QEMU drops it.
                    self.to_backend.clear();
                    if matches!(self.opened, Opened::Server { .. } | Opened::Client { .. }) {
                        self.opened.lost_input();
                        self.refresh_filename();
                    } else if !matches!(self.opened, Opened::Udp(_)) {
                        log::warn!("chardev output: {e}");
                    }
                    return;
                }
            }
        }
    }

    fn read_backend(&mut self) {
        let Some(fd) = self.opened.input_fd() else {
            return;
        };
        let mut buf = [0u8; CHUNK];
        match fd_read(fd, &mut buf) {
            Ok(0) => {
                self.opened.lost_input();
                self.refresh_filename();
            }
            Ok(n) => {
                self.to_frontend.extend_from_slice(&buf[..n]);
                self.flush_frontend();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            // A udp peer's ICMP error: nothing to read this time.
            Err(_) if matches!(self.opened, Opened::Udp(_)) => {}
            Err(_) => {
                // A pty whose slave closed reads EIO; a reset connection: gone.
                self.opened.lost_input();
                self.refresh_filename();
            }
        }
    }

    fn flush_frontend(&mut self) {
        let Some(fe) = &self.frontend else {
            self.to_frontend.clear();
            return;
        };
        while !self.to_frontend.is_empty() {
            match fd_write(fe.as_raw_fd(), &self.to_frontend) {
                Ok(n) => {
                    self.to_frontend.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.frontend = None;
                    self.to_frontend.clear();
                    return;
                }
            }
        }
    }
}
