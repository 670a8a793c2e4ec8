//! A NIC: the guest's virtio-net device (`--device virtio-net-pci,netdev=ID,...` or
//! device_add), the backend behind it, and the net daemon serving it. The gateway keeps
//! what a daemon needs (the backend's fds, the listening socket, the MAC, the link state)
//! so a new daemon can take over when one dies.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use ipc::{NetBackendKind, NetEvent, NetOpen, NetReply, NetRequest, RxFilterState};
use parking_lot::Mutex;

use super::error::NetError;
use super::netdev::{ClientInfo, Netdev};
use crate::children::daemon::{connect, stop_slot, Daemon, DaemonKind};
use crate::children::link::Protocol;
use crate::children::sandbox::Policy;
use crate::events::{Event, EventBus, NicRxFilterChanged};
use crate::fdstore::Charge;

/// A net daemon's control channel.
pub struct NetProtocol;

impl Protocol for NetProtocol {
    type Call = NetRequest;
    type Answer = NetReply;
    type Event = NetEvent;
}

impl DaemonKind for NetProtocol {
    const PROCESS: &'static str = "net-daemon";
    const NAME: &'static str = "net daemon";

    fn quit() -> NetRequest {
        NetRequest::Quit
    }

    fn opened(answer: &NetReply) -> bool {
        matches!(answer, NetReply::Done)
    }
}

/// A NIC's net daemon.
pub type NetDaemon = Daemon<NetProtocol>;

/// Where a NIC's daemon reports to.
#[derive(Clone)]
pub struct Hooks {
    pub events: Arc<EventBus>,
    /// NIC ids whose daemon died.
    pub deaths: Sender<String>,
    pub sandbox: Policy,
}

pub struct Nic {
    /// The NIC's index in vmm-core's launch request.
    pub index: u32,
    /// Its name in QMP (set_link, query-rx-filter): its net client's name.
    pub id: String,
    /// Its device's QOM path (/machine/peripheral/ID, or peripheral-anon).
    pub qom_path: String,
    /// The netdev behind it; None once netdev_del removed it.
    pub netdev: Option<String>,
    /// The netdev's net client, as `info network` shows it.
    pub backend: ClientInfo,
    /// Its place in the order of making (`info network` lists in that order).
    pub made: u64,
    pub mac: [u8; 6],
    pub queue_pairs: u32,
    pub kind: NetBackendKind,
    pub backend_fds: Vec<OwnedFd>,
    /// The netdev's charge to its client's fd budget (netdev_add's), kept while the NIC
    /// uses it: the netdev is spare again when the NIC goes.
    pub charge: Option<Charge>,
    /// Bound by the gateway, kept across daemons: vmm-core's reconnections land here.
    pub listener: UnixListener,
    pub socket: PathBuf,
    pub binary: PathBuf,
    pub daemon: Option<NetDaemon>,
    pub link_up: bool,
    /// The filter as last reported by a daemon: what a query answers while none runs,
    /// and what a replacement daemon starts from.
    pub last_filter: Arc<Mutex<RxFilterState>>,
    /// Whether a daemon has served this NIC before (a new one restores the filter).
    pub served: bool,
    /// NIC_RX_FILTER_CHANGED is sent once, then not until the next query-rx-filter.
    pub notify: Arc<AtomicBool>,
    pub started: Instant,
    pub failures: u32,
    /// Not restarted by the supervisor: a restart asked for over QMP failed, and the
    /// next one is asked for too.
    pub hold: bool,
}

impl Nic {
    /// Its QOM path, as QEMU names a virtio-net-pci's backend in the event.
    pub fn path(&self) -> String {
        format!("{}/virtio-backend", self.qom_path())
    }

    /// The device's QOM path.
    pub fn qom_path(&self) -> String {
        self.qom_path.clone()
    }

    /// Whether `name` is its id or one of its QOM paths (QMP's "id").
    pub fn is_named(&self, name: &str) -> bool {
        self.id == name || self.qom_path == name || self.path() == name
    }

    /// Its netdev again, as a spare one (the NIC is gone; a daemon no longer runs).
    pub fn into_netdev(self) -> Netdev {
        Netdev {
            id: self.netdev.unwrap_or_default(),
            kind: self.kind,
            fds: self.backend_fds,
            client: self.backend,
            charge: self.charge,
        }
    }

    /// Starts a daemon for this NIC with its backend and listening socket; returns its
    /// pid.
    pub fn start(&mut self, hooks: &Hooks) -> Result<u32, NetError> {
        let (events, notify, name, path, last) = (
            hooks.events.clone(),
            self.notify.clone(),
            self.id.clone(),
            self.path(),
            self.last_filter.clone(),
        );
        let mut fds: Vec<BorrowedFd> = self.backend_fds.iter().map(|f| f.as_fd()).collect();
        fds.push(self.listener.as_fd());
        let open = NetOpen {
            nic: self.id.clone(),
            mac: self.mac,
            queue_pairs: self.queue_pairs,
            backend: self.kind,
            backend_fds: self.backend_fds.len() as u32,
            link_up: self.link_up,
            filter: self.served.then(|| Box::new(self.filter_seen())),
        };
        let (daemon, _, _) = NetDaemon::start(
            &self.binary,
            &self.id,
            &hooks.sandbox,
            move |e| match e {
                NetEvent::RxFilterChanged(state) => {
                    *last.lock() = *state;
                    if notify.swap(false, Ordering::SeqCst) {
                        events.emit(Event::NicRxFilterChanged(NicRxFilterChanged {
                            name: name.clone(),
                            path: path.clone(),
                        }));
                    }
                }
            },
            hooks.deaths.clone(),
            NetRequest::Open(open),
            &fds,
        )?;
        let pid = daemon.pid().unwrap_or(0);
        self.daemon = Some(daemon);
        self.served = true;
        self.started = Instant::now();
        self.hold = false;
        Ok(pid)
    }

    /// A connection to the daemon's socket, for vmm-core.
    pub fn connect(&self) -> Result<UnixStream, NetError> {
        Ok(connect::<NetProtocol>(&self.socket, &self.id)?)
    }

    fn filter_seen(&self) -> RxFilterState {
        self.last_filter.lock().clone()
    }

    /// The receive filter: the daemon's, or the last one seen while none runs.
    pub fn rx_filter(&mut self) -> RxFilterState {
        if let Some(d) = &self.daemon {
            match d.link.request(NetRequest::RxFilter, &[]) {
                Ok(NetReply::RxFilter(f)) => *self.last_filter.lock() = *f,
                Ok(other) => log::warn!("{} answered RxFilter with {other:?}", d.link.name()),
                Err(e) => log::warn!("{}: {e}", d.link.name()),
            }
        }
        self.filter_seen()
    }

    /// Stops the daemon if one runs; says how it ended.
    pub fn stop(&mut self) -> Option<String> {
        stop_slot(&mut self.daemon)
    }
}
