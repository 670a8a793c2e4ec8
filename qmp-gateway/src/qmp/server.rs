//! The QMP listeners (Unix sockets and TCP) and one reader and one writer thread per
//! client, up to the number of client slots (slots.rs). A client must negotiate
//! capabilities within the handshake time or is let go; the fds a client sends are
//! charged to its account with the fd budget before they are received (fdstore/budget.rs);
//! when the last client leaves while the VM runs, the fd sets nothing opened are closed,
//! as QEMU does. A listener that runs out of fds (the budget should prevent it) takes the
//! waiting connection with a spare fd and turns it away instead of spinning on it.
//! Each listener is a chardev too (compat_monitorN, chardev/listeners.rs), whose
//! clients are counted there; a monitor on a chardev (--mon, add_client) brings its
//! connections to `accept`, under the same slots and handshake time.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::RunState;
use parking_lot::Mutex;

use super::conn::Conn;
use super::context::ReceivedFd;
use super::json_stream::JsonStream;
use super::outbox::Outbox;
use super::protocol::{self, QmpError};
use super::session::Session;
use super::slots::{Admission, Slots, Ticket};
use crate::chardev::{Handoff, Presence, QmpListener, Stream};
use crate::fdstore::FdBudget;
use crate::gateway::Gateway;

/// Most fds a client may have sent ahead of the command that takes them (QEMU's
/// TCP_MAX_FDS too).
pub const MAX_PENDING_FDS: usize = 16;

/// How the listeners serve their clients.
pub struct ServerOptions {
    /// Clients served at once.
    pub max_clients: usize,
    /// How long a client has to negotiate capabilities (None: for ever).
    pub handshake: Option<Duration>,
    /// What clients' fds are charged to.
    pub budget: Arc<FdBudget>,
}

#[derive(Clone)]
pub struct Server {
    gw: Arc<Gateway>,
    slots: Arc<Slots>,
    /// The slots of monitors on chardevs that are no sockets (one per chardev at most).
    byte_monitors: Arc<Slots>,
    handshake: Option<Duration>,
    budget: Arc<FdBudget>,
    /// Given up to take a connection when the gateway is out of fds.
    spare: Arc<Mutex<Option<File>>>,
    /// When a listener last said it was out of fds (said at most once a second).
    out_of_fds: Arc<Mutex<Option<Instant>>>,
}

/// How a client's session is held: its handshake time (None: for ever), whether its
/// messages go out pretty, whether its greeting offers OOB.
#[derive(Clone, Copy)]
struct Form {
    handshake: Option<Duration>,
    pretty: bool,
    oob: bool,
}

/// How a connection is accepted, for either kind of listener.
type Accept = dyn Fn() -> std::io::Result<Stream> + Send;

impl Server {
    pub fn new(gw: Arc<Gateway>, options: ServerOptions) -> Server {
        Server {
            gw,
            slots: Slots::new(options.max_clients),
            byte_monitors: Slots::new(crate::chardev::MAX_CHARDEVS),
            handshake: options.handshake,
            budget: options.budget,
            spare: Arc::new(Mutex::new(File::open("/dev/null").ok())),
            out_of_fds: Arc::new(Mutex::new(None)),
        }
    }

    /// Serves `listener`, whose clients `chardev` (its compat_monitorN) counts.
    pub fn serve_unix(
        &self,
        listener: UnixListener,
        chardev: Arc<QmpListener>,
    ) -> std::io::Result<()> {
        self.listen(
            "qmp-accept",
            Box::new(move || listener.accept().map(|(s, _)| Stream::Unix(s))),
            chardev,
        )
    }

    pub fn serve_tcp(
        &self,
        listener: TcpListener,
        chardev: Arc<QmpListener>,
    ) -> std::io::Result<()> {
        self.listen(
            "qmp-accept-tcp",
            Box::new(move || {
                let (s, _) = listener.accept()?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }),
            chardev,
        )
    }

