//! A vCPU's view of guest memory through its page tables, as QEMU's debug accesses see it:
//! one virtual address translated (memsave), and every mapping of RAM listed
//! (dump-guest-memory's `paging`). The modes are x86's: paging off (identity), 32-bit
//! (4 KiB pages, 4 MiB with CR4.PSE, PSE-36 high bits), PAE (3 levels), and long mode with
//! 4 levels (5 with CR4.LA57). Accessed, dirty and permission bits are ignored: a debugger
//! reads what is mapped, as QEMU's walk does.

use crate::cpu::control_bits::{CR0_PG, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA};

/// Reads one page-table entry from guest physical memory (None: not RAM).
pub trait PhysRead {
    fn read_u64(&self, addr: u64) -> Option<u64>;
    fn read_u32(&self, addr: u64) -> Option<u32>;
}

/// The control registers that decide how a vCPU translates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
/// Physical address bits of a 64-bit entry (12 to 51).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const KIB4: u64 = 1 << 12;

/// How a vCPU translates addresses now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Bits32 { pse: bool },
    Pae,
    Long { levels: u32 },
}

impl PagingRegs {
    pub fn mode(&self) -> Mode {
        if self.cr0 & CR0_PG == 0 {
            Mode::Off
        } else if self.efer & EFER_LMA != 0 {
            Mode::Long {
                levels: if self.cr4 & CR4_LA57 != 0 { 5 } else { 4 },
            }
        } else if self.cr4 & CR4_PAE != 0 {
            Mode::Pae
        } else {
            Mode::Bits32 {
                pse: self.cr4 & CR4_PSE != 0,
            }
        }
    }
}

/// One leaf of a walk: `len` bytes of virtual `va` at physical `pa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub va: u64,
    pub pa: u64,
    pub len: u64,
}

/// The physical address of virtual `va`, or None where nothing is mapped.
pub fn translate(mem: &dyn PhysRead, regs: &PagingRegs, va: u64) -> Option<u64> {
    match regs.mode() {
        Mode::Off => Some(va),
        Mode::Bits32 { pse } => {
            let va = va & 0xffff_ffff;
            let pde = u64::from(mem.read_u32((regs.cr3 & 0xffff_f000) + (va >> 22) * 4)?);
            if pde & PRESENT == 0 {
                return None;
            }
            if pse && pde & LARGE != 0 {
                return Some(pse_page(pde) + (va & 0x3f_ffff));
            }
            let pte = u64::from(mem.read_u32((pde & 0xffff_f000) + ((va >> 12) & 0x3ff) * 4)?);
            (pte & PRESENT != 0).then_some((pte & 0xffff_f000) + (va & 0xfff))
        }
        Mode::Pae => {
            let va = va & 0xffff_ffff;
            let pdpte = mem.read_u64((regs.cr3 & 0xffff_ffe0) + (va >> 30) * 8)?;
            if pdpte & PRESENT == 0 {
                return None;
            }
            descend(mem, pdpte & ADDR_MASK, va, 2)
        }
        Mode::Long { levels } => {
            let bits = 12 + 9 * levels;
            // A non-canonical address maps nothing.
            let high = (va as i64) >> (bits - 1);
            if high != 0 && high != -1 {
                return None;
            }
            descend(mem, regs.cr3 & ADDR_MASK, va, levels)
        }
    }
}

/// The 4 MiB page of a 32-bit PDE with PS (bits 13-20 are physical bits 32-39).
fn pse_page(pde: u64) -> u64 {
    (pde & 0xffc0_0000) | ((pde & 0x001f_e000) << 19)
}

/// Walks the 64-bit-entry levels from `table` (level `level`: 1 is the page table).
fn descend(mem: &dyn PhysRead, mut table: u64, va: u64, mut level: u32) -> Option<u64> {
    loop {
        let shift = 12 + 9 * (level - 1);
        let entry = mem.read_u64(table + ((va >> shift) & 0x1ff) * 8)?;
        if entry & PRESENT == 0 {
            return None;
        }
        // PS in a PDPTE (1 GiB) or PDE (2 MiB); at level 1 the entry is the page.
        if level == 1 || (level <= 3 && entry & LARGE != 0) {
            let size = 1u64 << shift;
            return Some((entry & ADDR_MASK & !(size - 1)) + (va & (size - 1)));
        }
        table = entry & ADDR_MASK;
        level -= 1;
    }
}

/// Why a walk gave up.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the page tables map more than {0} separate ranges")]
pub struct TooManyRanges(pub usize);

