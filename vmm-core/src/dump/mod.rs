//! Guest memory for debugging: QMP pmemsave (physical), memsave (a vCPU's virtual
//! addresses, through its page tables: `paging`) and dump-guest-memory (an ELF core:
//! `elf`, or a kdump-compressed one: `kdump`), each written to a file the gateway opened
//! and handed over. What a dump covers is planned here (`plan`: RAM blocks, DIMMs
//! included, the begin/length filter and QEMU's checks of it, the segments by virtual
//! address with `paging`), and written on a thread of its own (`start`) whose progress
//! query-dump reads; the runner pauses the vCPUs for it and resumes them after, as QEMU
//! does.

mod chunks;
pub mod elf;
pub mod kdump;
pub mod paging;
pub mod registers;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Arc;

use ipc::{DumpFilter, DumpFormat, DumpProgress, DumpRequest, DumpStatus};
use kvm_bindings::{kvm_msr_entry, Msrs};
use parking_lot::Mutex;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::vcpu::{Vcpu, VcpuError};
use elf::{CpuRegs, Load};
use paging::{Mapping, PagingRegs, PhysRead};

const PAGE: u64 = 4096;
/// memsave's unit, as QEMU's: a piece that cannot be read fails the command with the
/// pieces before it written.
const SAVE_CHUNK: u64 = 1024;
/// A dump reads and writes guest memory this much at a time.
const DUMP_CHUNK: u64 = 1 << 20;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Guest memory read by physical address for a page walk.
struct Phys<'a>(&'a GuestMemoryMmap);

impl PhysRead for Phys<'_> {
    fn read_u64(&self, addr: u64) -> Option<u64> {
        self.0.read_obj(GuestAddress(addr)).ok()
    }
    fn read_u32(&self, addr: u64) -> Option<u32> {
        self.0.read_obj(GuestAddress(addr)).ok()
    }
}

/// The RAM blocks (guest RAM's windows and the DIMMs), by address.
fn blocks(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    let mut b: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
    b.sort_unstable();
    b
}

/// A vCPU's registers; only while its thread is parked.
pub fn read_cpu(vcpu: &Vcpu) -> Result<CpuRegs, VcpuError> {
    let fd = vcpu.fd();
    let regs = fd.get_regs().map_err(vcpu.err("reading registers"))?;
    let sregs = fd
        .get_sregs()
        .map_err(vcpu.err("reading segment registers"))?;
    let entry = kvm_msr_entry {
        index: MSR_KERNEL_GS_BASE,
        ..Default::default()
    };
    // Optional in QEMU's note too: 0 where KVM does not give it.
    let kernel_gs_base = Msrs::from_entries(&[entry])
        .ok()
        .and_then(|mut m| match fd.get_msrs(&mut m) {
            Ok(1) => Some(m.as_slice()[0].data),
            _ => None,
        })
        .unwrap_or(0);
    Ok(CpuRegs {
        index: vcpu.id as u32,
        regs,
        sregs,
        kernel_gs_base,
    })
}

/// The most page-table leaves `page_tables` lists (its answer stays within an ipc frame).
const MAX_LEAVES: usize = 16384;

/// A vCPU's page-table leaves for HMP info mem / info tlb.
pub fn page_tables(
    mem: &GuestMemoryMmap,
    cpu: &CpuRegs,
) -> Result<ipc::registers::PageTables, paging::TooManyRanges> {
    use ipc::registers::{PageLeaf, PageTables};
    let regs = paging_regs(cpu);
    match regs.mode() {
        paging::Mode::Off => Ok(PageTables::Off),
        paging::Mode::Long { levels } => {
            let leaves = paging::long_mode_leaves(&Phys(mem), &regs, MAX_LEAVES)
                .unwrap_or(Ok(Vec::new()))?;
            Ok(PageTables::Long {
                levels,
                leaves: (leaves.iter())
                    .map(|l| PageLeaf {
                        va: l.va,
                        entry: l.entry,
                        size: l.size,
                        prot: l.prot,
                    })
                    .collect(),
            })
        }
        _ => Ok(PageTables::Legacy),
    }
}

