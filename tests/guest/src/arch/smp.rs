//! Application processor start-up: INIT / SIPI / SIPI through the xAPIC for every enabled
//! processor in the MADT, a real-mode trampoline in a free page below 1 MiB, and the APs' Rust
//! entry. The CPU index <-> APIC ID table they fill is cpus.rs (index 0 is the BSP).
//!
//! Path of an AP: trampoline (16-bit, copied low) -> `flotilla_ap_entry32` (32-bit, in the
//! image) -> long mode on the BSP's page tables -> claims its stack from `AP_BOOT_SLOT` ->
//! `ap_main`. The slot is claimed with an atomic exchange, so an AP that starts after the BSP
//! gave up on it finds the slot empty and parks instead of sharing another AP's stack.
//!
//! A CPU that appears later (ACPI CPU hotplug) starts the same way ([`start_later`]), with the
//! next free index of the CPU table (its own stack, TSS and GDT entries) and the trampoline
//! page chosen at boot. An AP's idle loop serves its mailbox (ap_work.rs) whenever woken.

use crate::acpi::Acpi;
use crate::arch::cpus::{self, MAX_CPUS};
use crate::arch::gdt::{GDT, GDT_LIMIT, KERNEL_CS32};
use crate::arch::start_info::BootInfo;
use crate::arch::{ap_work, apic, cpu, gdt, interrupts, pit, topology};
use crate::console;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

pub const AP_STACK_SIZE: usize = 16 * 1024;
/// Preferred trampoline page (any free RAM page below 1 MiB will do).
const PREFERRED_TRAMPOLINE: u64 = 0x8000;
const INIT_DELAY_US: u64 = 10_000;
const SIPI_DELAY_US: u64 = 200;
const AP_ONLINE_TIMEOUT_US: u64 = 1_000_000;

/// Index of the AP allowed to start next (0 = none): taken by the AP with `xchg`.
static AP_BOOT_SLOT: AtomicU64 = AtomicU64::new(0);
/// The trampoline's page (0: there is none), chosen at boot, kept for CPUs started later
/// (nothing else uses RAM below 1 MiB).
static TRAMPOLINE_PAGE: AtomicU64 = AtomicU64::new(0);

global_asm!(
    // --- Real-mode trampoline: copied to a page below 1 MiB; CS = page, IP = 0.
    ".pushsection .rodata.ap_trampoline, \"a\"",
    ".code16",
    ".global flotilla_ap_trampoline",
    "flotilla_ap_trampoline:",
    "cli",
    "cld",
    "mov %cs, %ax",
    "mov %ax, %ds",
    "lgdtl flotilla_ap_gdt_ptr - flotilla_ap_trampoline",
    "mov %cr0, %eax",
    "or $1, %eax",
    "mov %eax, %cr0",
    "ljmpl ${kcs32}, $flotilla_ap_entry32",
    ".balign 8",
    "flotilla_ap_gdt_ptr:",
    ".short {gdt_limit}",
    ".long {gdt}",
    ".global flotilla_ap_trampoline_end",
    "flotilla_ap_trampoline_end:",
    ".code64",
    ".popsection",
    // --- 32-bit part, in the image: joins the BSP's way into long mode (boot.rs).
    ".pushsection .text.boot, \"ax\"",
    ".code32",
    "flotilla_ap_entry32:",
    "xor %esi, %esi", // no start_info: the shared path branches to flotilla_ap_entry64
    "jmp flotilla_enter_long_mode32",
    ".code64",
    ".global flotilla_ap_entry64",
    "flotilla_ap_entry64:",
    "xor %eax, %eax",
    "xchg %rax, {slot}(%rip)",
    "test %rax, %rax",
    "jz 2f",
    "mov %rax, %rdi", // ap_main(index)
    "imul ${ap_stack_size}, %rax, %rax",
    "mov $flotilla_ap_stacks, %esp",
    "add %rax, %rsp", // top of stack `index` (index >= 1: stacks[index - 1])
    "call {ap_main}",
    "2:",
    "cli",
    "hlt",
    "jmp 2b",
    ".popsection",
    ".pushsection .stacks, \"aw\", @nobits",
    ".balign 4096",
    "flotilla_ap_stacks:",
    ".space {ap_stacks_size}",
    ".popsection",
    kcs32 = const KERNEL_CS32,
    gdt_limit = const GDT_LIMIT,
    gdt = sym GDT,
    slot = sym AP_BOOT_SLOT,
    ap_stack_size = const AP_STACK_SIZE,
    ap_stacks_size = const AP_STACK_SIZE * (MAX_CPUS - 1),
    ap_main = sym ap_main,
    options(att_syntax),
);

extern "C" {
    static flotilla_ap_trampoline: u8;
    static flotilla_ap_trampoline_end: u8;
}

extern "C" fn ap_main(index: u64) -> ! {
    let index = index as usize;
    gdt::init_cpu(index);
    interrupts::load();
    apic::enable();
    topology::check_this_cpu(index);
    cpus::mark_online(index);
    loop {
        cpu::disable_interrupts();
        ap_work::serve(index);
        cpu::enable_interrupts_and_halt();
    }
}

/// Picks the trampoline page: free RAM below 1 MiB, 0x8000 if possible, never page 0.
fn trampoline_page(boot: &BootInfo, len: u64) -> Option<u64> {
    let fits = |page: u64| boot.is_free_ram(page, page + len.max(4096));
    if fits(PREFERRED_TRAMPOLINE) {
        return Some(PREFERRED_TRAMPOLINE);
    }
    (0x1000..0x9_f000).step_by(4096).find(|&page| fits(page))
}

