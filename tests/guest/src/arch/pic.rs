//! The legacy 8259 PICs: remapped away from the exception vectors and fully masked, because
//! all interrupts go through the I/O APIC. Writes to absent PICs are harmless.

use crate::arch::cpu::outb;

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;

pub fn remap_and_mask() {
    // SAFETY: the PICs belong to this module.
    unsafe {
        outb(MASTER_CMD, 0x11); // ICW1: init, ICW4 follows
        outb(SLAVE_CMD, 0x11);
        outb(MASTER_DATA, 0x20); // ICW2: vectors 0x20-0x27 (spurious IRQ7 lands off exceptions)
        outb(SLAVE_DATA, 0x28); // vectors 0x28-0x2f
        outb(MASTER_DATA, 0x04); // ICW3: slave on IRQ2
        outb(SLAVE_DATA, 0x02);
        outb(MASTER_DATA, 0x01); // ICW4: 8086 mode
        outb(SLAVE_DATA, 0x01);
        outb(MASTER_DATA, 0xff); // mask everything
        outb(SLAVE_DATA, 0xff);
    }
}
