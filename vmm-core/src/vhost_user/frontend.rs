//! A virtio device served by a vhost-user backend (block-daemon, net-daemon,
//! qemu-storage-daemon, ...), surviving the backend's restarts. What differs between
//! device types (ids, queue layout, where the config space comes from) is in `Kind`.
//!
//! What the driver set up (features, rings, their eventfds) is kept apart from the
//! connection, so that when the backend hangs up the guest keeps running (its kicks wait
//! in the ioeventfds, nothing completes) while a thread gets a new connection: to the
//! same socket path with backoff when vmm-core runs on its own, or handed over by the
//! gateway, which restarts the daemon. On the new connection everything is replayed:
//! features, memory table, the inflight region the first backend created (so the new
//! one restarts what was in flight), and each ring from the used index in guest memory.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserInflight, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio_pci::{ActiveQueue, ConfigChanged, VirtioDevice};
use crate::memory::GuestRam;

const VIRTIO_ID_BLOCK: u16 = 2;
const VIRTIO_ID_NET: u16 = 1;
/// PCI classes of QEMU's virtio-blk-pci (mass storage, SCSI) and virtio-net-pci
/// (network, Ethernet).
const PCI_CLASS_STORAGE: u32 = 0x010000;
const PCI_CLASS_NETWORK: u32 = 0x020000;
/// virtio-blk's config space, read from the backend.
const BLK_CONFIG_LEN: u32 = 60;
/// Most queues any device gets.
pub const MAX_QUEUES: usize = 16;
const QUEUE_MAX_SIZE: u16 = 256;

const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
const VIRTIO_NET_F_MQ: u64 = 1 << 22;
const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// What kind of device the backend serves, and what vmm-core keeps for it.
pub enum Kind {
    /// virtio-blk: the config space is the backend's (GET_CONFIG).
    Blk,
    /// virtio-net: vmm-core owns the config space (MAC from the command line, link
    /// status); the queues are rx/tx pairs and, if offered, the control queue last, all
    /// served by the backend.
    Net {
        mac: [u8; 6],
        /// Queue pairs asked for (the backend may serve fewer).
        max_pairs: u16,
        link_up: Arc<AtomicBool>,
    },
}

impl Kind {
    fn net_pairs(&self, num_queues: usize) -> u16 {
        match self {
            Kind::Blk => 0,
            Kind::Net { .. } => (num_queues / 2) as u16,
        }
    }
}

// Features the transport cannot carry through (it lays out split rings only, and no
// IOMMU or notification data); the vhost-user protocol bit is the frontend's business.
const VIRTIO_F_IOMMU_PLATFORM: u64 = 1 << 33;
const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
const VIRTIO_F_NOTIFICATION_DATA: u64 = 1 << 38;
const VIRTIO_BLK_F_MQ: u64 = 1 << 12;

/// Protocol features this frontend uses when the backend offers them.
fn wanted_protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("vhost-user {what}: {error}")]
    Protocol {
        what: &'static str,
        error: vhost::Error,
    },
    #[error("backend channel: {0}")]
    BackendChannel(std::io::Error),
    #[error("the new backend lacks features the driver uses ({0:#x})")]
    LostFeatures(u64),
    #[error("{0}")]
    Setup(String),
}

fn proto(what: &'static str) -> impl FnOnce(vhost::Error) -> VhostUserError {
    move |error| VhostUserError::Protocol { what, error }
}

/// Where a new connection comes from when the backend hangs up.
pub enum Reconnect {
    /// Connect to this socket again, with backoff (vmm-core on its own).
    Path(PathBuf),
    /// The gateway restarts the daemon and hands over a connected socket.
    Handed(Receiver<UnixStream>),
}

/// Handles the backend's own messages (config changes after a resize).
struct BackendRequests {
    config_stale: Arc<AtomicBool>,
    notify: Mutex<Option<ConfigChanged>>,
}

impl BackendRequests {
    fn config_changed(&self) {
        self.config_stale.store(true, Ordering::Release);
        if let Some(n) = self.notify.lock().as_ref() {
            n.notify();
        }
    }
}

impl VhostUserFrontendReqHandler for BackendRequests {
    fn handle_config_change(&self) -> vhost::vhost_user::HandlerResult<u64> {
        self.config_changed();
        Ok(0)
    }
}

/// Tells the disk its backend's configuration changed (re-read on the guest's next
/// look, with a config-change interrupt now), for changes the gateway learns of first:
/// a resize it ordered.
#[derive(Clone)]
pub struct ConfigChangeHandle(Arc<BackendRequests>);

