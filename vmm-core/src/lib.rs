//! vmm-core: the process that owns the KVM VM. It holds guest RAM (a memfd, later shared
//! with the device daemons by fd), runs one thread per vCPU, emulates the platform
//! devices (UART, ACPI PM, reset), builds the ACPI tables and loads the kernel (Linux
//! bzImage or PVH ELF). Block and network data never pass through it.
//!
//! `builder` assembles a `Vm` (`vm`) from its parts; `runner` runs it (`Vm::run`).

pub mod attach;
pub mod boot;
pub mod builder;
pub mod control;
pub mod cpu;
pub mod cpu_add;
pub mod device_memory;
pub mod devices;
pub mod dimms;
pub mod dirty_log;
pub mod dump;
pub mod error;
pub mod events;
pub mod hotplug;
pub mod input;
pub mod interrupts;
pub mod layout;
pub mod memory;
pub mod migration;
pub mod postcopy;
pub mod runner;
pub mod seccomp;
pub mod snapshot;
#[cfg(test)]
pub(crate) mod test_kvm;
pub mod vcpu;
pub mod vhost_user;
pub mod vm;

pub use attach::{BackendConnection, DiskConnection, NicConnection};
pub use builder::{build_vm, VmConfig};
pub use error::VmError;
pub use runner::VmExit;
pub use vm::{PowerButton, Vm};
