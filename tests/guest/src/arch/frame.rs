//! The register state an interrupt or exception saved, as the entry stubs in interrupts.rs lay
//! it out: handlers read it, and user.rs rewrites it to resume the kernel after ring 3.

/// Register state saved by the entry stubs, lowest address first. Handlers may change it: the
/// common stub restores it and IRETQs to whatever `rip`/`cs`/`rsp`/`ss` say.
#[repr(C)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl Frame {
    pub fn in_user_mode(&self) -> bool {
        self.cs & 3 == 3
    }
}
