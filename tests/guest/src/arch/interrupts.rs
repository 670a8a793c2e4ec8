//! The IDT, one entry stub per vector, and the common dispatcher: CPU exceptions (ring 0 ->
//! `GUEST PANIC` and halt, but for the #GP of an rdmsr [`rdmsr_checked`] asked for; ring 3
//! -> handed to user.rs), the ACPI SCI, the local APIC timer
//! (a wake-up source for timed halts), the wake-up IPI (ap_work.rs), the counted vectors
//! handed out by [`alloc_vector`] (MSI-X), the APIC's spurious vector, and anything
//! unexpected (error line, EOI, carry on).
//! The fixed vectors are in vectors.rs, the saved registers in frame.rs.

use crate::acpi::power;
use crate::arch::frame::Frame;
use crate::arch::gdt::KERNEL_CS;
use crate::arch::vectors::{SCI_VECTOR, SPURIOUS_VECTOR, TIMER_VECTOR, WAKE_VECTOR};
use crate::arch::{apic, cpu, user};
use crate::console;
use crate::sync::Global;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

const GENERAL_PROTECTION: u64 = 13;
/// The rdmsr instruction's bytes.
const RDMSR: [u8; 2] = [0x0f, 0x32];
/// Set by [`rdmsr_checked`] around its rdmsr: a #GP on an rdmsr is then that one's.
static RDMSR_ARMED: AtomicBool = AtomicBool::new(false);
/// Set by the #GP handler when it skipped the armed rdmsr.
static RDMSR_REFUSED: AtomicBool = AtomicBool::new(false);

/// MSR `msr`, or None when the CPU refuses to read it (#GP: an MSR the vCPU lacks). On the
/// BSP only, with nothing else reading MSRs meanwhile.
pub fn rdmsr_checked(msr: u32) -> Option<u64> {
    RDMSR_REFUSED.store(false, Ordering::SeqCst);
    RDMSR_ARMED.store(true, Ordering::SeqCst);
    // SAFETY: a #GP from this rdmsr is caught (dispatch skips the instruction); rdmsr
    // writes only EAX and EDX.
    let value = unsafe { cpu::rdmsr(msr) };
    RDMSR_ARMED.store(false, Ordering::SeqCst);
    (!RDMSR_REFUSED.load(Ordering::SeqCst)).then_some(value)
}

/// Whether `frame` is the #GP of the rdmsr [`rdmsr_checked`] armed; if so, execution goes
/// on after it.
fn skip_armed_rdmsr(frame: &mut Frame) -> bool {
    if frame.vector != GENERAL_PROTECTION || !RDMSR_ARMED.load(Ordering::SeqCst) {
        return false;
    }
    // SAFETY: rip is the faulting ring-0 instruction, in the identity-mapped kernel image.
    let bytes = unsafe { core::ptr::read_volatile(frame.rip as *const [u8; 2]) };
    if bytes != RDMSR {
        return false;
    }
    frame.rip += RDMSR.len() as u64;
    RDMSR_REFUSED.store(true, Ordering::SeqCst);
    true
}

/// Vectors [`alloc_vector`] hands out (gates filled on allocation); each interrupt on one is
/// counted and acknowledged.
const COUNTED_FIRST: u8 = 0x40;
const COUNTED_END: u8 = 0xf0;
const COUNTED: usize = (COUNTED_END - COUNTED_FIRST) as usize;
/// Distance between the per-vector entry stubs generated below.
const STUB_SIZE: u64 = 16;
/// Gates filled at boot: exceptions, the remapped PIC range, the SCI and a few spare vectors,
/// plus the APIC spurious vector. Filling all 256 costs milliseconds in emulated ring 0; an
/// interrupt on a vector left out arrives as #NP (exception 11), which is still reported.
const FILLED_VECTORS: usize = 0x40;
const _: () = assert!((SCI_VECTOR as usize) < FILLED_VECTORS);
const _: () = assert!((TIMER_VECTOR as usize) < FILLED_VECTORS);
const _: () = assert!((WAKE_VECTOR as usize) < FILLED_VECTORS);
const _: () = assert!(COUNTED_FIRST as usize >= FILLED_VECTORS);

static NEXT_COUNTED: AtomicU8 = AtomicU8::new(COUNTED_FIRST);
static COUNTS: [AtomicU32; COUNTED] = [const { AtomicU32::new(0) }; COUNTED];

// 256 stubs, 16 bytes apart: push a zero error code where the CPU pushes none, push the vector,
// jump to the common path. Error-code vectors: 8, 10-14, 17, 21, 29, 30.
global_asm!(
    ".pushsection .text.interrupts, \"ax\"",
    ".balign 16",
    ".global flotilla_interrupt_stubs",
    "flotilla_interrupt_stubs:",
    ".set flotilla_vec, 0",
    ".rept 256",
    ".balign 16",
    ".if (flotilla_vec == 8) || ((flotilla_vec >= 10) && (flotilla_vec <= 14)) || (flotilla_vec == 17) || (flotilla_vec == 21) || (flotilla_vec == 29) || (flotilla_vec == 30)",
    ".else",
    "pushq $0",
    ".endif",
    "pushq $flotilla_vec",
    "jmp flotilla_interrupt_common",
    ".set flotilla_vec, flotilla_vec + 1",
    ".endr",
    "flotilla_interrupt_common:",
    "push %rax",
    "push %rbx",
    "push %rcx",
    "push %rdx",
    "push %rsi",
    "push %rdi",
    "push %rbp",
    "push %r8",
    "push %r9",
    "push %r10",
    "push %r11",
    "push %r12",
    "push %r13",
    "push %r14",
    "push %r15",
    "mov %rsp, %rdi", // &mut Frame; 16-byte aligned (22 quadwords pushed onto an aligned stack)
    "cld",
    "call {dispatch}",
    "pop %r15",
    "pop %r14",
    "pop %r13",
    "pop %r12",
    "pop %r11",
    "pop %r10",
    "pop %r9",
    "pop %r8",
    "pop %rbp",
    "pop %rdi",
    "pop %rsi",
    "pop %rdx",
    "pop %rcx",
    "pop %rbx",
    "pop %rax",
    "add $16, %rsp", // vector and error code
    "iretq",
    ".popsection",
    dispatch = sym dispatch,
    options(att_syntax),
);