/// Collects leaves, merging each into the previous when both addresses continue it.
struct Collector<'a> {
    out: Vec<Mapping>,
    limit: usize,
    is_ram: &'a dyn Fn(u64) -> bool,
}

/// What a walk of 64-bit-entry tables does with each leaf: `va` (canonical) maps
/// `size` bytes by the raw `entry`; `prot` is its U/W/P bits ANDed with those of the
/// levels above.
trait Visit {
    fn visit(&mut self, va: u64, entry: u64, size: u64, prot: u64) -> Result<(), TooManyRanges>;
}

impl Visit for Collector<'_> {
    fn visit(&mut self, va: u64, entry: u64, size: u64, _: u64) -> Result<(), TooManyRanges> {
        self.leaf(va, entry & ADDR_MASK & !(size - 1), size)
    }
}

/// One leaf of a vCPU's page tables, as HMP's info tlb and info mem show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Canonical virtual address.
    pub va: u64,
    /// The entry as the tables hold it.
    pub entry: u64,
    pub size: u64,
    /// Its user, writable and present bits ANDed with the levels' above.
    pub prot: u64,
}

struct Leaves {
    out: Vec<Leaf>,
    limit: usize,
}

impl Visit for Leaves {
    fn visit(&mut self, va: u64, entry: u64, size: u64, prot: u64) -> Result<(), TooManyRanges> {
        if self.out.len() >= self.limit {
            return Err(TooManyRanges(self.limit));
        }
        self.out.push(Leaf {
            va,
            entry,
            size,
            prot,
        });
        Ok(())
    }
}

/// Every present leaf of a long-mode vCPU's tables (4 or 5 levels), in table order, at
/// most `limit`; None for other modes.
pub fn long_mode_leaves(
    mem: &dyn PhysRead,
    regs: &PagingRegs,
    limit: usize,
) -> Option<Result<Vec<Leaf>, TooManyRanges>> {
    let Mode::Long { levels } = regs.mode() else {
        return None;
    };
    let mut v = Leaves {
        out: Vec::new(),
        limit,
    };
    let walked = walk(
        mem,
        &mut v,
        regs.cr3 & ADDR_MASK,
        0,
        levels,
        12 + 9 * levels,
        PROT,
    );
    Some(walked.map(|()| v.out))
}

/// The bits info mem shows: user, writable, present.
const PROT: u64 = 0b111;

impl Collector<'_> {
    fn leaf(&mut self, va: u64, pa: u64, len: u64) -> Result<(), TooManyRanges> {
        // As QEMU's walk: pages that are not RAM (device registers) are left out.
        if !(self.is_ram)(pa) {
            return Ok(());
        }
        if let Some(last) = self.out.last_mut() {
            if last.va.wrapping_add(last.len) == va && last.pa + last.len == pa {
                last.len += len;
                return Ok(());
            }
        }
        if self.out.len() >= self.limit {
            return Err(TooManyRanges(self.limit));
        }
        self.out.push(Mapping { va, pa, len });
        Ok(())
    }
}

/// Every mapping of RAM in the vCPU's page tables (merged runs, in virtual address
/// order), at most `limit` of them. `is_ram` says whether a physical page is RAM.
pub fn mappings(
    mem: &dyn PhysRead,
    regs: &PagingRegs,
    is_ram: &dyn Fn(u64) -> bool,
    limit: usize,
) -> Result<Vec<Mapping>, TooManyRanges> {
    let mut c = Collector {
        out: Vec::new(),
        limit,
        is_ram,
    };
    match regs.mode() {
        // Not called for a vCPU without paging (the caller maps physically).
        Mode::Off => {}
        Mode::Bits32 { pse } => {
            let pd = regs.cr3 & 0xffff_f000;
            for i in 0..1024u64 {
                let Some(pde) = mem.read_u32(pd + i * 4).map(u64::from) else {
                    continue;
                };
                if pde & PRESENT == 0 {
                    continue;
                }
                let va = i << 22;
                if pse && pde & LARGE != 0 {
                    c.leaf(va, pse_page(pde), 4 << 20)?;
                    continue;
                }
                for j in 0..1024u64 {
                    let Some(pte) = mem.read_u32((pde & 0xffff_f000) + j * 4).map(u64::from) else {
                        continue;
                    };
                    if pte & PRESENT != 0 {
                        c.leaf(va | (j << 12), pte & 0xffff_f000, KIB4)?;
                    }
                }
            }
        }
        Mode::Pae => {
            for i in 0..4u64 {
                let Some(pdpte) = mem.read_u64((regs.cr3 & 0xffff_ffe0) + i * 8) else {
                    continue;
                };
                if pdpte & PRESENT != 0 {
                    walk(mem, &mut c, pdpte & ADDR_MASK, i << 30, 2, 32, PROT)?;
                }
            }
        }
        Mode::Long { levels } => {
            walk(
                mem,
                &mut c,
                regs.cr3 & ADDR_MASK,
                0,
                levels,
                12 + 9 * levels,
                PROT,
            )?;
        }
    }
    Ok(c.out)
}

