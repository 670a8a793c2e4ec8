//! The ELF core dump-guest-memory writes, laid out as QEMU 7.2 writes it for an x86_64
//! guest: the ELF header, the program headers (one PT_NOTE, then one PT_LOAD per range),
//! the notes (one NT_PRSTATUS "CORE" note per vCPU with the general registers in the
//! layout of Linux's `struct elf_prstatus`, which gdb and crash read, then one "QEMU" note
//! per vCPU with QEMU's QEMUCPUState: segments, descriptor tables, control registers),
//! then guest memory, range after range. Differences from QEMU's, on purpose: no section
//! headers (QEMU 7.2 adds an empty string table with a bad e_ehsize), and a paging dump's
//! lower-half addresses stay canonical (QEMU 7.2 sets their top 16 bits, where gdb
//! cannot find them).

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

/// A vCPU's registers as a dump records them.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuRegs {
    pub index: u32,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub kernel_gs_base: u64,
}

/// One PT_LOAD: `len` bytes of guest memory at physical `pa`, virtual `va`, found in the
/// file at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub va: u64,
    pub pa: u64,
    pub len: u64,
    pub offset: u64,
}

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const NOTE_HEADER: usize = 12;
const PRSTATUS_SIZE: usize = 336;
const QEMU_STATE_SIZE: usize = 440;
/// Name "CORE\0" / "QEMU\0", padded to 4 bytes.
const NAME_SIZE: usize = 8;
pub const PRSTATUS_NOTE: usize = NOTE_HEADER + NAME_SIZE + PRSTATUS_SIZE;
pub const QEMU_NOTE: usize = NOTE_HEADER + NAME_SIZE + QEMU_STATE_SIZE;
/// The most program headers without ELF's extended numbering (PN_XNUM).
pub const MAX_PHDRS: usize = 0xfffe;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const NT_PRSTATUS: u32 = 1;

/// Where the notes start and guest memory starts, for `loads` PT_LOADs and `cpus` vCPUs.
pub fn layout(loads: usize, cpus: usize) -> (u64, u64) {
    let notes = EHDR_SIZE + PHDR_SIZE * (1 + loads as u64);
    (notes, notes + notes_size(cpus))
}

/// The size of the vCPUs' notes (`notes`) for `cpus` vCPUs.
pub fn notes_size(cpus: usize) -> u64 {
    (cpus * (PRSTATUS_NOTE + QEMU_NOTE)) as u64
}

/// The vCPUs' notes, as QEMU writes them in an ELF core and a kdump-compressed one: an
/// NT_PRSTATUS note per vCPU, then a "QEMU" note per vCPU.
pub fn notes(cpus: &[CpuRegs]) -> Vec<u8> {
    let mut out = Vec::with_capacity(notes_size(cpus.len()) as usize);
    for c in cpus {
        note(&mut out, b"CORE\0", NT_PRSTATUS, &prstatus(c));
    }
    for c in cpus {
        note(&mut out, b"QEMU\0", 0, &qemu_cpu_state(c));
    }
    out
}

/// Everything before guest memory: header, program headers and notes. `loads` must be
/// fewer than `MAX_PHDRS`.
pub fn headers(cpus: &[CpuRegs], loads: &[Load]) -> Vec<u8> {
    let (notes_at, _) = layout(loads.len(), cpus.len());
    let mut out = Vec::with_capacity(notes_at as usize + notes_size(cpus.len()) as usize);
    // e_ident: ELFCLASS64, ELFDATA2LSB, EV_CURRENT, System V.
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    out.extend_from_slice(&[0; 8]);
    put16(&mut out, 4); // ET_CORE
    put16(&mut out, 62); // EM_X86_64
    put32(&mut out, 1);
    put64(&mut out, 0); // e_entry
    put64(&mut out, EHDR_SIZE); // e_phoff
    put64(&mut out, 0); // e_shoff
    put32(&mut out, 0); // e_flags
    put16(&mut out, EHDR_SIZE as u16);
    put16(&mut out, PHDR_SIZE as u16);
    put16(&mut out, (1 + loads.len()) as u16);
    put16(&mut out, 0); // e_shentsize
    put16(&mut out, 0); // e_shnum
    put16(&mut out, 0); // e_shstrndx
    phdr(&mut out, PT_NOTE, notes_at, 0, 0, notes_size(cpus.len()));
    for l in loads {
        phdr(&mut out, PT_LOAD, l.offset, l.va, l.pa, l.len);
    }
    out.extend_from_slice(&notes(cpus));
    out
}

/// A program header as QEMU writes it: no flags, no alignment, memory and file sizes
/// alike.
fn phdr(out: &mut Vec<u8>, kind: u32, offset: u64, va: u64, pa: u64, len: u64) {
    put32(out, kind);
    put32(out, 0);
    put64(out, offset);
    put64(out, va);
    put64(out, pa);
    put64(out, len);
    put64(out, len);
    put64(out, 0);
}

fn note(out: &mut Vec<u8>, name: &[u8; 5], kind: u32, desc: &[u8]) {
    put32(out, name.len() as u32);
    put32(out, desc.len() as u32);
    put32(out, kind);
    out.extend_from_slice(name);
    out.extend_from_slice(&[0; NAME_SIZE - 5]);
    out.extend_from_slice(desc);
}

