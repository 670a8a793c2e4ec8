//! Guest RAM: one memfd, mapped MAP_SHARED, split around the 32-bit MMIO gap.
//!
//! The memfd is what later gets handed to device daemons (vhost-user SET_MEM_TABLE) and
//! to the migration agent, so every region is a window into that one file. Memory added
//! while the VM lives (a DIMM: ACPI memory hotplug, dimms.rs) is a file of its own, mapped
//! into the same guest memory map (`add_hot`) and handed to the daemons with its own fd.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

pub const MIB: u64 = 1 << 20;
/// Below this a kernel, its boot structures and the ACPI tables cannot all fit.
pub const MIN_MEMORY_MIB: u64 = 2;
/// A generous ceiling well inside the guest physical address width KVM offers.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("--memory {0}: must be at least {MIN_MEMORY_MIB} MiB")]
    TooSmall(u64),
    #[error("--memory {0}: more than the supported {MAX_MEMORY_MIB} MiB")]
    TooLarge(u64),
    #[error("creating the guest RAM memfd: {0}")]
    Memfd(std::io::Error),
    #[error("sizing the guest RAM memfd to {size} bytes: {error}")]
    Resize { size: u64, error: std::io::Error },
    #[error("mapping guest RAM: {0}")]
    Mmap(String),
    #[error("clearing guest RAM: {0}")]
    Clear(std::io::Error),
    #[error("the memory backend holds {len} bytes, {size} are needed")]
    ShortBackend { len: u64, size: u64 },
    #[error("reading the memory backend's size: {0}")]
    Backend(std::io::Error),
}

/// Memory added while the VM lives: `size` bytes of `file` from its start, at `guest_addr`.
#[derive(Clone)]
pub struct HotRegion {
    pub guest_addr: u64,
    pub size: u64,
    /// Its KVM memory slot (the dirty log is read per slot).
    pub kvm_slot: u32,
    pub file: Arc<File>,
    /// This process's mapping (in the guest memory map too).
    pub mapping: Arc<GuestRegionMmap>,
}

/// One region of guest memory as a vhost-user backend maps it: guest address, size, where
/// this process has it, and which file at which offset.
#[derive(Clone)]
pub struct SharedRegion {
    pub guest_addr: u64,
    pub size: u64,
    pub host_addr: u64,
    pub file: Arc<File>,
    pub file_offset: u64,
}

/// One contiguous window of guest RAM: guest address, length, offset in the memfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

impl RamRegion {
    pub fn end(&self) -> u64 {
        self.guest_addr + self.size
    }
}

/// Splits `size` bytes of RAM around the MMIO gap: up to 3 GiB at 0, the rest at 4 GiB.
pub fn ram_regions(size: u64) -> Vec<RamRegion> {
    let low = size.min(MMIO_GAP_START);
    let mut regions = vec![RamRegion {
        guest_addr: 0,
        size: low,
        file_offset: 0,
    }];
    if size > low {
        regions.push(RamRegion {
            guest_addr: MMIO_GAP_END,
            size: size - low,
            file_offset: low,
        });
    }
    regions
}

pub struct GuestRam {
    memfd: Arc<File>,
    size: u64,
    regions: Vec<RamRegion>,
    memory: GuestMemoryMmap,
    /// Memory added since (not RAM of the memory map; not cleared by a reset).
    hot: Vec<HotRegion>,
}

impl GuestRam {
    pub fn new(memory_mib: u64) -> Result<Self, MemoryError> {
        if memory_mib < MIN_MEMORY_MIB {
            return Err(MemoryError::TooSmall(memory_mib));
        }
        if memory_mib > MAX_MEMORY_MIB {
            return Err(MemoryError::TooLarge(memory_mib));
        }
        let size = memory_mib * MIB;
        Self::map(create_memfd(size)?, size)
    }

    /// Guest RAM another vmm-core created (a live upgrade): `memfd` must be exactly
    /// `memory_mib` long, and its contents are the guest's, untouched.
    pub fn from_memfd(memfd: File, memory_mib: u64) -> Result<Self, MemoryError> {
        if memory_mib < MIN_MEMORY_MIB {
            return Err(MemoryError::TooSmall(memory_mib));
        }
        if memory_mib > MAX_MEMORY_MIB {
            return Err(MemoryError::TooLarge(memory_mib));
        }
        let size = memory_mib * MIB;
        let len = memfd.metadata().map_err(MemoryError::Memfd)?.len();
        if len != size {
            return Err(MemoryError::Resize {
                size,
                error: std::io::Error::other(format!("the memfd handed over holds {len} bytes")),
            });
        }
        Self::map(memfd, size)
    }

