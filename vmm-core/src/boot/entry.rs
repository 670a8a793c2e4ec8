//! Where a loaded kernel starts: the boot protocol's entry state for the boot vCPU, and
//! where the loader put the kernel, the initrd and the RSDP.

use vm_memory::GuestAddress;

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

/// Where things landed, for callers and tests.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: BootEntry,
    pub kernel_end: u64,
    pub initrd: Option<(GuestAddress, u64)>,
    pub rsdp: GuestAddress,
}
