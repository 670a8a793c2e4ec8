//! `mem-hotplug`: ACPI memory hotplug with QEMU's register interface (acpi/memhp.rs finds it
//! in the AML). The GPE whose `_Exx` runs MSCN is enabled, the SCI routed, and `GUEST MEM
//! HOTPLUG READY ...` printed. Then the guest halts (interrupts on) until an SCI brings the
//! event, and scans every slot as QEMU's MSCN does (select it, read its flags):
//! - an insert event: the DIMM's range is read, mapped (write-back, 2 MiB pages) and used: a
//!   pattern written over all of it in ring 3 and read back; with `mem-blk=1` virtio-blk
//!   device 0 also writes 64 KiB to the disk from a buffer in the DIMM and reads it back into
//!   another one there, so the device's backend must reach the new memory. The event is
//!   cleared, _OST(1, 0 or 1) written as an OS reports a device check, and `GUEST MEM ADDED
//!   ... ok` printed (or `GUEST ERROR mem hotplug slot=S ...`);
//! - a remove event: the guest stops using the DIMM (nothing of it is in use between
//!   events), clears the event and ejects it as its _EJ0 would: `GUEST MEM REMOVED slot=S`.
//!
//! A DIMM present before the scenario started without an insert event (cold-plugged) is only
//! reported. An added DIMM keeps the pattern (with `mem-blk=1` its disk buffers get it back
//! after the disk check); at the power button each DIMM added and not removed is read again
//! (`GUEST MEM KEPT slot=S ... ok`), so that a migration or a live upgrade in between shows
//! whether the DIMM's memory came along. Bounded loops only: a slot count from the AML of at
//! most 256, and every DIMM is walked twice (three times with the power button).

use super::blk::io::{self, single};
use super::blk::pattern;
use super::pci;
use crate::acpi::memhp::{self, Registers};
use crate::acpi::{gpe, power, Acpi};
use crate::arch::{cpu, memory, tsc, user};
use crate::drivers::virtio_blk::queue::{Op, Request};
use crate::drivers::virtio_blk::spec::{SECTOR, S_OK};
use crate::drivers::virtio_blk::{self, BlkDevice};
use crate::{cmdline, console};
use core::sync::atomic::{AtomicU64, Ordering};

/// _OST codes (ACPI 6.5, 6.3.5): the event is a device check (an insertion), processed with
/// success or a non-specific failure.
const OST_DEVICE_CHECK: u32 = 1;
const OST_SUCCESS: u32 = 0;
const OST_FAILURE: u32 = 1;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// mem-blk=1's span: 128 sectors (64 KiB) from sector 0, written from the DIMM's start and
/// read back 1 MiB further in.
const BLK_SECTORS: u64 = 128;
const BLK_READ_OFFSET: u64 = 1 << 20;
/// The slots whose DIMM was added, checked and holds the pattern (bit per slot, 256 slots).
static KEPT: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn kept(slot: u32, on: bool) {
    let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
    if let Some(w) = KEPT.get(word) {
        match on {
            true => w.fetch_or(bit, Ordering::Relaxed),
            false => w.fetch_and(!bit, Ordering::Relaxed),
        };
    }
}

fn error() -> console::Line {
    console::error("mem hotplug: ")
}

fn slot_error(slot: u32) -> console::Line {
    console::error("mem hotplug slot=")
        .dec(u64::from(slot))
        .s(" ")
}

pub fn run(acpi: &Acpi, cmdline: &[u8]) -> ! {
    let Ok(blk) = cmdline::number_in(cmdline, "mem-blk", 0..=1, "mem hotplug") else {
        power::poweroff(acpi)
    };
    let Some(fadt) = acpi.fadt else {
        error().s("no FADT").end();
        power::poweroff(acpi)
    };
    let mut disk = None;
    if blk == Some(1) {
        let functions = pci::setup(acpi, cmdline);
        let devices = virtio_blk::probe_all(&functions);
        let [first, ..] = devices.list;
        match first {
            Some(dev) if io::usable(&dev, true) => disk = Some(dev),
            Some(_) => power::poweroff(acpi),
            None => {
                error().s("mem-blk=1 but no usable virtio-blk device").end();
                power::poweroff(acpi)
            }
        }
    } else {
        tsc::calibrate();
    }
    let Some(found) = memhp::find(acpi) else {
        power::poweroff(acpi)
    };
    let registers = found.registers;
    for slot in 0..found.slots {
        registers.select(slot);
        let status = registers.status();
        if status.enabled && !status.insert {
            let (base, size) = registers.range();
            console::line("GUEST INFO mem hotplug slot=")
                .dec(u64::from(slot))
                .s(" present at boot base=")
                .hex(base)
                .s(" size=")
                .hex(size)
                .end();
        }
    }
    let button = power::setup_power_button(acpi);
    if !power::route_sci(acpi) {
        power::poweroff(acpi)
    }
    let Some(gpes) = gpe::enable(&fadt, &found.gpes) else {
        power::poweroff(acpi)
    };
    let mut line = console::line("GUEST MEM HOTPLUG READY slots=")
        .dec(u64::from(found.slots))
        .s(" port=")
        .hex(u64::from(registers.select.port))
        .s(" gpe=");
    for (i, number) in gpe::numbers(&gpes).enumerate() {
        line = line.s(if i == 0 { "" } else { "," }).dec(u64::from(number));
    }
    line.end();
    loop {
        cpu::disable_interrupts();
        if button && power::POWER_BUTTON.load(Ordering::Acquire) {
            check_kept(&registers, found.slots);
            console::line("GUEST POWER BUTTON").end();
            power::poweroff(acpi)
        }
        let events = gpe::take_pending();
        if events == [0; 4] {
            cpu::enable_interrupts_and_halt();
            continue;
        }
        scan(&registers, found.slots, disk.as_mut());
    }
}

