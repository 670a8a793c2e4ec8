//! The GDT (kernel and user segments, one 64-bit TSS per CPU) and the TSSs themselves. The TSS
//! gives ring 3 -> ring 0 transitions their stack (RSP0) and, through its I/O permission
//! bitmap, lets ring 3 use I/O ports: kvm-pvm forces IOPL to 0, so the bitmap is the only way.

use crate::arch::cpus::MAX_CPUS;
use crate::sync::Global;
use core::arch::{asm, global_asm};
use core::mem::{offset_of, size_of};

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
/// 32-bit code segment for the PVH entry and the AP trampoline on their way to long mode.
pub const KERNEL_CS32: u16 = 0x18;
pub const USER_DS: u16 = 0x20 | 3;
pub const USER_CS: u16 = 0x28 | 3;
const FIRST_TSS_SLOT: usize = 6;
const GDT_LEN: usize = FIRST_TSS_SLOT + 2 * MAX_CPUS;
pub const GDT_LIMIT: u16 = (GDT_LEN * 8 - 1) as u16;

/// Stack for exceptions and interrupts taken in ring 3 (TSS.RSP0), one per CPU.
pub const TRAP_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
pub struct Gdt([u64; GDT_LEN]);

const fn initial_gdt() -> Gdt {
    let mut gdt = [0u64; GDT_LEN];
    // Flat segments, accessed bit preset so the CPU never writes the GDT.
    gdt[1] = 0x00af_9b00_0000_ffff; // 0x08 kernel code, 64-bit
    gdt[2] = 0x00cf_9300_0000_ffff; // 0x10 kernel data
    gdt[3] = 0x00cf_9b00_0000_ffff; // 0x18 kernel code, 32-bit
    gdt[4] = 0x00cf_f300_0000_ffff; // 0x20 user data (DPL 3)
    gdt[5] = 0x00af_fb00_0000_ffff; // 0x28 user code, 64-bit (DPL 3)
    Gdt(gdt)
}

/// Referenced by the boot and AP entry code (boot.rs, smp.rs) through `sym`.
pub static GDT: Global<Gdt> = Global::new(initial_gdt());

#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

/// All TSSs followed by ONE shared I/O permission bitmap: each TSS's iomap_base points (within
/// its 64 KiB reach) at the same bitmap, which saves 8 KiB per CPU. All bits clear = ring 3 may
/// use every port; the 0xff byte after the bitmap is required by the architecture.
#[repr(C)]
struct TssBlock {
    tss: [Tss; MAX_CPUS],
    io_bitmap: [u8; 8192],
    terminator: u8,
}

const TSS_SIZE: usize = size_of::<Tss>();
const _: () = assert!(TSS_SIZE == 104);
const _: () = assert!(offset_of!(TssBlock, io_bitmap) <= 0xffff);

const fn initial_tss_block() -> TssBlock {
    let empty = Tss {
        reserved0: 0,
        rsp: [0; 3],
        reserved1: 0,
        ist: [0; 7],
        reserved2: 0,
        reserved3: 0,
        iomap_base: 0,
    };
    let mut tss = [empty; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        tss[i].iomap_base = (offset_of!(TssBlock, io_bitmap) - i * TSS_SIZE) as u16;
        i += 1;
    }
    TssBlock {
        tss,
        io_bitmap: [0; 8192],
        terminator: 0xff,
    }
}

static TSS_BLOCK: Global<TssBlock> = Global::new(initial_tss_block());

global_asm!(
    ".pushsection .stacks, \"aw\", @nobits",
    ".balign 4096",
    ".global flotilla_trap_stacks",
    "flotilla_trap_stacks:",
    ".space {size}",
    ".popsection",
    size = const TRAP_STACK_SIZE * MAX_CPUS,
);

extern "C" {
    static flotilla_trap_stacks: u8;
}

pub fn trap_stack_top(index: usize) -> u64 {
    let base = &raw const flotilla_trap_stacks as u64;
    base + ((index + 1) * TRAP_STACK_SIZE) as u64
}

/// Installs and loads CPU `index`'s TSS (RSP0 = its trap stack). Each CPU calls this for its
/// own index only, so the writes never race.
pub fn init_cpu(index: usize) {
    if index >= MAX_CPUS {
        return;
    }
    let block = TSS_BLOCK.as_ptr();
    // SAFETY: the TSS and GDT slots of `index` are only touched by CPU `index`.
    unsafe {
        let tss = core::ptr::addr_of_mut!((*block).tss[index]);
        core::ptr::addr_of_mut!((*tss).rsp).write_unaligned([trap_stack_top(index), 0, 0]);
        let base = tss as u64;
        let limit = (offset_of!(TssBlock, terminator) - index * TSS_SIZE) as u64;
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40) // present, DPL 0, type 9 = available 64-bit TSS
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        let high = base >> 32;
        let slot = FIRST_TSS_SLOT + 2 * index;
        let gdt = GDT.as_ptr();
        (*gdt).0[slot] = low;
        (*gdt).0[slot + 1] = high;
        let selector = (slot * 8) as u16;
        asm!("ltr {0:x}", in(reg) selector, options(nostack, preserves_flags));
    }
}
