//! PCI: configuration space access (config.rs), bus enumeration (scan.rs), BARs (bar.rs),
//! and the capability list with MSI-X (capabilities.rs).
//!
//! Configuration space goes through ECAM when the ACPI MCFG table describes it (segment 0),
//! else through the legacy ports 0xCF8/0xCFC. The scan covers bus 0 and the secondary buses
//! of the bridges found there (as numbered by firmware or the VMM; nothing is renumbered).
//! BARs are taken as assigned (by firmware or the VMM): they are read, never sized or moved,
//! and a memory BAR of 0 is reported as an error. Everything here runs in ring 0, where each
//! configuration access is a VM exit or two, so the walks read whole dwords.

pub mod bar;
pub mod capabilities;
pub mod config;
pub mod scan;