pub fn paging_regs(c: &CpuRegs) -> PagingRegs {
    PagingRegs {
        cr0: c.sregs.cr0,
        cr3: c.sregs.cr3,
        cr4: c.sregs.cr4,
        efer: c.sregs.efer,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// QEMU's words for a virtual range that is not all mapped RAM.
    #[error("Invalid addr {addr:#018x}/size {size} specified")]
    Unmapped { addr: u64, size: u64 },
    /// QEMU's QERR_IO_ERROR.
    #[error("An IO error has occurred")]
    Write(std::io::Error),
}

/// memsave (`cpu` given: virtual addresses through its page tables) or pmemsave
/// (physical; what is not RAM reads as zeroes, as QEMU's unassigned memory does):
/// `size` bytes from `addr` into `out`.
pub fn save(
    mem: &GuestMemoryMmap,
    out: &mut File,
    addr: u64,
    size: u64,
    cpu: Option<&PagingRegs>,
) -> Result<(), SaveError> {
    let mut buf = [0u8; SAVE_CHUNK as usize];
    let mut done = 0;
    while done < size {
        let len = (size - done).min(SAVE_CHUNK);
        let chunk = &mut buf[..len as usize];
        let mut at = 0u64;
        while at < len {
            let va = addr.wrapping_add(done + at);
            let piece = (len - at).min(PAGE - (va & (PAGE - 1)));
            let dst = &mut chunk[at as usize..(at + piece) as usize];
            match cpu {
                Some(regs) => {
                    let pa = paging::translate(&Phys(mem), regs, va);
                    if pa.and_then(|pa| mem.read_slice(dst, GuestAddress(pa)).ok()) != Some(()) {
                        return Err(SaveError::Unmapped { addr, size });
                    }
                }
                None => {
                    if mem.read_slice(dst, GuestAddress(va)).is_err() {
                        dst.fill(0);
                    }
                }
            }
            at += piece;
        }
        out.write_all(chunk).map_err(SaveError::Write)?;
        done += len;
    }
    Ok(())
}

/// What a dump writes, and how many bytes of guest memory it holds.
pub struct Plan {
    pub body: Body,
    pub total: u64,
}

pub enum Body {
    /// An ELF core: the headers, then the physical `ranges` in order.
    Elf {
        header: Vec<u8>,
        ranges: Vec<(u64, u64)>,
    },
    Kdump(kdump::Kdump),
    /// win-dmp: QEMU writes it from the header a Windows guest's driver leaves in the
    /// vmcoreinfo device's note. A VM here has no vmcoreinfo device, so the dump fails
    /// as QEMU's does for a guest without that note (QEMU's words: `WIN_DMP_NO_NOTE`).
    WinDmp,
}

/// QEMU 7.2's words for a win-dmp dump of a guest that left no vmcoreinfo note.
pub const WIN_DMP_NO_NOTE: &str = "win-dump: invalid vmcoreinfo note size";

/// The physical ranges a dump covers: every RAM block, or its overlap with the filter,
/// with QEMU's checks (and words) for the filter.
fn ranges(blocks: &[(u64, u64)], filter: Option<DumpFilter>) -> Result<Vec<(u64, u64)>, String> {
    let Some(f) = filter else {
        return Ok(blocks.to_vec());
    };
    if f.length == 0 {
        return Err("Invalid parameter 'length'".into());
    }
    let (begin, end) = (
        i128::from(f.begin),
        i128::from(f.begin) + i128::from(f.length),
    );
    let ranges: Vec<(u64, u64)> = blocks
        .iter()
        .filter_map(|&(start, len)| {
            let from = begin.max(i128::from(start));
            let to = end.min(i128::from(start) + i128::from(len));
            (to > from).then_some((from as u64, (to - from) as u64))
        })
        .collect();
    if ranges.is_empty() {
        return Err("dump: no guest memory to dump".into());
    }
    // QEMU finds no block to start from below address 0.
    if f.begin < 0 {
        return Err("Invalid parameter 'begin'".into());
    }
    Ok(ranges)
}

/// Every vCPU's RAM mappings from the first with paging on (QEMU's order), merged: by
/// physical address, overlaps and continuations of the same offset joined.
fn virtual_mappings(
    mem: &GuestMemoryMmap,
    cpus: &[CpuRegs],
    limit: usize,
) -> Result<Option<Vec<Mapping>>, String> {
    let Some(first) = cpus
        .iter()
        .position(|c| paging_regs(c).mode() != paging::Mode::Off)
    else {
        return Ok(None);
    };
    let is_ram = |pa: u64| mem.find_region(GuestAddress(pa)).is_some();
    let mut all = Vec::new();
    for c in &cpus[first..] {
        let regs = paging_regs(c);
        if regs.mode() == paging::Mode::Off {
            continue;
        }
        let found = paging::mappings(&Phys(mem), &regs, &is_ram, limit)
            .map_err(|e| format!("dump: {e}"))?;
        all.extend(found);
    }
    all.sort_unstable_by_key(|m| (m.pa, m.va));
    let mut merged: Vec<Mapping> = Vec::new();
    for m in all {
        if let Some(last) = merged.last_mut() {
            let same_offset = last.va.wrapping_sub(last.pa) == m.va.wrapping_sub(m.pa);
            if same_offset && m.pa <= last.pa + last.len {
                last.len = last.len.max(m.pa + m.len - last.pa);
                continue;
            }
        }
        merged.push(m);
    }
    Ok(Some(merged))
}

/// Plans a dump of `mem` with `cpus`' registers.
pub fn plan(
    mem: &GuestMemoryMmap,
    cpus: &[CpuRegs],
    request: &DumpRequest,
) -> Result<Plan, String> {
    let compression = match request.format {
        DumpFormat::Elf => return plan_elf(mem, cpus, request),
        DumpFormat::KdumpZlib => kdump::Compression::Zlib,
        DumpFormat::KdumpLzo => kdump::Compression::Lzo,
        DumpFormat::KdumpSnappy => kdump::Compression::Snappy,
        DumpFormat::WinDmp => {
            return Ok(Plan {
                body: Body::WinDmp,
                total: blocks(mem).iter().map(|b| b.1).sum(),
            })
        }
    };
    // The gateway refused paging and a filter for these (QEMU's check and words).
    let core = kdump::plan(&blocks(mem), cpus, compression)?;
    Ok(Plan {
        total: core.total(),
        body: Body::Kdump(core),
    })
}

fn plan_elf(
    mem: &GuestMemoryMmap,
    cpus: &[CpuRegs],
    request: &DumpRequest,
) -> Result<Plan, String> {
    let ranges = ranges(&blocks(mem), request.filter)?;
    let total = ranges.iter().map(|r| r.1).sum();
    // Each range's place among the memory written, from the start of guest memory.
    let mut at = 0;
    let placed: Vec<(u64, u64, u64)> = ranges
        .iter()
        .map(|&(start, len)| {
            at += len;
            (start, len, at - len)
        })
        .collect();
    let limit = elf::MAX_PHDRS - 1;
    let mappings = match request.paging {
        true => virtual_mappings(mem, cpus, limit)?,
        false => None,
    };
    let mut loads: Vec<Load> = match mappings {
        // Without paging (or without a vCPU that pages) virtual is physical, as QEMU's.
        None => placed
            .iter()
            .map(|&(pa, len, offset)| Load {
                va: pa,
                pa,
                len,
                offset,
            })
            .collect(),
        Some(mappings) => {
            let mut loads = Vec::new();
            for m in mappings {
                for &(start, len, offset) in &placed {
                    let from = m.pa.max(start);
                    let to = (m.pa + m.len).min(start + len);
                    if to > from {
                        if loads.len() >= limit {
                            return Err(format!(
                                "dump: the page tables map more than {limit} separate ranges"
                            ));
                        }
                        loads.push(Load {
                            va: m.va.wrapping_add(from - m.pa),
                            pa: from,
                            len: to - from,
                            offset: offset + (from - start),
                        });
                    }
                }
            }
            loads
        }
    };
    let (_, memory_at) = elf::layout(loads.len(), cpus.len());
    for l in &mut loads {
        l.offset += memory_at;
    }
    Ok(Plan {
        body: Body::Elf {
            header: elf::headers(cpus, &loads),
            ranges,
        },
        total,
    })
}

/// The last dump's progress, shared between the runner and the writing thread.
pub type Progress = Arc<Mutex<DumpProgress>>;

pub fn no_dump_yet() -> Progress {
    Arc::new(Mutex::new(DumpProgress {
        status: DumpStatus::None,
        completed: 0,
        total: 0,
    }))
}

/// A dump refused once its file was open: failed, as QEMU's query-dump then says.
pub fn refused(progress: &Progress) {
    *progress.lock() = DumpProgress {
        status: DumpStatus::Failed,
        completed: 0,
        total: 0,
    };
}

/// Writes `plan` into `out` on a thread of its own; `done` is called on that thread with
/// the error, if any, once the progress says how it ended.
pub fn start(
    mem: GuestMemoryMmap,
    plan: Plan,
    mut out: File,
    progress: Progress,
    done: impl FnOnce(Option<String>) + Send + 'static,
) -> std::io::Result<()> {
    *progress.lock() = DumpProgress {
        status: DumpStatus::Active,
        completed: 0,
        total: plan.total,
    };
    let shared = progress.clone();
    let spawned = std::thread::Builder::new()
        .name("dump".into())
        .spawn(move || {
            let result = write(&mem, &plan, &mut out, &shared);
            let error = result.err();
            shared.lock().status = match error {
                None => DumpStatus::Completed,
                Some(_) => DumpStatus::Failed,
            };
            drop(out);
            done(error);
        });
    if let Err(e) = spawned {
        progress.lock().status = DumpStatus::Failed;
        return Err(e);
    }
    Ok(())
}

fn write(
    mem: &GuestMemoryMmap,
    plan: &Plan,
    out: &mut File,
    progress: &Progress,
) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("dump: failed to write the core: {e}");
    let (header, ranges) = match &plan.body {
        Body::Elf { header, ranges } => (header, ranges),
        Body::Kdump(core) => {
            let out = BufWriter::with_capacity(1 << 16, out);
            let done = |n| progress.lock().completed += n;
            return core.write(mem, out, done).map_err(failed);
        }
        Body::WinDmp => return Err(WIN_DMP_NO_NOTE.into()),
    };
    out.write_all(header).map_err(failed)?;
    let mut buf = vec![0u8; DUMP_CHUNK as usize];
    chunks::each_chunk(mem, ranges, &mut buf, |chunk| {
        out.write_all(chunk)?;
        progress.lock().completed += chunk.len() as u64;
        Ok(())
    })
    .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(begin: i64, length: i64) -> Option<DumpFilter> {
        Some(DumpFilter { begin, length })
    }

    #[test]
    fn filters_as_qemu_checks_them() {
        let blocks = [(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)];
        assert_eq!(ranges(&blocks, None).unwrap(), blocks.to_vec());
        assert_eq!(
            ranges(&blocks, filter(0xbfff_f000, 0x4000_2000)).unwrap(),
            vec![(0xbfff_f000, 0x1000), (0x1_0000_0000, 0x1000)]
        );
        assert_eq!(
            ranges(&blocks, filter(0, 0)).unwrap_err(),
            "Invalid parameter 'length'"
        );
        for (b, l) in [(0xc000_0000, 0x1000), (4096, -4096), (0x10_0000_0000, 1)] {
            assert_eq!(
                ranges(&blocks, filter(b, l)).unwrap_err(),
                "dump: no guest memory to dump"
            );
        }
        assert_eq!(
            ranges(&blocks, filter(-5, 4096)).unwrap_err(),
            "Invalid parameter 'begin'"
        );
    }
}
