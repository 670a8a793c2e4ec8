//! What the guest does after `GUEST READY`, chosen by `scenario=NAME` on the command line
//! ([`run`] is the dispatcher). Each scenario ends in a power-off, a reset, or an endless halt;
//! none returns.
//!
//! - `idle` (default), `poweroff`, `reboot` and `ring3` are the ones the host tests rely on
//!   (idle.rs, acpi/power.rs, ring3.rs);
//! - `ring3-checks`, `fault` and `panic` exercise the guest's own failure reporting,
//!   `triple-fault` and `cmpxchg16b` the VMM's (ring3.rs, failures.rs);
//! - `pci-list` (pci.rs, with the PCI set-up every device scenario starts with);
//! - `pci-hotplug` (hotplug/): ACPI PCI hotplug of bus 0, virtio-blk and virtio-net devices
//!   added and removed while it runs; `cpu-hotplug` (cpu_hotplug.rs): ACPI CPU hotplug, the
//!   CPUs added started and given work; `mem-hotplug` (mem_hotplug.rs): ACPI memory hotplug,
//!   the DIMMs added checked (and used for disk I/O) and the ones asked for ejected;
//! - the `blk-*` scenarios (virtio-blk) in blk/, the `net-*` scenarios (virtio-net) in net/,
//!   `balloon` (virtio-balloon) in balloon.rs;
//! - `cpuid` (cpuid.rs): the CPU features a -cpu line turns off as the vCPU sees them;
//! - `input` (input.rs): an i8042 driver, the keyboard's and mouse's bytes printed;
//! - `serial-echo` (serial_echo.rs): the console's input, echoed a line at a time;
//! - `migrate-dirty` (migrate/), for live-migration tests and benchmarks: it keeps rewriting a
//!   working set in ring 3 and checks every page before each rewrite, so a page a migration
//!   lost or left stale is reported; optionally rate-limited, with block I/O and network
//!   echoes checked alongside.

mod balloon;
mod blk;
mod cpu_hotplug;
mod cpuid;
mod failures;
mod hotplug;
mod idle;
mod input;
mod mem_hotplug;
mod migrate;
mod net;
mod pci;
mod ring3;
mod serial_echo;

use crate::acpi::power;
use crate::acpi::Acpi;
use crate::console;

/// Runs scenario `name` (`idle` when there is none) on the BSP; `cmdline` holds its parameters.
pub fn run(name: Option<&[u8]>, acpi: &Acpi, cmdline: &[u8]) -> ! {
    match name {
        Some(name) if blk::handles(name) => blk::run(name, acpi, cmdline),
        Some(name) if net::handles(name) => net::run(name, acpi, cmdline),
        Some(b"pci-list") => pci::list(acpi, cmdline),
        Some(b"pci-hotplug") => hotplug::run(acpi, cmdline),
        Some(b"cpu-hotplug") => cpu_hotplug::run(acpi, cmdline),
        Some(b"mem-hotplug") => mem_hotplug::run(acpi, cmdline),
        Some(b"balloon") => balloon::run(acpi, cmdline),
        Some(b"serial-echo") => serial_echo::run(acpi, cmdline),
        Some(b"input") => input::run(acpi, cmdline),
        Some(b"cpuid") => cpuid::run(acpi),
        Some(b"migrate-dirty") => migrate::run(acpi, cmdline),
        None | Some(b"idle") => idle::run(acpi),
        Some(b"poweroff") => power::poweroff(acpi),
        Some(b"reboot") => power::reboot(acpi),
        Some(b"ring3") => ring3::run(acpi),
        Some(b"ring3-checks") => ring3::checks(acpi),
        Some(b"fault") => failures::ring0_fault(),
        Some(b"triple-fault") => failures::triple_fault(),
        Some(b"cmpxchg16b") => failures::ring0_cmpxchg16b(acpi),
        Some(b"panic") => panic!("requested by scenario=panic"),
        Some(other) => {
            console::error("unknown scenario=").ascii(other).end();
            power::poweroff(acpi)
        }
    }
}