/// One SCI's worth of events, as QEMU's MSCN walks the slots.
fn scan(registers: &Registers, slots: u32, mut disk: Option<&mut BlkDevice>) {
    for slot in 0..slots {
        registers.select(slot);
        let status = registers.status();
        if status.insert {
            let ok = added(registers, slot, status.enabled, disk.as_deref_mut());
            kept(slot, ok);
            registers.clear_insert();
            registers.ost(OST_DEVICE_CHECK, if ok { OST_SUCCESS } else { OST_FAILURE });
        } else if status.remove {
            // Nothing of the DIMM is in use between events: it can go at once.
            kept(slot, false);
            registers.clear_remove();
            registers.eject();
            console::line("GUEST MEM REMOVED slot=")
                .dec(u64::from(slot))
                .end();
        }
    }
}

/// The selected slot's insert event: map, check, and say so. True if the DIMM passed.
fn added(registers: &Registers, slot: u32, enabled: bool, disk: Option<&mut BlkDevice>) -> bool {
    let (base, size) = registers.range();
    let about = |line: console::Line| line.s("base=").hex(base).s(" size=").hex(size);
    if !enabled {
        about(slot_error(slot))
            .s(" has an insert event but MES says no DIMM is there")
            .end();
        return false;
    }
    let end = base.checked_add(size);
    if size == 0 || base % 4096 != 0 || size % 4096 != 0 || end.is_none() {
        about(slot_error(slot))
            .s(" is not a whole number of pages")
            .end();
        return false;
    }
    if memory::overlaps_boot_ram(base, end.unwrap_or(u64::MAX)) {
        about(slot_error(slot))
            .s(" overlaps RAM of the boot memory map")
            .end();
        return false;
    }
    if !memory::map_ram(base, size) {
        about(slot_error(slot)).s(" cannot be mapped").end();
        return false;
    }
    let start = cpu::rdtsc();
    let seed = seed(slot, base);
    if !pattern_ok(slot, base, size, seed, true) {
        return false;
    }
    let ticks = cpu::rdtsc() - start;
    if let Some(dev) = disk {
        if !blk_ok(dev, slot, base, size) {
            return false;
        }
        // The disk's buffers hold the pattern again, as the rest of the DIMM.
        let mut refill = || {
            for at in [base, base + BLK_READ_OFFSET] {
                let len = (BLK_SECTORS * SECTOR) as usize / 8;
                // SAFETY: the disk's buffers in the DIMM (blk_ok checked they fit),
                // mapped by map_ram, nothing in flight there now.
                let words =
                    unsafe { core::slice::from_raw_parts_mut(at as usize as *mut u64, len) };
                for (i, w) in words.iter_mut().enumerate() {
                    *w = word(seed, at + 8 * i as u64);
                }
            }
            0
        };
        if user::call_reported("mem hotplug", "the disk buffers", &mut refill).is_none() {
            return false;
        }
    }
    dimm_ok("GUEST MEM ADDED slot=", slot, base, size);
    console::line("GUEST INFO mem hotplug slot=")
        .dec(u64::from(slot))
        .s(" written and read back at mib_s=")
        .tenths(tsc::mib_s_tenths(2 * size, ticks))
        .end();
    true
}

/// `<prefix>S base=0x.. size=0x.. ok`: the DIMM in slot S passed a check.
fn dimm_ok(prefix: &str, slot: u32, base: u64, size: u64) {
    console::line(prefix)
        .dec(u64::from(slot))
        .s(" base=")
        .hex(base)
        .s(" size=")
        .hex(size)
        .s(" ok")
        .end();
}

/// The pattern's seed for the DIMM in `slot` at `base`.
fn seed(slot: u32, base: u64) -> u64 {
    GOLDEN ^ (u64::from(slot) << 40) ^ base
}

