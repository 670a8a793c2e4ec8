//! virtio-blk served by a vhost-user backend (block-daemon, qemu-storage-daemon, ...).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::devices::virtio_pci::{ActiveQueue, ConfigChanged, VirtioDevice};
use crate::memory::GuestRam;

const VIRTIO_ID_BLOCK: u16 = 2;
/// PCI class of QEMU's virtio-blk-pci: mass storage, SCSI.
const PCI_CLASS_STORAGE: u32 = 0x010000;
const CONFIG_LEN: u32 = 60;
pub const MAX_QUEUES: usize = 16;
const QUEUE_MAX_SIZE: u16 = 256;

// Features the transport cannot carry through (it lays out split rings only, and no
// IOMMU or notification data); the vhost-user protocol bit is the frontend's business.
const VIRTIO_F_IOMMU_PLATFORM: u64 = 1 << 33;
const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
const VIRTIO_F_NOTIFICATION_DATA: u64 = 1 << 38;
const VIRTIO_BLK_F_MQ: u64 = 1 << 12;

#[derive(Debug, thiserror::Error)]
pub enum VhostUserBlkError {
    #[error("vhost-user {what}: {error}")]
    Protocol {
        what: &'static str,
        error: vhost::Error,
    },
    #[error("backend channel: {0}")]
    BackendChannel(std::io::Error),
}

fn proto(what: &'static str) -> impl FnOnce(vhost::Error) -> VhostUserBlkError {
    move |error| VhostUserBlkError::Protocol { what, error }
}

/// Handles the backend's own messages (config changes after a resize).
struct BackendRequests {
    config_stale: Arc<AtomicBool>,
    notify: Mutex<Option<ConfigChanged>>,
}

