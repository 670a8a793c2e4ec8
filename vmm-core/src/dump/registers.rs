//! A vCPU's registers for the monitor's `info registers` (ipc's CpuRegisters): what
//! QEMU's x86_cpu_dump_state prints, read from KVM as QEMU's KVM accelerator reads it
//! (general and segment registers, debug registers, the FPU/SSE state, XCR0 and the
//! XSAVE area for AVX's and AVX-512's parts, the interrupt shadow and SMM from the
//! vCPU events, HLT from the MP state).

use ipc::registers::{CpuRegisters, DescriptorTable, Segment};
use kvm_bindings::{kvm_dtable, kvm_fpu, kvm_segment, KVM_MP_STATE_HALTED};

use super::read_cpu;
use crate::vcpu::{Vcpu, VcpuError};

/// XCR0's components with registers `info registers` prints.
const XSTATE_YMM: u64 = 1 << 2;
const XSTATE_AVX512: u64 = 0b111 << 5;
/// Where the XSAVE area (standard format, as KVM_GET_XSAVE gives it) keeps them.
const YMM_HI128: usize = 576;
const OPMASK: usize = 1088;
const ZMM_HI256: usize = 1152;
const HI16_ZMM: usize = 1664;
/// FXSAVE's layout: FCW at 0, FSW 2, the abridged tags 4, MXCSR 24, ST0-7, XMM0-15.
const FXSAVE_SIZE: usize = 512;
const ST: usize = 32;
const XMM: usize = 160;

/// The registers of a vCPU whose thread is parked.
pub fn read(vcpu: &Vcpu) -> Result<CpuRegisters, VcpuError> {
    let cpu = read_cpu(vcpu)?;
    let fd = vcpu.fd();
    let debug = fd
        .get_debug_regs()
        .map_err(vcpu.err("reading debug registers"))?;
    let events = fd
        .get_vcpu_events()
        .map_err(vcpu.err("reading vCPU events"))?;
    let mp = fd
        .get_mp_state()
        .map_err(vcpu.err("reading the MP state"))?;
    // Without KVM_CAP_XCRS XCR0 is x87|SSE only, as QEMU assumes.
    let xcr0 = fd
        .get_xcrs()
        .ok()
        .and_then(|x| {
            x.xcrs[..x.nr_xcrs as usize]
                .iter()
                .find(|x| x.xcr == 0)
                .map(|x| x.value)
        })
        .unwrap_or(3);
    let (r, s) = (cpu.regs, cpu.sregs);
    // As QEMU: the legacy and SSE state from the XSAVE area where KVM has one (its
    // first 512 bytes are FXSAVE's layout), else from KVM_GET_FPU.
    let xsave: Option<Vec<u8>> = fd
        .get_xsave()
        .ok()
        .map(|area| area.region.iter().flat_map(|w| w.to_le_bytes()).collect());
    let legacy = match &xsave {
        Some(bytes) => bytes[..FXSAVE_SIZE].to_vec(),
        None => fxsave_layout(&fd.get_fpu().map_err(vcpu.err("reading the FPU state"))?),
    };
    let mut vectors = vec![[0u64; 8]; 32];
    for (i, v) in vectors.iter_mut().enumerate().take(16) {
        v[0] = quad(&legacy, XMM + 16 * i);
        v[1] = quad(&legacy, XMM + 16 * i + 8);
    }
    let mut opmask = [0; 8];
    if let Some(bytes) = xsave
        .as_ref()
        .filter(|_| xcr0 & (XSTATE_YMM | XSTATE_AVX512) != 0)
    {
        for (i, v) in vectors.iter_mut().enumerate() {
            if i < 16 {
                v[2] = quad(bytes, YMM_HI128 + 16 * i);
                v[3] = quad(bytes, YMM_HI128 + 16 * i + 8);
                for q in 0..4 {
                    v[4 + q] = quad(bytes, ZMM_HI256 + 32 * i + 8 * q);
                }
            } else {
                for (q, word) in v.iter_mut().enumerate() {
                    *word = quad(bytes, HI16_ZMM + 64 * (i - 16) + 8 * q);
                }
            }
        }
        for (k, mask) in opmask.iter_mut().enumerate() {
            *mask = quad(bytes, OPMASK + 8 * k);
        }
    }
    let mut fpr = [(0, 0); 8];
    for (i, f) in fpr.iter_mut().enumerate() {
        let at = ST + 16 * i;
        *f = (
            quad(&legacy, at),
            u16::from_le_bytes([legacy[at + 8], legacy[at + 9]]),
        );
    }
    let word = |at: usize| u16::from_le_bytes([legacy[at], legacy[at + 1]]);
    Ok(CpuRegisters {
        index: cpu.index,
        gpr: [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
        rip: r.rip,
        rflags: r.rflags,
        segments: [s.es, s.cs, s.ss, s.ds, s.fs, s.gs, s.ldt, s.tr].map(|g| segment(&g)),
        gdt: table(&s.gdt),
        idt: table(&s.idt),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
        dr: [
            debug.db[0],
            debug.db[1],
            debug.db[2],
            debug.db[3],
            debug.dr6,
            debug.dr7,
        ],
        interrupt_shadow: events.interrupt.shadow != 0,
        smm: events.smi.smm != 0,
        halted: mp.mp_state == KVM_MP_STATE_HALTED,
        fcw: word(0),
        fsw: word(2),
        ftw: legacy[4],
        mxcsr: u32::from(word(24)) | u32::from(word(26)) << 16,
        fpr,
        xcr0,
        opmask,
        vectors,
    })
}

/// KVM_GET_FPU's state in FXSAVE's layout.
fn fxsave_layout(fpu: &kvm_fpu) -> Vec<u8> {
    let mut out = vec![0u8; FXSAVE_SIZE];
    out[0..2].copy_from_slice(&fpu.fcw.to_le_bytes());
    out[2..4].copy_from_slice(&fpu.fsw.to_le_bytes());
    out[4] = fpu.ftwx;
    out[24..28].copy_from_slice(&fpu.mxcsr.to_le_bytes());
    for (i, st) in fpu.fpr.iter().enumerate() {
        out[ST + 16 * i..ST + 16 * (i + 1)].copy_from_slice(st);
    }
    for (i, xmm) in fpu.xmm.iter().enumerate() {
        out[XMM + 16 * i..XMM + 16 * (i + 1)].copy_from_slice(xmm);
    }
    out
}

/// The little-endian quadword at `at` (0 past the end).
fn quad(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// As QEMU's get_seg: the attribute bits in descriptor order, none for an unusable one.
fn segment(g: &kvm_segment) -> Segment {
    let flags = if g.unusable != 0 {
        0
    } else {
        u32::from(g.type_) << 8
            | u32::from(g.s) << 12
            | u32::from(g.dpl) << 13
            | u32::from(g.present) << 15
            | u32::from(g.avl) << 20
            | u32::from(g.l) << 21
            | u32::from(g.db) << 22
            | u32::from(g.g) << 23
    };
    Segment {
        selector: g.selector,
        base: g.base,
        limit: g.limit,
        flags,
    }
}

fn table(t: &kvm_dtable) -> DescriptorTable {
    DescriptorTable {
        base: t.base,
        limit: t.limit,
    }
}
