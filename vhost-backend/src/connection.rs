//! One frontend connection: answers its vhost-user messages (features, memory table and
//! memory slots, rings, config, inflight region, postcopy) for the device, and keeps the
//! worker's view of the rings current. Everything here is per connection and starts fresh
//! with the next one; the device carries over.
//!
//! Guest memory is replaced whole by SET_MEM_TABLE, or a region at a time by ADD_MEM_REG and
//! REM_MEM_REG (CONFIGURE_MEM_SLOTS: memory hot-added or removed while the rings run). Each
//! change makes a new map: the worker picks it up at its next wake-up, and a request in
//! flight keeps the map it was started with (an Arc), so its buffers stay mapped until it
//! completes, whatever the frontend changed meanwhile.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::RawFd;
use std::sync::Arc;

use vhost::vhost_user::message::{VhostTransferStateDirection, VhostTransferStatePhase};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserInflight, VhostUserLog, VhostUserMemoryRegion,
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVirtioFeatures, VhostUserVringAddrFlags,
    VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, Error as VhostError, GpuBackend, Result as VhostResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::QueueT;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::device::Device;
use crate::dirty_log::LogMap;
use crate::inflight::InflightRegion;
use crate::postcopy::{Postcopy, PostcopyError, UserfaultDevice};
use crate::shared::Shared;
use crate::worker::Worker;

fn handler_error(e: impl std::fmt::Display) -> VhostError {
    VhostError::ReqHandlerError(std::io::Error::other(e.to_string()))
}

const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// Memory regions a frontend may give with memory slots (QEMU's VHOST_USER_MAX_RAM_SLOTS).
pub(crate) const MAX_MEM_SLOTS: u64 = 512;
const LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();

/// Where one memory region of the frontend's address space lies in guest memory.
struct Mapping {
    frontend_addr: u64,
    size: u64,
    guest_addr: u64,
}

pub(crate) struct Connection<D: Device> {
    device: D,
    shared: Arc<Shared>,
    worker: Option<Worker>,
    owned: bool,
    acked_features: u64,
    acked_protocol: u64,
    mappings: Vec<Mapping>,
    /// SET_VRING_ENABLE states that came before the features (see early_enable.rs), the
    /// last one per ring, applied when the features arrive.
    early_enables: Vec<(usize, bool)>,
    /// The daemon's /dev/userfaultfd, for POSTCOPY_ADVISE.
    userfault: UserfaultDevice,
    postcopy: Option<Postcopy>,
}

impl<D: Device> Connection<D> {
    pub fn new(device: D, userfault: UserfaultDevice) -> std::io::Result<Connection<D>> {
        let shared = Arc::new(Shared::new(device.num_queues(), device.max_queue_size()));
        let worker = Worker::start(device.clone(), shared.clone())?;
        Ok(Connection {
            device,
            shared,
            worker: Some(worker),
            owned: false,
            acked_features: 0,
            acked_protocol: 0,
            mappings: Vec::new(),
            early_enables: Vec::new(),
            userfault,
            postcopy: None,
        })
    }

    /// The frontend is gone: the worker stops, and what was in flight finishes without
    /// touching its rings.
    pub fn close(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        self.device.disconnected();
    }

    /// The driver's features, with VHOST_USER_F_PROTOCOL_FEATURES among them, have been
    /// set: from now on the vhost crate takes SET_VRING_ENABLE itself.
    pub fn protocol_features_acked(&self) -> bool {
        self.acked_features & PROTOCOL_FEATURES != 0
    }

    /// The frontend asked for REPLY_ACK (replies to messages flagged NEED_REPLY).
    pub fn reply_ack(&self) -> bool {
        self.acked_protocol & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0
    }

    /// A SET_VRING_ENABLE that came before the features: remembered for when they come.
    /// False (nothing remembered) for a ring the device does not have or a state that is
    /// neither 0 nor 1.
    pub fn hold_early_enable(&mut self, index: u32, state: u32) -> bool {
        let q = index as usize;
        if q >= self.shared.rings.len() || state > 1 {
            return false;
        }
        self.early_enables.retain(|(i, _)| *i != q);
        self.early_enables.push((q, state == 1));
        true
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | PROTOCOL_FEATURES | LOG_ALL
    }

