//! The link to one vhost-user backend, whatever the device type: the connection
//! (ownership, virtio and protocol features, queue count, the backend's channel back),
//! what the driver set up (features, rings and their eventfds), and the replay of that
//! setup on a new connection, and the backend's part in postcopy at a destination. Memory
//! added or removed while the device runs (a DIMM) goes to the backend as one region
//! (ADD_MEM_REG / REM_MEM_REG) where it offers memory slots, else as the whole table again
//! (SET_MEM_TABLE), as QEMU's frontend does; in both cases acknowledged before the guest
//! hears of the memory.
//!
//! The driver's setup is kept apart from the connection, so that when the backend hangs
//! up the guest keeps running (its kicks wait in the ioeventfds, nothing completes) until
//! the next backend is connected (`reconnect`). Everything is replayed on it: features,
//! memory table, the inflight region the first backend created (so the new one restarts
//! what was in flight), and each ring from the used index in guest memory.

use std::fs::File;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use ipc::userfault::MappedRange;
use ipc::VmmEvent;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight,
    VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, FrontendReqHandler, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use virtio::features::{ACCESS_PLATFORM, NOTIFICATION_DATA, RING_PACKED};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::backend_requests::BackendRequests;
use super::model::{DeviceModel, MAX_QUEUES};
use crate::devices::virtio_pci::ActiveQueue;
use crate::events::PostcopyEvents;
use crate::memory::{GuestRam, HotRegion, SharedRegion};

/// The largest ring the driver may lay out for a queue.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Features the transport cannot carry through: it lays out split rings only, with no
/// IOMMU and no notification data; and VHOST_F_LOG_ALL, which is between vmm-core and
/// the backend, never the guest's.
const TRANSPORT_UNSUPPORTED: u64 = ACCESS_PLATFORM | RING_PACKED | NOTIFICATION_DATA | F_LOG_ALL;

/// Protocol features this frontend uses when the backend offers them.
fn wanted_protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::PAGEFAULT
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

/// The regions a backend takes in SET_MEM_TABLE without memory slots (the protocol's
/// VHOST_MEMORY_BASELINE_NREGIONS).
const BASELINE_REGIONS: usize = 8;

/// VHOST_F_LOG_ALL: the backend logs its writes to guest memory (a migration runs).
const F_LOG_ALL: u64 = 1 << 26;
/// SET_VRING_ADDR's flag: log the used ring's writes at its log address.
const VRING_F_LOG: u32 = 1 << 0;

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
    /// Postcopy needs this protocol feature ("PAGEFAULT", "REPLY_ACK").
    #[error("the vhost-user backend cannot take postcopy (no VHOST_USER_PROTOCOL_F_{0})")]
    NoPostcopy(&'static str),
    /// The device's first connection took longer than this (`deadline`).
    #[error("the vhost-user backend did not answer within {0:?}; its connection is closed")]
    NoAnswer(Duration),
    /// The device was unplugged: its link takes no backend again.
    #[error("the device was unplugged")]
    Unplugged,
}

/// Named after each message the frontend sends (`f.set_owner().map_err(proto(..))`), so
/// also where the message is traced (vhost_user_frontend_msg), once it went.
fn proto(what: &'static str) -> impl FnOnce(vhost::Error) -> VhostUserError {
    ipc::tracepoint!(VhostUserFrontendMsg, "request={what}");
    move |error| VhostUserError::Protocol { what, error }
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

impl RingSetup {
    /// SET_VRING_ADDR's payload for host addresses (desc, used, avail); while logging,
    /// the used ring's writes are logged at its guest address.
    fn addresses(&self, (desc, used, avail): (u64, u64, u64), logging: bool) -> VringConfigData {
        VringConfigData {
            queue_max_size: QUEUE_MAX_SIZE,
            queue_size: self.size,
            flags: if logging { VRING_F_LOG } else { 0 },
            desc_table_addr: desc,
            used_ring_addr: used,
            avail_ring_addr: avail,
            log_addr: logging.then_some(self.used),
        }
    }
}

/// The backend's mapping of guest RAM from its SET_MEM_TABLE answer while postcopy
/// listens: one base per region sent (`regions`: guest address, size), in their order.
/// The answer is the backend's: checked, never trusted.
fn backend_ranges(
    regions: &[(u64, u64)],
    bases: Option<Vec<u64>>,
) -> Result<Vec<MappedRange>, VhostUserError> {
    let bases = bases.ok_or_else(|| {
        VhostUserError::Setup("the backend answered SET_MEM_TABLE without its mapping".into())
    })?;
    if bases.len() != regions.len() {
        return Err(VhostUserError::Setup(format!(
            "the backend mapped {} region(s) of guest RAM, {} were sent",
            bases.len(),
            regions.len()
        )));
    }
    regions
        .iter()
        .zip(bases)
        .map(|(&(guest_addr, size), host_addr)| {
            if host_addr.checked_add(size).is_none() {
                return Err(VhostUserError::Setup(format!(
                    "the backend maps {size:#x} bytes of guest RAM at {host_addr:#x}"
                )));
            }
            Ok(MappedRange {
                host_addr,
                size,
                guest_addr,
            })
        })
        .collect()
}

/// `send` with the backend's acknowledgement asked for (REPLY_ACK negotiated).
fn acknowledged<T>(
    f: &mut Frontend,
    send: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
) -> vhost::Result<T> {
    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let result = send(f);
    f.set_hdr_flags(VhostUserHeaderFlag::empty());
    result
}

/// A region as vhost-user describes it.
fn region_info(r: &SharedRegion) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: r.guest_addr,
        memory_size: r.size,
        userspace_addr: r.host_addr,
        mmap_offset: r.file_offset,
        mmap_handle: r.file.as_raw_fd(),
    }
}

