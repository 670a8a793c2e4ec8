//! HMP `info mem` and `info tlb`: the current vCPU's page tables (vmm-core walks them) in
//! the text of QEMU 7.2's target/i386/monitor.c (long mode, 4 or 5 levels): `info tlb`
//! one line per present leaf, `info mem` the runs of equal user/write rights.

use std::fmt::Write;

use ipc::registers::{PageLeaf, PageTables};
use ipc::{VmmReply, VmmRequest};

use super::args;
use super::reply::{current_cpu, present_vcpus, try_help};
use crate::qmp::context::Ctx;

const USER: u64 = 1 << 2;
const WRITE: u64 = 1 << 1;
const PSE: u64 = 1 << 7;

/// `info mem`.
pub fn info_mem(c: &mut Ctx, arguments: &str, cpu: &mut u32) -> String {
    with_tables(c, "mem", arguments, cpu, mem_text)
}

/// `info tlb`.
pub fn info_tlb(c: &mut Ctx, arguments: &str, cpu: &mut u32) -> String {
    with_tables(c, "tlb", arguments, cpu, tlb_text)
}

fn with_tables(
    c: &mut Ctx,
    name: &str,
    arguments: &str,
    cpu: &mut u32,
    text: fn(u32, &[PageLeaf]) -> String,
) -> String {
    if let Err(why) = args::read(name, "", arguments) {
        return try_help(&why, &format!("info {name}"));
    }
    let Some(index) = current_cpu(&present_vcpus(c), cpu) else {
        return "No CPU available\n".into();
    };
    match c.gw.vmm.request(VmmRequest::QueryPageTables { index }, &[]) {
        Ok(VmmReply::PageTables(PageTables::Off)) => "PG disabled\n".into(),
        Ok(VmmReply::PageTables(PageTables::Long { levels, leaves })) => text(levels, &leaves),
        Ok(VmmReply::PageTables(PageTables::Legacy)) => {
            format!("info {name}: 32-bit and PAE page tables are not listed\n")
        }
        Ok(other) => format!("Error: vmm-core answered with {other:?}\n"),
        Err(e) => format!("Error: {e}\n"),
    }
}

/// The virtual address width of `levels` levels.
fn bits(levels: u32) -> u32 {
    12 + 9 * levels
}

/// QEMU's addr_canonical: the bits above the width set when its top bit is (others,
/// such as the end of the address space, stay as they are).
fn canonical(addr: u64, levels: u32) -> u64 {
    let top = bits(levels) - 1;
    match addr & (1 << top) {
        0 => addr,
        _ => addr | !((1u64 << (top + 1)) - 1),
    }
}

/// tlb_info_la48/la57's print_pte for each leaf.
pub fn tlb_text(_levels: u32, leaves: &[PageLeaf]) -> String {
    let mut o = String::new();
    for l in leaves {
        let (entry, mask) = match l.size {
            0x1000 => (l.entry & !PSE, 0x3_ffff_ffff_f000u64),
            0x20_0000 => (l.entry, 0x3_ffff_ffe0_0000),
            _ => (l.entry, 0x3_ffff_c000_0000),
        };
        let bit = |n: u32, ch: char| if entry & (1 << n) != 0 { ch } else { '-' };
        let _ = writeln!(
            o,
            "{:016x}: {:016x} {}{}{}{}{}{}{}{}{}",
            l.va,
            entry & mask,
            bit(63, 'X'),
            bit(8, 'G'),
            bit(7, 'P'),
            bit(6, 'D'),
            bit(5, 'A'),
            bit(4, 'C'),
            bit(3, 'T'),
            bit(2, 'U'),
            bit(1, 'W'),
        );
    }
    o
}

/// mem_info_la48/la57: QEMU's mem_print called where each leaf starts and where a run
/// of leaves ends (the next entry maps nothing), then at the end of the address space.
pub fn mem_text(levels: u32, leaves: &[PageLeaf]) -> String {
    let width = bits(levels);
    let raw = |va: u64| va & ((1u64 << width) - 1);
    let mut run = Run {
        o: String::new(),
        start: None,
        last: 0,
        levels,
    };
    for (i, l) in leaves.iter().enumerate() {
        run.print(raw(l.va), l.prot);
        let end = raw(l.va) + l.size;
        if leaves.get(i + 1).is_none_or(|n| raw(n.va) != end) {
            run.print(end, 0);
        }
    }
    run.print(1 << width, 0);
    run.o
}

struct Run {
    o: String,
    start: Option<u64>,
    last: u64,
    levels: u32,
}

impl Run {
    /// QEMU's mem_print: the run so far ends at `end` if the rights change there.
    fn print(&mut self, end: u64, prot: u64) {
        if prot == self.last {
            return;
        }
        if let Some(start) = self.start {
            let c = |a: u64| canonical(a, self.levels);
            let _ = writeln!(
                self.o,
                "{:016x}-{:016x} {:016x} {}r{}",
                c(start),
                c(end),
                c(end - start),
                if self.last & USER != 0 { 'u' } else { '-' },
                if self.last & WRITE != 0 { 'w' } else { '-' },
            );
        }
        self.start = (prot != 0).then_some(end);
        self.last = prot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(va: u64, prot: u64) -> PageLeaf {
        PageLeaf {
            va,
            entry: 0x87 | va,
            size: 0x20_0000,
            prot,
        }
    }

    /// As QEMU's mem_info_la48: runs end where the rights change or nothing is mapped,
    /// the upper half's addresses are canonical, the last run ends at 1 << 48.
    #[test]
    fn mem_runs_are_qemus() {
        let top = 0xffff_ffff_ffe0_0000;
        let leaves = [
            leaf(0, 7),
            leaf(0x20_0000, 7),
            leaf(0x40_0000, 3),
            leaf(top, 7),
        ];
        assert_eq!(
            mem_text(4, &leaves),
            "0000000000000000-0000000000400000 0000000000400000 urw\n\
             0000000000400000-0000000000600000 0000000000200000 -rw\n\
             ffffffffffe00000-0001000000000000 0000000000200000 urw\n"
        );
    }
}
