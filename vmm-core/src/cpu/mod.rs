//! Per-vCPU architectural setup: CPUID topology, boot MSRs, and the register state each
//! boot protocol starts a vCPU in.

pub mod boot_regs;
pub mod cpuid;
pub mod msrs;
