//! Interrupts through KVM's in-kernel controllers. MSI: GSIs above the IOAPIC's 24 pins,
//! each routed to an MSI message and fed by an irqfd, so a device daemon's completion
//! eventfd interrupts the guest without any vmm-core thread. KVM's routing table is
//! VM-wide and replaced as a whole, so it is rebuilt from the default PIC/IOAPIC routes
//! plus every MSI route. Level-triggered lines (the ACPI SCI): KVM_IRQ_LINE on a GSI.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use parking_lot::Mutex;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::IrqLine;

/// GSIs below this are the IOAPIC's pins.
const FIRST_MSI_GSI: u32 = 24;
const IOAPIC_PINS: u32 = 24;

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("KVM interrupt routing: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("interrupt routing table: {0}")]
    Table(String),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

struct Routes {
    msi: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
    /// GSIs of functions that left (hot-unplugged), handed out again first: KVM's
    /// routing table has room for a few thousand.
    free: BTreeSet<u32>,
    /// Changes wait for `release` (a restore sets many routes: one table then, as each
    /// KVM_SET_GSI_ROUTING waits for an RCU grace period).
    held: bool,
}

pub struct MsiRouter {
    vm: Arc<VmFd>,
    routes: Mutex<Routes>,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

impl MsiRouter {
    pub fn new(vm: Arc<VmFd>) -> Arc<MsiRouter> {
        Arc::new(MsiRouter {
            vm,
            routes: Mutex::new(Routes {
                msi: BTreeMap::new(),
                next_gsi: FIRST_MSI_GSI,
                free: BTreeSet::new(),
                held: false,
            }),
        })
    }

    pub fn allocate_gsi(&self) -> u32 {
        let mut r = self.routes.lock();
        if let Some(gsi) = r.free.pop_first() {
            return gsi;
        }
        let gsi = r.next_gsi;
        r.next_gsi += 1;
        gsi
    }

    /// The GSIs of a function that left (their irqfds unregistered already): their
    /// routes go, in one table, and they can be allocated again.
    pub fn release_gsis(&self, gsis: &[u32]) -> Result<(), InterruptError> {
        let mut r = self.routes.lock();
        let mut routed = false;
        for &gsi in gsis {
            routed |= r.msi.remove(&gsi).is_some();
            if gsi >= FIRST_MSI_GSI && gsi < r.next_gsi {
                r.free.insert(gsi);
            }
        }
        if r.held || !routed {
            return Ok(());
        }
        self.install(&r)
    }

    /// Routes `gsi` to `msg`, or removes its route (None), and installs the table.
    pub fn set(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        let mut r = self.routes.lock();
        match msg {
            Some(m) => {
                r.msi.insert(gsi, m);
            }
            None => {
                r.msi.remove(&gsi);
            }
        }
        if r.held {
            return Ok(());
        }
        self.install(&r)
    }

    /// Route changes wait until `release`, which installs them at once.
    pub fn hold(&self) {
        self.routes.lock().held = true;
    }

    pub fn release(&self) -> Result<(), InterruptError> {
        let mut r = self.routes.lock();
        r.held = false;
        self.install(&r)
    }

    fn install(&self, r: &Routes) -> Result<(), InterruptError> {
        // KVM's own default routing: ISA IRQs to both the PIC and the IOAPIC pin of the
        // same number, the remaining IOAPIC pins to themselves.
        let mut entries = Vec::new();
        for irq in 0..IOAPIC_PINS {
            entries.push(irqchip_entry(irq, KVM_IRQCHIP_IOAPIC, irq));
            if irq < 8 {
                entries.push(irqchip_entry(irq, KVM_IRQCHIP_PIC_MASTER, irq));
            } else if irq < 16 {
                entries.push(irqchip_entry(irq, KVM_IRQCHIP_PIC_SLAVE, irq - 8));
            }
        }
        for (gsi, m) in &r.msi {
            let mut e = kvm_irq_routing_entry {
                gsi: *gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            entries.push(e);
        }
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| InterruptError::Table(format!("{e:?}")))?;
        self.vm.set_gsi_routing(&table)?;
        Ok(())
    }

    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        Ok(self.vm.register_irqfd(fd, gsi)?)
    }

    pub fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        Ok(self.vm.unregister_irqfd(fd, gsi)?)
    }

    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// The GSIs with an MSI route now.
    #[cfg(test)]
    pub(crate) fn routed(&self) -> Vec<u32> {
        self.routes.lock().msi.keys().copied().collect()
    }
}

/// A level-triggered ISA/GSI line driven through KVM_IRQ_LINE.
pub struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl KvmIrqLine {
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> KvmIrqLine {
        KvmIrqLine { vm, gsi }
    }
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) {
        if let Err(e) = self.vm.set_irq_line(self.gsi, high) {
            log::error!("setting GSI {} to {high}: {e}", self.gsi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_gsis_lose_their_routes_and_are_handed_out_again_first() {
        let router = MsiRouter::new(crate::test_kvm::vm());
        let gsis: Vec<u32> = (0..3).map(|_| router.allocate_gsi()).collect();
        assert_eq!(gsis, [24, 25, 26]);
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        router.set(24, Some(msg)).unwrap();
        router.set(26, Some(msg)).unwrap();
        router.release_gsis(&[25, 26]).unwrap();
        assert_eq!(router.routed(), [24]);
        assert_eq!(
            (0..3).map(|_| router.allocate_gsi()).collect::<Vec<_>>(),
            [25, 26, 27]
        );
        // A number never handed out is not taken back.
        router.release_gsis(&[500, 3]).unwrap();
        assert_eq!(router.allocate_gsi(), 28);
    }
}