impl ConfigChangeHandle {
    pub fn raise(&self) {
        self.0.config_changed();
    }
}

/// A ring as the driver laid it out, with its own copies of the eventfds.
struct RingSetup {
    index: usize,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    kick: EventFd,
    call: EventFd,
}

/// One connection to the backend.
struct Session {
    frontend: Frontend,
    /// A second handle on the socket, watched for the backend hanging up.
    watch: UnixStream,
}

struct Link {
    /// Names the device in logs ("disk 0", "nic net0").
    name: String,
    kind: Kind,
    session: Option<Session>,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    num_queues: usize,
    config: Vec<u8>,
    /// Set once the driver has activated the device (DRIVER_OK).
    acked_features: Option<u64>,
    rings: Vec<RingSetup>,
    /// The rings were handed to a backend since the driver set them up: a new backend
    /// starts from the used index in guest memory, not from 0.
    rings_started: bool,
    /// The inflight region the first backend of this activation created.
    inflight: Option<(VhostUserInflight, File)>,
    mem: GuestMemoryMmap,
    regions: Vec<(u64, u64, u64, u64)>,
    memfd: File,
    requests: Arc<BackendRequests>,
}

impl Link {
    /// Ownership, features, protocol features and the backend channel on a fresh socket.
    fn handshake(&mut self, stream: UnixStream, max_queues: usize) -> Result<(), VhostUserError> {
        let watch = stream.try_clone().map_err(VhostUserError::BackendChannel)?;
        let mut frontend = Frontend::from_stream(stream, MAX_QUEUES as u64);
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        if let Some(acked) = self.acked_features {
            // Features vmm-core serves itself (a NIC's config space) are no backend's.
            let own = match self.kind {
                Kind::Net { .. } => VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS,
                Kind::Blk => 0,
            };
            let lost = acked & !features & !own;
            if lost != 0 {
                return Err(VhostUserError::LostFeatures(lost));
            }
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(proto("GET_PROTOCOL_FEATURES"))?;
            protocol = offered & wanted_protocol();
            frontend
                .set_protocol_features(protocol)
                .map_err(proto("SET_PROTOCOL_FEATURES"))?;
        }
        let backend_queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            Some(frontend.get_queue_num().map_err(proto("GET_QUEUE_NUM"))? as usize)
        } else {
            None
        };
        let num_queues = match &self.kind {
            Kind::Blk => {
                let n = match backend_queues {
                    Some(n) if features & VIRTIO_BLK_F_MQ != 0 => n,
                    _ => 1,
                };
                n.clamp(1, max_queues.clamp(1, MAX_QUEUES))
            }
            Kind::Net { max_pairs, .. } => {
                // Pairs of rx/tx queues, then the control queue if the backend has one.
                let ctrl = usize::from(features & VIRTIO_NET_F_CTRL_VQ != 0);
                let offered = match backend_queues {
                    Some(n) if features & VIRTIO_NET_F_MQ != 0 => n.saturating_sub(ctrl) / 2,
                    _ => 1,
                };
                let pairs =
                    offered.clamp(1, usize::from(*max_pairs).clamp(1, (MAX_QUEUES - 1) / 2));
                2 * pairs + ctrl
            }
        };
        if self.backend_features != 0 && num_queues < self.num_queues {
            return Err(VhostUserError::Setup(format!(
                "the new backend serves {num_queues} queue(s), the guest uses {}",
                self.num_queues
            )));
        }
        if protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            let mut handler = FrontendReqHandler::new(self.requests.clone()).map_err(|e| {
                VhostUserError::Protocol {
                    what: "backend channel",
                    error: vhost::Error::VhostUserProtocol(e),
                }
            })?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                handler.set_reply_ack_flag(true);
            }
            frontend
                .set_backend_request_fd(&handler.get_tx_raw_fd())
                .map_err(proto("SET_BACKEND_REQ_FD"))?;
            std::thread::Builder::new()
                .name("vhost-user-blk-backend-req".into())
                .spawn(move || while handler.handle_request().is_ok() {})
                .map_err(VhostUserError::BackendChannel)?;
        }
        if self.backend_features == 0 {
            // The first backend decides what the guest is offered.
            self.backend_features = features;
            self.num_queues = num_queues;
        }
        self.protocol = protocol;
        self.session = Some(Session { frontend, watch });
        self.requests.config_stale.store(true, Ordering::Release);
        Ok(())
    }

    fn host(&self, addr: u64, what: &str) -> Result<u64, VhostUserError> {
        self.mem
            .get_host_address(GuestAddress(addr))
            .map(|p| p as u64)
            .map_err(|_| {
                VhostUserError::Setup(format!("{what} at {addr:#x} is outside guest memory"))
            })
    }

    /// Hands the driver's setup to the connected backend (after DRIVER_OK, and again
    /// after every reconnection).
    fn apply(&mut self) -> Result<(), VhostUserError> {
        let Some(features) = self.acked_features else {
            return Ok(());
        };
        let mut acked = features & self.backend_features;
        if !self.protocol.is_empty() {
            acked |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        let regions: Vec<VhostUserMemoryRegionInfo> = self
            .regions
            .iter()
            .map(|&(gpa, size, host, offset)| VhostUserMemoryRegionInfo {
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: host,
                mmap_offset: offset,
                mmap_handle: self.memfd.as_raw_fd(),
            })
            .collect();
        let mut ring_addrs = Vec::new();
        for r in &self.rings {
            ring_addrs.push((
                self.host(r.desc, "descriptor table")?,
                self.host(r.used, "used ring")?,
                self.host(r.avail, "available ring")?,
            ));
        }
        // A ring handed to a backend before continues from what completed (the used
        // index); the backend restarts what was in flight from the inflight region.
        let bases: Vec<u16> = self
            .rings
            .iter()
            .map(|r| {
                if self.rings_started {
                    self.mem
                        .read_obj::<u16>(GuestAddress(r.used + 2))
                        .unwrap_or(0)
                } else {
                    0
                }
            })
            .collect();
        let inflight_wanted = self
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
            && !self.rings.is_empty();
        let queue_size = self.rings.first().map_or(QUEUE_MAX_SIZE, |r| r.size);
        let num_queues = self.num_queues as u16;
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let f = &mut session.frontend;
        f.set_features(acked).map_err(proto("SET_FEATURES"))?;
        f.set_mem_table(&regions).map_err(proto("SET_MEM_TABLE"))?;
        if inflight_wanted {
            if self.inflight.is_none() {
                let ask = VhostUserInflight {
                    mmap_size: 0,
                    mmap_offset: 0,
                    num_queues,
                    queue_size,
                };
                self.inflight = Some(f.get_inflight_fd(&ask).map_err(proto("GET_INFLIGHT_FD"))?);
            }
            if let Some((info, file)) = &self.inflight {
                f.set_inflight_fd(info, file.as_raw_fd())
                    .map_err(proto("SET_INFLIGHT_FD"))?;
            }
        }
        for ((r, (desc, used, avail)), base) in self.rings.iter().zip(ring_addrs).zip(bases) {
            let config = VringConfigData {
                queue_max_size: QUEUE_MAX_SIZE,
                queue_size: r.size,
                flags: 0,
                desc_table_addr: desc,
                used_ring_addr: used,
                avail_ring_addr: avail,
                log_addr: None,
            };
            f.set_vring_num(r.index, r.size)
                .map_err(proto("SET_VRING_NUM"))?;
            f.set_vring_addr(r.index, &config)
                .map_err(proto("SET_VRING_ADDR"))?;
            f.set_vring_base(r.index, base)
                .map_err(proto("SET_VRING_BASE"))?;
            f.set_vring_call(r.index, &r.call)
                .map_err(proto("SET_VRING_CALL"))?;
            f.set_vring_kick(r.index, &r.kick)
                .map_err(proto("SET_VRING_KICK"))?;
            if !self.protocol.is_empty() {
                f.set_vring_enable(r.index, true)
                    .map_err(proto("SET_VRING_ENABLE"))?;
            }
        }
        self.rings_started = true;
        // Kicks the guest made while no backend listened are in the eventfds already;
        // one more makes sure a backend that waits for a kick looks at each ring.
        for r in &self.rings {
            let _ = r.kick.write(1);
        }
        Ok(())
    }

    fn refresh_config(&mut self) {
        if let Kind::Net {
            mac,
            link_up,
            max_pairs: _,
        } = &self.kind
        {
            // virtio_net_config: mac, status, max_virtqueue_pairs.
            let mut c = vec![0u8; 10];
            c[0..6].copy_from_slice(mac);
            let status = if link_up.load(Ordering::Acquire) {
                VIRTIO_NET_S_LINK_UP
            } else {
                0
            };
            c[6..8].copy_from_slice(&status.to_le_bytes());
            let pairs = self.kind.net_pairs(self.num_queues).max(1);
            c[8..10].copy_from_slice(&pairs.to_le_bytes());
            self.config = c;
            return;
        }
        if !self.requests.config_stale.swap(false, Ordering::AcqRel) {
            return;
        }
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return;
        }
        let Some(session) = self.session.as_mut() else {
            // Read again once a backend is back.
            self.requests.config_stale.store(true, Ordering::Release);
            return;
        };
        match session.frontend.get_config(
            0,
            BLK_CONFIG_LEN,
            VhostUserConfigFlags::WRITABLE,
            &[0; BLK_CONFIG_LEN as usize],
        ) {
            Ok((_, bytes)) => {
                self.config = bytes;
                // The device reports the queue count the transport exposes.
                if self.config.len() >= 36 {
                    self.config[34..36].copy_from_slice(&(self.num_queues as u16).to_le_bytes());
                }
            }
            Err(e) => {
                log::warn!("{}: vhost-user GET_CONFIG: {e}", self.name);
                self.requests.config_stale.store(true, Ordering::Release);
            }
        }
    }

    /// The backend failed a call: treat it as gone (the watcher reconnects).
    fn lost(&mut self, what: &str, e: &VhostUserError) {
        if self.session.take().is_some() {
            log::warn!(
                "{}: {what}: {e}; waiting for the backend to come back",
                self.name
            );
        }
    }
}

