//! The PVH boot protocol (Xen's `hvm_start_info`): 32-bit entry with EBX pointing at a
//! start-info block that carries the memory map, command line, modules and RSDP.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::error::BootError;
use super::memmap::MemoryMapEntry;
use crate::layout::{CMDLINE, PVH_MEMMAP, PVH_MEMMAP_END, PVH_MODLIST, PVH_START_INFO};

// The bindings carry no ByteValued impls; these wrappers add them for writing to memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: plain-old-data C struct with no padding-sensitive invariants.
unsafe impl ByteValued for StartInfo {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: as above.
unsafe impl ByteValued for ModlistEntry {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: as above.
unsafe impl ByteValued for MemmapEntry {}

/// Version 1 adds the memory map to the start info.
const START_INFO_VERSION: u32 = 1;

pub fn write_start_info(
    mem: &GuestMemoryMmap,
    memmap: &[MemoryMapEntry],
    initrd: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
) -> Result<GuestAddress, BootError> {
    let entry_size = std::mem::size_of::<MemmapEntry>() as u64;
    if memmap.len() as u64 * entry_size > PVH_MEMMAP_END - PVH_MEMMAP {
        return Err(BootError::MemoryMapTooLarge(memmap.len()));
    }
    for (i, e) in memmap.iter().enumerate() {
        let entry = MemmapEntry(hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        });
        mem.write_obj(entry, GuestAddress(PVH_MEMMAP + i as u64 * entry_size))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        cmdline_paddr: CMDLINE,
        rsdp_paddr: rsdp.0,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = initrd {
        let module = ModlistEntry(hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        });
        mem.write_obj(module, GuestAddress(PVH_MODLIST))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST;
    }
    mem.write_obj(StartInfo(info), GuestAddress(PVH_START_INFO))?;
    Ok(GuestAddress(PVH_START_INFO))
}
