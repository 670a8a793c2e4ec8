//! `pci-hotplug`: ACPI PCI hotplug of bus 0 with QEMU PIIX4's register interface (the one
//! `-M pc` has and Flotilla's vmm-core follows; acpi/pcihp.rs finds it in the AML). After the
//! usual PCI set-up, every virtio device on bus 0 is brought up; the GPEs with `_Exx` methods
//! are enabled, the SCI routed, and `GUEST HOTPLUG READY ...` printed. Then the guest halts
//! (interrupts on) until an SCI brings GPE events; for each wake-up with events it reads PCIU
//! and then PCID once:
//! - a slot in PCIU was added: its function 0 is probed (`GUEST HOTPLUG ADDED ...`), memory
//!   BARs reading 0 get addresses from the `pci_assign=` window clear of every other
//!   function's, and a virtio-blk or virtio-net device is brought up and exercised (blk.rs,
//!   net.rs);
//! - a slot in PCID is to be removed: its driver is quiesced (requests drained, device reset,
//!   MSI-X and memory decoding off) and forgotten, then the slot is ejected through B0EJ
//!   (`GUEST HOTPLUG REMOVED ...`), also a slot the guest knows nothing about, as Linux does.
//!   With `hotplug-ignore-eject=1` the guest only says `GUEST HOTPLUG IGNORED ...`.
//!
//! Driver state is per slot, so a slot can be added again after a removal; each slot keeps
//! the DMA arena and MSI-X vectors it took the first time and reuses them. Multi-function
//! devices: only function 0 is driven (the others' BARs are still kept clear of).

mod blk;
mod net;
mod params;

use super::pci;
use crate::acpi::pcihp::{self, Registers};
use crate::acpi::{gpe, power, Acpi};
use crate::arch::memory::{self, Arena};
use crate::arch::{cpu, interrupts};
use crate::console;
use crate::drivers::pci::bar::{self, AssignError, MemRange};
use crate::drivers::pci::config::{self, Address};
use crate::drivers::pci::scan::{self, Function};
use crate::drivers::virtio::transport::Transport;
use crate::drivers::virtio_blk::spec::BLK;
use crate::drivers::virtio_blk::BlkDevice;
use crate::drivers::virtio_net::spec::NET;
use crate::drivers::virtio_net::NetDevice;
use crate::sync::Global;
use core::sync::atomic::Ordering;
use params::Params;

/// Slots on a PCI bus.
const SLOTS: usize = 32;
/// DMA memory each slot sets aside the first time a device is brought up in it (a virtio-net
/// device with one queue pair takes about 1.1 MiB, a virtio-blk device with one queue less
/// than 200 KiB).
const SLOT_DMA_BYTES: u64 = 4 << 20;
/// MSI-X vectors each slot sets aside (configuration changes plus 7 queues).
const SLOT_VECTORS: u8 = 8;
/// Memory ranges of all functions kept clear of when assigning BARs.
const MAX_RANGES: usize = 96;
/// Owner of the ranges of functions not on bus 0.
const OTHER_BUS: u8 = 0xff;

/// What the guest drives in a slot. The slots live in a static and there is no allocator to
/// box the devices in, so the variants' sizes may differ.
#[allow(clippy::large_enum_variant)]
enum Driver {
    None,
    Blk(BlkDevice),
    Net(NetDevice),
}

struct Slot {
    /// A function 0 answers there, as far as the guest knows.
    present: bool,
    driver: Driver,
    arena: Option<Arena>,
    /// First of the slot's SLOT_VECTORS vectors (None: not taken yet, or none were left).
    vectors: Option<u8>,
    /// The data its virtio-blk device's check wrote (P(seed)), once the check passed.
    checked: Option<u64>,
}

struct State {
    slots: [Slot; SLOTS],
    /// Memory ranges the functions decode, and the slot owning each (OTHER_BUS off bus 0).
    ranges: [MemRange; MAX_RANGES],
    owners: [u8; MAX_RANGES],
    range_count: usize,
    /// Devices added so far (makes each add's data differ).
    adds: u64,
}