/// One table of level `level` covering virtual addresses from `base`; `bits` is the
/// virtual address width (canonical addresses are sign-extended from it).
fn walk(
    mem: &dyn PhysRead,
    c: &mut dyn Visit,
    table: u64,
    base: u64,
    level: u32,
    bits: u32,
    prot: u64,
) -> Result<(), TooManyRanges> {
    let shift = 12 + 9 * (level - 1);
    for i in 0..512u64 {
        let Some(entry) = mem.read_u64(table + i * 8) else {
            continue;
        };
        if entry & PRESENT == 0 {
            continue;
        }
        let va = canonical(base | (i << shift), bits);
        let prot = prot & entry;
        if level == 1 || (level <= 3 && entry & LARGE != 0) {
            c.visit(va, entry, 1u64 << shift, prot)?;
        } else {
            walk(mem, c, entry & ADDR_MASK, va, level - 1, bits, prot)?;
        }
    }
    Ok(())
}

/// `va` sign-extended from bit `bits - 1` (the identity below 64-bit widths of 32).
fn canonical(va: u64, bits: u32) -> u64 {
    if bits >= 64 || bits == 32 {
        return va;
    }
    let shift = 64 - bits;
    (((va << shift) as i64) >> shift) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Guest memory as a map of 8-byte words (RAM: below 64 MiB).
    #[derive(Default)]
    struct Mem(HashMap<u64, u64>);

    impl Mem {
        fn set(&mut self, addr: u64, v: u64) {
            self.0.insert(addr, v);
        }
        fn set32(&mut self, addr: u64, v: u32) {
            let word = addr & !7;
            let old = self.0.get(&word).copied().unwrap_or(0);
            let v = if addr & 4 == 0 {
                (old & !0xffff_ffff) | u64::from(v)
            } else {
                (old & 0xffff_ffff) | (u64::from(v) << 32)
            };
            self.0.insert(word, v);
        }
    }

    impl PhysRead for Mem {
        fn read_u64(&self, addr: u64) -> Option<u64> {
            (addr < 64 << 20).then(|| self.0.get(&addr).copied().unwrap_or(0))
        }
        fn read_u32(&self, addr: u64) -> Option<u32> {
            let w = self.read_u64(addr & !7)?;
            Some(if addr & 4 == 0 {
                w as u32
            } else {
                (w >> 32) as u32
            })
        }
    }

    fn ram(pa: u64) -> bool {
        pa < 64 << 20
    }

    const LONG: PagingRegs = PagingRegs {
        cr0: CR0_PG | 1,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: EFER_LMA | (1 << 8),
    };

    /// Long mode, 4 levels: a 4 KiB page at the top half, a 2 MiB page, a 1 GiB page of
    /// device memory (left out of the list), and two 4 KiB pages that continue each other.
    fn long_tables() -> Mem {
        let mut m = Mem::default();
        // PML4[511] -> PDPT 0x2000; PML4[0] -> PDPT 0x5000.
        m.set(0x1000 + 511 * 8, 0x2000 | 3);
        m.set(0x1000, 0x5000 | 3);
        // PDPT[510] -> PD 0x3000 -> PT 0x4000: VA 0xffff_ffff_8000_0000 + 3 pages.
        m.set(0x2000 + 510 * 8, 0x3000 | 3);
        m.set(0x3000, 0x4000 | 3);
        m.set(0x4000, 0x20_0000 | 3);
        m.set(0x4000 + 8, 0x20_1000 | 3);
        m.set(0x4000 + 16, 0x30_0000 | 3);
        // PDPT[0] -> PD 0x6000: PD[1] a 2 MiB page at 0x60_0000; PDPT[3] a 1 GiB page
        // at 4 GiB (not RAM).
        m.set(0x5000, 0x6000 | 3);
        m.set(0x6000 + 8, 0x60_0000 | 0x83);
        m.set(0x5000 + 3 * 8, 0x1_0000_0000 | 0x83);
        m
    }

    #[test]
    fn long_mode_translates_each_page_size() {
        let m = long_tables();
        let top = 0xffff_ffff_8000_0000u64;
        assert_eq!(translate(&m, &LONG, top + 0x10), Some(0x20_0010));
        assert_eq!(translate(&m, &LONG, top + 0x1ff8), Some(0x20_1ff8));
        assert_eq!(translate(&m, &LONG, top + 0x3000), None);
        assert_eq!(translate(&m, &LONG, 0x20_1234), Some(0x60_1234));
        assert_eq!(translate(&m, &LONG, 0xc000_0005), Some(0x1_0000_0005));
        // Not mapped, and not canonical.
        assert_eq!(translate(&m, &LONG, 0x40_0000), None);
        assert_eq!(translate(&m, &LONG, 0x8000_0000_0000), None);
    }

    #[test]
    fn long_mode_lists_ram_mappings_merged_with_canonical_addresses() {
        let m = long_tables();
        let list = mappings(&m, &LONG, &ram, 100).unwrap();
        assert_eq!(
            list,
            vec![
                Mapping {
                    va: 0x20_0000,
                    pa: 0x60_0000,
                    len: 2 << 20
                },
                Mapping {
                    va: 0xffff_ffff_8000_0000,
                    pa: 0x20_0000,
                    len: 0x2000
                },
                Mapping {
                    va: 0xffff_ffff_8000_2000,
                    pa: 0x30_0000,
                    len: 0x1000
                },
            ]
        );
        assert_eq!(
            mappings(&m, &LONG, &ram, 2),
            Err(TooManyRanges(2)),
            "bounded"
        );
    }

    #[test]
    fn pae_and_32_bit_paging() {
        let mut m = Mem::default();
        // PAE: CR3 at 0x1020 (32-byte aligned); PDPTE[1] -> PD 0x2000; PD[0] a 2 MiB page
        // at 0x80_0000, PD[1] -> PT 0x3000 whose entry 5 maps 0x9000.
        m.set(0x1020 + 8, 0x2000 | 1);
        m.set(0x2000, 0x80_0000 | 0x81);
        m.set(0x2008, 0x3000 | 1);
        m.set(0x3000 + 5 * 8, 0x9000 | 1);
        let pae = PagingRegs {
            cr0: CR0_PG | 1,
            cr3: 0x1020,
            cr4: CR4_PAE,
            efer: 0,
        };
        assert_eq!(translate(&m, &pae, 0x4000_0042), Some(0x80_0042));
        assert_eq!(translate(&m, &pae, 0x4020_5010), Some(0x9010));
        assert_eq!(translate(&m, &pae, 0x42), None);
        assert_eq!(mappings(&m, &pae, &ram, 10).unwrap().len(), 2);

        // 32-bit: PD at 0x10000; PDE[1] a 4 MiB page at 0x100_0000 (with PSE), PDE[2] ->
        // PT 0x11000 whose entry 3 maps 0x7000.
        let mut m = Mem::default();
        m.set32(0x10000 + 4, 0x100_0000 | 0x81);
        m.set32(0x10000 + 8, 0x11000 | 1);
        m.set32(0x11000 + 12, 0x7000 | 1);
        let mut bits32 = PagingRegs {
            cr0: CR0_PG | 1,
            cr3: 0x10000,
            cr4: CR4_PSE,
            efer: 0,
        };
        assert_eq!(translate(&m, &bits32, 0x40_1234), Some(0x100_1234));
        assert_eq!(translate(&m, &bits32, 0x80_3004), Some(0x7004));
        assert_eq!(
            mappings(&m, &bits32, &ram, 10).unwrap(),
            vec![
                Mapping {
                    va: 0x40_0000,
                    pa: 0x100_0000,
                    len: 4 << 20
                },
                Mapping {
                    va: 0x80_3000,
                    pa: 0x7000,
                    len: 0x1000
                },
            ]
        );
        // Without CR4.PSE the large bit is ignored: PDE[1] points at a page table.
        bits32.cr4 = 0;
        assert_eq!(translate(&m, &bits32, 0x40_1234), None);
        // The PSE-36 bits.
        assert_eq!(pse_page(0x0040_2083), 0x1_0040_0000);
        // Paging off: the identity.
        let off = PagingRegs::default();
        assert_eq!(translate(&m, &off, 0x1234_5678), Some(0x1234_5678));
    }
}
