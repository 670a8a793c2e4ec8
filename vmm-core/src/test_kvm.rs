//! A KVM VM for unit tests whose subject is what KVM itself checks (an ioeventfd or
//! irqfd registered twice, routes). It imports nothing of the crate, so that any
//! module's tests may use it.

use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn kvm() -> Kvm {
    Kvm::new().unwrap_or_else(|e| panic!("this test needs /dev/kvm: {e}"))
}

/// A VM with the in-kernel irqchip (irqfds and MSI routes need it).
pub fn vm() -> Arc<VmFd> {
    let vm = kvm().create_vm().expect("creating a KVM VM");
    vm.create_irq_chip()
        .expect("creating the in-kernel irqchip");
    Arc::new(vm)
}

/// Whether KVM has an ioeventfd at MMIO `addr` (it refuses a second one there).
pub fn ioevent_at(vm: &VmFd, addr: u64) -> bool {
    let probe = EventFd::new(EFD_NONBLOCK).unwrap();
    let at = IoEventAddress::Mmio(addr);
    match vm.register_ioevent(&probe, &at, NoDatamatch) {
        Ok(()) => {
            vm.unregister_ioevent(&probe, &at, NoDatamatch).unwrap();
            false
        }
        Err(e) if e.errno() == libc::EEXIST => true,
        Err(e) => panic!("probing an ioeventfd at {addr:#x}: {e}"),
    }
}
