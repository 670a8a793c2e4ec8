//! Linux bzImage through the 64-bit boot protocol (Documentation/arch/x86/boot.rst):
//! the protected-mode kernel at its code32_start, `struct boot_params` filled from the
//! image's setup header plus our E820 map, command line, initrd and RSDP.

use std::io::Cursor;
use std::path::Path;

use linux_loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, CAN_USE_HEAP, LOADED_HIGH, XLF_KERNEL_64,
};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::error::BootError;
use super::memmap::MemoryMapEntry;
use crate::layout::{CMDLINE, HIGH_RAM_START, ZERO_PAGE};

const SETUP_HEADER_OFFSET: usize = 0x1f1;
const BOOT_FLAG: u16 = 0xaa55;
/// 2.12 introduced xloadflags, which is how a kernel declares its 64-bit entry.
const MIN_PROTOCOL: u16 = 0x020c;
/// The 64-bit entry point is 0x200 bytes into the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;
/// "Undefined" boot loader id (boot.rst: type_of_loader).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const E820_MAX_ENTRIES: usize = 128;

/// A bzImage after its protected-mode part was copied into guest memory.
#[derive(Clone, Copy)]
pub struct LoadedBzImage {
    pub header: setup_header,
    pub load_addr: u64,
    pub entry_64: GuestAddress,
    /// End of what the kernel claims while it decompresses and runs (init_size from
    /// where it will run): the initrd must go above this.
    pub reserved_end: u64,
}

fn bad(path: &Path, reason: impl Into<String>) -> BootError {
    BootError::BadBzImage {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads and checks the setup header; the loader crate does the copy.
pub fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    image: &[u8],
    low_ram_end: u64,
) -> Result<LoadedBzImage, BootError> {
    let header_end = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>();
    let raw = image
        .get(SETUP_HEADER_OFFSET..header_end)
        .ok_or_else(|| bad(path, "file ends inside the setup header"))?;
    let header = setup_header::from_slice(raw)
        .copied()
        .ok_or_else(|| bad(path, "unaligned setup header"))?;
    let boot_flag = header.boot_flag;
    if boot_flag != BOOT_FLAG {
        return Err(bad(
            path,
            format!("boot flag {boot_flag:#06x}, expected 0xaa55"),
        ));
    }
    let version = header.version;
    let xloadflags = header.xloadflags;
    if version < MIN_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::Unsupported {
            path: path.to_owned(),
            reason: format!(
                "boot protocol {}.{:02} without a 64-bit entry point (needs 2.12 and XLF_KERNEL_64)",
                version >> 8,
                version & 0xff
            ),
        });
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(bad(path, "not a bzImage (LOADED_HIGH clear)"));
    }
    let setup_sects = match header.setup_sects {
        0 => 4,
        n => usize::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    if image.len() <= setup_size {
        return Err(bad(
            path,
            format!(
                "{} bytes, but the setup code alone is {setup_size}",
                image.len()
            ),
        ));
    }
    let kernel_size = (image.len() - setup_size) as u64;
    let load_addr = u64::from(header.code32_start);
    // A relocatable kernel decompresses to pref_address if it was loaded below it.
    let run_addr = load_addr.max(header.pref_address);
    let reserved_end = (load_addr + kernel_size).max(run_addr + u64::from(header.init_size));
    if load_addr < HIGH_RAM_START || reserved_end > low_ram_end {
        return Err(BootError::KernelTooLarge {
            path: path.to_owned(),
            needed: reserved_end,
            available: low_ram_end,
        });
    }
    let loaded = BzImage::load(
        mem,
        None,
        &mut Cursor::new(image),
        Some(GuestAddress(HIGH_RAM_START)),
    )
    .map_err(|e| bad(path, e.to_string()))?;
    let header = loaded
        .setup_header
        .ok_or_else(|| bad(path, "loader returned no setup header"))?;
    Ok(LoadedBzImage {
        header,
        load_addr,
        entry_64: GuestAddress(load_addr + ENTRY_64_OFFSET),
        reserved_end,
    })
}

/// Fills the zero page at `ZERO_PAGE` and returns its address.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedBzImage,
    memmap: &[MemoryMapEntry],
    initrd: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
    cmdline_len: usize,
) -> Result<GuestAddress, BootError> {
    let max_cmdline = kernel.header.cmdline_size as usize;
    if cmdline_len > max_cmdline {
        return Err(BootError::Cmdline(format!(
            "{cmdline_len} bytes, this kernel accepts at most {max_cmdline}"
        )));
    }
    if memmap.len() > E820_MAX_ENTRIES {
        return Err(BootError::MemoryMapTooLarge(memmap.len()));
    }
    let mut params = boot_params {
        hdr: kernel.header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr.0 as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(memmap) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind as u32,
        };
    }
    params.e820_entries = memmap.len() as u8;
    params.acpi_rsdp_addr = rsdp.0;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))?;
    Ok(GuestAddress(ZERO_PAGE))
}