    fn map(memfd: File, size: u64) -> Result<Self, MemoryError> {
        let regions = ram_regions(size);
        let mut mapped = Vec::with_capacity(regions.len());
        for r in &regions {
            let file = memfd.try_clone().map_err(MemoryError::Memfd)?;
            let mmap = MmapRegion::from_file(FileOffset::new(file, r.file_offset), r.size as usize)
                .map_err(|e| MemoryError::Mmap(e.to_string()))?;
            let region = GuestRegionMmap::new(mmap, GuestAddress(r.guest_addr))
                .ok_or_else(|| MemoryError::Mmap("region overflows the address space".into()))?;
            mapped.push(region);
        }
        let memory =
            GuestMemoryMmap::from_regions(mapped).map_err(|e| MemoryError::Mmap(e.to_string()))?;
        Ok(GuestRam {
            memfd: Arc::new(memfd),
            size,
            regions,
            memory,
            hot: Vec::new(),
        })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// Maps `size` bytes of `file` (from offset 0, shared) at `guest_addr` into the guest
    /// memory map, for KVM memory slot `kvm_slot`. The caller checked the range is free.
    pub fn add_hot(
        &mut self,
        file: File,
        guest_addr: u64,
        size: u64,
        kvm_slot: u32,
    ) -> Result<HotRegion, MemoryError> {
        let len = file.metadata().map_err(MemoryError::Backend)?.len();
        if len < size {
            return Err(MemoryError::ShortBackend { len, size });
        }
        let file = Arc::new(file);
        let mapped_file = file.try_clone().map_err(MemoryError::Backend)?;
        let mmap = MmapRegion::from_file(FileOffset::new(mapped_file, 0), size as usize)
            .map_err(|e| MemoryError::Mmap(e.to_string()))?;
        let region = GuestRegionMmap::new(mmap, GuestAddress(guest_addr))
            .ok_or_else(|| MemoryError::Mmap("region overflows the address space".into()))?;
        let mapping = Arc::new(region);
        self.memory = self
            .memory
            .insert_region(mapping.clone())
            .map_err(|e| MemoryError::Mmap(e.to_string()))?;
        let hot = HotRegion {
            guest_addr,
            size,
            kvm_slot,
            file,
            mapping,
        };
        self.hot.push(hot.clone());
        Ok(hot)
    }

    /// Takes the memory at `guest_addr` out of the guest memory map; its mapping goes when
    /// the last holder lets go of it (a daemon's request in flight, say).
    pub fn remove_hot(&mut self, guest_addr: u64) -> Option<HotRegion> {
        let at = self.hot.iter().position(|h| h.guest_addr == guest_addr)?;
        let hot = self.hot.remove(at);
        if let Ok((memory, _)) = self
            .memory
            .remove_region(GuestAddress(guest_addr), hot.size)
        {
            self.memory = memory;
        }
        Some(hot)
    }

    pub fn hot_regions(&self) -> &[HotRegion] {
        &self.hot
    }

    /// Every region a vhost-user backend maps: RAM's, then the memory added since.
    pub fn shared_regions(&self) -> Vec<SharedRegion> {
        let ram = self.regions.iter().map(|r| SharedRegion {
            guest_addr: r.guest_addr,
            size: r.size,
            host_addr: self.host_addr(r).unwrap_or(0),
            file: self.memfd.clone(),
            file_offset: r.file_offset,
        });
        ram.chain(self.hot.iter().map(HotRegion::shared)).collect()
    }

    /// Host address of the start of a region, for KVM_SET_USER_MEMORY_REGION.
    pub fn host_addr(&self, region: &RamRegion) -> Option<u64> {
        use vm_memory::GuestMemoryBackend;
        self.memory
            .get_host_address(GuestAddress(region.guest_addr))
            .ok()
            .map(|p| p as u64)
    }

    /// Zeroes all of guest RAM by punching the whole memfd, which also hands the pages
    /// back to the host: a reset starts from the same clean memory as a cold boot.
    pub fn clear(&self) -> Result<(), MemoryError> {
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.memfd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                self.size as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(MemoryError::Clear(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl HotRegion {
    /// As a vhost-user backend maps it.
    pub fn shared(&self) -> SharedRegion {
        SharedRegion {
            guest_addr: self.guest_addr,
            size: self.size,
            host_addr: self.mapping.as_ptr() as u64,
            file: self.file.clone(),
            file_offset: 0,
        }
    }
}

fn create_memfd(size: u64) -> Result<File, MemoryError> {
    let name = c"flotilla-guest-ram";
    // SAFETY: name is a valid NUL-terminated string; the returned fd is checked.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|error| MemoryError::Resize { size, error })?;
    // Peers that receive this fd must not be able to shrink it under our mappings
    // (a shrink would turn guest RAM accesses into SIGBUS in every process).
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own fd with an integer argument.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(
            ram_regions(256 * MIB),
            vec![RamRegion {
                guest_addr: 0,
                size: 256 * MIB,
                file_offset: 0
            }]
        );
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let r = ram_regions(4096 * MIB);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].end(), MMIO_GAP_START);
        assert_eq!(r[1].guest_addr, MMIO_GAP_END);
        assert_eq!(r[1].size, 1024 * MIB);
        assert_eq!(r[1].file_offset, MMIO_GAP_START);
    }

    #[test]
    fn rejects_zero_and_huge() {
        assert!(matches!(GuestRam::new(0), Err(MemoryError::TooSmall(0))));
        assert!(matches!(
            GuestRam::new(MAX_MEMORY_MIB + 1),
            Err(MemoryError::TooLarge(_))
        ));
    }

    #[test]
    fn clear_zeroes_memory_and_keeps_size() {
        let ram = GuestRam::new(4).unwrap();
        ram.memory()
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        ram.clear().unwrap();
        let v: u32 = ram.memory().read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(v, 0);
        assert_eq!(ram.memfd().metadata().unwrap().len(), 4 * MIB);
    }

    #[test]
    fn memfd_cannot_shrink() {
        let ram = GuestRam::new(4).unwrap();
        assert!(ram.memfd().set_len(MIB).is_err());
    }
}
