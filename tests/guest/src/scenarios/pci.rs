//! The `pci-list` scenario (one `GUEST PCI ...` line per function), and the PCI set-up every
//! device scenario starts with: TSC calibration, the configuration access method, the scan,
//! the `pci_ecam=` / `pci_assign=` test aids, and the `GUEST INFO pci ...` / `GUEST INFO dma
//! ...` diagnostics.

use crate::acpi::power;
use crate::acpi::Acpi;
use crate::arch::{memory, tsc};
use crate::drivers::pci::bar::{self, Bar};
use crate::drivers::pci::config;
use crate::drivers::pci::scan::{self, Functions};
use crate::{cmdline, console};

/// What every PCI scenario does first (pci-list, block and network): calibrates
/// the TSC, picks the configuration access method, scans, applies the `pci_ecam=` and
/// `pci_assign=` test aids, and prints `GUEST INFO pci ...`.
pub fn setup(acpi: &Acpi, cmdline: &[u8]) -> Functions {
    tsc::calibrate();
    // Test aids for firmware that leaves PCI half set up (QEMU microvm): see drivers/pci/.
    let ecam = cmdline::param(cmdline, "pci_ecam").and_then(cmdline::parse_hex);
    let access = config::init(acpi, ecam);
    let functions = scan::scan();
    let assigned = match assign_window(cmdline) {
        Ok(Some((base, size))) => bar::assign_bars(&functions, base, size),
        _ => 0,
    };
    let line = console::line("GUEST INFO pci access=")
        .s(access)
        .s(" functions=")
        .dec(functions.iter().count() as u64);
    let line = if assigned != 0 {
        line.s(" bars_assigned=").dec(u64::from(assigned))
    } else {
        line
    };
    line.s(" tsc_khz=").dec(tsc::hz() / 1000).end();
    functions
}

/// The `pci_assign=<hex base>[,<hex size>]` window (size 0x20000000 by default): Ok(None)
/// without one, Err after an error line if it does not parse.
pub fn assign_window(cmdline: &[u8]) -> Result<Option<(u64, u64)>, ()> {
    let Some(window) = cmdline::param(cmdline, "pci_assign") else {
        return Ok(None);
    };
    let mut parts = window.splitn(2, |&b| b == b',');
    let base = parts.next().and_then(cmdline::parse_hex);
    let size = parts.next().map_or(Some(0x2000_0000), cmdline::parse_hex);
    match (base, size) {
        (Some(base), Some(size)) => Ok(Some((base, size))),
        _ => {
            console::error("pci_assign= wants <hex base>[,<hex size>]").end();
            Err(())
        }
    }
}

/// `GUEST INFO dma pool=<start>-<end>`.
pub fn dma_info() {
    let (dma_start, dma_end) = memory::dma_range();
    console::line("GUEST INFO dma pool=")
        .hex(dma_start)
        .s("-")
        .hex(dma_end)
        .end();
}

/// `pci-list`: the set-up, then one line per function found, then power-off.
pub fn list(acpi: &Acpi, cmdline: &[u8]) -> ! {
    let functions = setup(acpi, cmdline);
    print_functions(&functions);
    power::poweroff(acpi)
}

fn print_functions(functions: &Functions) {
    for f in functions.iter() {
        let line = f.addr.print(console::line("GUEST PCI "));
        let mut line = line
            .s(" vendor=")
            .hex(u64::from(f.vendor))
            .s(" device=")
            .hex(u64::from(f.device))
            .s(" class=")
            .hex(u64::from(f.class))
            .s(" header=")
            .hex(u64::from(f.header_type));
        if f.header_type & 0x7f == 0 {
            let mut index = 0;
            while index < 6 {
                let bar = bar::bar(f.addr, index);
                line = match bar {
                    // A BAR reading 0 is unimplemented or unassigned: not listed.
                    Bar::Unused | Bar::Memory { addr: 0, .. } | Bar::Io(0) => line,
                    Bar::Io(port) => line
                        .s(" bar")
                        .dec(u64::from(index))
                        .s("=io:")
                        .hex(u64::from(port)),
                    Bar::Memory { addr, is64, .. } => line
                        .s(" bar")
                        .dec(u64::from(index))
                        .s(if is64 { "=mem64:" } else { "=mem32:" })
                        .hex(addr),
                };
                index += if matches!(bar, Bar::Memory { is64: true, .. }) {
                    2
                } else {
                    1
                };
            }
        }
        line.end();
    }
}
