//! Why a kernel could not be read or loaded: each variant names the file and what is
//! wrong with it, in the words the command line reports.

use std::path::PathBuf;

use super::acpi::AcpiError;

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
    Acpi(#[from] AcpiError),
}