/// The power button: each DIMM added and not removed still holds its pattern (the slot's
/// range read from the registers again: a migration's destination has it where the
/// source had it). `GUEST MEM KEPT ...` or an error line per DIMM.
fn check_kept(registers: &Registers, slots: u32) {
    for slot in 0..slots.min(256) {
        let word = KEPT[(slot / 64) as usize].load(Ordering::Relaxed);
        if word & (1 << (slot % 64)) == 0 {
            continue;
        }
        registers.select(slot);
        let (base, size) = registers.range();
        if pattern_ok(slot, base, size, seed(slot, base), false) {
            dimm_ok("GUEST MEM KEPT slot=", slot, base, size);
        }
    }
}

/// The word the pattern puts at `addr`.
fn word(seed: u64, addr: u64) -> u64 {
    (seed ^ addr).wrapping_mul(GOLDEN)
}

/// Writes the pattern over `[base, base + size)` (`write`) and reads it back, in ring 3.
/// False after an error line.
fn pattern_ok(slot: u32, base: u64, size: u64, seed: u64, write: bool) -> bool {
    let mut bad = 0u64;
    let mut first = None;
    let mut work = || {
        // SAFETY: the DIMM the VMM says is at [base, base + size), identity mapped by
        // map_ram, used by nothing else.
        let words = unsafe {
            core::slice::from_raw_parts_mut(base as usize as *mut u64, size as usize / 8)
        };
        if write {
            for (i, w) in words.iter_mut().enumerate() {
                *w = word(seed, base + 8 * i as u64);
            }
        }
        for (i, w) in words.iter().enumerate() {
            let addr = base + 8 * i as u64;
            let got = core::hint::black_box(*w);
            if got != word(seed, addr) {
                bad += 1;
                first.get_or_insert((addr, got));
            }
        }
        0
    };
    if user::call_reported("mem hotplug", "the DIMM's check", &mut work).is_none() {
        return false;
    }
    match first {
        None => true,
        Some((addr, got)) => {
            slot_error(slot)
                .s("word at ")
                .hex(addr)
                .s(" reads ")
                .hex(got)
                .s(" after writing ")
                .hex(word(seed, addr))
                .s(" bad_words=")
                .dec(bad)
                .end();
            false
        }
    }
}

/// mem-blk=1: P(seed) written to sectors [0, 128) from the DIMM's start, read back into the
/// DIMM 1 MiB further in and checked. False after an error line.
fn blk_ok(dev: &mut BlkDevice, slot: u32, base: u64, size: u64) -> bool {
    let bytes = BLK_SECTORS * SECTOR;
    if size < BLK_READ_OFFSET + bytes {
        slot_error(slot)
            .s("is too small for mem-blk=1 (")
            .hex(BLK_READ_OFFSET + bytes)
            .s(" bytes needed)")
            .end();
        return false;
    }
    let seed = (u64::from(slot) << 32) | 0x4d45_4d00;
    let read_at = base + BLK_READ_OFFSET;
    let mut prepared = || {
        pattern::fill(base, 0, BLK_SECTORS, seed);
        // SAFETY: DIMM memory mapped by map_ram, nothing in flight there.
        unsafe { core::ptr::write_bytes(read_at as usize as *mut u8, 0, bytes as usize) };
        0
    };
    if user::call_reported("mem hotplug", "the disk buffers", &mut prepared).is_none() {
        return false;
    }
    if !transfer(dev, slot, Op::Write, base) || !transfer(dev, slot, Op::Read, read_at) {
        return false;
    }
    let mut result = (0, None);
    let mut checked = || {
        result = pattern::check(read_at, 0, BLK_SECTORS, seed);
        0
    };
    if user::call_reported("mem hotplug", "the disk data's check", &mut checked).is_none() {
        return false;
    }
    match result {
        (0, _) => {
            console::line("GUEST MEM BLK OK slot=")
                .dec(u64::from(slot))
                .s(" sectors=")
                .dec(BLK_SECTORS)
                .s(" seed=")
                .hex(seed)
                .end();
            true
        }
        (bad, mismatch) => {
            let line = slot_error(slot).s("blk pattern mismatch");
            let line = match mismatch {
                Some(m) => m.print(line),
                None => line,
            };
            line.s(" bad_sectors=").dec(bad).end();
            false
        }
    }
}

/// `op` over sectors [0, 128) from or into `addr`, one request at a time on queue 0.
fn transfer(dev: &mut BlkDevice, slot: u32, op: Op, addr: u64) -> bool {
    let chunk = (u64::from(dev.max_request) / SECTOR).clamp(1, BLK_SECTORS);
    let mut sector = 0;
    while sector < BLK_SECTORS {
        let count = chunk.min(BLK_SECTORS - sector);
        let request = Request {
            op,
            sector,
            addr: addr + sector * SECTOR,
            len: (count * SECTOR) as u32,
        };
        let result = single(dev, 0, request);
        if result != Ok(S_OK) {
            let line = slot_error(slot)
                .s("blk ")
                .s(op.name())
                .s(" sector=")
                .dec(sector)
                .s(" sectors=")
                .dec(count);
            match result {
                Ok(status) => line.s(" status=").dec(u64::from(status)),
                Err(why) => line.s(": ").s(why),
            }
            .end();
            return false;
        }
        sector += count;
    }
    true
}