    fn listen(
        &self,
        name: &str,
        accept: Box<Accept>,
        chardev: Arc<QmpListener>,
    ) -> std::io::Result<()> {
        let server = self.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                match accept() {
                    Ok(stream) => {
                        let presence = chardev.arrive(&stream);
                        server.accept(stream.into(), Some(presence));
                    }
                    Err(e) => server.accept_failed(&e, &*accept),
                }
            })?;
        Ok(())
    }

    fn accept_failed(&self, e: &std::io::Error, accept: &Accept) {
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => {
                let mut spare = self.spare.lock();
                spare.take();
                if let Ok(stream) = accept() {
                    let e = QmpError::generic("The gateway is out of file descriptors");
                    Conn::from(stream).refuse(&protocol::response(Err(e), None));
                }
                *spare = File::open("/dev/null").ok();
                let mut last = self.out_of_fds.lock();
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    log::error!("QMP: out of file descriptors ({e}); turning clients away");
                    *last = Some(Instant::now());
                }
            }
            Some(libc::EINTR | libc::ECONNABORTED) => {}
            _ => {
                log::warn!("QMP: accepting a client: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// A new account with the fd budget (an HMP monitor's).
    pub fn fd_account(&self) -> crate::fdstore::Account {
        self.budget.account()
    }

    /// Where a listener's chardev sends the connections add_client brings: here.
    pub fn handoff(&self) -> Handoff {
        let server = self.clone();
        Arc::new(move |stream, presence| server.accept(Conn::from(stream), presence))
    }

    /// Serves a new client on `conn` (`presence` counts it on its listener while it
    /// stays).
    pub fn accept(&self, conn: Conn, presence: Option<Presence>) {
        self.accept_pretty(conn, presence, false);
    }

    /// The same, its messages in the pretty form if `pretty` (a monitor's pretty=on).
    pub fn accept_pretty(&self, conn: Conn, presence: Option<Presence>, pretty: bool) {
        let form = Form {
            handshake: self.handshake,
            pretty,
            oob: true,
        };
        self.start_client(conn, presence, &self.slots, form);
    }

    /// Serves a QMP monitor on a chardev that is no socket (a pty, stdio...): one
    /// session for as long as the chardev lives, its own slot, no handshake time (QEMU's
    /// greeting goes out once, when the monitor starts).
    /// `oob`: whether OOB is offered (QEMU offers it on chardevs its monitor I/O thread
    /// can serve: not on a ringbuf).
    pub fn serve_byte_monitor(&self, conn: Conn, pretty: bool, oob: bool) {
        let slots = self.byte_monitors.clone();
        let form = Form {
            handshake: None,
            pretty,
            oob,
        };
        self.start_client(conn, None, &slots, form);
    }

    fn start_client(&self, conn: Conn, presence: Option<Presence>, slots: &Arc<Slots>, form: Form) {
        let outbox = match conn.try_clone() {
            Ok(c) => Arc::new(Outbox::with_form(c, form.pretty)),
            Err(e) => {
                log::warn!("QMP client: {e}");
                conn.shutdown();
                return;
            }
        };
        let ticket = match slots.admit(&outbox) {
            Admission::Admitted(ticket) => ticket,
            Admission::Full(line) => {
                log::warn!(
                    "QMP: {} clients already connected; turning one away",
                    slots.max()
                );
                conn.refuse(&line);
                return;
            }
        };
        let server = self.clone();
        let spawned = std::thread::Builder::new()
            .name("qmp-client".into())
            .spawn(move || {
                server.client(conn, outbox, &ticket, form);
                drop(ticket);
                drop(presence);
                server.left();
            });
        if let Err(e) = spawned {
            log::error!("QMP: cannot start a client thread: {e}");
        }
    }

    /// A client has gone. Once none is left while the VM runs, the fd sets nothing
    /// opened are closed (QEMU 7.2's monitor_fdsets_cleanup).
    fn left(&self) {
        let connected = self.slots.connected() + self.byte_monitors.connected();
        if connected == 0 && self.gw.run_state() == RunState::Running {
            let closed = self.gw.fdsets.close_unopened();
            if closed > 0 {
                log::info!("QMP: the last client left; closed the {closed} fds of its fd sets");
            }
        }
    }

    fn client(&self, conn: Conn, outbox: Arc<Outbox>, ticket: &Ticket, form: Form) {
        let writer = outbox.clone();
        if std::thread::Builder::new()
            .name("qmp-writer".into())
            .spawn(move || writer.run_writer())
            .is_err()
        {
            return;
        }
        outbox.push(protocol::greeting_offering(form.oob));
        // (A greeting without OOB is a ringbuf's, which takes no input: no client can
        // ask for it there.)
        let mut session = Session::new(
            self.gw.clone(),
            outbox.clone(),
            self.budget.account(),
            ticket.negotiated(),
        );
        let mut stream = JsonStream::default();
        let mut pending: Vec<ReceivedFd> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = form.handshake.map(|h| Instant::now() + h);
        // Said once per client: a client that floods fds does not flood the log.
        let mut warned = false;
        loop {
            // Until it negotiates, a client is waited for only until its deadline.
            let limit = deadline
                .filter(|_| !session.negotiated())
                .map(|d| d.saturating_duration_since(Instant::now()));
            match conn.wait_readable(limit) {
                Ok(true) => {}
                Ok(false) => {
                    self.handshake_over(&outbox);
                    break;
                }
                Err(_) => break,
            }
            // Room for its fds is charged before they are received (and what is not
            // used given back at once), so the gateway never holds one uncharged.
            let room = session.fd_account().reserve(MAX_PENDING_FDS);
            let Ok(received) = conn.read(&mut buf, room.room()) else {
                break;
            };
            let (held, refused) = room.hold(received.fds, received.dropped);
            pending.extend(held.into_iter().map(Ok));
            if let Some(why) = refused {
                if !std::mem::replace(&mut warned, true) {
                    log::warn!("QMP client: its fds are refused: {why}");
                }
                pending.push(Err(why));
            } else if received.dropped && !std::mem::replace(&mut warned, true) {
                log::warn!(
                    "QMP client sent more than {MAX_PENDING_FDS} fds at once; the rest were \
                     closed"
                );
            }
            if pending.len() > MAX_PENDING_FDS {
                if !std::mem::replace(&mut warned, true) {
                    log::warn!(
                        "QMP client sent more than {MAX_PENDING_FDS} unclaimed fds; closing the \
                         oldest"
                    );
                }
                let extra = pending.len() - MAX_PENDING_FDS;
                pending.drain(..extra);
            }
            if received.bytes == 0 {
                break;
            }
            for item in stream.feed(&buf[..received.bytes]) {
                session.handle(item, &mut pending);
            }
            if outbox.is_closed() {
                break;
            }
        }
        outbox.close();
    }

    /// Tells a client that did not negotiate in time why it is let go.
    fn handshake_over(&self, outbox: &Outbox) {
        let secs = self.handshake.map(|h| h.as_secs_f64()).unwrap_or_default();
        log::warn!("QMP client did not negotiate capabilities within {secs} s; letting it go");
        let e = QmpError::generic(format!(
            "No capabilities negotiation within {secs} s: closing the connection"
        ));
        outbox.push(protocol::response(Err(e), None));
    }
}