    fn worker(&self) -> VhostResult<&Worker> {
        self.worker
            .as_ref()
            .ok_or(VhostError::InvalidOperation("connection closed"))
    }

    fn ring_index(&self, index: u32) -> VhostResult<usize> {
        let q = index as usize;
        if q < self.shared.rings.len() {
            Ok(q)
        } else {
            Err(VhostError::InvalidParam)
        }
    }

    fn guest_addr(&self, frontend_addr: u64) -> VhostResult<GuestAddress> {
        self.mappings
            .iter()
            .find(|m| frontend_addr >= m.frontend_addr && frontend_addr - m.frontend_addr < m.size)
            .map(|m| GuestAddress(frontend_addr - m.frontend_addr + m.guest_addr))
            .ok_or(VhostError::InvalidParam)
    }

    /// Starts or stops watching ring `q`'s kicks to match its state, and wakes the
    /// worker for a ring that just went live (chains may already be waiting, or a
    /// previous daemon's, in the inflight region).
    fn update_watch(&self, q: usize, old_kick: Option<RawFd>) -> VhostResult<()> {
        let worker = self.worker()?;
        if let Some(fd) = old_kick {
            worker.unwatch(fd);
        }
        let Some(ring) = self.shared.rings.lock_for_setup(q) else {
            return Ok(());
        };
        match ring.kick_fd() {
            Some(fd) if ring.live() => {
                worker
                    .watch_kick(q, fd)
                    .map_err(VhostError::ReqHandlerError)?;
                // SAFETY: writing 8 bytes from a local to an eventfd the ring holds.
                unsafe { libc::write(fd, 1u64.to_ne_bytes().as_ptr().cast(), 8) };
            }
            Some(fd) => worker.unwatch(fd),
            None => {}
        }
        Ok(())
    }

    /// The rings may reach `mem` from now on. Kicks that came while memory was held back
    /// were drained without serving anything: every live ring is looked at again.
    fn release_memory(&self, mem: Arc<GuestMemoryMmap>) -> VhostResult<()> {
        self.shared.set_memory(mem);
        for q in 0..self.shared.rings.len() {
            self.update_watch(q, None)?;
        }
        Ok(())
    }

    /// Sets ring `q`'s enable state and its watch to match.
    fn enable_ring(&self, q: usize, enabled: bool) -> VhostResult<()> {
        if let Some(mut ring) = self.shared.rings.lock_for_setup(q) {
            ring.set_enabled(enabled);
        }
        self.update_watch(q, None)
    }
}

