//! `cpu-hotplug`: ACPI CPU hotplug with QEMU's modern register interface (acpi/cpuhp.rs finds
//! it in the AML). The block is switched to modern mode (selector 0), the GPE whose `_Exx`
//! runs CSCN is enabled, the SCI routed, and `GUEST CPU HOTPLUG READY ...` printed. Then the
//! guest halts (interrupts on) until an SCI brings the event, and scans as QEMU's CSCN does:
//! command 0 selects the next CPU with an event; one with an insert event is started (its
//! APIC ID from command 3; INIT, SIPI, SIPI), its event cleared, its _OST written as Linux
//! answers the Device Check (source 1; status 0, or 1 when it did not come online),
//! `GUEST CPU ADDED ...` printed, and it runs a fixed integer loop in ring 3 whose result
//! the BSP checks (`GUEST CPU WORK ... ok`); until command 0 finds no CPU with an event. A remove event is
//! only cleared (the guest does not give CPUs back). With `cpu-work-ms=N` every AP runs the
//! loop again every N ms (`GUEST CPU WORK ... round=R`), showing it still runs (after a
//! migration or a live upgrade, say). Bounded loops only.

use crate::acpi::cpuhp::{self, Registers};
use crate::acpi::{gpe, power, Acpi};
use crate::arch::cpus::{self, MAX_CPUS};
use crate::arch::{ap_work, cpu, halt, smp, topology, tsc, user};
use crate::{cmdline, console};
use core::sync::atomic::Ordering;

/// _OST source: the Device Check notification QEMU's CSCN sends an inserted CPU.
const OST_DEVICE_CHECK: u32 = 1;
/// _OST status codes (ACPI 6.5, 6.3.5): success, non-specific failure.
const OST_SUCCESS: u32 = 0;
const OST_FAILURE: u32 = 1;

/// Iterations of the work loop: a few milliseconds natively.
const WORK_ITERATIONS: u64 = 10_000_000;
/// How long an AP is given for the loop (it is emulated ring 0 only to get there).
const WORK_TIMEOUT_US: u64 = 5_000_000;

/// The work an AP runs (ring 3): xorshift64 over `WORK_ITERATIONS` steps from `seed`,
/// summed; nothing a compiler can fold.
fn work(seed: u64) -> u64 {
    let mut x = seed | 1;
    let mut sum = 0u64;
    for _ in 0..WORK_ITERATIONS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum = sum.wrapping_add(core::hint::black_box(x));
    }
    sum
}

fn error() -> console::Line {
    console::error("cpu-hotplug: ")
}

pub fn run(acpi: &Acpi, cmdline: &[u8]) -> ! {
    let Ok(period) = cmdline::number_in(cmdline, "cpu-work-ms", 0..=600_000, "cpu-hotplug") else {
        power::poweroff(acpi)
    };
    let period = period.unwrap_or(0);
    let Some(fadt) = acpi.fadt else {
        error().s("no FADT").end();
        power::poweroff(acpi)
    };
    let Some(found) = cpuhp::find(acpi) else {
        power::poweroff(acpi)
    };
    let registers = found.registers;
    // QEMU pc's block starts as a bitmap of present CPUs; a 0 in the selector switches it
    // (harmless elsewhere: it selects CPU 0).
    registers.select(0);
    tsc::calibrate();
    let button = power::setup_power_button(acpi);
    if !power::route_sci(acpi) {
        power::poweroff(acpi)
    }
    let Some(gpes) = gpe::enable(&fadt, &found.gpes) else {
        power::poweroff(acpi)
    };
    let mut line = console::line("GUEST CPU HOTPLUG READY cpus=")
        .dec(u64::from(cpus::online_count()))
        .s(" possible=")
        .dec(acpi.madt.cpus().len() as u64)
        .s(" port=")
        .hex(u64::from(registers.select.port))
        .s(" gpe=");
    for (i, number) in gpe::numbers(&gpes).enumerate() {
        line = line.s(if i == 0 { "" } else { "," }).dec(u64::from(number));
    }
    line.end();
    let mut round = 0;
    loop {
        let mut events = [0; 4];
        let mut woken = || {
            events = gpe::take_pending();
            events != [0; 4] || (button && power::POWER_BUTTON.load(Ordering::Acquire))
        };
        let woke = match period {
            0 => loop {
                cpu::disable_interrupts();
                if woken() {
                    break true;
                }
                cpu::enable_interrupts_and_halt();
            },
            ms => halt::halt_until(ms, &mut woken),
        };
        if button && power::POWER_BUTTON.load(Ordering::Acquire) {
            console::line("GUEST POWER BUTTON").end();
            power::poweroff(acpi)
        }
        if woke {
            scan(acpi, &registers, &events);
        } else {
            round += 1;
            for index in (1..MAX_CPUS).filter(|&i| cpus::is_online(i)) {
                run_work(index, round);
            }
        }
    }
}

