//! The boot image: the kernel (Linux bzImage or a PVH ELF), the initrd and the command line,
//! read once; at every (re)boot it writes them, the boot structures and the ACPI tables
//! into guest RAM and says where and how the boot vCPU must start.

use std::ffi::CString;
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::{elf::Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::entry::{BootEntry, LoadedKernel};
use super::error::BootError;
use super::format::{check_elf_extent, detect_format, KernelFormat};
use super::{acpi, bzimage, memmap, paging, pvh};
use crate::cpu::boot_regs;
use crate::cpu::layout::CpuLayout;
use crate::layout::{CMDLINE, CMDLINE_MAX, HIGH_RAM_START};
use crate::memory::GuestRam;

const PAGE: u64 = 4096;

/// What to boot, read from disk once so that a reset reloads exactly the same bytes.
pub struct BootImage {
    kernel_path: PathBuf,
    kernel: Vec<u8>,
    format: KernelFormat,
    initrd: Option<(PathBuf, Vec<u8>)>,
    cmdline: CString,
    /// DIMM slots the ACPI tables describe (memory hotplug; 0: none).
    memory_slots: u32,
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
        // From the start: the file may be shared with a vmm-core that read it before
        // (a live upgrade hands over the same open file).
        let mut kernel_bytes = Vec::new();
        kernel
            .seek(SeekFrom::Start(0))
            .and_then(|_| kernel.read_to_end(&mut kernel_bytes))
            .map_err(|error| BootError::ReadKernel {
                path: kernel_path.to_owned(),
                error,
            })?;
        let format = detect_format(&kernel_bytes)
            .ok_or_else(|| BootError::UnknownFormat(kernel_path.to_owned()))?;
        let initrd = match initrd {
            Some((path, mut file)) => {
                let mut bytes = Vec::new();
                file.seek(SeekFrom::Start(0))
                    .and_then(|_| file.read_to_end(&mut bytes))
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
            memory_slots: 0,
        })
    }

    /// The ACPI tables of every boot describe `slots` DIMM slots.
    pub fn set_memory_slots(&mut self, slots: u32) {
        self.memory_slots = slots;
    }

    pub fn format(&self) -> KernelFormat {
        self.format
    }

    /// Writes kernel, initrd, command line, boot structures and ACPI tables for the vCPUs
    /// of `cpus` into `ram`, which must be zeroed (fresh, or cleared by a reset).
    pub fn load(&self, ram: &GuestRam, cpus: &CpuLayout) -> Result<LoadedKernel, BootError> {
        let mem = ram.memory();
        let low_ram_end = ram.regions()[0].end();
        let tables = acpi::AcpiTables::build(cpus, self.memory_slots)?;
        tables.write(mem)?;
        boot_regs::write_gdt(mem)?;
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
