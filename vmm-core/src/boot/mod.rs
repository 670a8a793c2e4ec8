//! Kernel loading: reads the kernel (Linux bzImage or a PVH ELF) and the initrd once,
//! and at every (re)boot writes them, the command line, the boot structures and the ACPI
//! tables into guest RAM, returning where and how the boot vCPU must start.

pub mod acpi;
pub mod bzimage;
pub mod memmap;
pub mod paging;
pub mod pvh;

use std::ffi::CString;
use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use linux_loader::loader::{elf::Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{CMDLINE, CMDLINE_MAX, HIGH_RAM_START};
use crate::memory::GuestRam;

const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}: {error}")]
    ReadKernel {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("initrd {path}: {error}")]
    ReadInitrd {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("kernel {0}: neither an ELF file nor a Linux bzImage (no ELF magic, no \"HdrS\" setup header)")]
    UnknownFormat(PathBuf),
    #[error("kernel {path}: invalid or truncated ELF: {reason}")]
    BadElf { path: PathBuf, reason: String },
    #[error("kernel {0}: ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); only PVH ELF kernels can be booted")]
    NoPvhEntry(PathBuf),
    #[error("kernel {path}: invalid or truncated bzImage: {reason}")]
    BadBzImage { path: PathBuf, reason: String },
    #[error("kernel {path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("kernel {path} needs guest memory up to {needed:#x}, but RAM below 4 GiB ends at {available:#x}")]
    KernelTooLarge {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory: {free} bytes free between the kernel and {limit:#x}")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        free: u64,
        limit: u64,
    },
    #[error("--cmdline: {0}")]
    Cmdline(String),
    #[error("the memory map has {0} entries, more than the boot protocol can carry")]
    MemoryMapTooLarge(usize),
    #[error("writing boot data to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode, identity paging, RSI = boot_params.
    Linux64 {
        entry: GuestAddress,
        boot_params: GuestAddress,
    },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh {
        entry: GuestAddress,
        start_info: GuestAddress,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// What to boot, read from disk once so that a reset reloads exactly the same bytes.
pub struct BootImage {
    kernel_path: PathBuf,
    kernel: Vec<u8>,
    format: KernelFormat,
    initrd: Option<(PathBuf, Vec<u8>)>,
    cmdline: CString,
}

/// Where things landed, for callers and tests.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: BootEntry,
    pub kernel_end: u64,
    pub initrd: Option<(GuestAddress, u64)>,
    pub rsdp: GuestAddress,
}

impl BootImage {
    pub fn open(kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> Result<Self, BootError> {
        let kernel_file = File::open(kernel).map_err(|error| BootError::ReadKernel {
            path: kernel.to_owned(),
            error,
        })?;
        let initrd_file = match initrd {
            Some(p) => Some((
                p,
                File::open(p).map_err(|error| BootError::ReadInitrd {
                    path: p.to_owned(),
                    error,
                })?,
            )),
            None => None,
        };
        Self::from_files((kernel, kernel_file), initrd_file, cmdline)
    }

    /// Reads kernel and initrd from files opened elsewhere (by the gateway, which opens
    /// every path); the paths only name them in errors.
    pub fn from_files(
        (kernel_path, mut kernel): (&Path, File),
        initrd: Option<(&Path, File)>,
        cmdline: &str,
    ) -> Result<Self, BootError> {
        let mut kernel_bytes = Vec::new();
        kernel
            .read_to_end(&mut kernel_bytes)
            .map_err(|error| BootError::ReadKernel {
                path: kernel_path.to_owned(),
                error,
            })?;
        let format = detect_format(&kernel_bytes)
            .ok_or_else(|| BootError::UnknownFormat(kernel_path.to_owned()))?;
        let initrd = match initrd {
            Some((path, mut file)) => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)
                    .map_err(|error| BootError::ReadInitrd {
                        path: path.to_owned(),
                        error,
                    })?;
                Some((path.to_owned(), bytes))
            }
            None => None,
        };
        let cmdline =
            CString::new(cmdline).map_err(|_| BootError::Cmdline("contains a NUL byte".into()))?;
        if cmdline.as_bytes_with_nul().len() > CMDLINE_MAX {
            return Err(BootError::Cmdline(format!(
                "{} bytes, at most {} fit",
                cmdline.as_bytes().len(),
                CMDLINE_MAX - 1
            )));
        }
        Ok(BootImage {
            kernel_path: kernel_path.to_owned(),
            kernel: kernel_bytes,
            format,
            initrd,
            cmdline,
        })
    }

    pub fn format(&self) -> KernelFormat {
        self.format
    }

    /// Writes kernel, initrd, command line, boot structures and ACPI tables for `cpus`
    /// vCPUs into `ram`, which must be zeroed (fresh, or cleared by a reset).
    pub fn load(&self, ram: &GuestRam, cpus: usize) -> Result<LoadedKernel, BootError> {
        let mem = ram.memory();
        let low_ram_end = ram.regions()[0].end();
        let tables = acpi::AcpiTables::build(cpus)?;
        tables.write(mem)?;
        crate::cpu::boot_regs::write_gdt(mem)?;
        mem.write_slice(self.cmdline.as_bytes_with_nul(), GuestAddress(CMDLINE))?;
        let memmap = memmap::memory_map(ram.regions());
        match self.format {
            KernelFormat::Elf => {
                check_elf_extent(&self.kernel).map_err(|reason| BootError::BadElf {
                    path: self.kernel_path.clone(),
                    reason,
                })?;
                let loaded = Elf::load(
                    mem,
                    None,
                    &mut Cursor::new(&self.kernel),
                    Some(GuestAddress(HIGH_RAM_START)),
                )
                .map_err(|e| BootError::BadElf {
                    path: self.kernel_path.clone(),
                    reason: e.to_string(),
                })?;
                let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
                    return Err(BootError::NoPvhEntry(self.kernel_path.clone()));
                };
                let kernel_end = loaded.kernel_end;
                let initrd = self.place_initrd(mem, kernel_end, low_ram_end)?;
                let start_info = pvh::write_start_info(mem, &memmap, initrd, tables.rsdp)?;
                Ok(LoadedKernel {
                    entry: BootEntry::Pvh { entry, start_info },
                    kernel_end,
                    initrd,
                    rsdp: tables.rsdp,
                })
            }
            KernelFormat::BzImage => {
                let kernel = bzimage::load(mem, &self.kernel_path, &self.kernel, low_ram_end)?;
                let limit = low_ram_end.min(u64::from(kernel.header.initrd_addr_max) + 1);
                let initrd = self.place_initrd(mem, kernel.reserved_end, limit)?;
                let boot_params = bzimage::write_boot_params(
                    mem,
                    &kernel,
                    &memmap,
                    initrd,
                    tables.rsdp,
                    self.cmdline.as_bytes().len(),
                )?;
                paging::write_identity_map(mem)?;
                Ok(LoadedKernel {
                    entry: BootEntry::Linux64 {
                        entry: kernel.entry_64,
                        boot_params,
                    },
                    kernel_end: kernel.reserved_end,
                    initrd,
                    rsdp: tables.rsdp,
                })
            }
        }
    }

    /// Puts the initrd as high as possible below `limit`, above the kernel: where the
    /// kernel will not decompress over it and where it leaves low memory alone.
    fn place_initrd(
        &self,
        mem: &GuestMemoryMmap,
        kernel_end: u64,
        limit: u64,
    ) -> Result<Option<(GuestAddress, u64)>, BootError> {
        let Some((path, bytes)) = &self.initrd else {
            return Ok(None);
        };
        let size = bytes.len() as u64;
        let lowest = kernel_end.next_multiple_of(PAGE);
        let free = limit.saturating_sub(lowest);
        let too_large = || BootError::InitrdTooLarge {
            path: path.clone(),
            size,
            free,
            limit,
        };
        let addr = limit
            .checked_sub(size)
            .map(|a| a & !(PAGE - 1))
            .filter(|a| *a >= lowest)
            .ok_or_else(too_large)?;
        mem.write_slice(bytes, GuestAddress(addr))?;
        Ok(Some((GuestAddress(addr), size)))
    }
}