/// SET_LOG_BASE with the log's memfd.
fn send_log_base(f: &mut Frontend, log: &File, len: u64) -> Result<(), VhostUserError> {
    let region = VhostUserDirtyLogRegion {
        mmap_size: len,
        mmap_offset: 0,
        mmap_handle: log.as_raw_fd(),
    };
    f.set_log_base(0, Some(region))
        .map_err(proto("SET_LOG_BASE"))
}

/// How far one connection went into postcopy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionPostcopy {
    Off,
    /// POSTCOPY_ADVISE went but not POSTCOPY_LISTEN: the backend refuses POSTCOPY_END now.
    Advised,
    /// Listening, as this index of `VmmReply::Postcopy`'s backends.
    Listening(u32),
}

/// One connection to the backend.
struct Session {
    frontend: Frontend,
    /// A second handle on the socket, watched for the backend hanging up.
    watch: UnixStream,
    /// A handle on our end of the backend's channel to us, when it has one.
    requests: Option<UnixStream>,
    postcopy: SessionPostcopy,
    /// The regions this backend takes (GET_MAX_MEM_SLOTS with memory slots).
    max_regions: usize,
    /// It has a memory table (from `apply`): memory added or removed must reach it.
    has_table: bool,
}

impl Session {
    /// Shuts both sockets down: the backend sees the hang-up at once (other handles on
    /// them, the watcher's, do not keep them open), and the thread serving the
    /// backend's channel ends.
    fn shut(&self) {
        let _ = self.watch.shutdown(Shutdown::Both);
        if let Some(r) = &self.requests {
            let _ = r.shutdown(Shutdown::Both);
        }
    }
}

pub struct Link {
    /// Names the device in logs ("disk 0", "nic 0").
    name: String,
    model: Box<dyn DeviceModel>,
    session: Option<Session>,
    /// What the first backend offered: what the guest is offered for good.
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    num_queues: usize,
    /// Set once the driver has activated the device (DRIVER_OK).
    acked_features: Option<u64>,
    rings: Vec<RingSetup>,
    /// The rings were handed to a backend since the driver set them up: a new backend
    /// starts from the used index in guest memory, not from 0.
    rings_started: bool,
    /// The inflight region the first backend of this activation created.
    inflight: Option<(VhostUserInflight, File)>,
    mem: GuestMemoryMmap,
    /// Guest memory as the backend maps it: RAM's regions, then memory added since.
    regions: Vec<SharedRegion>,
    requests: Arc<BackendRequests>,
    /// The dirty log (memfd, length) while a migration runs.
    dirty_log: Option<(File, u64)>,
    /// While postcopy runs at this destination.
    postcopy: Option<PostcopyEvents>,
    /// A backend that was not told of postcopy waits for its setup until it ends.
    held: bool,
    /// The device was unplugged: no backend again.
    closed: bool,
}

