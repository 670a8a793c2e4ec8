//! The virtio 1.x PCI transport (modern only). `transport` is the PCI function (its
//! capabilities, common configuration and BAR 0), `msix` its MSI-X table, and `device`
//! the contract with the device behind it.

pub mod device;
pub mod msix;
pub mod transport;

pub use device::{ActiveQueue, ConfigChanged, VirtioDevice};
pub use transport::{VirtioPci, BAR_SIZE};