fn read_le(bytes: &[u8], offset: usize, len: usize) -> Option<u64> {
    let field = bytes.get(offset..offset + len)?;
    Some(field.iter().rev().fold(0, |v, b| (v << 8) | u64::from(*b)))
}

/// Checks that the file holds everything its ELF header points at (program headers,
/// every segment's bytes, section headers): a cut-off file is an error even when the
/// part the loader needs happens to be intact.
pub fn check_elf_extent(elf: &[u8]) -> Result<(), String> {
    const EHDR_SIZE: usize = 64;
    const PHDR_SIZE: u64 = 56;
    let len = elf.len() as u64;
    let truncated = |needed: u64| format!("file is {len} bytes, but its headers describe {needed}");
    if elf.len() < EHDR_SIZE {
        return Err(truncated(EHDR_SIZE as u64));
    }
    if elf[4] != 2 {
        return Err("not a 64-bit ELF file".into());
    }
    let field = |offset, len| read_le(elf, offset, len).unwrap_or(0);
    let (phoff, phentsize, phnum) = (field(0x20, 8), field(0x36, 2), field(0x38, 2));
    let (shoff, shentsize, shnum) = (field(0x28, 8), field(0x3a, 2), field(0x3c, 2));
    if phentsize != PHDR_SIZE {
        return Err(format!(
            "program header size {phentsize}, expected {PHDR_SIZE}"
        ));
    }
    let table_end = |off: u64, entsize: u64, num: u64| {
        entsize
            .checked_mul(num)
            .and_then(|size| off.checked_add(size))
            .ok_or_else(|| "header table offset overflows".to_string())
    };
    let mut needed = table_end(phoff, phentsize, phnum)?;
    if shoff != 0 {
        needed = needed.max(table_end(shoff, shentsize, shnum)?);
    }
    if needed > len {
        return Err(truncated(needed));
    }
    for i in 0..phnum {
        let ph = (phoff + i * PHDR_SIZE) as usize;
        let (offset, filesz) = (field(ph + 0x08, 8), field(ph + 0x20, 8));
        let end = offset
            .checked_add(filesz)
            .ok_or_else(|| format!("segment {i} overflows"))?;
        if end > len {
            return Err(truncated(end));
        }
    }
    Ok(())
}