/// One SCI's worth of events: every CPU with one, as QEMU's CSCN walks them. At most one
/// pass over the possible CPUs (and one more): a block whose events never clear is an error.
fn scan(acpi: &Acpi, registers: &Registers, events: &gpe::GpeSet) {
    let mut line = console::line("GUEST INFO cpu-hotplug event gpe=");
    for (i, number) in gpe::numbers(events).enumerate() {
        line = line.s(if i == 0 { "" } else { "," }).dec(u64::from(number));
    }
    line.end();
    // Commands are ignored while the selector is out of range: start from CPU 0.
    registers.select(0);
    let limit = acpi.madt.cpus().len().max(1) + 1;
    for _ in 0..limit {
        let (selector, flags) = registers.next_with_event();
        if !flags.insert && !flags.remove {
            return;
        }
        if flags.insert {
            let apic_id = registers.apic_id();
            console::line("GUEST INFO cpu-hotplug selector=")
                .dec(u64::from(selector))
                .s(" apic=")
                .dec(u64::from(apic_id))
                .flag(" enabled=", flags.enabled)
                .s(" insert")
                .end();
            if !flags.enabled {
                error()
                    .s("selector=")
                    .dec(u64::from(selector))
                    .s(" has an insert event but CPEN says it is not there")
                    .end();
            }
            add(acpi, apic_id);
            registers.clear_insert();
            let online = cpus::index_of(apic_id).filter(|&i| cpus::is_online(i));
            let status = match online {
                Some(_) => OST_SUCCESS,
                None => OST_FAILURE,
            };
            registers.ost(selector, OST_DEVICE_CHECK, status);
            if let Some(index) = online {
                console::line("GUEST CPU ADDED apic=")
                    .dec(u64::from(apic_id))
                    .s(" cpus=")
                    .dec(u64::from(cpus::online_count()))
                    .end();
                run_work(index, 0);
            }
        } else {
            console::line("GUEST INFO cpu-hotplug selector=")
                .dec(u64::from(selector))
                .s(" remove request ignored (CPUs are not given back)")
                .end();
            registers.clear_remove();
        }
    }
    error()
        .s("CPUs still have events after ")
        .dec(limit as u64)
        .s(" rounds of command 0")
        .end();
}

/// Starts the CPU with `apic_id` unless it runs already.
fn add(acpi: &Acpi, apic_id: u32) {
    if cpus::index_of(apic_id).is_some_and(cpus::is_online) {
        console::line("GUEST INFO cpu-hotplug apic=")
            .dec(u64::from(apic_id))
            .s(" is online already")
            .end();
        return;
    }
    // Linux counts only the CPUs of the MADT as possible: a VMM must list them all.
    if !acpi.madt.cpus().iter().any(|c| c.apic_id == apic_id) {
        error()
            .s("apic=")
            .dec(u64::from(apic_id))
            .s(" is not in the MADT")
            .end();
    }
    if smp::start_later(apic_id).is_some() {
        topology::report();
    }
}

/// Has CPU `index` run the work loop and checks the result against the BSP's own run of it:
/// `GUEST CPU WORK apic=N ok[ round=R]`, or an error line.
fn run_work(index: usize, round: u64) {
    let Some(apic_id) = cpus::apic_id(index) else {
        return;
    };
    let seed = (u64::from(apic_id) << 32) ^ round ^ 0x9e37_79b9_7f4a_7c15;
    let expected = match user::run(work, seed) {
        Ok(value) => value,
        Err(fault) => {
            fault.report("cpu-hotplug", "the BSP's work loop");
            return;
        }
    };
    let outcome = ap_work::post(index, apic_id, work, seed)
        .and_then(|number| ap_work::wait(index, number, WORK_TIMEOUT_US));
    let bad = || error().s("work apic=").dec(u64::from(apic_id)).s(" ");
    match outcome {
        None => bad()
            .s("did not finish within ")
            .dec(WORK_TIMEOUT_US / 1000)
            .s(" ms")
            .end(),
        Some(o) if o.apic_id != apic_id => {
            bad().s("was done by apic=").dec(u64::from(o.apic_id)).end()
        }
        Some(ap_work::Outcome {
            result: Err(vector),
            ..
        }) => bad().s("faulted: exception=").dec(vector).end(),
        Some(ap_work::Outcome {
            result: Ok(value), ..
        }) if value != expected => bad()
            .s("result=")
            .hex(value)
            .s(" want=")
            .hex(expected)
            .end(),
        Some(_) => {
            let line = console::line("GUEST CPU WORK apic=")
                .dec(u64::from(apic_id))
                .s(" ok");
            match round {
                0 => line,
                r => line.s(" round=").dec(r),
            }
            .end()
        }
    }
}
