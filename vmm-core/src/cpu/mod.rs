//! Per-vCPU architectural setup: CPUID topology, boot MSRs, and the register state each
//! boot protocol starts a vCPU in, and the whole state a migration carries (`state`).

pub mod boot_regs;
pub mod cpuid;
pub mod msrs;
pub mod state;
