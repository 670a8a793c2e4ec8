//! Ring 3: runs a kernel function unprivileged (natively, even where ring 0 is emulated) and
//! returns to the caller. kvm-pvm supports neither `int n` nor SYSCALL from ring 3, so the way
//! back is an exception: the function returns into a `ud2` at a known address (the exit gate)
//! and the #UD handler resumes the kernel after the call. Any other exception taken in ring 3
//! ends the call with [`UserFault`] instead.
//!
//! All memory is mapped user-accessible and the TSS I/O bitmap allows every port, so the
//! function may read kernel data and do port or MMIO I/O; it must not use privileged
//! instructions (they fault and come back as `UserFault`).

use crate::arch::cpus::{self, MAX_CPUS};
use crate::arch::frame::Frame;
use crate::arch::gdt::{USER_CS, USER_DS};
use crate::sync::Global;
use core::arch::global_asm;

pub const USER_STACK_SIZE: usize = 32 * 1024;
const INVALID_OPCODE: u64 = 6;

/// An exception taken in ring 3 other than the exit gate.
#[derive(Clone, Copy, Debug, Default)]
pub struct UserFault {
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cr2: u64,
}

impl UserFault {
    /// `GUEST ERROR <area>: <what> faulted in ring 3: exception=V rip=0x.. cr2=0x..`.
    pub fn report(&self, area: &str, what: &str) {
        crate::console::error(area)
            .s(": ")
            .s(what)
            .s(" faulted in ring 3: exception=")
            .dec(self.vector)
            .s(" rip=")
            .hex(self.rip)
            .s(" cr2=")
            .hex(self.cr2)
            .end();
    }
}

/// Per-CPU state of an active `run`.
#[derive(Clone, Copy)]
struct Context {
    active: bool,
    /// Kernel RSP inside `flotilla_user_enter`, where the callee-saved registers are.
    kernel_rsp: u64,
    fault: UserFault,
}

const IDLE: Context = Context {
    active: false,
    kernel_rsp: 0,
    fault: UserFault {
        vector: 0,
        error: 0,
        rip: 0,
        cr2: 0,
    },
};

static CONTEXTS: [Global<Context>; MAX_CPUS] = [const { Global::new(IDLE) }; MAX_CPUS];

#[repr(C)]
struct EnterResult {
    value: u64,
    /// 0: returned through the exit gate; 1: faulted.
    status: u64,
}

global_asm!(
    ".pushsection .stacks, \"aw\", @nobits",
    ".balign 4096",
    ".global flotilla_user_stacks",
    "flotilla_user_stacks:",
    ".space {stacks_size}",
    ".popsection",
    ".pushsection .text.user, \"ax\"",
    // fn(f = rdi, arg = rsi, user_rsp = rdx, kernel_rsp_slot = rcx) -> EnterResult (rax, rdx)
    ".global flotilla_user_enter",
    "flotilla_user_enter:",
    "push %rbx",
    "push %rbp",
    "push %r12",
    "push %r13",
    "push %r14",
    "push %r15",
    "pushfq",
    "mov %rsp, (%rcx)",
    // Ring 3 gets only the caller's IF (IOPL stays 0).
    "mov (%rsp), %rax",
    "and $0x200, %eax",
    "or $0x2, %eax",
    "pushq ${user_ds}", // SS
    "push %rdx",        // RSP
    "push %rax",        // RFLAGS
    "pushq ${user_cs}", // CS
    "pushq $flotilla_user_trampoline",
    "mov %rdi, %rax",
    "mov %rsi, %rdi",
    // Leave no kernel values in registers.
    "xor %ebx, %ebx",
    "xor %ecx, %ecx",
    "xor %edx, %edx",
    "xor %esi, %esi",
    "xor %ebp, %ebp",
    "xor %r8d, %r8d",
    "xor %r9d, %r9d",
    "xor %r10d, %r10d",
    "xor %r11d, %r11d",
    "xor %r12d, %r12d",
    "xor %r13d, %r13d",
    "xor %r14d, %r14d",
    "xor %r15d, %r15d",
    "iretq",
    // Ring 3 from here: call the function, then hit the exit gate with the result in RAX.
    "flotilla_user_trampoline:",
    "call *%rax",
    ".global flotilla_user_exit_gate",
    "flotilla_user_exit_gate:",
    "ud2",
    // Ring 0 again: the #UD (or fault) handler IRETQs here on the kernel stack saved above,
    // with RAX = value and RDX = status.
    ".global flotilla_user_resume",
    "flotilla_user_resume:",
    "popfq",
    "pop %r15",
    "pop %r14",
    "pop %r13",
    "pop %r12",
    "pop %rbp",
    "pop %rbx",
    "ret",
    ".popsection",
    stacks_size = const USER_STACK_SIZE * MAX_CPUS,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    options(att_syntax),
);