extern "C" {
    static flotilla_interrupt_stubs: u8;
}

/// 256 16-byte gates, as pairs of quadwords (built with plain shifts: cheap when emulated).
#[repr(C, align(16))]
struct Idt([[u64; 2]; 256]);

static IDT: Global<Idt> = Global::new(Idt([[0; 2]; 256]));

/// Present, DPL 0, 64-bit interrupt gate (IF cleared on entry).
const GATE_ATTRIBUTES: u64 = 0x8e;

/// Fills the IDT (BSP, once) and loads it.
pub fn init() {
    let stubs = &raw const flotilla_interrupt_stubs as u64;
    // SAFETY: single-threaded boot, before any CPU loaded the IDT.
    let idt = unsafe { IDT.get_mut() };
    let vectors = (0..FILLED_VECTORS).chain(core::iter::once(usize::from(SPURIOUS_VECTOR)));
    for vector in vectors {
        idt.0[vector] = gate(stubs, vector);
    }
    load();
}

fn gate(stubs: u64, vector: usize) -> [u64; 2] {
    let handler = stubs + vector as u64 * STUB_SIZE;
    [
        (handler & 0xffff)
            | (u64::from(KERNEL_CS) << 16)
            | (GATE_ATTRIBUTES << 40)
            | (((handler >> 16) & 0xffff) << 48),
        handler >> 32,
    ]
}

/// A fresh counted vector with its gate filled (BSP, ring 0); None when all are taken.
pub fn alloc_vector() -> Option<u8> {
    let vector = NEXT_COUNTED.load(Ordering::Relaxed);
    if vector >= COUNTED_END {
        return None;
    }
    NEXT_COUNTED.store(vector + 1, Ordering::Relaxed);
    let stubs = &raw const flotilla_interrupt_stubs as u64;
    let idt = IDT.as_ptr();
    // SAFETY: the gate of a vector nobody sends yet; the IDT stays loaded on every CPU and
    // other CPUs only read gates of vectors they receive.
    unsafe { (*idt).0[usize::from(vector)] = gate(stubs, usize::from(vector)) };
    Some(vector)
}

/// `count` consecutive fresh counted vectors with their gates filled (BSP, ring 0): the
/// first one, or None when not that many are left.
pub fn alloc_vectors(count: u8) -> Option<u8> {
    let first = NEXT_COUNTED.load(Ordering::Relaxed);
    if count == 0 || u16::from(first) + u16::from(count) > u16::from(COUNTED_END) {
        return None;
    }
    for _ in 0..count {
        alloc_vector()?;
    }
    Some(first)
}

/// How many times the counted `vector` arrived (0 for other vectors).
pub fn count(vector: u8) -> u32 {
    vector
        .checked_sub(COUNTED_FIRST)
        .and_then(|i| COUNTS.get(usize::from(i)))
        .map_or(0, |c| c.load(Ordering::Acquire))
}

/// Loads the (already filled) IDT on this CPU.
pub fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: IDT.as_ptr() as u64,
    };
    // SAFETY: the IDT is static and its gates point at the stubs above.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) }
}

extern "C" fn dispatch(frame: &mut Frame) {
    match frame.vector {
        0..=31 => {
            if frame.in_user_mode() && user::handle_exception(frame) {
                return;
            }
            if !frame.in_user_mode() && skip_armed_rdmsr(frame) {
                return;
            }
            exception_panic(frame);
        }
        v if v == u64::from(SCI_VECTOR) => power::sci_interrupt(),
        // Both only wake a halted CPU.
        v if v == u64::from(TIMER_VECTOR) || v == u64::from(WAKE_VECTOR) => apic::eoi(),
        v if (u64::from(COUNTED_FIRST)..u64::from(COUNTED_END)).contains(&v) => {
            COUNTS[(v - u64::from(COUNTED_FIRST)) as usize].fetch_add(1, Ordering::AcqRel);
            apic::eoi();
        }
        v if v == u64::from(SPURIOUS_VECTOR) => {}
        v => {
            console::error("unexpected interrupt vector=").dec(v).end();
            apic::eoi();
        }
    }
}

/// `GUEST PANIC exception=<vector> error=<hex> rip=<hex> cr2=<hex>`, then this CPU halts.
fn exception_panic(frame: &Frame) -> ! {
    console::line_forced("GUEST PANIC exception=")
        .dec(frame.vector)
        .s(" error=")
        .hex(frame.error)
        .s(" rip=")
        .hex(frame.rip)
        .s(" cr2=")
        .hex(cpu::read_cr2())
        .end();
    cpu::halt_forever()
}