/// Starts every enabled AP in the MADT; returns the number of CPUs online (BSP included).
pub fn start_aps(acpi: &Acpi, boot: &BootInfo) -> u32 {
    let bsp_id = apic::id();
    // APIC IDs by CPU index; index 0 (the BSP) is unused here.
    let mut apic_ids = [0u32; MAX_CPUS];
    let mut count = 0;
    for entry in acpi.madt.cpus() {
        if !entry.enabled || entry.apic_id == bsp_id {
            continue;
        }
        if entry.apic_id > 0xfe {
            console::error("cpu apic_id=")
                .dec(u64::from(entry.apic_id))
                .s(" cannot be started in xAPIC mode")
                .end();
            continue;
        }
        if count + 1 >= MAX_CPUS {
            console::error("cpu apic_id=")
                .dec(u64::from(entry.apic_id))
                .s(" exceeds MAX_CPUS=")
                .dec(MAX_CPUS as u64)
                .end();
            continue;
        }
        count += 1;
        apic_ids[count] = entry.apic_id;
        cpus::assign(count, entry.apic_id);
    }
    let page = trampoline_page(boot, trampoline().1);
    TRAMPOLINE_PAGE.store(page.unwrap_or(0), Ordering::Relaxed);
    if count == 0 {
        return cpus::online_count();
    }
    let Some(page) = page else {
        console::error("no free RAM page below 1 MiB for the AP trampoline").end();
        return cpus::online_count();
    };
    copy_trampoline(page);

    // INIT every AP, one wait, then SIPI them one at a time.
    for &apic_id in &apic_ids[1..=count] {
        if !apic::send_init(apic_id) {
            console::error("INIT to apic_id=")
                .dec(u64::from(apic_id))
                .s(" not delivered")
                .end();
        }
    }
    pit::delay_us(INIT_DELAY_US);
    let vector = (page >> 12) as u8;
    for (index, &apic_id) in apic_ids.iter().enumerate().take(count + 1).skip(1) {
        start_one(index, apic_id, vector);
    }
    cpus::online_count()
}

/// The trampoline's address in the image and its length.
fn trampoline() -> (u64, u64) {
    let (start, end) = (
        &raw const flotilla_ap_trampoline as u64,
        &raw const flotilla_ap_trampoline_end as u64,
    );
    (start, end - start)
}

fn copy_trampoline(page: u64) {
    let (start, len) = trampoline();
    // SAFETY: `page` is free RAM (memory map) below 1 MiB, identity mapped, kept for the
    // trampoline; the source is the trampoline in .rodata.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, page as usize as *mut u8, len as usize);
    }
}

/// Starts the CPU with `apic_id` now (one that appeared after boot): INIT, SIPI, SIPI with
/// the next free index. Its index once online; None after an error line.
pub fn start_later(apic_id: u32) -> Option<usize> {
    let fail = |what: &str| {
        console::error("cpu apic_id=")
            .dec(u64::from(apic_id))
            .s(" ")
            .s(what)
            .end();
        None
    };
    if apic_id > 0xfe {
        return fail("cannot be started in xAPIC mode");
    }
    if apic::in_x2apic_mode() {
        return fail("cannot be started: the BSP's APIC is in x2APIC mode");
    }
    let page = TRAMPOLINE_PAGE.load(Ordering::Relaxed);
    if page == 0 {
        return fail("cannot be started: no free RAM page below 1 MiB for the AP trampoline");
    }
    let Some(index) = cpus::free_index() else {
        console::error("cpu apic_id=")
            .dec(u64::from(apic_id))
            .s(" exceeds MAX_CPUS=")
            .dec(MAX_CPUS as u64)
            .end();
        return None;
    };
    // Written again: the page is ours, but a fresh copy costs nothing.
    copy_trampoline(page);
    cpus::assign(index, apic_id);
    if !apic::send_init(apic_id) {
        console::error("INIT to apic_id=")
            .dec(u64::from(apic_id))
            .s(" not delivered")
            .end();
    }
    pit::delay_us(INIT_DELAY_US);
    start_one(index, apic_id, (page >> 12) as u8);
    cpus::is_online(index).then_some(index)
}

fn start_one(index: usize, apic_id: u32, vector: u8) {
    AP_BOOT_SLOT.store(index as u64, Ordering::Release);
    let claimed = || AP_BOOT_SLOT.load(Ordering::Acquire) != index as u64;
    apic::send_startup(apic_id, vector);
    // The second SIPI only if the first did not take (it is ignored by a running CPU anyway).
    if !pit::wait_until(SIPI_DELAY_US, claimed) {
        apic::send_startup(apic_id, vector);
    }
    if pit::wait_until(AP_ONLINE_TIMEOUT_US, || cpus::is_online(index)) {
        return;
    }
    // Revoke the slot; if the AP had taken it, it is running but slow (and may still come
    // online later, under its index).
    if AP_BOOT_SLOT.swap(0, Ordering::AcqRel) == index as u64 {
        console::error("cpu apic_id=")
            .dec(u64::from(apic_id))
            .s(" did not start")
            .end();
        cpus::unassign(index);
    } else {
        console::error("cpu apic_id=")
            .dec(u64::from(apic_id))
            .s(" started but did not come online in time")
            .end();
    }
}