extern "C" {
    static flotilla_user_stacks: u8;
    static flotilla_user_exit_gate: u8;
    static flotilla_user_resume: u8;
    fn flotilla_user_enter(
        f: u64,
        arg: u64,
        user_rsp: u64,
        kernel_rsp_slot: *mut u64,
    ) -> EnterResult;
}

fn user_stack_top(cpu: usize) -> u64 {
    let base = &raw const flotilla_user_stacks as u64;
    base + ((cpu + 1) * USER_STACK_SIZE) as u64
}

/// Runs `f(arg)` in ring 3 on this CPU and returns its result, or the fault that ended it.
/// Interrupts stay as the caller had them (taken in ring 3 they are handled and resumed).
/// Not reentrant: one call per CPU at a time, not from interrupt handlers.
pub fn run(f: fn(u64) -> u64, arg: u64) -> Result<u64, UserFault> {
    let cpu = cpus::current_cpu();
    let context = CONTEXTS[cpu].as_ptr();
    // SAFETY: CONTEXTS[cpu] is only used by this CPU: here and in its exception handler,
    // which runs only while the call below is in ring 3.
    unsafe {
        (*context).active = true;
        let result = flotilla_user_enter(
            f as usize as u64,
            arg,
            user_stack_top(cpu),
            core::ptr::addr_of_mut!((*context).kernel_rsp),
        );
        (*context).active = false;
        if result.status == 0 {
            Ok(result.value)
        } else {
            Err((*context).fault)
        }
    }
}

/// Runs the closure `f` in ring 3 on this CPU (as [`run`] does for a plain function). The
/// closure may capture anything: all memory is mapped user-accessible.
pub fn call<F: FnMut() -> u64>(f: &mut F) -> Result<u64, UserFault> {
    fn trampoline<F: FnMut() -> u64>(arg: u64) -> u64 {
        // SAFETY: `arg` is the `&mut F` that `call` passed; it outlives the ring-3 section.
        let f = unsafe { &mut *(arg as usize as *mut F) };
        f()
    }
    run(trampoline::<F>, f as *mut F as u64)
}

/// [`call`], with a fault reported as `GUEST ERROR <area>: <what> faulted in ring 3 ...`:
/// the closure's value, or None after that line.
pub fn call_reported<F: FnMut() -> u64>(area: &str, what: &str, f: &mut F) -> Option<u64> {
    match call(f) {
        Ok(value) => Some(value),
        Err(fault) => {
            fault.report(area, what);
            None
        }
    }
}

/// Called for every exception taken in ring 3. Rewrites `frame` so that the IRETQ resumes
/// the kernel in `run` (exit gate: Ok; anything else: the fault). Returns false if no `run`
/// is active on this CPU (then it is an ordinary panic).
pub fn handle_exception(frame: &mut Frame) -> bool {
    let cpu = cpus::current_cpu();
    let context = CONTEXTS[cpu].as_ptr();
    // SAFETY: see `run`; this CPU is inside `run`'s ring-3 section.
    unsafe {
        if !(*context).active {
            return false;
        }
        let gate = &raw const flotilla_user_exit_gate as u64;
        if frame.vector == INVALID_OPCODE && frame.rip == gate {
            frame.rdx = 0;
        } else {
            (*context).fault = UserFault {
                vector: frame.vector,
                error: frame.error,
                rip: frame.rip,
                cr2: crate::arch::cpu::read_cr2(),
            };
            frame.rdx = 1;
        }
        frame.rip = &raw const flotilla_user_resume as u64;
        frame.cs = u64::from(crate::arch::gdt::KERNEL_CS);
        frame.ss = u64::from(crate::arch::gdt::KERNEL_DS);
        frame.rsp = (*context).kernel_rsp;
        frame.rflags = 0x2; // interrupts stay off until `popfq` restores the caller's flags
    }
    true
}
