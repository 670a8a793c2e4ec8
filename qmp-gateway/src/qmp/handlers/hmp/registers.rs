//! HMP `info registers [-a|vcpu]`: a vCPU's registers (vmm-core reads them) in the text
//! of QEMU 7.2's x86_cpu_dump_state with CPU_DUMP_FPU, as its monitor prints them.

use std::fmt::Write;

use ipc::registers::{CpuRegisters, Segment};
use ipc::{VmmReply, VmmRequest};

use super::args;
use super::reply::{current_cpu, present_vcpus, try_help};
use crate::qmp::context::Ctx;

const CR0_PE: u64 = 1;
const EFER_LMA: u64 = 1 << 10;
const XSTATE_YMM: u64 = 1 << 2;
const XSTATE_AVX512: u64 = 0b111 << 5;
const SEGMENT_NAMES: [&str; 8] = ["ES", "CS", "SS", "DS", "FS", "GS", "LDT", "TR"];

/// `info registers`: the current vCPU's, vCPU `vcpu`'s or (-a) every vCPU's.
pub fn info_registers(c: &mut Ctx, arguments: &str, cpu: &mut u32) -> String {
    let members = match args::read("registers", "cpustate_all:-a,vcpu:i?", arguments) {
        Ok(m) => m,
        Err(why) => return try_help(&why, "info registers"),
    };
    let present = present_vcpus(c);
    let wanted = if members.contains_key("cpustate_all") {
        present
    } else {
        let vcpu = members.get("vcpu").and_then(|v| v.as_i64()).unwrap_or(-1);
        if vcpu >= 0 {
            match present.contains(&(vcpu as u32)) {
                true => vec![vcpu as u32],
                false => return format!("CPU#{vcpu} not available\n"),
            }
        } else {
            match current_cpu(&present, cpu) {
                Some(index) => vec![index],
                None => return "No CPU available\n".into(),
            }
        }
    };
    let mut out = String::new();
    for index in wanted {
        match c.gw.vmm.request(VmmRequest::QueryRegisters { index }, &[]) {
            Ok(VmmReply::Registers(r)) => out += &format!("\nCPU#{index}\n{}", dump(&r)),
            Ok(other) => return format!("Error: vmm-core answered with {other:?}\n"),
            Err(e) => return format!("Error: {e}\n"),
        }
    }
    out
}

/// x86_cpu_dump_state(CPU_DUMP_FPU)'s text.
pub fn dump(r: &CpuRegisters) -> String {
    let lma = r.efer & EFER_LMA != 0;
    let cs64 = lma && r.segments[1].flags & (1 << 21) != 0;
    let pe = r.cr0 & CR0_PE != 0;
    // QEMU's CPL is SS's DPL.
    let cpl = (r.segments[2].flags >> 13) & 3;
    let f = r.rflags;
    let bit = |n: u32, c: char| if f & (1 << n) != 0 { c } else { '-' };
    let flags: String = [
        bit(10, 'D'),
        bit(11, 'O'),
        bit(7, 'S'),
        bit(6, 'Z'),
        bit(4, 'A'),
        bit(2, 'P'),
        bit(0, 'C'),
    ]
    .iter()
    .collect();
    let state = format!(
        "CPL={cpl} II={} A20=1 SMM={} HLT={}\n",
        u8::from(r.interrupt_shadow),
        u8::from(r.smm),
        u8::from(r.halted)
    );
    let g = &r.gpr;
    let mut o = String::new();
    if cs64 {
        let names = [
            "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8 ", "R9 ", "R10", "R11",
            "R12", "R13", "R14", "R15",
        ];
        for (i, (name, value)) in names.iter().zip(g).enumerate() {
            let end = if i % 4 == 3 { "\n" } else { " " };
            let _ = write!(o, "{name}={value:016x}{end}");
        }
        let _ = write!(
            o,
            "RIP={:016x} RFL={:08x} [{flags}] {state}",
            r.rip, f as u32
        );
    } else {
        let names = ["EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP", "ESP"];
        for (i, (name, value)) in names.iter().zip(g).enumerate() {
            let end = if i % 4 == 3 { "\n" } else { " " };
            let _ = write!(o, "{name}={:08x}{end}", *value as u32);
        }
        let _ = write!(
            o,
            "EIP={:08x} EFL={:08x} [{flags}] {state}",
            r.rip as u32, f as u32
        );
    }
    for (name, s) in SEGMENT_NAMES.iter().zip(&r.segments) {
        segment(&mut o, name, s, cs64, lma, pe);
    }
    if lma {
        let _ = writeln!(o, "GDT=     {:016x} {:08x}", r.gdt.base, r.gdt.limit);
        let _ = writeln!(o, "IDT=     {:016x} {:08x}", r.idt.base, r.idt.limit);
        let _ = writeln!(
            o,
            "CR0={:08x} CR2={:016x} CR3={:016x} CR4={:08x}",
            r.cr0 as u32, r.cr2, r.cr3, r.cr4 as u32
        );
    } else {
        let _ = writeln!(o, "GDT=     {:08x} {:08x}", r.gdt.base as u32, r.gdt.limit);
        let _ = writeln!(o, "IDT=     {:08x} {:08x}", r.idt.base as u32, r.idt.limit);
        let _ = writeln!(
            o,
            "CR0={:08x} CR2={:08x} CR3={:08x} CR4={:08x}",
            r.cr0 as u32, r.cr2 as u32, r.cr3 as u32, r.cr4 as u32
        );
    }
    for (i, d) in r.dr[..4].iter().enumerate() {
        let _ = write!(o, "DR{i}={d:016x} ");
    }
    let _ = writeln!(o, "\nDR6={:016x} DR7={:016x}", r.dr[4], r.dr[5]);
    let _ = writeln!(o, "EFER={:016x}", r.efer);
    fpu(&mut o, r, cs64);
    o
}

