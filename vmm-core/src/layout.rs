//! The guest physical address map: where the loader puts boot structures, where RAM
//! is, and where the platform's MMIO windows and fixed I/O ports live.
//!
//! Everything below 1 MiB follows the PC conventions Linux and PVH kernels expect: the
//! real-mode IVT/BDA at 0, our boot structures in conventional memory, the EBDA and the
//! legacy VGA/BIOS window reserved, ACPI tables in the BIOS area where an OS that scans
//! for the RSDP finds them.

/// GDT used for the initial (flat) segments of both boot protocols.
pub const BOOT_GDT: u64 = 0x500;
/// `struct hvm_start_info` for PVH boots.
pub const PVH_START_INFO: u64 = 0x6000;
/// PVH module list (the initrd is module 0).
pub const PVH_MODLIST: u64 = 0x6040;
/// PVH memory map (`hvm_memmap_table_entry` array), up to the zero page.
pub const PVH_MEMMAP: u64 = 0x6100;
pub const PVH_MEMMAP_END: u64 = ZERO_PAGE;
/// Linux `struct boot_params` ("zero page").
pub const ZERO_PAGE: u64 = 0x7000;
/// Identity page tables for the 64-bit Linux entry: PML4, PDPT, then 4 PDs (4 GiB).
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
pub const PD_COUNT: u64 = 4;
/// Kernel command line, NUL-terminated.
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 0x10000;
/// Start of the Extended BIOS Data Area: conventional RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first, so a legacy scan of 0xE0000..0xFFFFF finds it).
pub const ACPI_TABLES: u64 = 0xe0000;
pub const ACPI_TABLES_END: u64 = 0x100000;
/// RAM above the legacy hole: kernels load here.
pub const HIGH_RAM_START: u64 = 0x100000;
/// The 32-bit MMIO gap (PCI windows, IOAPIC, LAPIC) between RAM below 4 GiB and RAM above.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// PCI: the 32-bit window BARs are assigned from, then ECAM for bus 0 (MCFG).
pub const PCI_MMIO_START: u64 = MMIO_GAP_START;
pub const PCI_MMIO_END: u64 = 0xe000_0000;
pub const PCI_ECAM: u64 = 0xe000_0000;
/// One bus (bus 0) of ECAM: 32 devices x 8 functions x 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// Where KVM keeps its real-mode TSS and identity map (inside the MMIO gap, never RAM).
pub const KVM_TSS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP: u64 = 0xfffb_c000;
pub const IOAPIC: u64 = 0xfec0_0000;
pub const LAPIC: u64 = 0xfee0_0000;

/// Legacy I/O ports.
pub mod ports {
    pub const COM1: u16 = 0x3f8;
    pub const COM1_IRQ: u32 = 4;
    pub const I8042_DATA: u16 = 0x60;
    pub const I8042_COMMAND: u16 = 0x64;
    /// The keyboard's and the mouse's ISA interrupts.
    pub const I8042_KBD_IRQ: u32 = 1;
    pub const I8042_AUX_IRQ: u32 = 12;
    pub const RESET_CONTROL: u16 = 0xcf9;
    pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
    pub const PCI_CONFIG_LEN: u16 = 8;
    /// ACPI PM1a event block (status + enable), control block and PM timer, as on ICH9.
    pub const PM_BASE: u16 = 0x600;
    pub const PM1A_EVT: u16 = PM_BASE;
    pub const PM1_EVT_LEN: u8 = 4;
    pub const PM1A_CNT: u16 = PM_BASE + 4;
    pub const PM1_CNT_LEN: u8 = 2;
    pub const PM_TMR: u16 = PM_BASE + 8;
    pub const PM_TMR_LEN: u8 = 4;
    pub const PM_BLOCK_LEN: u16 = 12;
    /// The SCI is ISA IRQ 9, level triggered, active high (MADT override).
    pub const SCI_IRQ: u32 = 9;
    /// The GPE0 block (status then enable, 2 bytes each), where QEMU's pc machine has
    /// it, so that the same guest AML and drivers work on both.
    pub const GPE0_BLK: u16 = 0xafe0;
    pub const GPE0_BLK_LEN: u8 = 4;
    /// QEMU's ACPI PCI hotplug registers (its PIIX4 interface): PCIU, PCID, B0EJ, PCIRMV
    /// and PCSEL, 32 bits each.
    pub const PCI_HOTPLUG: u16 = 0xae00;
    pub const PCI_HOTPLUG_LEN: u16 = 0x14;
    /// QEMU's ACPI CPU hotplug registers (its "modern" interface), where its pc machine
    /// has them.
    pub const CPU_HOTPLUG: u16 = 0xaf00;
    pub const CPU_HOTPLUG_LEN: u16 = 12;
    /// QEMU's ACPI memory hotplug registers, where its pc machine has them.
    pub const MEMORY_HOTPLUG: u16 = 0x0a00;
    pub const MEMORY_HOTPLUG_LEN: u16 = 0x18;
}
