//! The register state a boot protocol hands to the boot vCPU: flat segments from our
//! boot GDT, then either long mode with identity paging (Linux 64-bit entry) or 32-bit
//! protected mode with paging off (PVH).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::control_bits::{
    CR0_AM, CR0_ET, CR0_MP, CR0_NE, CR0_PG, CR0_WP, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_PAE, CR4_PGE,
    EFER_LMA, EFER_LME,
};
use crate::boot::entry::BootEntry;
use crate::layout::{BOOT_GDT, PML4};

// Boot GDT: the Linux boot protocol wants __BOOT_CS = 0x10 and __BOOT_DS = 0x18.
const GDT: [u64; 5] = [
    0,                     // null
    0x00cf_9b00_0000_ffff, // 0x08: 32-bit code, flat
    0x00af_9b00_0000_ffff, // 0x10: 64-bit code
    0x00cf_9300_0000_ffff, // 0x18: data, flat
    0x0000_8b00_0000_0067, // 0x20: 32-bit busy TSS (VMX requires a usable TR)
];
const SEL_CODE32: u16 = 0x08;
const SEL_CODE64: u16 = 0x10;
const SEL_DATA: u16 = 0x18;
const SEL_TSS: u16 = 0x20;

const CR0_PE: u64 = 1;
const RFLAGS_RESERVED: u64 = 1 << 1;
/// Stack for the first instructions of a Linux entry (unused below 0x6000).
const BOOT_STACK_TOP: u64 = 0x6000;

pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT + i as u64 * 8))?;
    }
    Ok(())
}

/// Unpacks a GDT descriptor into KVM's segment cache format.
fn segment(selector: u16) -> kvm_segment {
    let d = GDT[usize::from(selector >> 3)];
    let limit = ((d & 0xffff) | ((d >> 32) & 0xf_0000)) as u32;
    let granular = (d >> 55) & 1 == 1;
    kvm_segment {
        base: ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24),
        limit: if granular {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector,
        type_: ((d >> 40) & 0xf) as u8,
        present: ((d >> 47) & 1) as u8,
        dpl: ((d >> 45) & 3) as u8,
        db: ((d >> 54) & 1) as u8,
        s: ((d >> 44) & 1) as u8,
        l: ((d >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((d >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Applies the boot protocol's entry state on top of the vCPU's power-on `sregs`.
pub fn boot_sregs(entry: &BootEntry, mut sregs: kvm_sregs) -> kvm_sregs {
    let data = segment(SEL_DATA);
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(SEL_TSS);
    match entry {
        BootEntry::Linux64 { .. } => {
            sregs.cs = segment(SEL_CODE64);
            sregs.cr3 = PML4;
            sregs.cr4 = CR4_PAE | CR4_PGE | CR4_OSFXSR | CR4_OSXMMEXCPT;
            sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootEntry::Pvh { .. } => {
            sregs.cs = segment(SEL_CODE32);
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.efer = 0;
        }
    }
    sregs
}

pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match *entry {
        BootEntry::Linux64 { entry, boot_params } => {
            regs.rip = entry.0;
            regs.rsi = boot_params.0;
            regs.rsp = BOOT_STACK_TOP;
            regs.rbp = BOOT_STACK_TOP;
        }
        BootEntry::Pvh { entry, start_info } => {
            regs.rip = entry.0;
            regs.rbx = start_info.0;
        }
    }
    regs
}

/// x87 and SSE control words as after FNINIT / power-on.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_from_the_gdt() {
        let cs64 = segment(SEL_CODE64);
        assert_eq!((cs64.l, cs64.db, cs64.type_, cs64.present), (1, 0, 0xb, 1));
        let cs32 = segment(SEL_CODE32);
        assert_eq!(
            (cs32.l, cs32.db, cs32.limit, cs32.base),
            (0, 1, 0xffff_ffff, 0)
        );
        let ds = segment(SEL_DATA);
        assert_eq!((ds.type_, ds.s, ds.g), (3, 1, 1));
        let tr = segment(SEL_TSS);
        assert_eq!((tr.type_, tr.s, tr.limit), (0xb, 0, 0x67));
    }

    #[test]
    fn pvh_starts_in_protected_mode_without_paging() {
        let entry = BootEntry::Pvh {
            entry: GuestAddress(0x100000),
            start_info: GuestAddress(0x6000),
        };
        let s = boot_sregs(&entry, kvm_sregs::default());
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.efer, 0);
        let r = boot_regs(&entry);
        assert_eq!((r.rip, r.rbx), (0x100000, 0x6000));
    }

    #[test]
    fn linux_starts_in_long_mode() {
        let entry = BootEntry::Linux64 {
            entry: GuestAddress(0x100200),
            boot_params: GuestAddress(0x7000),
        };
        let s = boot_sregs(&entry, kvm_sregs::default());
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(boot_regs(&entry).rsi, 0x7000);
    }
}
