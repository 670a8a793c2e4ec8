//! The virtio 1.x PCI transport (modern only): capabilities describing the common,
//! notify, ISR and device regions of BAR 0, MSI-X, and the common configuration the
//! driver uses to negotiate features and lay out queues. Queue kicks are ioeventfds
//! registered with KVM and interrupts are irqfds on MSI routes, so once the device is
//! active no vmm-core thread sits on the data path; the device behind the transport
//! (a vhost-user backend) gets the eventfds when the driver sets DRIVER_OK.

use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio::features::VERSION_1;
use virtio::status::{DRIVER_OK, FEATURES_OK, NEEDS_RESET};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use serde::{Deserialize, Serialize};

use super::device::{ActiveQueue, ConfigChanged, VirtioDevice, NO_VECTOR};
use super::msix::MsixTable;
use crate::devices::pci::config::{Bar, Ids, PciConfig};
use crate::devices::pci::PciFunction;
use crate::devices::state;
use crate::interrupts::MsiRouter;

/// PCI ids of a modern virtio device (virtio 1.2, 4.1.2.1): the vendor, and the device
/// id as this base plus the virtio device id.
const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;

// BAR 0 layout.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
pub(crate) const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u64 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;

// Virtio PCI capability types.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

// Device status bits (virtio 1.2, 2.1).

#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct QueueState {
    size: u16,
    enabled: bool,
    vector: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueState {
    /// A queue after reset: its size reads as the device's maximum (virtio 1.x 4.1.4.3),
    /// which the driver may keep or lower.
    fn fresh(max_size: u16) -> QueueState {
        QueueState {
            size: max_size,
            vector: NO_VECTOR,
            ..Default::default()
        }
    }
}

pub struct VirtioPci {
    config: PciConfig,
    device: Box<dyn VirtioDevice>,
    msix_cap: usize,
    msix: MsixTable,
    vm: Arc<VmFd>,
    // Common configuration.
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueState>,
    kicks: Vec<EventFd>,
    /// BAR 0 address the kick ioeventfds are registered at.
    kicks_at: Option<u64>,
    config_changed: ConfigChanged,
    activated: bool,
    /// The device's qdev id ("" without one).
    qdev_id: String,
    /// Off the bus for good: nothing is registered with KVM again.
    unplugged: bool,
}

/// Where queue `q`'s kicks land for BAR 0 at `bar`.
fn kick_at(bar: u64, q: usize) -> IoEventAddress {
    IoEventAddress::Mmio(bar + NOTIFY + q as u64 * NOTIFY_MULTIPLIER)
}

fn cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut c = vec![0x09, 0, (16 + extra.len()) as u8, cfg_type, 0, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    c.extend_from_slice(extra);
    c
}