pub struct VhostUserDevice {
    link: Arc<Mutex<Link>>,
    requests: Arc<BackendRequests>,
}

/// Sets a NIC's link status (QMP set_link): the guest sees the config change.
#[derive(Clone)]
pub struct LinkHandle {
    up: Arc<AtomicBool>,
    requests: Arc<BackendRequests>,
}

impl LinkHandle {
    pub fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            self.requests.config_changed();
        }
    }
}

/// Blocks until the peer of `fd` hangs up.
fn wait_hangup(fd: RawFd) {
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own, no timeout.
        let n = unsafe { libc::poll(&mut p, 1, -1) };
        if n > 0
            && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
        {
            return;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// The backend's lifeline: waits for it to hang up, then gets and sets up the next one.
fn supervise(link: Arc<Mutex<Link>>, reconnect: Reconnect, max_queues: usize) {
    loop {
        let watch = match link.lock().session.as_ref().map(|s| s.watch.try_clone()) {
            Some(Ok(w)) => Some(w),
            _ => None,
        };
        if let Some(w) = watch {
            wait_hangup(w.as_raw_fd());
            let mut l = link.lock();
            if l.session.take().is_some() {
                log::warn!(
                    "{}: the vhost-user backend hung up; guest I/O waits for it",
                    l.name
                );
            }
        }
        let mut delay = Duration::from_millis(5);
        loop {
            let stream = match &reconnect {
                Reconnect::Path(p) => match UnixStream::connect(p) {
                    Ok(s) => s,
                    Err(_) => {
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
                Reconnect::Handed(rx) => match rx.recv() {
                    Ok(s) => s,
                    // vmm-core is ending: nobody will hand over a connection again.
                    Err(_) => return,
                },
            };
            let mut l = link.lock();
            let result = l.handshake(stream, max_queues).and_then(|()| l.apply());
            match result {
                Ok(()) => {
                    log::info!("{}: the vhost-user backend is back", l.name);
                    break;
                }
                Err(e) => {
                    l.session = None;
                    log::warn!("{}: setting up the new backend: {e}", l.name);
                    drop(l);
                    if matches!(reconnect, Reconnect::Path(_)) {
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                }
            }
        }
    }
}

impl VhostUserDevice {
    /// Talks to the backend on `stream` (already connected): ownership, features,
    /// protocol features, queue count (at most `max_queues`), config space. When the
    /// backend later hangs up, `reconnect` says where the next one comes from.
    pub fn new(
        name: String,
        kind: Kind,
        stream: UnixStream,
        reconnect: Reconnect,
        ram: &GuestRam,
        max_queues: usize,
    ) -> Result<VhostUserDevice, VhostUserError> {
        let requests = Arc::new(BackendRequests {
            config_stale: Arc::new(AtomicBool::new(true)),
            notify: Mutex::new(None),
        });
        let regions = ram
            .regions()
            .iter()
            .map(|r| {
                (
                    r.guest_addr,
                    r.size,
                    ram.host_addr(r).unwrap_or(0),
                    r.file_offset,
                )
            })
            .collect();
        let mut link = Link {
            name: name.clone(),
            kind,
            session: None,
            backend_features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            num_queues: 1,
            config: vec![0; BLK_CONFIG_LEN as usize],
            acked_features: None,
            rings: Vec::new(),
            rings_started: false,
            inflight: None,
            mem: ram.memory().clone(),
            regions,
            memfd: ram
                .memfd()
                .try_clone()
                .map_err(VhostUserError::BackendChannel)?,
            requests: requests.clone(),
        };
        link.handshake(stream, max_queues)?;
        link.refresh_config();
        let link = Arc::new(Mutex::new(link));
        let watched = link.clone();
        std::thread::Builder::new()
            .name(format!("vhost-user {name}"))
            .spawn(move || supervise(watched, reconnect, max_queues))
            .map_err(VhostUserError::BackendChannel)?;
        Ok(VhostUserDevice { link, requests })
    }

    pub fn config_change_handle(&self) -> ConfigChangeHandle {
        ConfigChangeHandle(self.requests.clone())
    }

    /// For a NIC: the handle QMP's set_link goes through.
    pub fn link_handle(&self) -> Option<LinkHandle> {
        match &self.link.lock().kind {
            Kind::Net { link_up, .. } => Some(LinkHandle {
                up: link_up.clone(),
                requests: self.requests.clone(),
            }),
            Kind::Blk => None,
        }
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u16 {
        match self.link.lock().kind {
            Kind::Blk => VIRTIO_ID_BLOCK,
            Kind::Net { .. } => VIRTIO_ID_NET,
        }
    }

    fn pci_class(&self) -> u32 {
        match self.link.lock().kind {
            Kind::Blk => PCI_CLASS_STORAGE,
            Kind::Net { .. } => PCI_CLASS_NETWORK,
        }
    }

    fn num_queues(&self) -> usize {
        self.link.lock().num_queues
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_MAX_SIZE
    }

    fn features(&self) -> u64 {
        let l = self.link.lock();
        let mut f = l.backend_features
            & !(VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
                | VIRTIO_F_IOMMU_PLATFORM
                | VIRTIO_F_RING_PACKED
                | VIRTIO_F_NOTIFICATION_DATA);
        match &l.kind {
            Kind::Blk => {
                if l.num_queues == 1 {
                    f &= !VIRTIO_BLK_F_MQ;
                }
            }
            Kind::Net { .. } => {
                // vmm-core owns the config space: the MAC and the link status are its.
                f |= VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;
                if l.kind.net_pairs(l.num_queues) <= 1 {
                    f &= !VIRTIO_NET_F_MQ;
                }
            }
        }
        f
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        let mut l = self.link.lock();
        l.refresh_config();
        for (i, b) in data.iter_mut().enumerate() {
            *b = l.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // virtio-blk's configuration is read-only unless CONFIG_WCE is offered, which
        // this frontend does not pass through.
    }

    fn activate(&mut self, features: u64, queues: &[ActiveQueue]) -> Result<(), String> {
        let mut l = self.link.lock();
        let n = l.num_queues;
        let mut rings = Vec::new();
        for q in queues.iter().filter(|q| q.index < n) {
            rings.push(RingSetup {
                index: q.index,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                kick: q
                    .kick
                    .try_clone()
                    .map_err(|e| format!("kick eventfd: {e}"))?,
                call: q
                    .call
                    .try_clone()
                    .map_err(|e| format!("call eventfd: {e}"))?,
            });
        }
        // Recorded first: if the backend is away now, it gets all this when it is back.
        l.acked_features = Some(features);
        l.rings = rings;
        l.rings_started = false;
        l.inflight = None;
        if let Err(e) = l.apply() {
            match e {
                VhostUserError::Setup(msg) => return Err(msg),
                other => l.lost("activating the rings", &other),
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        let mut l = self.link.lock();
        let rings: Vec<usize> = l.rings.iter().map(|r| r.index).collect();
        let protocol = l.protocol;
        if let Some(s) = l.session.as_mut() {
            for q in rings {
                if !protocol.is_empty() {
                    let _ = s.frontend.set_vring_enable(q, false);
                }
                // GET_VRING_BASE stops the ring in the backend.
                let _ = s.frontend.get_vring_base(q);
            }
        }
        // What the driver set up and what was in flight are gone with the reset.
        l.acked_features = None;
        l.rings.clear();
        l.rings_started = false;
        l.inflight = None;
    }

    fn set_config_changed(&mut self, notify: ConfigChanged) {
        *self.requests.notify.lock() = Some(notify);
    }
}