impl BackendRequests {
    fn config_changed(&self) {
        self.config_stale.store(true, Ordering::Release);
        if let Some(n) = self
            .notify
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
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

pub struct VhostUserBlk {
    frontend: Frontend,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    num_queues: usize,
    config: Vec<u8>,
    config_stale: Arc<AtomicBool>,
    requests: Arc<BackendRequests>,
    mem: GuestMemoryMmap,
    regions: Vec<(u64, u64, u64, u64)>,
    memfd: std::fs::File,
    active: Vec<usize>,
}

impl VhostUserBlk {
    /// Talks to the backend on `stream` (already connected): ownership, features,
    /// protocol features, queue count (at most `max_queues`), config space.
    pub fn new(
        stream: UnixStream,
        ram: &GuestRam,
        max_queues: usize,
    ) -> Result<VhostUserBlk, VhostUserBlkError> {
        let mut frontend = Frontend::from_stream(stream, MAX_QUEUES as u64);
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(proto("GET_PROTOCOL_FEATURES"))?;
            protocol = offered
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::BACKEND_REQ);
            frontend
                .set_protocol_features(protocol)
                .map_err(proto("SET_PROTOCOL_FEATURES"))?;
        }
        let mut num_queues = 1;
        if protocol.contains(VhostUserProtocolFeatures::MQ)
            && backend_features & VIRTIO_BLK_F_MQ != 0
        {
            num_queues = frontend.get_queue_num().map_err(proto("GET_QUEUE_NUM"))? as usize;
        }
        let num_queues = num_queues.clamp(1, max_queues.clamp(1, MAX_QUEUES));
        let config_stale = Arc::new(AtomicBool::new(true));
        let requests = Arc::new(BackendRequests {
            config_stale: config_stale.clone(),
            notify: Mutex::new(None),
        });
        if protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            let mut handler = FrontendReqHandler::new(requests.clone()).map_err(|e| {
                VhostUserBlkError::Protocol {
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
                .map_err(VhostUserBlkError::BackendChannel)?;
        }
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
        let mut dev = VhostUserBlk {
            frontend,
            backend_features,
            protocol,
            num_queues,
            config: vec![0; CONFIG_LEN as usize],
            config_stale,
            requests,
            mem: ram.memory().clone(),
            regions,
            memfd: ram
                .memfd()
                .try_clone()
                .map_err(VhostUserBlkError::BackendChannel)?,
            active: Vec::new(),
        };
        dev.refresh_config();
        Ok(dev)
    }

    pub fn config_change_handle(&self) -> ConfigChangeHandle {
        ConfigChangeHandle(self.requests.clone())
    }

    fn refresh_config(&mut self) {
        if !self.config_stale.swap(false, Ordering::AcqRel) {
            return;
        }
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return;
        }
        match self.frontend.get_config(
            0,
            CONFIG_LEN,
            VhostUserConfigFlags::WRITABLE,
            &[0; CONFIG_LEN as usize],
        ) {
            Ok((_, bytes)) => {
                self.config = bytes;
                // The device reports the queue count the transport exposes.
                if self.config.len() >= 36 {
                    self.config[34..36].copy_from_slice(&(self.num_queues as u16).to_le_bytes());
                }
            }
            Err(e) => log::warn!("vhost-user GET_CONFIG: {e}"),
        }
    }

    fn host(&self, addr: u64, what: &str) -> Result<u64, String> {
        self.mem
            .get_host_address(GuestAddress(addr))
            .map(|p| p as u64)
            .map_err(|_| format!("{what} at {addr:#x} is outside guest memory"))
    }

    fn start_queues(&mut self, features: u64, queues: &[ActiveQueue]) -> Result<(), String> {
        let mut acked = features & self.backend_features;
        if !self.protocol.is_empty() {
            acked |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        fn err(what: &'static str) -> impl Fn(vhost::Error) -> String {
            move |e| format!("vhost-user {what}: {e}")
        }
        self.frontend
            .set_features(acked)
            .map_err(err("SET_FEATURES"))?;
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
        self.frontend
            .set_mem_table(&regions)
            .map_err(err("SET_MEM_TABLE"))?;
        for q in queues {
            if q.index >= self.num_queues {
                continue;
            }
            let config = VringConfigData {
                queue_max_size: QUEUE_MAX_SIZE,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: self.host(q.desc, "descriptor table")?,
                used_ring_addr: self.host(q.used, "used ring")?,
                avail_ring_addr: self.host(q.avail, "available ring")?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(q.index, q.size)
                .map_err(err("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(q.index, &config)
                .map_err(err("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(q.index, 0)
                .map_err(err("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(q.index, q.call)
                .map_err(err("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(q.index, q.kick)
                .map_err(err("SET_VRING_KICK"))?;
            if !self.protocol.is_empty() {
                self.frontend
                    .set_vring_enable(q.index, true)
                    .map_err(err("SET_VRING_ENABLE"))?;
            }
            self.active.push(q.index);
        }
        Ok(())
    }
}

impl VirtioDevice for VhostUserBlk {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn pci_class(&self) -> u32 {
        PCI_CLASS_STORAGE
    }

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_MAX_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = self.backend_features
            & !(VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
                | VIRTIO_F_IOMMU_PLATFORM
                | VIRTIO_F_RING_PACKED
                | VIRTIO_F_NOTIFICATION_DATA);
        if self.num_queues == 1 {
            f &= !VIRTIO_BLK_F_MQ;
        }
        f
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        self.refresh_config();
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // virtio-blk's configuration is read-only unless CONFIG_WCE is offered, which
        // this frontend does not pass through.
    }

    fn activate(&mut self, features: u64, queues: &[ActiveQueue]) -> Result<(), String> {
        self.start_queues(features, queues)
    }

    fn reset(&mut self) {
        for q in std::mem::take(&mut self.active) {
            if !self.protocol.is_empty() {
                let _ = self.frontend.set_vring_enable(q, false);
            }
            // GET_VRING_BASE stops the ring in the backend.
            let _ = self.frontend.get_vring_base(q);
        }
    }

    fn set_config_changed(&mut self, notify: ConfigChanged) {
        *self
            .requests
            .notify
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(notify);
    }
}