impl VirtioPci {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        bar_addr: u64,
        vm: Arc<VmFd>,
        router: Arc<MsiRouter>,
    ) -> Result<VirtioPci, String> {
        let device_type = device.device_type();
        let mut config = PciConfig::new(&Ids {
            vendor: VIRTIO_PCI_VENDOR,
            device: VIRTIO_PCI_DEVICE_BASE + device_type,
            subsystem_vendor: VIRTIO_PCI_VENDOR,
            subsystem: 0x40,
            revision: 1,
            class: device.pci_class(),
        });
        config.add_bar(
            0,
            Bar {
                addr: bar_addr,
                size: BAR_SIZE,
                is_64: false,
            },
        );
        let nq = device.num_queues();
        config.add_capability(&cap(CAP_COMMON, COMMON, COMMON_LEN, &[]), &[]);
        config.add_capability(
            &cap(
                CAP_NOTIFY,
                NOTIFY,
                (nq as u64 * NOTIFY_MULTIPLIER).max(4),
                &(NOTIFY_MULTIPLIER as u32).to_le_bytes(),
            ),
            &[],
        );
        config.add_capability(&cap(CAP_ISR, ISR, 1, &[]), &[]);
        config.add_capability(&cap(CAP_DEVICE, DEVICE_CFG, DEVICE_CFG_LEN, &[]), &[]);
        // MSI-X: one vector per queue plus one for configuration changes.
        let nvec = nq + 1;
        let mut msix = vec![0x11, 0];
        msix.extend_from_slice(&((nvec - 1) as u16).to_le_bytes());
        msix.extend_from_slice(&(MSIX_TABLE as u32).to_le_bytes());
        msix.extend_from_slice(&(MSIX_PBA as u32).to_le_bytes());
        let msix_cap = config.add_capability(&msix, &[0, 0, 0, 0xc0]);
        let msix = MsixTable::new(nvec, router).map_err(|e| format!("interrupt eventfd: {e}"))?;
        let config_changed = ConfigChanged::new(msix.eventfds().clone());
        let kicks: Result<Vec<EventFd>, _> = (0..nq).map(|_| EventFd::new(EFD_NONBLOCK)).collect();
        let mut dev = VirtioPci {
            config,
            msix_cap,
            msix,
            vm,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queues: vec![QueueState::fresh(device.queue_max_size()); nq],
            kicks: kicks.map_err(|e| format!("kick eventfd: {e}"))?,
            kicks_at: None,
            config_changed,
            activated: false,
            device,
            qdev_id: String::new(),
            unplugged: false,
        };
        dev.config.seal();
        let notifier = dev.config_changed.clone();
        dev.device.set_config_changed(notifier);
        if let Err(e) = dev.register_kicks() {
            // Its GSIs go back; the device is the caller's to let go of.
            dev.msix.release();
            return Err(e);
        }
        Ok(dev)
    }

    /// Names the device as its id= did (query-pci's qdev_id).
    pub fn with_qdev_id(mut self, id: String) -> VirtioPci {
        self.qdev_id = id;
        self
    }

    fn bar_addr(&self) -> u64 {
        self.config.bar(0).map(|b| b.addr).unwrap_or(0)
    }

    /// (Re-)registers each queue's kick ioeventfd at its notify address in BAR 0. On an
    /// error none is registered: a function half registered would hold addresses that
    /// another BAR may take. A BAR being sized (all ones, which decode nowhere) leaves
    /// them where they are: the guest writes an address back next, mostly the same one,
    /// and each ioeventfd KVM lets go of costs the vCPU thread milliseconds here (two
    /// per BAR sizing were most of a hot-added disk's set-up in the guest).
    fn register_kicks(&mut self) -> Result<(), String> {
        let addr = self.bar_addr();
        if self.kicks_at == Some(addr) || self.unplugged {
            return Ok(());
        }
        if addr != 0 && self.config.placed_bar(0).is_none() {
            return Ok(());
        }
        self.unregister_kicks();
        if addr == 0 {
            return Ok(());
        }
        for (q, fd) in self.kicks.iter().enumerate() {
            if let Err(e) = self.vm.register_ioevent(fd, &kick_at(addr, q), NoDatamatch) {
                for (p, fd) in self.kicks.iter().enumerate().take(q) {
                    let _ = self
                        .vm
                        .unregister_ioevent(fd, &kick_at(addr, p), NoDatamatch);
                }
                return Err(format!("kick ioeventfd: {e}"));
            }
        }
        self.kicks_at = Some(addr);
        Ok(())
    }

    /// Takes the kick ioeventfds out of KVM.
    fn unregister_kicks(&mut self) {
        let Some(addr) = self.kicks_at.take() else {
            return;
        };
        for (q, fd) in self.kicks.iter().enumerate() {
            if let Err(e) = self
                .vm
                .unregister_ioevent(fd, &kick_at(addr, q), NoDatamatch)
            {
                log::error!("unregistering the kick ioeventfd of queue {q}: {e}");
            }
        }
    }

    fn msix_control(&self) -> u16 {
        self.config.get16(self.msix_cap + 2)
    }

    /// Brings every MSI-X vector in line with the capability's enable and mask bits.
    fn sync_vectors(&mut self) {
        let control = self.msix_control();
        self.msix.sync_all(control);
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        let max = self.device.queue_max_size();
        for q in &mut self.queues {
            *q = QueueState::fresh(max);
        }
        self.config_changed.reset();
    }

    /// The enabled queues as the driver laid them out, with their eventfds; and the
    /// device they go to.
    fn active_queues(&mut self) -> (Vec<ActiveQueue<'_>>, &mut dyn VirtioDevice) {
        let eventfds = self.msix.eventfds();
        let nvec = eventfds.len();
        let kicks = &self.kicks;
        let active = self
            .queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.enabled)
            .map(|(i, q)| ActiveQueue {
                index: i,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                kick: &kicks[i],
                // A queue without a vector still needs a call fd; nobody listens to it.
                call: &eventfds[if usize::from(q.vector) < nvec {
                    usize::from(q.vector)
                } else {
                    nvec - 1
                }],
            })
            .collect();
        (active, self.device.as_mut())
    }

    fn activate(&mut self) {
        let features = self.driver_features;
        let (active, device) = self.active_queues();
        log::debug!(
            "virtio activate: features {:#x}, queues {:?}",
            features,
            active
                .iter()
                .map(|q| (q.index, q.size, q.desc, q.avail, q.used))
                .collect::<Vec<_>>()
        );
        let result = device.activate(features, &active);
        drop(active);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::error!("virtio device activation failed: {e}");
                self.status |= NEEDS_RESET;
            }
        }
    }

    fn selected(&mut self) -> Option<&mut QueueState> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn common_read(&mut self, offset: u64) -> u64 {
        let features = self.device.features() | VERSION_1;
        let nq = self.queues.len() as u64;
        let q = self.queues.get(usize::from(self.queue_select)).copied();
        match offset {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.config_changed.vector()),
            0x12 => nq,
            0x14 => u64::from(self.status),
            0x15 => u64::from(self.config_changed.generation()),
            0x16 => u64::from(self.queue_select),
            0x18 => q.map_or(0, |q| u64::from(q.size)),
            0x1a => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)),
            0x1c => q.map_or(0, |q| u64::from(q.enabled)),
            0x1e => u64::from(self.queue_select),
            0x20 => q.map_or(0, |q| q.desc),
            0x28 => q.map_or(0, |q| q.avail),
            0x30 => q.map_or(0, |q| q.used),
            _ => 0,
        }
    }

    fn common_write(&mut self, offset: u64, value: u64, len: usize) {
        let nvec = self.msix.len() as u64;
        let vector = |v: u64| if v < nvec { v as u16 } else { NO_VECTOR };
        let max = self.device.queue_max_size();
        // 64-bit queue addresses may arrive as two 32-bit halves.
        let set_half = |old: u64, off: u64, base: u64| -> u64 {
            if len >= 8 {
                value
            } else if off == base {
                (old & !0xffff_ffff) | (value & 0xffff_ffff)
            } else {
                (old & 0xffff_ffff) | (value << 32)
            }
        };
        match offset {
            0x00 => self.device_feature_select = value as u32,
            0x08 => self.driver_feature_select = value as u32,
            0x0c => {
                let v = value & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            0x10 => self.config_changed.set_vector(vector(value)),
            0x14 => {
                let new = value as u8;
                if new == 0 {
                    return self.reset();
                }
                let offered = self.device.features() | VERSION_1;
                let mut status = new;
                if status & FEATURES_OK != 0 && self.driver_features & !offered != 0 {
                    log::warn!(
                        "driver accepted features {:#x} that were not offered",
                        self.driver_features & !offered
                    );
                    status &= !FEATURES_OK;
                }
                let was_ok = self.status & DRIVER_OK != 0;
                self.status = status | (self.status & NEEDS_RESET);
                if !was_ok && status & DRIVER_OK != 0 {
                    self.activate();
                }
            }
            0x16 => self.queue_select = value as u16,
            0x18 => {
                let size = value as u16;
                if let Some(q) = self.selected() {
                    // Sizes must be powers of two within the device's maximum.
                    q.size = if size.is_power_of_two() && size <= max {
                        size
                    } else {
                        0
                    };
                }
            }
            0x1a => {
                let v = vector(value);
                if let Some(q) = self.selected() {
                    q.vector = v;
                }
            }
            0x1c => {
                if let Some(q) = self.selected() {
                    q.enabled = value & 1 == 1 && q.size != 0;
                }
            }
            0x20 | 0x24 => {
                if let Some(q) = self.selected() {
                    q.desc = set_half(q.desc, offset, 0x20);
                }
            }
            0x28 | 0x2c => {
                if let Some(q) = self.selected() {
                    q.avail = set_half(q.avail, offset, 0x28);
                }
            }
            0x30 | 0x34 => {
                if let Some(q) = self.selected() {
                    q.used = set_half(q.used, offset, 0x30);
                }
            }
            _ => {}
        }
    }
}