impl Link {
    /// A link with no backend yet; `connect` gives it one.
    pub fn new(
        name: String,
        model: Box<dyn DeviceModel>,
        ram: &GuestRam,
        requests: Arc<BackendRequests>,
    ) -> Result<Link, VhostUserError> {
        let regions = ram.shared_regions();
        Ok(Link {
            name,
            model,
            session: None,
            backend_features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            num_queues: 1,
            acked_features: None,
            rings: Vec::new(),
            rings_started: false,
            inflight: None,
            mem: ram.memory().clone(),
            regions,
            requests,
            dirty_log: None,
            postcopy: None,
            held: false,
            closed: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn model(&self) -> &dyn DeviceModel {
        self.model.as_ref()
    }

    pub fn model_mut(&mut self) -> &mut dyn DeviceModel {
        self.model.as_mut()
    }

    pub fn num_queues(&self) -> usize {
        self.num_queues
    }

    /// What this link settled with its backend, for another vmm-core (a live upgrade).
    pub fn shape(&mut self) -> ipc::LinkShape {
        ipc::LinkShape {
            backend_features: self.backend_features,
            protocol_features: self.protocol.bits(),
            num_queues: self.num_queues as u32,
            config: self.config_space().to_vec(),
        }
    }

    /// Takes what another vmm-core's link settled (a live upgrade): the guest sees the
    /// same device at once; the backend connection comes later (`connect`), checked
    /// against it like a reconnection.
    pub fn preset(&mut self, shape: &ipc::LinkShape) -> Result<(), VhostUserError> {
        let num_queues = shape.num_queues as usize;
        if num_queues == 0 || num_queues > MAX_QUEUES {
            return Err(VhostUserError::Setup(format!(
                "{} queues handed over",
                shape.num_queues
            )));
        }
        self.backend_features = shape.backend_features;
        self.protocol = VhostUserProtocolFeatures::from_bits_truncate(shape.protocol_features);
        self.num_queues = num_queues;
        self.model
            .config_space(num_queues, Some(shape.config.clone()));
        Ok(())
    }

    /// Takes the backend on `stream` (already connected) and hands it what the driver set
    /// up, if anything. On failure the link is left without a backend.
    pub fn connect(&mut self, stream: UnixStream) -> Result<(), VhostUserError> {
        if self.closed {
            return Err(VhostUserError::Unplugged);
        }
        let result = self.handshake(stream).and_then(|()| self.apply());
        if result.is_err() {
            if let Some(s) = self.session.take() {
                s.shut();
            }
        }
        result
    }

    /// The device was unplugged: the backend's connection is shut down (its daemon sees
    /// the hang-up) and the link takes no other. The supervisor thread ends on this.
    pub fn close(&mut self) {
        self.closed = true;
        if let Some(s) = self.session.take() {
            s.shut();
            log::info!(
                "{}: the device is unplugged; its backend is let go",
                self.name
            );
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Reads the backend's configuration space now, as the device's first connection
    /// must: a device whose configuration cannot be read (a disk's capacity) is no
    /// device. Later reads follow the backend's changes (`config_space`).
    pub fn read_config_now(&mut self) -> Result<(), VhostUserError> {
        let wanted = self.model.backend_config_len();
        if let (Some(len), true) = (
            wanted,
            self.protocol.contains(VhostUserProtocolFeatures::CONFIG),
        ) {
            let session = self.session.as_mut().ok_or_else(|| {
                VhostUserError::Setup("no backend to read the configuration from".into())
            })?;
            self.requests.take_config_stale();
            let read = session.frontend.get_config(
                0,
                len,
                VhostUserConfigFlags::WRITABLE,
                &vec![0; len as usize],
            );
            match read {
                Ok((_, bytes)) => {
                    self.model.config_space(self.num_queues, Some(bytes));
                }
                Err(e) => {
                    self.requests.mark_config_stale();
                    return Err(proto("GET_CONFIG")(e));
                }
            }
        }
        self.config_space();
        Ok(())
    }

    /// Ownership, features, protocol features and the backend channel on a fresh socket.
    fn handshake(&mut self, stream: UnixStream) -> Result<(), VhostUserError> {
        let watch = stream.try_clone().map_err(VhostUserError::BackendChannel)?;
        let mut frontend = Frontend::from_stream(stream, MAX_QUEUES as u64);
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        if let Some(acked) = self.acked_features {
            let lost = acked & !features & !self.model.own_features();
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
        let num_queues = self.model.queue_count(features, backend_queues);
        if self.backend_features != 0 && num_queues < self.num_queues {
            return Err(VhostUserError::Setup(format!(
                "the new backend serves {num_queues} queue(s), the guest uses {}",
                self.num_queues
            )));
        }
        let max_regions = match protocol.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
            true => usize::try_from(
                frontend
                    .get_max_mem_slots()
                    .map_err(proto("GET_MAX_MEM_SLOTS"))?,
            )
            .unwrap_or(usize::MAX),
            false => BASELINE_REGIONS,
        };
        if self.regions.len() > max_regions {
            return Err(VhostUserError::Setup(format!(
                "the backend takes {max_regions} memory regions, guest memory has {}",
                self.regions.len()
            )));
        }
        let requests = match protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            true => Some(self.serve_backend_requests(&mut frontend, protocol)?),
            false => None,
        };
        if self.backend_features == 0 {
            // The first backend decides what the guest is offered.
            self.backend_features = features;
            self.num_queues = num_queues;
        }
        self.protocol = protocol;
        self.session = Some(Session {
            frontend,
            watch,
            requests,
            postcopy: SessionPostcopy::Off,
            max_regions,
            has_table: false,
        });
        self.requests.mark_config_stale();
        Ok(())
    }

    /// Gives the backend its channel back to us, served by a thread of its own; returns
    /// a handle on our end of it (shut down, it ends the thread).
    fn serve_backend_requests(
        &self,
        frontend: &mut Frontend,
        protocol: VhostUserProtocolFeatures,
    ) -> Result<UnixStream, VhostUserError> {
        let mut handler = FrontendReqHandler::new(self.requests.clone()).map_err(|e| {
            VhostUserError::Protocol {
                what: "backend channel",
                error: vhost::Error::VhostUserProtocol(e),
            }
        })?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            handler.set_reply_ack_flag(true);
        }
        // SAFETY: the handler owns this descriptor and lives through the call.
        let ours = unsafe { BorrowedFd::borrow_raw(handler.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(VhostUserError::BackendChannel)?;
        frontend
            .set_backend_request_fd(&handler.get_tx_raw_fd())
            .map_err(proto("SET_BACKEND_REQ_FD"))?;
        std::thread::Builder::new()
            .name(format!("{} requests", self.name))
            .spawn(move || while handler.handle_request().is_ok() {})
            .map_err(VhostUserError::BackendChannel)?;
        Ok(UnixStream::from(ours))
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
        let acked = self.backend_acked(features);
        let regions: Vec<VhostUserMemoryRegionInfo> =
            self.regions.iter().map(region_info).collect();
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
        let logging = self.dirty_log.is_some();
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let listening = match session.postcopy {
            SessionPostcopy::Listening(index) => self.postcopy.clone().map(|e| (index, e)),
            _ => None,
        };
        if self.postcopy.is_some() && listening.is_none() {
            // A backend never told of postcopy would map guest RAM unregistered and read
            // zeroes where pages have not arrived: it waits (the guest sees latency).
            if !self.held {
                log::info!(
                    "{}: the backend's setup waits for postcopy to end",
                    self.name
                );
            }
            self.held = true;
            return Ok(());
        }
        self.held = false;
        let f = &mut session.frontend;
        f.set_features(acked).map_err(proto("SET_FEATURES"))?;
        let mapped = f.set_mem_table(&regions).map_err(proto("SET_MEM_TABLE"))?;
        session.has_table = true;
        if let Some((index, events)) = listening {
            // The agent must know where the backend maps guest RAM before the backend
            // can fault there, i.e. before the ack lets it run its rings.
            let sent: Vec<(u64, u64)> = self
                .regions
                .iter()
                .map(|r| (r.guest_addr, r.size))
                .collect();
            let ranges = backend_ranges(&sent, mapped)?;
            events(VmmEvent::PostcopyRanges {
                backend: index,
                ranges,
            });
            f.postcopy_ack_mem_regions(FrontendReq::SET_MEM_TABLE)
                .map_err(proto("SET_MEM_TABLE's postcopy ack"))?;
        }
        if let Some((log, len)) = &self.dirty_log {
            send_log_base(f, log, *len)?;
        }
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
            f.set_vring_num(r.index, r.size)
                .map_err(proto("SET_VRING_NUM"))?;
            f.set_vring_addr(r.index, &r.addresses((desc, used, avail), logging))
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

    /// Whether the current backend (if any) takes one more memory region.
    pub fn has_room_for_memory(&self) -> bool {
        self.session
            .as_ref()
            .is_none_or(|s| self.regions.len() < s.max_regions)
    }

    /// Memory was added (a DIMM): it joins the guest memory this link knows (its rings may
    /// lie there) and, if the backend has a memory table, the backend's: ADD_MEM_REG with
    /// memory slots, else the whole table in SET_MEM_TABLE; acknowledged (or followed by a
    /// round trip) so that the backend maps it before the guest hears of it. Rings run on
    /// meanwhile: a backend keeps what it mapped before. A backend that fails it is taken as
    /// gone (the next one gets the whole table).
    pub fn add_memory(&mut self, hot: &HotRegion) {
        match self.mem.insert_region(hot.mapping.clone()) {
            Ok(mem) => self.mem = mem,
            Err(e) => log::warn!("{}: guest memory map: {e}", self.name),
        }
        let region = hot.shared();
        let info = region_info(&region);
        self.regions.push(region);
        let slots = self
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
        let result = self.update_table(|f, all| match slots {
            true => f
                .add_mem_region(&info)
                .map(drop)
                .map_err(proto("ADD_MEM_REG")),
            false => f
                .set_mem_table(all)
                .map(drop)
                .map_err(proto("SET_MEM_TABLE")),
        });
        if let Err(e) = result {
            self.lost("adding guest memory", &e);
        }
    }

    /// Memory at `guest_addr` went (the guest ejected a DIMM): out of this link's guest
    /// memory and the backend's (REM_MEM_REG, or the whole table again).
    pub fn remove_memory(&mut self, guest_addr: u64) {
        let Some(at) = self.regions.iter().position(|r| r.guest_addr == guest_addr) else {
            return;
        };
        let region = self.regions.remove(at);
        if let Ok((mem, _)) = self
            .mem
            .remove_region(GuestAddress(guest_addr), region.size)
        {
            self.mem = mem;
        }
        let info = region_info(&region);
        let slots = self
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
        let result = self.update_table(|f, all| match slots {
            true => f.remove_mem_region(&info).map_err(proto("REM_MEM_REG")),
            false => f
                .set_mem_table(all)
                .map(drop)
                .map_err(proto("SET_MEM_TABLE")),
        });
        if let Err(e) = result {
            self.lost("removing guest memory", &e);
        }
    }

    /// Sends a change of the memory table (`send` gets the frontend and the whole new
    /// table) to a backend that has one, and waits until it took it.
    fn update_table(
        &mut self,
        send: impl FnOnce(&mut Frontend, &[VhostUserMemoryRegionInfo]) -> Result<(), VhostUserError>,
    ) -> Result<(), VhostUserError> {
        let all: Vec<VhostUserMemoryRegionInfo> = self.regions.iter().map(region_info).collect();
        let acks = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        let Some(session) = self.session.as_mut().filter(|s| s.has_table) else {
            // No table yet: the setup will send all of it.
            return Ok(());
        };
        let f = &mut session.frontend;
        if acks {
            f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let sent = send(f, &all);
        if acks {
            f.set_hdr_flags(VhostUserHeaderFlag::empty());
            return sent;
        }
        // Without acknowledgements, a request the backend answers comes after it.
        sent.and_then(|()| f.get_features().map(drop).map_err(proto("GET_FEATURES")))
    }

    /// What SET_FEATURES tells the backend for a driver that acked `features`.
    fn backend_acked(&self, features: u64) -> u64 {
        let mut acked = features & self.backend_features;
        if !self.protocol.is_empty() {
            acked |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        if self.dirty_log.is_some() {
            acked |= F_LOG_ALL;
        }
        acked
    }

    /// A migration starts (`Some(log)`: its memfd and length) or ends (`None`): the
    /// backend logs its writes to guest memory into the log from now on, or stops. A
    /// backend that cannot log makes the migration impossible.
    pub fn set_dirty_log(&mut self, log: Option<(File, u64)>) -> Result<(), VhostUserError> {
        if log.is_some() && self.backend_features & F_LOG_ALL == 0 {
            return Err(VhostUserError::Setup(format!(
                "{}: the vhost-user backend cannot log dirty pages (no VHOST_F_LOG_ALL)",
                self.name
            )));
        }
        if log.is_some() && !self.protocol.contains(VhostUserProtocolFeatures::LOG_SHMFD) {
            return Err(VhostUserError::Setup(format!(
                "{}: the vhost-user backend takes no shared dirty log (no LOG_SHMFD)",
                self.name
            )));
        }
        self.dirty_log = log;
        let Some(features) = self.acked_features else {
            // Nothing runs yet: the log goes with the setup when the driver starts.
            return Ok(());
        };
        let acked = self.backend_acked(features);
        let logging = self.dirty_log.is_some();
        let mut ring_addrs = Vec::new();
        for r in &self.rings {
            ring_addrs.push((
                self.host(r.desc, "descriptor table")?,
                self.host(r.used, "used ring")?,
                self.host(r.avail, "available ring")?,
            ));
        }
        let Some(session) = self.session.as_mut() else {
            // The next backend gets it with the replay.
            return Ok(());
        };
        let f = &mut session.frontend;
        // The log first, then the features that turn logging on (QEMU's order). Each
        // is acknowledged, so that logging is on in the backend before the migration
        // reads the log: a completion in between would not be marked.
        if let Some((log, len)) = &self.dirty_log {
            send_log_base(f, log, *len)?;
        }
        let acks = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        if acks {
            f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let sent = (self.rings.iter().zip(ring_addrs))
            .try_for_each(|(r, addrs)| {
                f.set_vring_addr(r.index, &r.addresses(addrs, logging))
                    .map_err(proto("SET_VRING_ADDR"))
            })
            .and_then(|()| f.set_features(acked).map_err(proto("SET_FEATURES")));
        if acks {
            f.set_hdr_flags(VhostUserHeaderFlag::empty());
        }
        sent
    }

    /// The features the driver is offered: the first backend's, less what the transport
    /// cannot carry, as the device type offers them, plus what vmm-core serves itself.
    pub fn offered_features(&self) -> u64 {
        let backend = self.backend_features
            & !(VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | TRANSPORT_UNSUPPORTED);
        self.model.offered_features(backend, self.num_queues) | self.model.own_features()
    }

    /// The configuration space as the driver reads it now.
    pub fn config_space(&mut self) -> &[u8] {
        let from_backend = match self.model.backend_config_len() {
            Some(len) => self.backend_config(len),
            None => None,
        };
        self.model.config_space(self.num_queues, from_backend)
    }

    /// The backend's configuration space (GET_CONFIG), when it changed since the last
    /// read; a read that cannot happen now (no backend, an error) happens next time.
    fn backend_config(&mut self, len: u32) -> Option<Vec<u8>> {
        if !self.requests.take_config_stale() {
            return None;
        }
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return None;
        }
        let Some(session) = self.session.as_mut() else {
            // Read again once a backend is back.
            self.requests.mark_config_stale();
            return None;
        };
        match session.frontend.get_config(
            0,
            len,
            VhostUserConfigFlags::WRITABLE,
            &vec![0; len as usize],
        ) {
            Ok((_, bytes)) => Some(bytes),
            Err(e) => {
                log::warn!("{}: vhost-user GET_CONFIG: {e}", self.name);
                self.requests.mark_config_stale();
                None
            }
        }
    }

    /// The driver set DRIVER_OK: records its setup, then hands it to the backend. If the
    /// backend is away, it gets all this when it is back.
    pub fn activate(&mut self, features: u64, queues: &[ActiveQueue]) -> Result<(), String> {
        self.take_setup(features, queues, false)
    }

    /// The driver's setup from before a migration: the backend continues each ring from
    /// its used index in guest memory (the source drained them, nothing is in flight).
    pub fn resume(&mut self, features: u64, queues: &[ActiveQueue]) -> Result<(), String> {
        self.take_setup(features, queues, true)
    }

    fn take_setup(
        &mut self,
        features: u64,
        queues: &[ActiveQueue],
        started: bool,
    ) -> Result<(), String> {
        let mut rings = Vec::new();
        for q in queues.iter().filter(|q| q.index < self.num_queues) {
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
        self.acked_features = Some(features);
        self.rings = rings;
        self.rings_started = started;
        self.inflight = None;
        if let Err(e) = self.apply() {
            match e {
                VhostUserError::Setup(msg) => return Err(msg),
                other => self.lost("activating the rings", &other),
            }
        }
        Ok(())
    }

    /// The driver reset the device: the backend stops its rings, and what the driver set
    /// up and what was in flight are gone.
    pub fn reset(&mut self) {
        let protocol = self.protocol;
        if let Some(s) = self.session.as_mut() {
            for r in &self.rings {
                if !protocol.is_empty() {
                    let _ = s.frontend.set_vring_enable(r.index, false);
                }
                // GET_VRING_BASE stops the ring in the backend.
                let _ = s.frontend.get_vring_base(r.index);
            }
        }
        self.acked_features = None;
        self.rings.clear();
        self.rings_started = false;
        self.inflight = None;
    }

    /// Postcopy starts at this destination (before the device state is in): from now on
    /// a backend never told of it waits for its setup until `postcopy_end`, and the
    /// current one, if any, opens a userfaultfd (POSTCOPY_ADVISE, POSTCOPY_LISTEN) as
    /// backend `index` and answers its memory table with its mapping, raised through
    /// `events`. Returns its userfaultfd; None without a backend now. On an error the
    /// caller undoes with `postcopy_end`.
    pub fn postcopy_listen(
        &mut self,
        index: u32,
        events: PostcopyEvents,
    ) -> Result<Option<File>, VhostUserError> {
        if self.acked_features.is_some() {
            // Its memory table went unregistered already.
            return Err(VhostUserError::Setup(
                "the device is set up already; postcopy must listen before it is".into(),
            ));
        }
        self.postcopy = Some(events);
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        if !self.protocol.contains(VhostUserProtocolFeatures::PAGEFAULT) {
            return Err(VhostUserError::NoPostcopy("PAGEFAULT"));
        }
        // Unacknowledged, a backend's failure to listen would go unseen, and its next
        // memory table would wait forever for an answer that a backend not listening
        // does not give.
        if !self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            return Err(VhostUserError::NoPostcopy("REPLY_ACK"));
        }
        let f = &mut session.frontend;
        let uffd = f.postcopy_advise().map_err(proto("POSTCOPY_ADVISE"))?;
        session.postcopy = SessionPostcopy::Advised;
        acknowledged(f, |f| f.postcopy_listen()).map_err(proto("POSTCOPY_LISTEN"))?;
        session.postcopy = SessionPostcopy::Listening(index);
        Ok(Some(uffd))
    }

    /// Postcopy is over (or failed to start): a listening backend is told
    /// (POSTCOPY_END), and a backend that waited gets its setup now. Errors are logged:
    /// a backend that is gone gets everything when it is back.
    pub fn postcopy_end(&mut self) {
        let name = &self.name;
        if let Some(s) = self.session.as_mut() {
            match s.postcopy {
                SessionPostcopy::Listening(_) => {
                    if let Err(e) = acknowledged(&mut s.frontend, |f| f.postcopy_end()) {
                        log::warn!("{name}: vhost-user POSTCOPY_END: {e}");
                    }
                }
                SessionPostcopy::Advised => log::warn!(
                    "{name}: the backend keeps the userfaultfd it opened (POSTCOPY_END is \
                     refused before POSTCOPY_LISTEN) until it restarts; none of its memory \
                     is registered with it"
                ),
                SessionPostcopy::Off => {}
            }
            s.postcopy = SessionPostcopy::Off;
        }
        self.postcopy = None;
        if std::mem::take(&mut self.held) {
            match self.apply() {
                Ok(()) => log::info!("{}: the backend's setup went after postcopy", self.name),
                Err(e) => self.lost("setting up the backend after postcopy", &e),
            }
        }
    }

    /// Returns once the backend handled what it was sent (most messages are not answered;
    /// GET_CONFIG is, after those before it), for tests that read what a mock was told.
    #[cfg(test)]
    pub(crate) fn sync_backend(&mut self) {
        self.requests.mark_config_stale();
        self.config_space();
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

    /// A handle on the current connection's socket, to watch for the backend hanging up.
    pub fn watch(&self) -> Option<UnixStream> {
        self.session.as_ref().and_then(|s| s.watch.try_clone().ok())
    }

    /// The backend hung up: guest I/O waits for the next one.
    pub fn hung_up(&mut self) {
        if self.session.take().is_some() {
            log::warn!(
                "{}: the vhost-user backend hung up; guest I/O waits for it",
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MIB;
    use crate::vhost_user::backend_requests::BackendRequests;
    use crate::vhost_user::test_backend::{events, mock, mock_refusing_listen, Journal, MOCK_BASE};
    use crate::vhost_user::Blk;

    #[test]
    fn postcopy_needs_acknowledgements() {
        let journal = Journal::default();
        let mut f = link();
        f.link
            .connect(mock(&journal, VhostUserProtocolFeatures::PAGEFAULT))
            .unwrap();
        // The vhost crate's backends always offer REPLY_ACK: this one did not.
        f.link.protocol.remove(VhostUserProtocolFeatures::REPLY_ACK);
        let e = f.link.postcopy_listen(0, events(&journal)).unwrap_err();
        assert!(matches!(e, VhostUserError::NoPostcopy("REPLY_ACK")), "{e}");
        assert_eq!(taken(&mut f, &journal), Vec::<String>::new());
    }

    /// What the backend was told (and the link raised) so far.
    fn taken(f: &mut Fixture, journal: &Journal) -> Vec<String> {
        f.sync();
        std::mem::take(&mut *journal.lock().unwrap())
    }

    struct Fixture {
        _ram: GuestRam,
        link: Link,
        kick: EventFd,
        call: EventFd,
    }

    fn link() -> Fixture {
        let ram = GuestRam::new(4).unwrap();
        let link = Link::new(
            "disk 0".into(),
            Box::new(Blk::new(1)),
            &ram,
            BackendRequests::new(),
        );
        Fixture {
            _ram: ram,
            link: link.unwrap(),
            kick: EventFd::new(0).unwrap(),
            call: EventFd::new(0).unwrap(),
        }
    }

    impl Fixture {
        fn sync(&mut self) {
            self.link.sync_backend();
        }

        /// The driver's setup from the migrated state: one ring.
        fn resume(&mut self) {
            let queue = ActiveQueue {
                index: 0,
                size: 64,
                desc: 0x1000,
                avail: 0x2000,
                used: 0x3000,
                kick: &self.kick,
                call: &self.call,
            };
            self.link.resume(1 << 32, &[queue]).unwrap();
        }
    }

    #[test]
    fn a_listening_backend_is_raised_its_mapping_before_its_rings_run() {
        let journal = Journal::default();
        let mut f = link();
        let stream = mock(&journal, VhostUserProtocolFeatures::PAGEFAULT);
        f.link.connect(stream).unwrap();
        let uffd = f.link.postcopy_listen(3, events(&journal)).unwrap();
        assert!(uffd.is_some());
        f.resume();
        let ranges = vec![MappedRange {
            host_addr: MOCK_BASE,
            size: 4 * MIB,
            guest_addr: 0,
        }];
        let raised = format!("{:?}", VmmEvent::PostcopyRanges { backend: 3, ranges });
        assert_eq!(
            taken(&mut f, &journal),
            [
                "POSTCOPY_ADVISE",
                "POSTCOPY_LISTEN",
                "SET_MEM_TABLE listening",
                &raised,
                "ack",
                "SET_VRING_NUM 0",
                "SET_VRING_KICK 0",
            ]
        );
        f.link.postcopy_end();
        assert_eq!(taken(&mut f, &journal), ["POSTCOPY_END"]);
    }

    #[test]
    fn a_backend_connecting_during_postcopy_is_set_up_when_it_ends() {
        let journal = Journal::default();
        let mut f = link();
        f.link
            .connect(mock(&journal, VhostUserProtocolFeatures::PAGEFAULT))
            .unwrap();
        f.link.postcopy_listen(0, events(&journal)).unwrap();
        f.resume();
        taken(&mut f, &journal);
        // The daemon restarts: its new connection was never advised.
        f.link.hung_up();
        f.link
            .connect(mock(&journal, VhostUserProtocolFeatures::PAGEFAULT))
            .unwrap();
        // Its handshake went, nothing of guest RAM did.
        assert_eq!(taken(&mut f, &journal), Vec::<String>::new());
        f.link.postcopy_end();
        assert_eq!(
            taken(&mut f, &journal),
            ["SET_MEM_TABLE", "SET_VRING_NUM 0", "SET_VRING_KICK 0"]
        );
    }

    #[test]
    fn a_backend_without_pagefault_cannot_take_postcopy() {
        let journal = Journal::default();
        let mut f = link();
        f.link
            .connect(mock(&journal, VhostUserProtocolFeatures::empty()))
            .unwrap();
        let e = f.link.postcopy_listen(0, events(&journal)).unwrap_err();
        assert!(matches!(e, VhostUserError::NoPostcopy("PAGEFAULT")), "{e}");
        // Undone: the setup is not held.
        f.link.postcopy_end();
        f.resume();
        assert_eq!(
            taken(&mut f, &journal),
            ["SET_MEM_TABLE", "SET_VRING_NUM 0", "SET_VRING_KICK 0"]
        );
    }

    #[test]
    fn without_a_backend_postcopy_holds_the_next_one() {
        let journal = Journal::default();
        let mut f = link();
        assert!(f
            .link
            .postcopy_listen(0, events(&journal))
            .unwrap()
            .is_none());
        f.resume();
        f.link
            .connect(mock(&journal, VhostUserProtocolFeatures::PAGEFAULT))
            .unwrap();
        assert_eq!(taken(&mut f, &journal), Vec::<String>::new());
        f.link.postcopy_end();
        assert_eq!(
            taken(&mut f, &journal),
            ["SET_MEM_TABLE", "SET_VRING_NUM 0", "SET_VRING_KICK 0"]
        );
    }

    /// A failed POSTCOPY_LISTEN is seen (it is acknowledged): unseen, the next memory
    /// table would wait forever for the answer a listening backend gives.
    #[test]
    fn a_backend_failing_to_listen_fails_postcopy() {
        let journal = Journal::default();
        let mut f = link();
        f.link.connect(mock_refusing_listen(&journal)).unwrap();
        let e = f.link.postcopy_listen(0, events(&journal)).unwrap_err();
        assert!(
            matches!(
                e,
                VhostUserError::Protocol {
                    what: "POSTCOPY_LISTEN",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            taken(&mut f, &journal),
            ["POSTCOPY_ADVISE", "POSTCOPY_LISTEN"]
        );
    }

    #[test]
    fn postcopy_cannot_listen_once_the_device_is_set_up() {
        let journal = Journal::default();
        let mut f = link();
        f.link
            .connect(mock(&journal, VhostUserProtocolFeatures::PAGEFAULT))
            .unwrap();
        f.resume();
        let e = f.link.postcopy_listen(0, events(&journal)).unwrap_err();
        assert!(matches!(e, VhostUserError::Setup(_)), "{e}");
    }

    #[test]
    fn the_backends_mapping_is_checked() {
        let regions = [(0, 0x1000), (0x1_0000_0000, 0x2000)];
        assert_eq!(
            backend_ranges(&regions, Some(vec![0x7000_0000, 0x8000_0000])).unwrap(),
            [
                MappedRange {
                    host_addr: 0x7000_0000,
                    size: 0x1000,
                    guest_addr: 0
                },
                MappedRange {
                    host_addr: 0x8000_0000,
                    size: 0x2000,
                    guest_addr: 0x1_0000_0000
                },
            ]
        );
        assert!(backend_ranges(&regions, None).is_err());
        assert!(backend_ranges(&regions, Some(vec![0x7000_0000])).is_err());
        assert!(backend_ranges(&regions, Some(vec![1, 2, 3])).is_err());
        assert!(backend_ranges(&regions, Some(vec![0, u64::MAX])).is_err());
    }

    /// 2 MiB of a memfd at 4 GiB + `n` MiB in `ram`, as a DIMM is added.
    fn dimm(ram: &mut GuestRam, n: u64) -> HotRegion {
        // SAFETY: memfd_create with a valid name; the fd is checked and ours alone.
        let fd = unsafe { libc::memfd_create(c"dimm".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: as above.
        let file = File::from(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        });
        file.set_len(2 * MIB).unwrap();
        ram.add_hot(file, (1 << 32) + n * MIB, 2 * MIB, 8 + n as u32)
            .unwrap()
    }

    /// A link on `ram` to a mock backend offering `protocol`, its driver set up.
    fn running(ram: &GuestRam, journal: &Journal, protocol: VhostUserProtocolFeatures) -> Fixture {
        let link = Link::new(
            "disk 0".into(),
            Box::new(Blk::new(1)),
            ram,
            BackendRequests::new(),
        );
        let mut f = Fixture {
            _ram: GuestRam::new(2).unwrap(),
            link: link.unwrap(),
            kick: EventFd::new(0).unwrap(),
            call: EventFd::new(0).unwrap(),
        };
        f.link.connect(mock(journal, protocol)).unwrap();
        f.resume();
        let setup = taken(&mut f, journal);
        assert_eq!(
            setup.first().map(String::as_str),
            Some("SET_MEM_TABLE"),
            "{setup:?}"
        );
        f
    }

    #[test]
    fn memory_added_goes_to_a_backend_with_memory_slots_as_one_region() {
        let journal = Journal::default();
        let mut ram = GuestRam::new(4).unwrap();
        let mut f = running(
            &ram,
            &journal,
            VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        );
        let first = dimm(&mut ram, 0);
        f.link.add_memory(&first);
        assert_eq!(
            taken(&mut f, &journal),
            ["ADD_MEM_REG 0x100000000+0x200000"]
        );
        // The link reaches the new memory too (a ring may be laid out there).
        assert!(f.link.host(0x1_0010_0000, "a ring").is_ok());
        // The mock takes 3 regions: RAM and two DIMMs.
        assert!(f.link.has_room_for_memory());
        let second = dimm(&mut ram, 2);
        f.link.add_memory(&second);
        assert!(!f.link.has_room_for_memory());
        f.link.remove_memory(first.guest_addr);
        assert_eq!(
            taken(&mut f, &journal),
            [
                "ADD_MEM_REG 0x100200000+0x200000",
                "REM_MEM_REG 0x100000000+0x200000"
            ]
        );
        assert!(f.link.host(0x1_0010_0000, "a ring").is_err());
        assert!(f.link.has_room_for_memory());
        // Memory that is not there is not removed.
        f.link.remove_memory(7 << 32);
        assert_eq!(taken(&mut f, &journal), Vec::<String>::new());
    }

    #[test]
    fn without_memory_slots_the_backend_gets_the_whole_table_again() {
        let journal = Journal::default();
        let mut ram = GuestRam::new(4).unwrap();
        let mut f = running(&ram, &journal, VhostUserProtocolFeatures::empty());
        let hot = dimm(&mut ram, 0);
        f.link.add_memory(&hot);
        assert_eq!(
            taken(&mut f, &journal),
            ["SET_MEM_TABLE", "SET_MEM_TABLE regions=2"]
        );
        f.link.remove_memory(hot.guest_addr);
        assert_eq!(taken(&mut f, &journal), ["SET_MEM_TABLE"]);
    }

    #[test]
    fn memory_added_before_the_driver_starts_comes_with_its_table() {
        let journal = Journal::default();
        let mut ram = GuestRam::new(4).unwrap();
        let hot = dimm(&mut ram, 0);
        let link = Link::new(
            "disk 0".into(),
            Box::new(Blk::new(1)),
            &ram,
            BackendRequests::new(),
        );
        let mut f = Fixture {
            _ram: GuestRam::new(2).unwrap(),
            link: link.unwrap(),
            kick: EventFd::new(0).unwrap(),
            call: EventFd::new(0).unwrap(),
        };
        f.link
            .connect(mock(
                &journal,
                VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
            ))
            .unwrap();
        // No table yet: nothing goes now.
        let later = dimm(&mut ram, 2);
        f.link.add_memory(&later);
        assert_eq!(taken(&mut f, &journal), Vec::<String>::new());
        drop(hot);
        f.resume();
        let setup = taken(&mut f, &journal);
        assert_eq!(setup[..2], ["SET_MEM_TABLE", "SET_MEM_TABLE regions=3"]);
    }
}