/// Linux x86_64's `struct elf_prstatus`: pr_pid at 32 (QEMU puts the vCPU's index + 1
/// there, so gdb names threads by vCPU), the general registers (`user_regs_struct`) at 112.
fn prstatus(c: &CpuRegs) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    put32(&mut d, c.index + 1);
    d.resize(112, 0);
    let (r, s) = (&c.regs, &c.sregs);
    let sel = |seg: &kvm_segment| u64::from(seg.selector);
    for v in [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        0, // orig_rax: no system call is in progress
        r.rip,
        sel(&s.cs),
        r.rflags,
        r.rsp,
        sel(&s.ss),
        s.fs.base,
        s.gs.base,
        sel(&s.ds),
        sel(&s.es),
        sel(&s.fs),
        sel(&s.gs),
    ] {
        put64(&mut d, v);
    }
    d.resize(PRSTATUS_SIZE, 0);
    d
}

/// QEMU's QEMUCPUState (version 1), with segment flags in QEMU's form (descriptor bits
/// 8-23 of the high word).
fn qemu_cpu_state(c: &CpuRegs) -> Vec<u8> {
    let (r, s) = (&c.regs, &c.sregs);
    let mut d = Vec::with_capacity(QEMU_STATE_SIZE);
    put32(&mut d, 1);
    put32(&mut d, QEMU_STATE_SIZE as u32);
    for v in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        put64(&mut d, v);
    }
    for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.ldt, &s.tr] {
        segment(&mut d, seg);
    }
    for table in [&s.gdt, &s.idt] {
        dtable(&mut d, table);
    }
    for cr in [s.cr0, 0, s.cr2, s.cr3, s.cr4] {
        put64(&mut d, cr);
    }
    put64(&mut d, c.kernel_gs_base);
    d
}

fn segment(d: &mut Vec<u8>, s: &kvm_segment) {
    let flags = (u32::from(s.type_) << 8)
        | (u32::from(s.s) << 12)
        | (u32::from(s.dpl) << 13)
        | (u32::from(s.present) << 15)
        | (u32::from(s.avl) << 20)
        | (u32::from(s.l) << 21)
        | (u32::from(s.db) << 22)
        | (u32::from(s.g) << 23);
    put32(d, u32::from(s.selector));
    put32(d, s.limit);
    put32(d, flags);
    put32(d, 0);
    put64(d, s.base);
}

fn dtable(d: &mut Vec<u8>, t: &kvm_dtable) {
    put32(d, 0);
    put32(d, u32::from(t.limit));
    put32(d, 0);
    put32(d, 0);
    put64(d, t.base);
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn notes_and_headers_sit_where_readers_look() {
        let mut cpu = CpuRegs {
            index: 1,
            ..Default::default()
        };
        cpu.regs.rip = 0x1234;
        cpu.regs.rsp = 0x8000;
        cpu.sregs.cs.selector = 8;
        cpu.sregs.cs.type_ = 0xb;
        cpu.sregs.cs.s = 1;
        cpu.sregs.cs.present = 1;
        cpu.sregs.cs.l = 1;
        cpu.sregs.cs.g = 1;
        cpu.sregs.cr3 = 0x1000;
        let loads = [Load {
            va: 0x10_0000,
            pa: 0x10_0000,
            len: 0x2000,
            offset: 0,
        }];
        let h = headers(&[cpu], &loads);
        let (notes, memory) = layout(1, 1);
        assert_eq!(h.len() as u64, memory);
        assert_eq!(notes, 64 + 2 * 56);
        assert_eq!(&h[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([h[56], h[57]]), 2, "e_phnum");
        // The note: name, NT_PRSTATUS, pr_pid = index + 1, rip and rsp in user_regs.
        let n = notes as usize;
        assert_eq!(&h[n + 12..n + 16], b"CORE");
        assert_eq!(u32::from_le_bytes(h[n + 8..n + 12].try_into().unwrap()), 1);
        let desc = n + 20;
        assert_eq!(
            u32::from_le_bytes(h[desc + 32..desc + 36].try_into().unwrap()),
            2
        );
        assert_eq!(u64_at(&h, desc + 112 + 16 * 8), 0x1234, "rip");
        assert_eq!(u64_at(&h, desc + 112 + 17 * 8), 8, "cs");
        assert_eq!(u64_at(&h, desc + 112 + 19 * 8), 0x8000, "rsp");
        // QEMU's note after it: version, size, then cs's flags as QEMU has them.
        let q = n + PRSTATUS_NOTE;
        assert_eq!(&h[q + 12..q + 16], b"QEMU");
        let state = q + 20;
        assert_eq!(u64_at(&h, state), (440 << 32) | 1);
        let cs_flags = state + 8 + 18 * 8 + 8;
        assert_eq!(
            u32::from_le_bytes(h[cs_flags..cs_flags + 4].try_into().unwrap()),
            0x00a0_9b00
        );
        assert_eq!(
            u64_at(&h, state + 8 + 18 * 8 + 10 * 24 + 3 * 8),
            0x1000,
            "cr3"
        );
    }
}