/// The transport as the driver left it, for a migration.
#[derive(Serialize, Deserialize)]
struct TransportState {
    config: Vec<u8>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueState>,
    msix_entries: Vec<[u32; 4]>,
    /// Vectors whose interrupt waited (masked) in its eventfd.
    msix_pending: u64,
    /// The configuration-change generation, vector and ISR.
    config_changed: (u8, u16, u8),
    activated: bool,
    device: Vec<u8>,
}

fn to_u64(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn from_u64(value: u64, data: &mut [u8]) {
    let b = value.to_le_bytes();
    let n = data.len().min(8);
    data[..n].copy_from_slice(&b[..n]);
}

impl PciFunction for VirtioPci {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn qdev_id(&self) -> &str {
        &self.qdev_id
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let bar_moved = self.config.write(offset, data);
        if bar_moved {
            if let Err(e) = self.register_kicks() {
                log::error!("moving the kick ioeventfds with BAR 0: {e}");
            }
        }
        // MSI-X enable / function mask live in the capability's control word.
        if (self.msix_cap..self.msix_cap + 4).contains(&offset) {
            self.sync_vectors();
        }
    }

    fn reset(&mut self) {
        VirtioPci::reset(self);
        self.msix.reset_entries();
        self.config.reset();
        self.sync_vectors();
        if let Err(e) = self.register_kicks() {
            log::error!("virtio reset: {e}");
        }
    }

    fn unplug(&mut self) {
        self.unplugged = true;
        self.unregister_kicks();
        self.msix.release();
        self.device.unplug();
    }

    fn before_restore(&mut self) {
        self.unregister_kicks();
    }

    fn save_state(&self) -> Vec<u8> {
        state::encode(&TransportState {
            config: self.config.save(),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            status: self.status,
            queue_select: self.queue_select,
            queues: self.queues.clone(),
            msix_entries: self.msix.entries(),
            msix_pending: self.msix.pending_bits(),
            config_changed: self.config_changed.save(),
            activated: self.activated,
            device: self.device.save_state(),
        })
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: TransportState = state::decode("virtio-pci", bytes)?;
        if s.queues.len() != self.queues.len() {
            return Err(format!(
                "{} queues saved, the device here has {}",
                s.queues.len(),
                self.queues.len()
            ));
        }
        // A device that runs its rings already (a state loaded into a VM that ran:
        // xen-load-devices-state, guest RAM left as it is) keeps them running if the
        // state lays them out as they are, since the rings' progress is in guest RAM and
        // the backend; otherwise they stop first, as when the driver resets the device.
        let keep_rings = self.activated
            && s.activated
            && s.driver_features == self.driver_features
            && s.queues == self.queues;
        if self.activated && !keep_rings {
            self.device.reset();
            self.activated = false;
        }
        self.config.restore(&s.config)?;
        self.register_kicks()?;
        self.msix.restore_entries(&s.msix_entries)?;
        self.device.restore_state(&s.device)?;
        self.device_feature_select = s.device_feature_select;
        self.driver_feature_select = s.driver_feature_select;
        self.driver_features = s.driver_features;
        self.status = s.status;
        self.queue_select = s.queue_select;
        self.queues = s.queues;
        self.config_changed.restore(s.config_changed);
        self.sync_vectors();
        self.msix.raise_pending(s.msix_pending);
        if s.activated && !keep_rings {
            let features = self.driver_features;
            let (active, device) = self.active_queues();
            device.resume(features, &active)?;
            self.activated = true;
        }
        Ok(())
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar != 0 {
            return data.fill(0xff);
        }
        match offset {
            o if o < COMMON + COMMON_LEN => {
                // Registers are read at their own offset; a wider read of a smaller
                // register returns its value.
                let v = self.common_read(o);
                from_u64(v, data);
            }
            ISR => {
                // Reading the ISR acknowledges it.
                data.fill(0);
                data[0] = self.config_changed.take_isr();
            }
            o if (DEVICE_CFG..DEVICE_CFG + DEVICE_CFG_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_CFG, data);
            }
            o if (MSIX_TABLE..MSIX_TABLE + self.msix.table_size()).contains(&o) => {
                self.msix.read(o - MSIX_TABLE, data);
            }
            o if (MSIX_PBA..MSIX_PBA + 8).contains(&o) => {
                from_u64(self.msix.pending_bits() >> ((o - MSIX_PBA) * 8), data);
            }
            _ => data.fill(0),
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON + COMMON_LEN => self.common_write(o, to_u64(data), data.len()),
            o if (DEVICE_CFG..DEVICE_CFG + DEVICE_CFG_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_CFG, data);
            }
            o if (NOTIFY..NOTIFY + self.kicks.len() as u64 * NOTIFY_MULTIPLIER).contains(&o) => {
                // Normally KVM's ioeventfd takes this without an exit.
                let q = ((o - NOTIFY) / NOTIFY_MULTIPLIER) as usize;
                if let Some(k) = self.kicks.get(q) {
                    let _ = k.write(1);
                }
            }
            o if (MSIX_TABLE..MSIX_TABLE + self.msix.table_size()).contains(&o) => {
                let control = self.msix_control();
                self.msix.write(o - MSIX_TABLE, data, control);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio_pci::msix::{MSIX_ENABLE, MSIX_FUNCTION_MASK};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A device of two queues that notes being unplugged.
    struct Device(Arc<AtomicBool>);

    impl VirtioDevice for Device {
        fn device_type(&self) -> u16 {
            2
        }
        fn pci_class(&self) -> u32 {
            0x010000
        }
        fn num_queues(&self) -> usize {
            2
        }
        fn queue_max_size(&self) -> u16 {
            256
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: u64, _: &[ActiveQueue]) -> Result<(), String> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn save_state(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore_state(&mut self, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
        fn resume(&mut self, _: u64, _: &[ActiveQueue]) -> Result<(), String> {
            Ok(())
        }
        fn unplug(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    const BAR: u64 = 0xc000_0000;

    /// Whether KVM has an ioeventfd at queue `q`'s kick address (it refuses another).
    fn kick_registered(vm: &VmFd, q: usize) -> bool {
        let probe = EventFd::new(EFD_NONBLOCK).unwrap();
        match vm.register_ioevent(&probe, &kick_at(BAR, q), NoDatamatch) {
            Ok(()) => {
                vm.unregister_ioevent(&probe, &kick_at(BAR, q), NoDatamatch)
                    .unwrap();
                false
            }
            Err(e) if e.errno() == libc::EEXIST => true,
            Err(e) => panic!("probing kick {q}: {e}"),
        }
    }

    /// Whether KVM has vector `v`'s eventfd as an irqfd (it refuses it a second time).
    fn irqfd_registered(t: &VirtioPci, v: usize) -> bool {
        let fd = &t.msix.eventfds()[v];
        match t.vm.register_irqfd(fd, 1000) {
            Ok(()) => {
                t.vm.unregister_irqfd(fd, 1000).unwrap();
                false
            }
            Err(e) if e.errno() == libc::EBUSY => true,
            Err(e) => panic!("probing vector {v}: {e}"),
        }
    }

    #[test]
    fn an_unplugged_function_leaves_nothing_in_kvm() {
        let vm = crate::test_kvm::vm();
        let router = MsiRouter::new(vm.clone());
        let unplugged = Arc::new(AtomicBool::new(false));
        let device = Box::new(Device(unplugged.clone()));
        let mut t = VirtioPci::new(device, BAR, vm.clone(), router.clone()).unwrap();
        assert!(kick_registered(&vm, 0) && kick_registered(&vm, 1));
        // The driver turns vector 0 on: a route and an irqfd.
        t.write_bar(0, MSIX_TABLE, &0xfee0_0000u32.to_le_bytes());
        t.write_bar(0, MSIX_TABLE + 8, &0x41u32.to_le_bytes());
        t.write_bar(0, MSIX_TABLE + 12, &0u32.to_le_bytes());
        let control = MSIX_ENABLE.to_le_bytes();
        t.write_config(t.msix_cap + 2, &control);
        assert!(irqfd_registered(&t, 0));
        assert!(!irqfd_registered(&t, 1));
        assert_eq!(router.routed().len(), 1);
        t.unplug();
        assert!(!kick_registered(&vm, 0) && !kick_registered(&vm, 1));
        assert!(!irqfd_registered(&t, 0));
        assert!(router.routed().is_empty());
        assert!(
            unplugged.load(Ordering::SeqCst),
            "the device let go of its backend"
        );
        // Its three GSIs are the next ones handed out.
        let next: Vec<u32> = (0..4).map(|_| router.allocate_gsi()).collect();
        assert_eq!(next, [24, 25, 26, 27]);
        // Nothing comes back: a BAR write or a reset registers nothing.
        let masked = (MSIX_ENABLE | MSIX_FUNCTION_MASK).to_le_bytes();
        t.write_config(t.msix_cap + 2, &masked);
        PciFunction::reset(&mut t);
        assert!(!kick_registered(&vm, 0));
        t.unplug();
    }

    #[test]
    fn a_function_whose_kicks_cannot_all_be_registered_registers_none() {
        let vm = crate::test_kvm::vm();
        let router = MsiRouter::new(vm.clone());
        let taken = EventFd::new(EFD_NONBLOCK).unwrap();
        vm.register_ioevent(&taken, &kick_at(BAR, 1), NoDatamatch)
            .unwrap();
        let device = Box::new(Device(Arc::default()));
        let e = VirtioPci::new(device, BAR, vm.clone(), router.clone())
            .err()
            .unwrap();
        assert!(e.starts_with("kick ioeventfd"), "{e}");
        assert!(!kick_registered(&vm, 0), "queue 0's kick was taken back");
        assert_eq!(router.allocate_gsi(), 24, "its GSIs went back");
    }

    #[test]
    fn sizing_bar_0_leaves_the_kicks_and_moving_it_takes_them_along() {
        use crate::devices::pci::config::BAR0;
        let vm = crate::test_kvm::vm();
        let router = MsiRouter::new(vm.clone());
        let mut t =
            VirtioPci::new(Box::new(Device(Arc::default())), BAR, vm.clone(), router).unwrap();
        let at = |bar: u64| crate::test_kvm::ioevent_at(&vm, bar + NOTIFY);
        // As the guest sizes it: all ones (read back as 0xffff8000, decoding nowhere),
        // then its address again.
        t.write_config(BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(t.config().get32(BAR0), 0xffff_8000);
        assert!(at(BAR), "the kicks stay while the BAR is sized");
        assert!(!at(0xffff_8000));
        t.write_config(BAR0, &(BAR as u32).to_le_bytes());
        assert!(at(BAR));
        // Sized, then put elsewhere: the kicks follow, as for a plain move.
        t.write_config(BAR0, &u32::MAX.to_le_bytes());
        t.write_config(BAR0, &0xd000_0000u32.to_le_bytes());
        assert!(at(0xd000_0000) && !at(BAR));
        t.write_config(BAR0, &(BAR as u32).to_le_bytes());
        assert!(at(BAR) && !at(0xd000_0000));
        // At 0 the BAR decodes nothing: the kicks go.
        t.write_config(BAR0, &0u32.to_le_bytes());
        assert!(!at(BAR) && !at(0));
        t.unplug();
    }

    #[test]
    fn a_restore_lets_go_of_the_kicks_before_the_bar_moves() {
        let vm = crate::test_kvm::vm();
        let router = MsiRouter::new(vm.clone());
        let mut t =
            VirtioPci::new(Box::new(Device(Arc::default())), BAR, vm.clone(), router).unwrap();
        t.before_restore();
        assert!(!kick_registered(&vm, 0) && !kick_registered(&vm, 1));
        // The state puts them back (at the saved BAR, here the same).
        let saved = t.save_state();
        t.restore_state(&saved).unwrap();
        assert!(kick_registered(&vm, 0) && kick_registered(&vm, 1));
    }
}
