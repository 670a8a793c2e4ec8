//! One frontend connection: answers its vhost-user messages (features, memory table,
//! rings, config, inflight region) and keeps the worker's view of the rings current.
//! Everything here is per connection and starts fresh with the next one; the device
//! (BlkBackend) carries over.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
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
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::inflight::InflightRegion;
use super::worker::Worker;
use super::{lock, Shared};
use crate::backend::{BlkBackend, VIRTIO_RING_F_EVENT_IDX};

fn io_err(e: impl std::fmt::Display) -> VhostError {
    VhostError::ReqHandlerError(std::io::Error::other(e.to_string()))
}

pub struct Connection {
    backend: BlkBackend,
    shared: Arc<Shared>,
    worker: Option<Worker>,
    owned: bool,
    acked_features: u64,
    acked_protocol: u64,
    /// (frontend virtual address, size, guest physical address) per memory region.
    mappings: Vec<(u64, u64, u64)>,
    inflight: Option<Arc<InflightRegion>>,
}

impl Connection {
    pub fn new(backend: BlkBackend) -> std::io::Result<Connection> {
        let shared = Arc::new(Shared::new(
            backend.num_queues(),
            backend.max_queue_size() as u16,
        ));
        let worker = Worker::start(backend.clone(), shared.clone())?;
        Ok(Connection {
            backend,
            shared,
            worker: Some(worker),
            owned: false,
            acked_features: 0,
            acked_protocol: 0,
            mappings: Vec::new(),
            inflight: None,
        })
    }

    /// The frontend is gone: the worker stops, and what was in flight finishes without
    /// touching its rings (the inflight region keeps it for the next connection).
    pub fn close(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        self.backend.abandon_in_flight();
    }

    fn worker(&self) -> VhostResult<&Worker> {
        self.worker
            .as_ref()
            .ok_or(VhostError::InvalidOperation("connection closed"))
    }

    fn vring_index(&self, index: u32) -> VhostResult<usize> {
        let i = index as usize;
        if i < self.shared.vrings.len() {
            Ok(i)
        } else {
            Err(VhostError::InvalidParam)
        }
    }

    fn gpa(&self, vmm_addr: u64) -> VhostResult<u64> {
        self.mappings
            .iter()
            .find(|(va, size, _)| vmm_addr >= *va && vmm_addr - va < *size)
            .map(|(va, _, gpa)| vmm_addr - va + gpa)
            .ok_or(VhostError::InvalidParam)
    }

    /// Starts or stops watching ring `i`'s kicks to match its state, and wakes the
    /// worker for a ring that just went live (requests may already be waiting, or a
    /// previous daemon's, in the inflight region).
    fn update_watch(&self, i: usize, old_kick: Option<RawFd>) -> VhostResult<()> {
        let worker = self.worker()?;
        if let Some(fd) = old_kick {
            worker.unwatch(fd);
        }
        let v = lock(&self.shared.vrings[i]);
        if let (true, Some(fd)) = (v.enabled, v.kick_fd()) {
            worker
                .watch_kick(i, fd)
                .map_err(VhostError::ReqHandlerError)?;
            if v.live() {
                // SAFETY: writing 8 bytes to an eventfd we hold.
                unsafe { libc::write(fd, 1u64.to_ne_bytes().as_ptr().cast(), 8) };
            }
        } else if let Some(fd) = v.kick_fd() {
            worker.unwatch(fd);
        }
        Ok(())
    }
}

impl VhostUserBackendReqHandlerMut for Connection {
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
        self.acked_protocol = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VhostResult<()> {
        for i in 0..self.shared.vrings.len() {
            let old = {
                let mut v = lock(&self.shared.vrings[i]);
                let old = v.kick_fd();
                v.enabled = false;
                old
            };
            self.update_watch(i, old)?;
        }
        self.acked_features = 0;
        Ok(())
    }

    fn get_features(&mut self) -> VhostResult<u64> {
        Ok(self.backend.features())
    }