/// The scenario's state (the drivers are a few KiB each: not for the kernel stack).
static STATE: Global<State> = Global::new(State {
    slots: [const {
        Slot {
            present: false,
            driver: Driver::None,
            arena: None,
            vectors: None,
            checked: None,
        }
    }; SLOTS],
    ranges: [MemRange { start: 0, size: 0 }; MAX_RANGES],
    owners: [0; MAX_RANGES],
    range_count: 0,
    adds: 0,
});

/// Starts a `GUEST ERROR hotplug <kind>slot=S ` line (`kind`: "", "blk ", "net ").
fn slot_error(kind: &str, slot: u8) -> console::Line {
    console::error("hotplug ")
        .s(kind)
        .s("slot=")
        .dec(u64::from(slot))
        .s(" ")
}

pub fn run(acpi: &Acpi, cmdline: &[u8]) -> ! {
    let functions = pci::setup(acpi, cmdline);
    pci::dma_info();
    let Ok(params) = params::parse(cmdline) else {
        power::poweroff(acpi)
    };
    let Some(fadt) = acpi.fadt else {
        console::error("hotplug: no FADT").end();
        power::poweroff(acpi)
    };
    let Some(found) = pcihp::find(acpi) else {
        power::poweroff(acpi)
    };
    // SAFETY: `run` is entered once, on the BSP, and never returns; nothing else uses STATE.
    let state = unsafe { STATE.get_mut() };
    // The ranges every function decodes, before any driver uses them.
    for f in functions.iter().filter(|f| f.header_type & 0x7f == 0) {
        let owner = if f.addr.bus == 0 {
            f.addr.dev
        } else {
            OTHER_BUS
        };
        let mut ranges = [MemRange::default(); 6];
        let count = bar::memory_ranges(f.addr, &mut ranges);
        state.add_ranges(owner, &ranges[..count]);
    }
    for f in functions
        .iter()
        .filter(|f| f.addr.bus == 0 && f.addr.func == 0)
    {
        let slot = f.addr.dev;
        state.slots[usize::from(slot)].present = true;
        // With boot-blk=1 a disk there at boot is checked as a hot-added one.
        let seed = (params.boot_blk && BLK.matches(f)).then(|| state.next_seed(slot));
        if BLK.matches(f) || NET.matches(f) {
            state.bring_up(f, &params, seed);
        }
    }
    let button = power::setup_power_button(acpi);
    if !power::route_sci(acpi) {
        power::poweroff(acpi)
    }
    let Some(gpes) = gpe::enable(&fadt, &found.gpes) else {
        power::poweroff(acpi)
    };
    let registers = found.registers;
    print_ready(state, &registers, &gpes, &params);
    loop {
        cpu::disable_interrupts();
        if button && power::POWER_BUTTON.load(Ordering::Acquire) {
            state.check_kept();
            console::line("GUEST POWER BUTTON").end();
            power::poweroff(acpi)
        }
        let events = gpe::take_pending();
        if events == [0; 4] {
            cpu::enable_interrupts_and_halt();
            continue;
        }
        let up = registers.read_up();
        let down = registers.read_down();
        let line = console::line("GUEST INFO hotplug event gpe=");
        print_gpes(line, &events)
            .s(" pciu=")
            .hex(u64::from(up))
            .s(" pcid=")
            .hex(u64::from(down))
            .end();
        for slot in bits(up) {
            state.added(slot, &params);
        }
        for slot in bits(down) {
            state.removed(slot, &registers, &params);
        }
    }
}

/// The slot numbers of a PCIU/PCID value.
fn bits(value: u32) -> impl Iterator<Item = u8> {
    (0..SLOTS as u8).filter(move |&slot| value & (1 << slot) != 0)
}

/// Appends the GPE numbers, comma separated.
fn print_gpes(mut line: console::Line, set: &gpe::GpeSet) -> console::Line {
    for (i, number) in gpe::numbers(set).enumerate() {
        if i != 0 {
            line = line.s(",");
        }
        line = line.dec(u64::from(number));
    }
    line
}

