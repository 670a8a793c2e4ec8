//! Platform devices emulated in vmm-core: the UART, the ACPI PM block, and the reset
//! paths (i8042 and the reset control register), plus the buses that route vCPU port
//! and MMIO exits to them. Interrupt controllers and the PIT are KVM's.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod pci;
pub mod reset_control;
pub mod serial;
pub mod state;
pub mod virtio_pci;

/// A level-triggered interrupt line into the guest's interrupt controllers.
pub trait IrqLine: Send {
    fn set_level(&self, high: bool);
}
