//! The ACPI tables vmm-core writes into guest memory, found the way an OS finds them
//! (RSDP -> XSDT -> FADT -> DSDT/FACS), each disassembled by `iasl -d` (acpica-tools)
//! without errors or checksum warnings.

use std::process::Command;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_core::boot::BootImage;
use vmm_core::cpu::layout::CpuLayout;
use vmm_core::memory::GuestRam;

use flotilla_tests::{require_tool, test_guest, TempDir};

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    let header = read(mem, addr, 36);
    read(mem, addr, u32_at(&header, 4) as usize)
}

/// Every table reachable from the RSDP, with its file name.
fn tables_in_memory(cpus: usize) -> Vec<(String, Vec<u8>)> {
    let ram = GuestRam::new(128).unwrap();
    let loaded = BootImage::open(&test_guest(), None, "")
        .unwrap()
        .load(&ram, &CpuLayout::all(cpus as u32))
        .unwrap();
    let mem = ram.memory();
    let rsdp = read(mem, loaded.rsdp.0, 36);
    check_rsdp(&rsdp);
    let xsdt = table(mem, u64_at(&rsdp, 24));
    assert_eq!(&xsdt[..4], b"XSDT");
    let mut out = vec![("xsdt".to_string(), xsdt.clone())];
    for entry in xsdt[36..].chunks(8) {
        let t = table(mem, u64::from_le_bytes(entry.try_into().unwrap()));
        let sig = String::from_utf8_lossy(&t[..4]).to_lowercase();
        if &t[..4] == b"FACP" {
            let dsdt = table(mem, u64_at(&t, 140));
            assert_eq!(
                u32_at(&t, 40) as u64,
                u64_at(&t, 140),
                "DSDT and X_DSDT agree"
            );
            let facs = read(mem, u32_at(&t, 36) as u64, 64);
            assert_eq!(&facs[..4], b"FACS");
            out.push(("dsdt".to_string(), dsdt));
            out.push(("facs".to_string(), facs));
        }
        out.push((sig, t));
    }
    out
}

/// iasl 20200925 (Debian 12) refuses a bare RSDP ("Binary file does not contain a valid
/// ACPI table"), so the RSDP gets the checks ACPICA's AcpiTbValidateRsdp makes.
fn check_rsdp(rsdp: &[u8]) {
    let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision 2 (has an XSDT)");
    assert_eq!(u32_at(rsdp, 20), 36, "RSDP length");
    assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
}

#[test]
fn iasl_disassembles_every_table_cleanly() {
    let iasl = require_tool("iasl", "acpica-tools");
    for cpus in [1, 2, 8] {
        let tables = tables_in_memory(cpus);
        let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
        for wanted in ["xsdt", "facp", "apic", "dsdt", "facs"] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
        let dir = TempDir::new("acpi");
        for (name, bytes) in &tables {
            let path = dir.path().join(format!("{name}.dat"));
            std::fs::write(&path, bytes).unwrap();
            let out = Command::new(&iasl)
                .arg("-d")
                .arg(&path)
                .current_dir(dir.path())
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "iasl -d {name}: {text}");
            let lower = text.to_lowercase();
            for bad in ["error", "warning", "checksum", "invalid"] {
                // iasl prints "0 Errors" style summaries only when compiling; when
                // disassembling a clean table none of these words appear.
                assert!(
                    !lower.contains(bad),
                    "iasl -d {name} ({cpus} cpus) says {bad}: {text}"
                );
            }
            let dsl = std::fs::read_to_string(dir.path().join(format!("{name}.dsl")))
                .unwrap_or_else(|e| panic!("iasl wrote no {name}.dsl: {e}\n{text}"));
            assert!(!dsl.contains("Incorrect"), "iasl flags {name}:\n{dsl}");
            if name == "apic" {
                let lapics = dsl.matches("Processor Local APIC").count();
                assert_eq!(lapics, cpus, "MADT lists every vCPU:\n{dsl}");
            }
            if name == "dsdt" {
                assert!(dsl.contains("PNP0501") && dsl.contains("_S5_"), "{dsl}");
            }
        }
    }
}