/// cpu_x86_dump_seg_cache's line.
fn segment(o: &mut String, name: &str, s: &Segment, cs64: bool, lma: bool, pe: bool) {
    let attrs = s.flags & 0x00ff_ff00;
    if cs64 {
        let _ = write!(
            o,
            "{name:<3}={:04x} {:016x} {:08x} {attrs:08x}",
            s.selector, s.base, s.limit
        );
    } else {
        let _ = write!(
            o,
            "{name:<3}={:04x} {:08x} {:08x} {attrs:08x}",
            s.selector, s.base as u32, s.limit
        );
    }
    let on = |n: u32| s.flags & (1 << n) != 0;
    if pe && on(15) {
        let _ = write!(o, " DPL={} ", (s.flags >> 13) & 3);
        if on(12) {
            let mark = |n: u32, c: char| if on(n) { c } else { '-' };
            if on(11) {
                o.push_str(if on(21) {
                    "CS64"
                } else if on(22) {
                    "CS32"
                } else {
                    "CS16"
                });
                let _ = write!(o, " [{}{}", mark(10, 'C'), mark(9, 'R'));
            } else {
                o.push_str(if on(22) || lma { "DS  " } else { "DS16" });
                let _ = write!(o, " [{}{}", mark(10, 'E'), mark(9, 'W'));
            }
            let _ = write!(o, "{}]", mark(8, 'A'));
        } else {
            o.push_str(system_type(lma, (s.flags >> 8) & 15));
        }
    }
    o.push('\n');
}

/// QEMU's names of system descriptor types, in legacy and long mode.
fn system_type(lma: bool, ty: u32) -> &'static str {
    const LEGACY: [&str; 16] = [
        "Reserved",
        "TSS16-avl",
        "LDT",
        "TSS16-busy",
        "CallGate16",
        "TaskGate",
        "IntGate16",
        "TrapGate16",
        "Reserved",
        "TSS32-avl",
        "Reserved",
        "TSS32-busy",
        "CallGate32",
        "Reserved",
        "IntGate32",
        "TrapGate32",
    ];
    const LONG: [&str; 16] = [
        "<hiword>",
        "Reserved",
        "LDT",
        "Reserved",
        "Reserved",
        "Reserved",
        "Reserved",
        "Reserved",
        "Reserved",
        "TSS64-avl",
        "Reserved",
        "TSS64-busy",
        "CallGate64",
        "Reserved",
        "IntGate64",
        "TrapGate64",
    ];
    (if lma { LONG } else { LEGACY })[ty as usize & 15]
}

/// The FPU, then the vector registers in the widest form XCR0 enables.
fn fpu(o: &mut String, r: &CpuRegisters, cs64: bool) {
    let _ = writeln!(
        o,
        "FCW={:04x} FSW={:04x} [ST={}] FTW={:02x} MXCSR={:08x}",
        r.fcw,
        r.fsw,
        (r.fsw >> 11) & 7,
        r.ftw,
        r.mxcsr
    );
    for (i, (low, high)) in r.fpr.iter().enumerate() {
        let end = if i & 1 == 1 { "\n" } else { " " };
        let _ = write!(o, "FPR{i}={low:016x} {high:04x}{end}");
    }
    let v = |i: usize| r.vectors.get(i).copied().unwrap_or_default();
    if r.xcr0 & XSTATE_AVX512 == XSTATE_AVX512 {
        for (i, k) in r.opmask.iter().enumerate() {
            let end = if i & 3 == 3 { "\n" } else { " " };
            let _ = write!(o, "Opmask{i:02}={k:016x}{end}");
        }
        for i in 0..if cs64 { 32 } else { 8 } {
            let z = v(i);
            let _ = writeln!(
                o,
                "ZMM{i:02}={:016x} {:016x} {:016x} {:016x} {:016x} {:016x} {:016x} {:016x}",
                z[7], z[6], z[5], z[4], z[3], z[2], z[1], z[0]
            );
        }
    } else if r.xcr0 & XSTATE_YMM != 0 {
        for i in 0..if cs64 { 16 } else { 8 } {
            let y = v(i);
            let _ = writeln!(
                o,
                "YMM{i:02}={:016x} {:016x} {:016x} {:016x}",
                y[3], y[2], y[1], y[0]
            );
        }
    } else {
        for i in 0..if cs64 { 16 } else { 8 } {
            let x = v(i);
            let end = if i & 1 == 1 { "\n" } else { " " };
            let _ = write!(o, "XMM{i:02}={:016x} {:016x}{end}", x[1], x[0]);
        }
    }
}
