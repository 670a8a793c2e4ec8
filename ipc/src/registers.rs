//! A vCPU's registers as the monitor shows them (HMP `info registers`): vmm-core reads
//! them from KVM, the gateway prints them as QEMU 7.2's x86_cpu_dump_state does.

use serde::{Deserialize, Serialize};

/// One vCPU's architectural state, as QEMU keeps it for its register dump.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuRegisters {
    pub index: u32,
    /// RAX RBX RCX RDX RSI RDI RBP RSP R8-R15, in that order.
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    /// ES CS SS DS FS GS LDT TR, in that order.
    pub segments: [Segment; 8],
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// DR0-DR3, DR6, DR7.
    pub dr: [u64; 6],
    /// Interrupts are held off for one instruction (after STI or MOV SS).
    pub interrupt_shadow: bool,
    pub smm: bool,
    pub halted: bool,
    pub fcw: u16,
    pub fsw: u16,
    /// The abridged tag word FXSAVE stores: bit i set when ST(i) holds a value.
    pub ftw: u8,
    pub mxcsr: u32,
    /// ST0-ST7: each 80-bit value's low 8 bytes and high 2.
    pub fpr: [(u64, u16); 8],
    pub xcr0: u64,
    /// AVX-512's k0-k7 (0 unless XCR0 enables them).
    pub opmask: [u64; 8],
    /// ZMM0-ZMM31 as quadwords, lowest first: the XMM halves always, the rest where XCR0
    /// enables them (0 otherwise).
    pub vectors: Vec<[u64; 8]>,
}

/// A segment register's hidden part.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// The descriptor's attribute bits where a descriptor holds them (type at 8, S 12,
    /// DPL 13, P 15, AVL 20, L 21, D/B 22, G 23), as QEMU's SegmentCache keeps them;
    /// 0 for a segment KVM calls unusable.
    pub flags: u32,
}

/// GDTR or IDTR.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// A vCPU's page tables as HMP's `info mem` and `info tlb` read them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PageTables {
    /// CR0.PG is clear.
    Off,
    /// Long mode with `levels` (4 or 5) levels: every present leaf, in table order.
    Long { levels: u32, leaves: Vec<PageLeaf> },
    /// 32-bit or PAE paging, which vmm-core does not list.
    Legacy,
}

/// One present leaf: `size` bytes at canonical `va`, mapped by `entry` (as the tables
/// hold it); `prot` is its user/writable/present bits ANDed with the levels' above.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLeaf {
    pub va: u64,
    pub entry: u64,
    pub size: u64,
    pub prot: u64,
}