    fn set_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !self.backend.features() != 0 {
            return Err(VhostError::InvalidParam);
        }
        self.acked_features = features;
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        let protocol = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        for i in 0..self.shared.vrings.len() {
            {
                let mut v = lock(&self.shared.vrings[i]);
                v.queue.set_event_idx(event_idx);
                // Without protocol features, rings are enabled from the start.
                if !protocol {
                    v.enabled = true;
                }
            }
            if !protocol {
                self.update_watch(i, None)?;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy: Option<bool>,
    ) -> VhostResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy.is_some() {
            return Err(VhostError::InvalidOperation("postcopy is not supported"));
        }
        let mut regions = Vec::new();
        let mut mappings = Vec::new();
        for (region, file) in ctx.iter().zip(files) {
            let mmap = region.mmap_region::<()>(file)?;
            let guest = GuestRegionMmap::new(mmap, GuestAddress(region.guest_phys_addr))
                .ok_or(VhostError::InvalidParam)?;
            mappings.push((region.user_addr, region.memory_size, region.guest_phys_addr));
            regions.push(guest);
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(io_err)?;
        *self.shared.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(mem));
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostResult<()> {
        let i = self.vring_index(index)?;
        if num == 0 || num as usize > self.backend.max_queue_size() || !num.is_power_of_two() {
            return Err(VhostError::InvalidParam);
        }
        lock(&self.shared.vrings[i]).queue.set_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostResult<()> {
        let i = self.vring_index(index)?;
        let (desc, used, avail) = (self.gpa(descriptor)?, self.gpa(used)?, self.gpa(available)?);
        let mut v = lock(&self.shared.vrings[i]);
        v.queue
            .try_set_desc_table_address(GuestAddress(desc))
            .map_err(io_err)?;
        v.queue
            .try_set_used_ring_address(GuestAddress(used))
            .map_err(io_err)?;
        v.queue
            .try_set_avail_ring_address(GuestAddress(avail))
            .map_err(io_err)?;
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostResult<()> {
        let i = self.vring_index(index)?;
        let mut v = lock(&self.shared.vrings[i]);
        v.queue.set_next_avail(base as u16);
        v.queue.set_next_used(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostResult<VhostUserVringState> {
        let i = self.vring_index(index)?;
        let old = {
            let mut v = lock(&self.shared.vrings[i]);
            let old = v.kick_fd();
            if let Some(mem) = self.shared.memory() {
                self.backend
                    .stop_queue(i, &mut v, &mem)
                    .map_err(VhostError::ReqHandlerError)?;
            }
            v.kick = None;
            v.queue.set_ready(false);
            v.recovered = false;
            old
        };
        self.update_watch(i, old)?;
        let next = lock(&self.shared.vrings[i]).queue.next_avail();
        Ok(VhostUserVringState::new(index, u32::from(next)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let i = self.vring_index(u32::from(index))?;
        let old = {
            let mut v = lock(&self.shared.vrings[i]);
            let old = v.kick_fd();
            if let Some(f) = &fd {
                // SAFETY: fcntl on the fd we were just given.
                unsafe {
                    let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                    libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
                }
            }
            v.queue.set_ready(fd.is_some());
            v.kick = fd;
            old
        };
        self.update_watch(i, old)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let i = self.vring_index(u32::from(index))?;
        lock(&self.shared.vrings[i]).call = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VhostResult<()> {
        // Errors are reported on the guest's requests, never through this fd.
        self.vring_index(u32::from(index)).map(|_| ())
    }

    fn get_protocol_features(&mut self) -> VhostResult<VhostUserProtocolFeatures> {
        Ok(self.backend.protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostResult<()> {
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostResult<u64> {
        Ok(self.backend.num_queues() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostResult<()> {
        let i = self.vring_index(index)?;
        lock(&self.shared.vrings[i]).enabled = enable;
        self.update_watch(i, None)
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<Vec<u8>> {
        Ok(self.backend.get_config(offset, size))
    }

    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> VhostResult<()> {
        // The virtio-blk config space is read-only here (no CONFIG_WCE).
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
        let n = inflight.num_queues.min(self.shared.vrings.len() as u16);
        let region = InflightRegion::create(n, inflight.queue_size).map_err(io_err)?;
        let file = region
            .file()
            .try_clone()
            .map_err(VhostError::ReqHandlerError)?;
        let reply = VhostUserInflight::new(region.len() as u64, 0, n, inflight.queue_size);
        Ok((reply, file))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VhostResult<()> {
        let n = inflight.num_queues.min(self.shared.vrings.len() as u16);
        let region = InflightRegion::map(
            file,
            inflight.mmap_offset,
            inflight.mmap_size,
            n,
            inflight.queue_size,
        )
        .map_err(io_err)?;
        let region = Arc::new(region);
        for q in 0..n {
            let mut v = lock(&self.shared.vrings[usize::from(q)]);
            v.inflight = Some((region.queue(q), 0));
            v.inflight_region = Some(region.clone());
            v.recovered = false;
        }
        self.inflight = Some(region);
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VhostResult<u64> {
        Err(VhostError::InvalidOperation("memory slots are not offered"))
    }

    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> VhostResult<Option<VhostUserMemoryRegionBase>> {
        Err(VhostError::InvalidOperation("memory slots are not offered"))
    }

    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> VhostResult<()> {
        Err(VhostError::InvalidOperation("memory slots are not offered"))
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

    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> VhostResult<()> {
        Err(VhostError::InvalidOperation("dirty logging is not offered"))
    }
}
