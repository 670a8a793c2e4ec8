//! Platform devices emulated in vmm-core: the UART, the ACPI PM and GPE blocks (sharing
//! the SCI), the PCI root with its hotplug controller, ACPI CPU hotplug's registers
//! (`cpu_hotplug`) and memory hotplug's (`memory_hotplug`), and the reset paths (i8042 and the reset control register), plus the
//! buses that route vCPU port and MMIO exits to them; the virtio-pci transport, and the
//! one virtio device vmm-core serves itself, the balloon (`virtio_balloon`). Interrupt
//! controllers and the PIT are KVM's.

pub mod acpi_pm;
pub mod bus;
pub mod cpu_hotplug;
pub mod gpe;
pub mod i8042;
pub mod memory_hotplug;
pub mod pci;
pub mod reset_control;
pub mod sci;
pub mod serial;
pub mod state;
pub mod virtio_balloon;
pub mod virtio_pci;

/// A level-triggered interrupt line into the guest's interrupt controllers.
pub trait IrqLine: Send {
    fn set_level(&self, high: bool);
    /// The level a restore left the line at (the interrupt controllers' state carries
    /// it): lines that several devices share note it, nothing is driven.
    fn restore_level(&self, _high: bool) {}
}
