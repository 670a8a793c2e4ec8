//! Kernel loading: reads the kernel (Linux bzImage or a PVH ELF) and the initrd once,
//! and at every (re)boot writes them, the command line, the boot structures and the ACPI
//! tables into guest RAM, returning where and how the boot vCPU must start.
//!
//! `image` drives a boot through the protocol files (`bzimage`, `pvh`) and the shared
//! pieces (`memmap`, `paging`, `acpi` with `acpi_memory`); the types every part uses live in `entry` and
//! `error`, so that no file here imports the one that calls it.

pub mod acpi;
pub mod acpi_memory;
pub mod bzimage;
pub mod entry;
pub mod error;
pub mod format;
pub mod image;
pub mod memmap;
pub mod paging;
pub mod pvh;

pub use entry::{BootEntry, LoadedKernel};
pub use error::BootError;
pub use format::{check_elf_extent, detect_format, KernelFormat};
pub use image::BootImage;
