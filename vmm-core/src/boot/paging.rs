//! Identity page tables for entering a kernel directly in long mode.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{PD, PDPT, PD_COUNT, PML4};

const PRESENT_WRITABLE: u64 = 0x3;
const HUGE_PAGE: u64 = 0x80;
const PAGE: u64 = 4096;
const TWO_MIB: u64 = 2 << 20;

/// Maps the first 4 GiB 1:1 with 2 MiB pages: enough for the kernel, boot_params, the
/// command line and the initrd, which the Linux 64-bit protocol requires to be mapped.
pub fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_obj(PDPT | PRESENT_WRITABLE, GuestAddress(PML4))?;
    for i in 0..PD_COUNT {
        let pd = PD + i * PAGE;
        mem.write_obj(pd | PRESENT_WRITABLE, GuestAddress(PDPT + i * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|j| (((i * 512 + j) * TWO_MIB) | PRESENT_WRITABLE | HUGE_PAGE).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(())
}
