//! PVH entry: the Xen PHYS32_ENTRY ELF note, the 32-bit entry code, the boot page tables and
//! the BSP stack. Entry state (PVH ABI): 32-bit protected mode, flat segments, paging off,
//! EBX = physical address of `struct hvm_start_info`.
//!
//! The page tables are built by the assembler into .data (no zeroing or filling loops at run
//! time: ring 0 is emulated on kvm-pvm hosts). They identity-map the first 4 GiB with 2 MiB
//! pages, all user-accessible so that ring-3 code in this image can run, and the top 32 MiB
//! (I/O APIC, local APIC, virtio-mmio, firmware) uncached. The APs reuse them (smp.rs).

use crate::arch::gdt::{GDT, GDT_LIMIT, KERNEL_CS, KERNEL_DS};
use core::arch::global_asm;

pub const BSP_STACK_SIZE: usize = 64 * 1024;

/// CR0 bits set on the way to long mode: PG | WP | NE | PE (CD and NW are cleared).
pub const CR0_SET: u32 = 0x8001_0021;
pub const CR0_CLEAR: u32 = 0x6000_0000;
pub const CR4_PAE: u32 = 0x20;
pub const EFER_MSR: u32 = 0xc000_0080;
pub const EFER_LME: u32 = 0x100;

global_asm!(
    // --- PVH note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), 32-bit entry address.
    // An empty note follows so that a loader reading the entry as 64 bits sees zeroes.
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4, 4, 18",
    ".asciz \"Xen\"",
    ".long pvh_entry",
    ".long 0, 0, 0",
    ".popsection",
    // --- Boot page tables: PML4 -> one PDPT -> four page directories of 2 MiB pages.
    ".pushsection .data.pagetables, \"aw\"",
    ".balign 4096",
    ".global flotilla_pml4",
    "flotilla_pml4:",
    ".quad flotilla_pdpt + 0x7", // present, writable, user
    ".fill 511, 8, 0",
    "flotilla_pdpt:",
    ".quad flotilla_pd + 0x0007",
    ".quad flotilla_pd + 0x1007",
    ".quad flotilla_pd + 0x2007",
    ".quad flotilla_pd + 0x3007",
    ".fill 508, 8, 0",
    "flotilla_pd:",
    ".set flotilla_addr, 0",
    ".rept 2048",
    ".if flotilla_addr >= 0xfe000000",
    ".quad flotilla_addr + 0x9f", // + PWT | PCD: device registers
    ".else",
    ".quad flotilla_addr + 0x87", // present, writable, user, 2 MiB page
    ".endif",
    ".set flotilla_addr, flotilla_addr + 0x200000",
    ".endr",
    ".popsection",
    // --- BSP stack (not zeroed, not in the file).
    ".pushsection .stacks, \"aw\", @nobits",
    ".balign 4096",
    "flotilla_bsp_stack:",
    ".space {bsp_stack_size}",
    "flotilla_bsp_stack_top:",
    ".popsection",
    // --- GDT pointers (32-bit form for lgdt before long mode, 64-bit form after).
    ".pushsection .rodata.gdt_ptr, \"a\"",
    ".balign 16",
    "flotilla_gdt_ptr32:",
    ".short {gdt_limit}",
    ".long {gdt}",
    ".balign 16",
    "flotilla_gdt_ptr64:",
    ".short {gdt_limit}",
    ".quad {gdt}",
    ".popsection",
    // --- 32-bit entry.
    ".pushsection .text.boot, \"ax\"",
    ".code32",
    ".global pvh_entry",
    "pvh_entry:",
    "cli",
    "cld",
    "mov %ebx, %esi", // start_info, kept in ESI until main
    // PVH leaves GDTR undefined: our GDT first, then selectors from it.
    "lgdt flotilla_gdt_ptr32",
    // Shared with the APs (smp.rs), which arrive here with our GDT loaded and ESI = 0.
    ".global flotilla_enter_long_mode32",
    "flotilla_enter_long_mode32:",
    "mov ${kds}, %eax",
    "mov %eax, %ds",
    "mov %eax, %es",
    "mov %eax, %ss",
    "mov %cr4, %eax",
    "or ${cr4_pae}, %eax",
    "mov %eax, %cr4",
    "mov $flotilla_pml4, %eax",
    "mov %eax, %cr3",
    "mov ${efer}, %ecx",
    "rdmsr",
    "or ${efer_lme}, %eax",
    "wrmsr",
    "mov %cr0, %eax",
    "and $~{cr0_clear}, %eax",
    "or ${cr0_set}, %eax",
    "mov %eax, %cr0",
    "ljmp ${kcs}, $flotilla_boot64",
    ".code64",
    "flotilla_boot64:",
    "lgdt flotilla_gdt_ptr64",
    "mov ${kds}, %eax",
    "mov %eax, %ds",
    "mov %eax, %es",
    "mov %eax, %ss",
    "xor %eax, %eax",
    "mov %eax, %fs",
    "mov %eax, %gs",
    "test %esi, %esi",
    "jz flotilla_ap_entry64",
    // Zero .bss (kept small: a few KiB; the linker script aligns both ends to 16).
    "mov $__bss_start, %edi",
    "mov $__bss_end, %ecx",
    "sub %rdi, %rcx",
    "shr $3, %rcx",
    "rep stosq",
    "mov $flotilla_bsp_stack_top, %esp",
    "mov %esi, %edi", // zero-extends: start_info paddr is the first argument
    "call {main}",
    "2:",
    "cli",
    "hlt",
    "jmp 2b",
    ".popsection",
    bsp_stack_size = const BSP_STACK_SIZE,
    gdt_limit = const GDT_LIMIT,
    gdt = sym GDT,
    cr4_pae = const CR4_PAE,
    efer = const EFER_MSR,
    efer_lme = const EFER_LME,
    cr0_clear = const CR0_CLEAR,
    cr0_set = const CR0_SET,
    kcs = const KERNEL_CS,
    kds = const KERNEL_DS,
    main = sym crate::kernel_main,
    options(att_syntax),
);
