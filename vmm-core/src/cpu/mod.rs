//! Per-vCPU architectural setup: the CPU model (`model`), CPUID topology, boot MSRs, and the register state each
//! boot protocol starts a vCPU in, and the whole state a migration carries (`state`); which
//! vCPUs a VM may have and has (`layout`).

pub mod boot_regs;
pub mod control_bits;
pub mod cpuid;
pub mod layout;
pub mod model;
pub mod msrs;
pub mod state;