impl<D: Device> VhostUserBackendReqHandlerMut for Connection<D> {
    fn set_owner(&mut self) -> VhostResult<()> {
        if self.owned {
            return Err(VhostError::InvalidOperation("already owned"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostResult<()> {
        self.owned = false;
        self.acked_features = 0;
        self.shared.log.set_log_all(false);
        self.acked_protocol = 0;
        self.early_enables.clear();
        Ok(())
    }

    fn reset_device(&mut self) -> VhostResult<()> {
        for q in 0..self.shared.rings.len() {
            self.enable_ring(q, false)?;
        }
        self.acked_features = 0;
        self.shared.log.set_log_all(false);
        self.device.reset();
        Ok(())
    }

    fn get_features(&mut self) -> VhostResult<u64> {
        Ok(self.offered_features())
    }

    fn set_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !self.offered_features() != 0 {
            return Err(VhostError::InvalidParam);
        }
        self.acked_features = features;
        // Migration turns logging on and off with F_LOG_ALL alone, rings running.
        self.shared.log.set_log_all(features & LOG_ALL != 0);
        self.device.features_acked(features);
        let event_idx = features & virtio::features::EVENT_IDX != 0;
        for q in 0..self.shared.rings.len() {
            if let Some(mut ring) = self.shared.rings.lock_for_setup(q) {
                ring.set_event_idx(event_idx);
            }
        }
        let early = std::mem::take(&mut self.early_enables);
        if features & PROTOCOL_FEATURES == 0 {
            // Without protocol features, rings are enabled from the start.
            for q in 0..self.shared.rings.len() {
                self.enable_ring(q, true)?;
            }
        } else {
            for (q, enabled) in early {
                self.enable_ring(q, enabled)?;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let mut regions = Vec::new();
        let mut mappings = Vec::new();
        for (region, file) in ctx.iter().zip(files) {
            let mmap = region.mmap_region::<()>(file)?;
            let guest = GuestRegionMmap::new(mmap, GuestAddress(region.guest_phys_addr))
                .ok_or(VhostError::InvalidParam)?;
            mappings.push(Mapping {
                frontend_addr: region.user_addr,
                size: region.memory_size,
                guest_addr: region.guest_phys_addr,
            });
            regions.push(guest);
        }
        // A frontend lists its regions in its own order (memory added later, a DIMM below
        // one added before, comes last); the map wants them by address.
        regions.sort_by_key(|r| r.start_addr());
        let mem = Arc::new(GuestMemoryMmap::from_regions(regions).map_err(handler_error)?);
        if postcopy_listening != Some(true) {
            self.shared.set_memory(mem);
            self.mappings = mappings;
            return Ok(None);
        }
        // Where this process maps each region, in the frontend's order: it turns the
        // faults of our userfaultfd into guest addresses.
        let bases = ctx
            .iter()
            .map(|r| {
                mem.find_region(GuestAddress(r.guest_phys_addr))
                    .map(|m| m.as_ptr() as u64)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(VhostError::InvalidParam)?;
        let postcopy = self
            .postcopy
            .as_mut()
            .ok_or_else(|| handler_error(PostcopyError::NotListening))?;
        postcopy.register(mem).map_err(handler_error)?;
        // Until the frontend acknowledges the table (it can resolve faults in it from
        // then on), the rings reach no guest memory, the old table's included.
        drop(self.shared.take_memory());
        self.mappings = mappings;
        Ok(Some(bases))
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostResult<()> {
        let q = self.ring_index(index)?;
        if num == 0 || num > u32::from(self.device.max_queue_size()) || !num.is_power_of_two() {
            return Err(VhostError::InvalidParam);
        }
        if let Some(mut ring) = self.shared.rings.lock_for_setup(q) {
            ring.set_size(num as u16);
        }
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    ) -> VhostResult<()> {
        let q = self.ring_index(index)?;
        let (desc, used, avail) = (
            self.guest_addr(descriptor)?,
            self.guest_addr(used)?,
            self.guest_addr(available)?,
        );
        let Some(mut ring) = self.shared.rings.lock_for_setup(q) else {
            return Err(VhostError::InvalidParam);
        };
        ring.set_addresses(desc, avail, used)
            .map_err(handler_error)?;
        // QEMU sends this again with the flag set (or clear) when migration starts (or
        // ends), on a running ring.
        let logged = flags.contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG);
        ring.set_used_log_addr(logged.then_some(log));
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostResult<()> {
        let q = self.ring_index(index)?;
        if let Some(mut ring) = self.shared.rings.lock_for_setup(q) {
            ring.set_base(base as u16);
        }
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostResult<VhostUserVringState> {
        let q = self.ring_index(index)?;
        let (old_kick, next_avail) = {
            let Some(mut ring) = self.shared.rings.lock_for_setup(q) else {
                return Err(VhostError::InvalidParam);
            };
            let old_kick = ring.kick_fd();
            if let Some(mem) = self.shared.memory() {
                self.device
                    .stop_queue(q, &mut ring, &mem)
                    .map_err(VhostError::ReqHandlerError)?;
            }
            ring.stop();
            (old_kick, ring.queue().next_avail())
        };
        self.update_watch(q, old_kick)?;
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let q = self.ring_index(u32::from(index))?;
        let old_kick = match self.shared.rings.lock_for_setup(q) {
            Some(mut ring) => {
                let old = ring.kick_fd();
                ring.set_kick(fd);
                old
            }
            None => None,
        };
        self.update_watch(q, old_kick)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let q = self.ring_index(u32::from(index))?;
        // A daemon that died between putting completions on the used ring and calling
        // the driver took that interrupt with it, and the driver would wait for it
        // forever. One call on every call fd a frontend gives makes the driver look at
        // the used ring (it finds nothing new if there was no such completion).
        if let Some(mut call) = fd.as_ref() {
            if let Err(e) = call.write_all(&1u64.to_ne_bytes()) {
                log::warn!("queue {q}: calling the driver on a new call fd: {e}");
            }
        }
        if let Some(mut ring) = self.shared.rings.lock_for_setup(q) {
            ring.set_call(fd);
        }
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VhostResult<()> {
        // Errors are reported on the guest's requests, never through this fd.
        self.ring_index(u32::from(index)).map(|_| ())
    }

    fn get_protocol_features(&mut self) -> VhostResult<VhostUserProtocolFeatures> {
        // PAGEFAULT (postcopy) is offered whether or not the daemon holds a
        // /dev/userfaultfd: without one, ADVISE fails and the migration with it.
        let mut features = self.device.protocol_features()
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::PAGEFAULT
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if self.device.tracks_inflight() {
            features |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        }
        Ok(features)
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostResult<()> {
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostResult<u64> {
        Ok(self.device.num_queues() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostResult<()> {
        let q = self.ring_index(index)?;
        self.enable_ring(q, enable)
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<Vec<u8>> {
        Ok(self.device.read_config(offset, size))
    }

    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> VhostResult<()> {
        Err(VhostError::InvalidOperation(
            "the config space is read-only",
        ))
    }

    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _: GpuBackend) -> VhostResult<()> {
        Err(VhostError::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> VhostResult<File> {
        Err(VhostError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VhostResult<(VhostUserInflight, File)> {
        let n = inflight.num_queues.min(self.shared.rings.len() as u16);
        let region = InflightRegion::create(n, inflight.queue_size).map_err(handler_error)?;
        let file = region
            .file()
            .try_clone()
            .map_err(VhostError::ReqHandlerError)?;
        let reply = VhostUserInflight::new(region.len() as u64, 0, n, inflight.queue_size);
        Ok((reply, file))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VhostResult<()> {
        let n = inflight.num_queues.min(self.shared.rings.len() as u16);
        let region = InflightRegion::map(
            file,
            inflight.mmap_offset,
            inflight.mmap_size,
            n,
            inflight.queue_size,
        )
        .map_err(handler_error)?;
        let region = Arc::new(region);
        for q in 0..n {
            if let Some(mut ring) = self.shared.rings.lock_for_setup(usize::from(q)) {
                ring.track_in(&region, q);
            }
        }
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VhostResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    /// ADD_MEM_REG: one more region joins the current map (a region that overlaps one
    /// there, in guest or frontend addresses, is refused). Not while postcopy listens: its
    /// regions would have to be registered one by one, which is not done here (a frontend
    /// that changes memory then gets an error).
    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        file: File,
        postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<VhostUserMemoryRegionBase>> {
        if postcopy_listening == Some(true)
            || self.postcopy.as_ref().is_some_and(Postcopy::listening)
        {
            return Err(handler_error(
                "memory slots are not taken while postcopy listens",
            ));
        }
        if self.mappings.len() as u64 >= MAX_MEM_SLOTS {
            return Err(VhostError::InvalidParam);
        }
        let (guest, frontend, size) =
            (region.guest_phys_addr, region.user_addr, region.memory_size);
        let overlaps =
            |a: u64, b: u64, len: u64| a < b.saturating_add(len) && b < a.saturating_add(size);
        if size == 0
            || self.mappings.iter().any(|m| {
                overlaps(guest, m.guest_addr, m.size) || overlaps(frontend, m.frontend_addr, m.size)
            })
        {
            return Err(VhostError::InvalidParam);
        }
        let mmap = region.mmap_region::<()>(file)?;
        let added = Arc::new(
            GuestRegionMmap::new(mmap, GuestAddress(guest)).ok_or(VhostError::InvalidParam)?,
        );
        let mem = match self.shared.memory() {
            Some(mem) => mem.insert_region(added),
            None => GuestMemoryMmap::from_arc_regions(vec![added]),
        }
        .map_err(handler_error)?;
        self.mappings.push(Mapping {
            frontend_addr: frontend,
            size,
            guest_addr: guest,
        });
        self.release_memory(Arc::new(mem))?;
        Ok(None)
    }

    /// REM_MEM_REG: the region at that guest address and of that size leaves the map (a
    /// request in flight in it keeps the old map until it completes).
    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostResult<()> {
        if self.postcopy.as_ref().is_some_and(Postcopy::listening) {
            return Err(handler_error(
                "memory slots are not taken while postcopy listens",
            ));
        }
        let (guest, size) = (region.guest_phys_addr, region.memory_size);
        let at = self
            .mappings
            .iter()
            .position(|m| m.guest_addr == guest && m.size == size)
            .ok_or(VhostError::InvalidParam)?;
        let mem = self.shared.memory().ok_or(VhostError::InvalidParam)?;
        let (mem, _) = mem
            .remove_region(GuestAddress(guest), size)
            .map_err(handler_error)?;
        self.mappings.remove(at);
        self.shared.set_memory(Arc::new(mem));
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> VhostResult<Option<File>> {
        Err(VhostError::InvalidOperation(
            "device state transfer is not offered",
        ))
    }

    fn check_device_state(&mut self) -> VhostResult<()> {
        Err(VhostError::InvalidOperation(
            "device state transfer is not offered",
        ))
    }

    fn get_shmem_config(&mut self) -> VhostResult<VhostUserShMemConfig> {
        Err(VhostError::InvalidOperation("no shared memory regions"))
    }

    /// A log that cannot be mapped fails the message, which ends the connection (the
    /// vhost crate has no failed reply for it): acking it would have the frontend migrate
    /// pages nobody marks.
    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> VhostResult<()> {
        let map = LogMap::map(&file, log.mmap_size, log.mmap_offset).map_err(handler_error)?;
        if let Some(short) = self.shared.memory().map(|mem| map.short_of(&mem)) {
            if short > 0 {
                log::warn!(
                    "the dirty log of {} pages misses the last {short} pages of guest memory: \
                     writes there will not be logged",
                    map.pages()
                );
            }
        }
        self.shared.log.set_map(map);
        Ok(())
    }

    /// A failure is answered without a userfaultfd (the vhost crate's reply), which fails
    /// the frontend's migration; the connection goes on. Said here, as the reply cannot.
    fn postcopy_advice(&mut self) -> VhostResult<File> {
        let advised = if self.postcopy.is_some() {
            Err(PostcopyError::Advised)
        } else {
            Postcopy::advise(&self.userfault)
        };
        match advised {
            Ok((postcopy, file)) => {
                self.postcopy = Some(postcopy);
                Ok(file)
            }
            Err(e) => {
                log::warn!("postcopy refused: {e}");
                Err(handler_error(e))
            }
        }
    }

    fn postcopy_listen(&mut self) -> VhostResult<()> {
        let postcopy = self
            .postcopy
            .as_mut()
            .ok_or_else(|| handler_error(PostcopyError::NotAdvised))?;
        // Memory mapped before is registered nowhere: the rings keep off it until the
        // frontend's next table (which it sends after LISTEN) is registered and acked.
        postcopy.listen(self.shared.take_memory());
        Ok(())
    }

    /// The frontend sends no reply to wait for, and a failure here would end the
    /// connection: an ack with nothing waiting for it is only noted.
    fn postcopy_ack_mem_regions(&mut self) -> VhostResult<()> {
        let acked = self
            .postcopy
            .as_mut()
            .filter(|p| p.listening())
            .and_then(Postcopy::acknowledged);
        match acked {
            Some(mem) => self.release_memory(mem),
            None => {
                log::warn!("a postcopy memory table ack with no table waiting for it");
                Ok(())
            }
        }
    }

    fn postcopy_end(&mut self) -> VhostResult<()> {
        let postcopy = self
            .postcopy
            .take()
            .ok_or_else(|| handler_error(PostcopyError::NotAdvised))?;
        let (held, unregistered) = postcopy.end();
        // Every page has arrived: memory still held back (a table never acked) is safe.
        if let Some(mem) = held {
            self.release_memory(mem)?;
        }
        unregistered.map_err(handler_error)
    }
}
