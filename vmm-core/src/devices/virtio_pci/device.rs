//! What the virtio-pci transport asks of the device behind it (a vhost-user frontend):
//! its ids, queues, features and configuration space, and what it is told in return:
//! the rings the driver laid out (on DRIVER_OK), resets, and a handle that raises the
//! configuration-change interrupt.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// MSI-X "no vector" (virtio 1.2, 4.1.4.3).
pub const NO_VECTOR: u16 = 0xffff;
/// The ISR bit that says the configuration changed.
const ISR_CONFIG: u8 = 2;

/// A queue as the driver laid it out, handed to the device on DRIVER_OK.
pub struct ActiveQueue<'a> {
    pub index: usize,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub kick: &'a EventFd,
    pub call: &'a EventFd,
}

/// Raises the configuration-change interrupt (called from other threads): the transport
/// keeps the state the driver reads (generation, ISR, the vector it chose) here, shared
/// with whoever holds a clone.
#[derive(Clone)]
pub struct ConfigChanged {
    generation: Arc<AtomicU8>,
    vector: Arc<AtomicU16>,
    isr: Arc<AtomicU8>,
    /// The function's MSI-X vector eventfds, indexed by vector number.
    eventfds: Arc<Vec<EventFd>>,
}

impl ConfigChanged {
    pub fn new(eventfds: Arc<Vec<EventFd>>) -> ConfigChanged {
        ConfigChanged {
            generation: Arc::new(AtomicU8::new(0)),
            vector: Arc::new(AtomicU16::new(NO_VECTOR)),
            isr: Arc::new(AtomicU8::new(0)),
            eventfds,
        }
    }

    pub fn notify(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.isr.fetch_or(ISR_CONFIG, Ordering::AcqRel);
        let v = self.vector.load(Ordering::Acquire);
        if let Some(fd) = self.eventfds.get(usize::from(v)) {
            if let Err(e) = fd.write(1) {
                log::warn!("config-change interrupt: {e}");
            }
        }
    }

    /// The configuration generation the driver reads (it changes with every notify).
    pub fn generation(&self) -> u8 {
        self.generation.load(Ordering::Acquire)
    }

    /// The vector the driver chose for configuration changes.
    pub fn vector(&self) -> u16 {
        self.vector.load(Ordering::Acquire)
    }

    pub fn set_vector(&self, vector: u16) {
        self.vector.store(vector, Ordering::Release);
    }

    /// Reads the ISR, which acknowledges it.
    pub fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    /// (generation, vector, ISR), for a migration.
    pub fn save(&self) -> (u8, u16, u8) {
        (
            self.generation.load(Ordering::Acquire),
            self.vector(),
            self.isr.load(Ordering::Acquire),
        )
    }

    pub fn restore(&self, (generation, vector, isr): (u8, u16, u8)) {
        self.generation.store(generation, Ordering::Release);
        self.set_vector(vector);
        self.isr.store(isr, Ordering::Release);
    }

    /// A device reset: no vector, nothing pending in the ISR.
    pub fn reset(&self) {
        self.set_vector(NO_VECTOR);
        self.isr.store(0, Ordering::Release);
    }
}

/// What a virtio device behind the transport provides.
pub trait VirtioDevice: Send {
    /// Virtio device id (`virtio::ids`).
    fn device_type(&self) -> u16;
    fn pci_class(&self) -> u32;
    fn num_queues(&self) -> usize;
    fn queue_max_size(&self) -> u16;
    /// Features offered to the driver.
    fn features(&self) -> u64;
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK.
    fn activate(&mut self, features: u64, queues: &[ActiveQueue]) -> Result<(), String>;
    /// The driver reset the device.
    fn reset(&mut self);
    /// Hands the device the handle it uses when its configuration changes by itself.
    fn set_config_changed(&mut self, _notify: ConfigChanged) {}
    /// The device's own state the guest can see, for a migration.
    fn save_state(&self) -> Vec<u8>;
    fn restore_state(&mut self, state: &[u8]) -> Result<(), String>;
    /// The driver had set DRIVER_OK before a migration: the device continues the rings
    /// from where they are in guest memory, as laid out in `queues`.
    fn resume(&mut self, features: u64, queues: &[ActiveQueue]) -> Result<(), String>;
    /// The function left the bus for good: the device lets go of its backend.
    fn unplug(&mut self) {}
}