fn print_ready(state: &State, registers: &Registers, gpes: &gpe::GpeSet, params: &Params) {
    let occupied = (0..SLOTS)
        .filter(|&s| state.slots[s].present)
        .fold(0u64, |mask, s| mask | 1 << s);
    let line = console::line("GUEST INFO hotplug bnum=");
    let line = match registers.select {
        Some(select) => line.hex(u64::from(select.port)),
        None => line.s("none"),
    };
    let line = match params.window {
        Some((base, size)) => line
            .s(" window=")
            .hex(base)
            .s("-")
            .hex(base.saturating_add(size) - 1),
        None => line.s(" window=none"),
    };
    line.flag(" ignore_eject=", params.ignore_eject)
        .flag(" traffic=", params.traffic.is_some())
        .end();
    let line = console::line("GUEST HOTPLUG READY gpe=");
    print_gpes(line, gpes)
        .s(" pciu=")
        .hex(u64::from(registers.up.port))
        .s(" pcid=")
        .hex(u64::from(registers.down.port))
        .s(" b0ej=")
        .hex(u64::from(registers.eject.port))
        .s(" slots=")
        .hex(occupied)
        .end();
}

impl State {
    /// The data seed of the next device checked: its slot and how many were checked before.
    fn next_seed(&mut self, slot: u8) -> u64 {
        self.adds += 1;
        (u64::from(slot) << 32) | self.adds
    }

