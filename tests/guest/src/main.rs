//! Flotilla's test guest: a small x86_64 kernel booted through the PVH protocol on QEMU
//! microvm, QEMU q35 and Flotilla's vmm-core. It reads the firmware tables instead of assuming
//! any VMM's values, starts every CPU, prints `GUEST READY cpus=N mem_mib=M` and runs the
//! scenario named by `scenario=` on the command line. This file is the boot sequence
//! ([`kernel_main`]) and the panic handler; the rest is laid out as
//! - `arch/`: the CPU and platform (PVH entry, GDT/TSS, IDT, APICs, PIC, PIT, TSC, SMP, ring 3,
//!   timed halts, memory);
//! - `acpi/`: the firmware tables, and power management driven by them;
//! - `drivers/`: PCI, the virtio transport and virtqueues, virtio-blk, virtio-net,
//!   virtio-balloon;
//! - `scenarios/`: the dispatcher and the scenarios (`blk/` and `net/` for the device ones);
//! - support: `console` (output lines), `cmdline`, `sync`, `netproto` (Ethernet to UDP).
//!
//! Ring 0 is emulated on the kvm-pvm hosts this is tested on (about 2 M instructions/s, and
//! without SSE arithmetic, int n, int3, rdtscp, xsave...), so the ring-0 paths are short and
//! the target is soft-float; heavy loops belong in ring 3 (arch/user.rs).
//!
//! Output lines the host-side tests match on: `GUEST READY ...`, `GUEST IDLE[ no-power-button]`,
//! `GUEST POWER BUTTON`, `GUEST POWEROFF`, `GUEST REBOOT`, `GUEST RING3 OK ...`,
//! `GUEST PANIC ...`, `GUEST ERROR ...`, and the block scenarios' `GUEST BLK ...`,
//! `GUEST BENCH ...` and `GUEST PCI ...` (scenarios/blk/, scenarios/pci.rs), the network
//! scenarios' `GUEST NET ...` (scenarios/net/), and migrate-dirty's `GUEST MIG ready ...`,
//! `GUEST MIG round R ok ...`, `GUEST MIG blk N ok ...`, `GUEST MIG net N ok ...`,
//! `GUEST MIG selftest ...`, `GUEST MIG done ...` and `GUEST ERROR mig ...`
//! (scenarios/migrate/), the balloon scenario's `GUEST BALLOON ...` (scenarios/balloon.rs),
//! pci-hotplug's `GUEST HOTPLUG ...` (scenarios/hotplug/) and cpu-hotplug's `GUEST CPU ...`
//! (scenarios/cpu_hotplug.rs); `GUEST INFO ...` lines are diagnostics.

#![no_std]
#![no_main]

mod acpi;
mod arch;
mod cmdline;
mod console;
mod drivers;
mod netproto;
mod scenarios;
mod sync;

use acpi::gas::{Gas, Space};
use acpi::power::{self, AcpiMode};
use acpi::Acpi;
use arch::{apic, cpu, cpus, gdt, interrupts, memory, phys, pic, pit, smp, start_info, topology};
use console::Line;
use core::fmt::Write;

/// Rust entry of the BSP, called by the PVH entry code in long mode with the physical address
/// of `struct hvm_start_info`.
extern "C" fn kernel_main(start_info_paddr: u64) -> ! {
    console::init();
    gdt::init_cpu(0);
    interrupts::init();
    let boot = start_info::init(start_info_paddr);
    memory::init(boot);
    pit::init();
    pic::remap_and_mask();

    let acpi = acpi::init(boot.rsdp);
    let mode = power::enable_acpi_mode(acpi);
    if acpi.madt_present {
        let base = acpi.madt.lapic_address;
        if phys::range_ok(base, 4096) {
            apic::set_base(base);
        } else {
            console::error("madt: local APIC address=")
                .hex(base)
                .s(" is outside the mapped 4 GiB")
                .end();
        }
    }
    // Firmware hands over in xAPIC mode; anything else would need the x2APIC MSRs.
    let xapic = !apic::in_x2apic_mode();
    if xapic {
        apic::enable();
    } else {
        console::error("firmware left the local APIC in x2APIC mode: no APs").end();
    }
    cpus::register_bsp();
    topology::check_this_cpu(0);
    print_info(acpi, mode);

    let cpus = if xapic {
        smp::start_aps(acpi, boot)
    } else {
        cpus::online_count()
    };
    topology::report();
    console::line("GUEST READY cpus=")
        .dec(u64::from(cpus))
        .s(" mem_mib=")
        .dec(boot.usable_mib())
        .end();
    scenarios::run(cmdline::scenario(boot.cmdline()), acpi, boot.cmdline())
}

fn gas(line: Line, name: &str, reg: Option<Gas>) -> Line {
    let line = line.s(name);
    match reg {
        None => line.s("none"),
        Some(reg) => match reg.space {
            Space::Io => line.s("io:").hex(reg.address),
            Space::Memory => line.s("mem:").hex(reg.address),
            Space::PciConfig => line.s("pci:").hex(reg.address),
            Space::Other(id) => line.s("space").dec(u64::from(id)).s(":").hex(reg.address),
        },
    }
}

/// One diagnostic line with the firmware facts the guest acts on (kept short: every byte is a
/// VM exit, tens of microseconds each on kvm-pvm).
fn print_info(acpi: &Acpi, mode: AcpiMode) {
    let cpus = acpi.madt.cpus();
    let hotplug = cpus
        .iter()
        .filter(|c| !c.enabled && c.online_capable)
        .count() as u64;
    let line = console::line("GUEST INFO rsdp=")
        .hex(acpi.rsdp)
        .s("/")
        .s(acpi.rsdp_source.name())
        .s(if acpi.xsdt { " xsdt" } else { " rsdt" })
        .s(" madt_cpus=")
        .dec(cpus.iter().filter(|c| c.enabled).count() as u64);
    let line = if hotplug != 0 {
        line.s(" online_capable=").dec(hotplug)
    } else {
        line
    };
    let line = match acpi.fadt {
        None => line.s(" fadt=none"),
        Some(f) => {
            let line = line
                .flag(" hw_reduced=", f.hw_reduced())
                .s(" sci=")
                .dec(u64::from(f.sci_int))
                .s(" smi_cmd=")
                .hex(u64::from(f.smi_cmd))
                .s(" acpi=")
                .s(mode.name());
            let line = gas(line, " pm1a_evt=", f.pm1a_evt);
            let line = gas(line, " pm1a_cnt=", f.pm1a_cnt);
            let line = gas(line, " sleep_ctl=", f.sleep_control);
            let line = gas(
                line,
                " reset=",
                if f.reset_supported() {
                    f.reset_reg
                } else {
                    None
                },
            );
            line.s("/").hex(u64::from(f.reset_value))
        }
    };
    match acpi.s5 {
        Some(s5) => line
            .s(" s5=")
            .dec(u64::from(s5.a))
            .s(",")
            .dec(u64::from(s5.b)),
        None => line.s(" s5=none"),
    }
    .end();
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut line = console::line_forced("GUEST PANIC ");
    let _ = write!(line, "{}", info.message());
    if let Some(location) = info.location() {
        let _ = write!(
            line,
            " at {}:{}:{}",
            location.file(),
            location.line(),
            location.column()
        );
    }
    drop(line);
    cpu::halt_forever()
}