/// Tells an ELF from a bzImage by their magic numbers.
pub fn detect_format(image: &[u8]) -> Option<KernelFormat> {
    if image.starts_with(b"\x7fELF") {
        Some(KernelFormat::Elf)
    } else if image.get(0x202..0x206) == Some(b"HdrS") {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header and a section header table.
    fn elf(segment_end: u64, shoff: u64) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        e[0x3c..0x3e].copy_from_slice(&2u16.to_le_bytes());
        e[64 + 0x08..64 + 0x10].copy_from_slice(&120u64.to_le_bytes());
        e[64 + 0x20..64 + 0x28].copy_from_slice(&(segment_end - 120).to_le_bytes());
        e.resize(400, 0);
        e
    }

    #[test]
    fn elf_extent_catches_truncation_anywhere() {
        assert_eq!(check_elf_extent(&elf(200, 200)), Ok(()));
        assert!(
            check_elf_extent(&elf(500, 200)).is_err(),
            "segment past the end"
        );
        assert!(
            check_elf_extent(&elf(200, 300)).is_err(),
            "section headers past the end"
        );
        assert!(
            check_elf_extent(&elf(200, u64::MAX - 10)).is_err(),
            "overflow"
        );
        assert!(
            check_elf_extent(&elf(200, 200)[..63]).is_err(),
            "short header"
        );
        let mut e32 = elf(200, 200);
        e32[4] = 1;
        assert!(check_elf_extent(&e32).is_err());
    }

    #[test]
    fn detects_formats() {
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"#!/bin/sh\n"), None);
        assert_eq!(detect_format(b""), None);
    }
}