    /// Each disk whose check passed, checked again (its data kept, more I/O taken).
    fn check_kept(&mut self) {
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            if let (Driver::Blk(dev), Some(seed)) = (&mut entry.driver, entry.checked) {
                blk::kept(dev, slot as u8, seed);
            }
        }
    }

    fn add_ranges(&mut self, owner: u8, ranges: &[MemRange]) {
        for &range in ranges {
            if self.range_count == MAX_RANGES {
                console::error("hotplug: more than ")
                    .dec(MAX_RANGES as u64)
                    .s(" BAR ranges, new BARs may overlap the ones left out")
                    .end();
                return;
            }
            self.ranges[self.range_count] = range;
            self.owners[self.range_count] = owner;
            self.range_count += 1;
        }
    }

    fn drop_ranges(&mut self, owner: u8) {
        let mut kept = 0;
        for i in 0..self.range_count {
            if self.owners[i] != owner {
                self.ranges[kept] = self.ranges[i];
                self.owners[kept] = self.owners[i];
                kept += 1;
            }
        }
        self.range_count = kept;
    }

    /// The slot's DMA arena and vectors, taken the first time; None after an error line if
    /// the DMA pool is used up. Vectors that ran out only leave the device polled.
    fn resources(&mut self, slot: u8) -> Option<(Arena, u8, u8)> {
        let entry = &mut self.slots[usize::from(slot)];
        if entry.arena.is_none() {
            entry.arena = memory::dma_arena(SLOT_DMA_BYTES);
        }
        let Some(arena) = entry.arena else {
            slot_error("", slot)
                .s("DMA pool exhausted (each slot takes ")
                .dec(SLOT_DMA_BYTES >> 20)
                .s(" MiB)")
                .end();
            return None;
        };
        if entry.vectors.is_none() {
            entry.vectors = interrupts::alloc_vectors(SLOT_VECTORS);
        }
        Some(match entry.vectors {
            Some(first) => (arena, first, SLOT_VECTORS),
            None => (arena, 0, 0),
        })
    }

    /// Brings the virtio-blk or virtio-net `function` up in its slot with the slot's DMA arena
    /// and vectors; on a hot add (`seed`), exercises it. False if it did not come up.
    fn bring_up(&mut self, function: &Function, params: &Params, seed: Option<u64>) -> bool {
        let slot = function.addr.dev;
        let Some((arena, first, count)) = self.resources(slot) else {
            return false;
        };
        let is_blk = BLK.matches(function);
        let kind = if is_blk { "blk " } else { "net " };
        memory::begin_arena(arena);
        let transport = Transport::probe(function).map(|mut transport| {
            transport.use_vectors(first, count);
            transport
        });
        let driver = match transport {
            Some(transport) if is_blk => {
                crate::drivers::virtio_blk::bring_up(transport, usize::from(slot)).map(Driver::Blk)
            }
            Some(transport) => {
                crate::drivers::virtio_net::bring_up(transport, usize::from(slot), &params.net)
                    .map(Driver::Net)
            }
            None => None,
        };
        memory::end_arena();
        let Some(driver) = driver else {
            slot_error(kind, slot)
                .s("the device did not come up (see the lines above)")
                .end();
            return false;
        };
        let entry = &mut self.slots[usize::from(slot)];
        entry.driver = driver;
        entry.checked = None;
        if let Some(seed) = seed {
            match &mut entry.driver {
                Driver::Blk(dev) => {
                    entry.checked = blk::exercise(dev, slot, seed).then_some(seed);
                }
                Driver::Net(dev) => net::exercise(dev, slot, seed, params.traffic),
                Driver::None => {}
            }
        }
        true
    }

    /// PCIU had `slot`: probe, ADDED, BARs, driver.
    fn added(&mut self, slot: u8, params: &Params) {
        let at = Address {
            bus: 0,
            dev: slot,
            func: 0,
        };
        let Some(function) = scan::probe(at) else {
            slot_error("", slot)
                .s("is in PCIU but no function 0 answers there")
                .end();
            return;
        };
        console::line("GUEST HOTPLUG ADDED slot=")
            .dec(u64::from(slot))
            .s(" vendor=")
            .hex(u64::from(function.vendor))
            .s(" device=")
            .hex(u64::from(function.device))
            .s(" class=")
            .hex(u64::from(function.class))
            .end();
        let entry = &mut self.slots[usize::from(slot)];
        if !matches!(entry.driver, Driver::None) {
            slot_error("", slot)
                .s("already has a device the guest drives: left as it is")
                .end();
            return;
        }
        entry.present = true;
        if function.header_type & 0x7f != 0 {
            console::line("GUEST INFO hotplug slot=")
                .dec(u64::from(slot))
                .s(" is not a type-0 function: left alone")
                .end();
            return;
        }
        let mut ranges = [MemRange::default(); 6];
        let assigned = bar::assign_in_window(
            at,
            params.window,
            &self.ranges[..self.range_count],
            &mut ranges,
        );
        let count = match assigned {
            Ok(count) => count,
            Err(AssignError::NoWindow { index }) => {
                slot_error("", slot)
                    .s("BAR")
                    .dec(u64::from(index))
                    .s(" reads 0 and there is no pci_assign= window")
                    .end();
                return;
            }
            Err(AssignError::NoRoom { index, size }) => {
                slot_error("", slot)
                    .s("the pci_assign= window has no room for BAR")
                    .dec(u64::from(index))
                    .s(" of ")
                    .hex(size)
                    .s(" bytes")
                    .end();
                return;
            }
        };
        self.add_ranges(slot, &ranges[..count]);
        let mut line = console::line("GUEST INFO hotplug slot=")
            .dec(u64::from(slot))
            .s(" mem=");
        for (i, range) in ranges[..count].iter().enumerate() {
            line = line
                .s(if i == 0 { "" } else { "," })
                .hex(range.start)
                .s("+")
                .hex(range.size);
        }
        line.end();
        if !(BLK.matches(&function) || NET.matches(&function)) {
            console::line("GUEST INFO hotplug slot=")
                .dec(u64::from(slot))
                .s(" has no driver here: left alone")
                .end();
            return;
        }
        let seed = self.next_seed(slot);
        self.bring_up(&function, params, Some(seed));
    }

    /// PCID had `slot`: quiesce and forget its driver, eject, REMOVED (or only IGNORED).
    fn removed(&mut self, slot: u8, registers: &Registers, params: &Params) {
        if params.ignore_eject {
            console::line("GUEST HOTPLUG IGNORED slot=")
                .dec(u64::from(slot))
                .end();
            return;
        }
        let at = Address {
            bus: 0,
            dev: slot,
            func: 0,
        };
        let entry = &mut self.slots[usize::from(slot)];
        match core::mem::replace(&mut entry.driver, Driver::None) {
            Driver::Blk(mut dev) => blk::quiesce(&mut dev, slot),
            Driver::Net(mut dev) => net::quiesce(&mut dev, slot),
            // Nothing of ours runs there; whatever the function decodes stops too.
            Driver::None if scan::probe(at).is_some() => config::disable(at),
            Driver::None => {}
        }
        entry.present = false;
        self.drop_ranges(slot);
        registers.eject(slot);
        console::line("GUEST HOTPLUG REMOVED slot=")
            .dec(u64::from(slot))
            .end();
        if scan::probe(at).is_some() {
            console::line("GUEST INFO hotplug slot=")
                .dec(u64::from(slot))
                .s(": function 0 still answers right after the eject")
                .end();
        }
    }
}
