//! A KVM VM for unit tests whose subject is what KVM itself checks (an ioeventfd or
//! irqfd registered twice, routes): guest RAM and vCPUs are the tests' own business.

use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};

/// A VM with the in-kernel irqchip (irqfds and MSI routes need it).
pub fn vm() -> Arc<VmFd> {
    let kvm = Kvm::new().unwrap_or_else(|e| panic!("this test needs /dev/kvm: {e}"));
    let vm = kvm.create_vm().expect("creating a KVM VM");
    vm.create_irq_chip()
        .expect("creating the in-kernel irqchip");
    Arc::new(vm)
}
