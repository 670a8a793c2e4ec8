//! The PCI root: bus 0 with a host bridge and the devices in its slots, configuration
//! access through ports 0xCF8/0xCFC and through ECAM (described by the MCFG table), and
//! the 32-bit MMIO window from which the VMM assigns BARs (there is no firmware). Memory
//! accesses in the window go to whichever function's BAR covers them.

pub mod config;
pub mod hotplug;

use std::collections::BTreeMap;
use std::sync::Arc;

use config::{Bar, Ids, PciConfig, COMMAND_MEMORY};
use parking_lot::Mutex;

use serde::{Deserialize, Serialize};

use super::bus::{BusDevice, SharedDevice};
use super::state;
use crate::devices::gpe::SharedGpe;
use crate::events::EventSender;
use crate::layout::{PCI_MMIO_END, PCI_MMIO_START};

/// A PCI function as the bus sees it.
pub trait PciFunction: Send {
    fn config(&self) -> &PciConfig;
    /// A guest write to configuration space (the function applies it and reacts, e.g.
    /// to a BAR move or MSI-X being enabled).
    fn write_config(&mut self, offset: usize, data: &[u8]);
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// Back to power-on state (a VM reset).
    fn reset(&mut self) {}
    /// The state the guest can see (configuration space and the device's own), for a
    /// migration.
    fn save_state(&self) -> Vec<u8>;
    /// Takes the state `save_state` gave on the source.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), String>;
    /// The device's qdev id, its id= ("" without one), which query-pci reports.
    fn qdev_id(&self) -> &str {
        ""
    }
    /// The function left the bus for good (the guest ejected it, or it never made it
    /// on): it lets go of what it holds outside itself (KVM's doorbells and interrupt
    /// routes, its backend). Calling it again does nothing.
    fn unplug(&mut self) {}
    /// A restore is about to move the functions' BARs to where the source had them:
    /// anything registered at this function's BAR goes first, as another function's
    /// saved BAR may be where this one's is now.
    fn before_restore(&mut self) {}
}

pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// The host bridge at 00:00.0: identity only.
struct HostBridge(PciConfig);

impl PciFunction for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.0
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
    fn read_bar(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _: usize, _: u64, _: &[u8]) {}
    fn save_state(&self) -> Vec<u8> {
        self.0.save()
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.0.restore(state)
    }
}

pub const SLOTS: usize = 32;
/// Slots whose function is part of the machine (the host bridge): no device goes there
/// or leaves. The hotplug controller leaves them out of PCIRMV and the DSDT gives them
/// no _EJ0.
pub const FIXED_SLOTS: u32 = 1 << 0;

fn slot_bit(slot: usize) -> u32 {
    1 << slot
}

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("no free PCI slot")]
    NoSlot,
    #[error("the PCI MMIO window is full ({0:#x} bytes requested)")]
    NoMmio(u64),
    #[error("a BAR of {0:#x} bytes: BAR sizes are powers of two")]
    BarSize(u64),
    #[error("PCI slot {0} does not exist (bus 0 has slots 0 to 31)")]
    NoSuchSlot(u8),
    #[error("PCI slot {0} is in use")]
    SlotTaken(u8),
    #[error("PCI slot {0} is empty")]
    EmptySlot(u8),
    #[error("PCI slot {0} holds part of the machine (the host bridge)")]
    NotHotpluggable(u8),
    #[error("this PCI bus has no hotplug controller")]
    NoHotplug,
}

pub struct PciRoot {
    slots: Vec<Option<SharedFunction>>,
    /// The MMIO window's ranges assigned to BARs: address to size.
    allocated: BTreeMap<u64, u64>,
    hotplug: Hotplug,
}

/// Where hotplug events go: the GPE for the guest, the control loop for the VMM.
struct Wiring {
    gpe: SharedGpe,
    events: EventSender,
}

/// The hotplug controller's state (`hotplug.rs` serves it), inside `PciRoot`, whose
/// slots it is about.
#[derive(Default)]
struct Hotplug {
    up: u32,
    down: u32,
    select: u32,
    wiring: Option<Wiring>,
    ejected: Vec<Ejected>,
}

/// A function the guest ejected, and the slot it was in.
pub struct Ejected {
    pub slot: u8,
    pub function: SharedFunction,
}

impl Default for PciRoot {
    fn default() -> Self {
        let bridge = HostBridge(PciConfig::new(&Ids {
            vendor: 0x1b36,
            device: 0x0008,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            revision: 0,
            class: 0x060000,
        }));
        let mut slots: Vec<Option<SharedFunction>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(Arc::new(Mutex::new(bridge)));
        PciRoot {
            slots,
            allocated: BTreeMap::new(),
            hotplug: Hotplug::default(),
        }
    }
}

impl PciRoot {
    /// Reserves a naturally aligned range for a BAR of `size` (a power of two): the
    /// lowest free one, so that ranges functions gave back (hot-unplugged) are reused.
    pub fn allocate_bar(&mut self, size: u64) -> Result<Bar, PciError> {
        if !size.is_power_of_two() {
            return Err(PciError::BarSize(size));
        }
        if size > PCI_MMIO_END - PCI_MMIO_START {
            return Err(PciError::NoMmio(size));
        }
        // Besides the ranges handed out, the BARs as the functions have them now: a
        // restore brings them where the source had them, which need not be where this
        // bus put them.
        let mut taken: Vec<(u64, u64)> = self.allocated.iter().map(|(&a, &l)| (a, l)).collect();
        for f in self.slots.iter().flatten() {
            let f = f.lock();
            taken.extend(
                (0..6)
                    .filter_map(|i| f.config().bar(i))
                    .map(|b| (b.addr, b.size)),
            );
        }
        taken.sort_unstable();
        let mut addr = PCI_MMIO_START.next_multiple_of(size);
        for (start, len) in taken {
            if addr + size <= start {
                break;
            }
            addr = addr.max(start.saturating_add(len).next_multiple_of(size));
        }
        if addr.checked_add(size).is_none_or(|end| end > PCI_MMIO_END) {
            return Err(PciError::NoMmio(size));
        }
        self.allocated.insert(addr, size);
        Ok(Bar {
            addr,
            size,
            is_64: false,
        })
    }

    /// Gives a range `allocate_bar` returned back to the window.
    pub fn release_bar(&mut self, bar: Bar) {
        if self.allocated.get(&bar.addr) == Some(&bar.size) {
            self.allocated.remove(&bar.addr);
        }
    }

    /// Puts a function in `slot` before the guest runs (it finds it when it scans the
    /// bus; `hotplug` tells a running guest). Its BARs come from `allocate_bar`; on an
    /// error they are the caller's to release.
    pub fn add(&mut self, function: SharedFunction, slot: u8) -> Result<(), PciError> {
        let at = self.free_slot(slot)?;
        self.slots[at] = Some(function);
        Ok(())
    }

    /// `slot` as an index into `slots`, if a device may go there or leave it: it exists
    /// and is not the machine's.
    fn device_slot(&self, slot: u8) -> Result<usize, PciError> {
        let at = usize::from(slot);
        if at >= SLOTS {
            return Err(PciError::NoSuchSlot(slot));
        }
        if FIXED_SLOTS & slot_bit(at) != 0 {
            return Err(PciError::NotHotpluggable(slot));
        }
        Ok(at)
    }

    /// `slot` as an index into `slots`, if a device may go there now.
    pub fn free_slot(&self, slot: u8) -> Result<usize, PciError> {
        let at = self.device_slot(slot)?;
        match self.slots[at] {
            Some(_) => Err(PciError::SlotTaken(slot)),
            None => Ok(at),
        }
    }

    /// The slots of functions that ask for `wanted`, in their order: a slot asked for is
    /// that function's (it must be free, and asked for once); the others get the lowest
    /// slots left, in their order. Without slots asked for, the functions take slots 1,
    /// 2, 3, ... as they come.
    pub fn plan_slots(&self, wanted: &[Option<u8>]) -> Result<Vec<u8>, PciError> {
        let mut taken = (self.slots.iter().enumerate())
            .filter(|(_, f)| f.is_some())
            .fold(0u32, |bits, (slot, _)| bits | slot_bit(slot));
        for &slot in wanted.iter().flatten() {
            let at = self.free_slot(slot)?;
            if taken & slot_bit(at) != 0 {
                return Err(PciError::SlotTaken(slot));
            }
            taken |= slot_bit(at);
        }
        wanted
            .iter()
            .map(|w| match w {
                Some(slot) => Ok(*slot),
                None => {
                    let at = (0..SLOTS)
                        .find(|&s| taken & slot_bit(s) == 0)
                        .ok_or(PciError::NoSlot)?;
                    taken |= slot_bit(at);
                    Ok(at as u8)
                }
            })
            .collect()
    }

    /// Whether a function sits in `slot`.
    pub fn occupied(&self, slot: u8) -> bool {
        matches!(self.slots.get(usize::from(slot)), Some(Some(_)))
    }

    fn function(&self, bus: u8, dev: u8, func: u8) -> Option<&SharedFunction> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev)).and_then(Option::as_ref)
    }

    pub fn config_read(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &mut [u8]) {
        match self.function(bus, dev, func) {
            Some(f) => f.lock().config().read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn config_write(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &[u8]) {
        if let Some(f) = self.function(bus, dev, func) {
            f.lock().write_config(offset, data);
        }
    }

    pub fn reset(&self) {
        for f in self.slots.iter().flatten() {
            f.lock().reset();
        }
    }

    /// Each function's state, by slot.
    pub fn save_states(&self) -> Vec<(u8, Vec<u8>)> {
        (self.slots.iter().enumerate())
            .filter_map(|(slot, f)| f.as_ref().map(|f| (slot as u8, f.lock().save_state())))
            .collect()
    }

    /// Gives each function its saved state; the slots in use must be the same.
    pub fn restore_states(&mut self, states: &[(u8, Vec<u8>)]) -> Result<(), String> {
        let here: Vec<u8> = (self.slots.iter().enumerate())
            .filter(|(_, f)| f.is_some())
            .map(|(slot, _)| slot as u8)
            .collect();
        let there: Vec<u8> = states.iter().map(|(slot, _)| *slot).collect();
        if here != there {
            return Err(format!(
                "the PCI devices differ: slots {there:?} saved, {here:?} here"
            ));
        }
        // Everything registered at a BAR goes before any BAR moves: the source's history
        // of hot-plugs may have put two functions' BARs the other way round from here.
        for f in self.slots.iter().flatten() {
            f.lock().before_restore();
        }
        for (slot, state) in states {
            if let Some(Some(f)) = self.slots.get(usize::from(*slot)) {
                f.lock()
                    .restore_state(state)
                    .map_err(|e| format!("PCI slot {slot}: {e}"))?;
            }
        }
        // The window's ranges are where the functions are now (their restored BARs).
        self.allocated = (self.slots.iter().flatten())
            .flat_map(|f| {
                let f = f.lock();
                let bars: Vec<Bar> = (0..6).filter_map(|i| f.config().assigned_bar(i)).collect();
                bars
            })
            .map(|b| (b.addr, b.size))
            .collect();
        Ok(())
    }

    /// The function and BAR whose range holds `addr` (memory decoding on).
    fn bar_at(&self, addr: u64) -> Option<(SharedFunction, usize, u64)> {
        for f in self.slots.iter().flatten() {
            let g = f.lock();
            let config = g.config();
            if config.command() & COMMAND_MEMORY == 0 {
                continue;
            }
            for i in 0..6 {
                if let Some(b) = config.bar(i) {
                    if addr >= b.addr && addr - b.addr < b.size {
                        return Some((f.clone(), i, addr - b.addr));
                    }
                }
            }
        }
        None
    }

    /// Every function as the guest sees it now (QMP query-pci), read from its
    /// configuration space.
    pub fn describe(&self) -> Vec<ipc::PciFunctionInfo> {
        (self.slots.iter().enumerate())
            .filter_map(|(slot, f)| {
                let f = f.as_ref()?.lock();
                let c = f.config();
                let byte = |off| c.bytes(off, 1)[0];
                let class_revision = c.get32(config::CLASS_REVISION);
                let subsystem = (byte(config::HEADER_TYPE) & 0x7f == 0).then(|| {
                    (
                        c.get16(config::SUBSYSTEM_VENDOR_ID),
                        c.get16(config::SUBSYSTEM_ID),
                    )
                });
                Some(ipc::PciFunctionInfo {
                    bus: 0,
                    slot: slot as u8,
                    function: 0,
                    vendor: c.get16(config::VENDOR_ID),
                    device: c.get16(config::DEVICE_ID),
                    subsystem,
                    class_code: class_revision >> 8,
                    revision: class_revision as u8,
                    interrupt_line: byte(config::INTERRUPT_LINE),
                    interrupt_pin: byte(config::INTERRUPT_PIN),
                    qdev_id: f.qdev_id().to_string(),
                    bars: (0..6).filter_map(|i| c.bar_info(i)).collect(),
                })
            })
            .collect()
    }
}

/// Configuration mechanism #1: address at 0xCF8, data at 0xCFC..0xCFF. The PIIX/ICH
/// reset control register sits inside that range at 0xCF9 (byte accesses only), so this
/// device forwards those to it.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    reset_control: SharedDevice,
    address: u32,
}

impl PciConfigIo {
    pub fn new(root: Arc<Mutex<PciRoot>>, reset_control: SharedDevice) -> Self {
        PciConfigIo {
            root,
            reset_control,
            address: 0,
        }
    }

    fn target(&self, data_offset: u64) -> Option<(u8, u8, u8, usize)> {
        let a = self.address;
        if a & (1 << 31) == 0 {
            return None;
        }
        let bus = (a >> 16) as u8;
        let dev = ((a >> 11) & 0x1f) as u8;
        let func = ((a >> 8) & 0x7) as u8;
        let reg = (a & 0xfc) as usize + data_offset as usize;
        Some((bus, dev, func, reg))
    }
}

const RESET_CONTROL_OFFSET: u64 = 1;

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == RESET_CONTROL_OFFSET && data.len() == 1 {
            return self.reset_control.lock().read(0, data);
        }
        if offset < 4 {
            let bytes = self.address.to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
            }
            return;
        }
        match self.target(offset - 4) {
            Some((bus, dev, func, reg)) => self.root.lock().config_read(bus, dev, func, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == RESET_CONTROL_OFFSET && data.len() == 1 {
            return self.reset_control.lock().write(0, data);
        }
        if offset == 0 && data.len() == 4 {
            self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            return;
        }
        if offset >= 4 {
            if let Some((bus, dev, func, reg)) = self.target(offset - 4) {
                self.root.lock().config_write(bus, dev, func, reg, data);
            }
        }
    }

    fn reset(&mut self) {
        self.address = 0;
        self.reset_control.lock().reset();
        self.root.lock().reset();
    }

    /// The configuration address latch, the reset control register and every function
    /// on the bus (whichever access path the guest uses, the functions are these).
    fn save_state(&self) -> Option<Vec<u8>> {
        Some(state::encode(&RootState {
            address: self.address,
            reset_control: self.reset_control.lock().save_state().unwrap_or_default(),
            functions: self.root.lock().save_states(),
        }))
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: RootState = state::decode("PCI root", bytes)?;
        self.root.lock().restore_states(&s.functions)?;
        self.reset_control.lock().restore_state(&s.reset_control)?;
        self.address = s.address;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct RootState {
    address: u32,
    reset_control: Vec<u8>,
    functions: Vec<(u8, Vec<u8>)>,
}

/// ECAM: bus << 20 | device << 15 | function << 12 | register.
pub struct PciEcam {
    root: Arc<Mutex<PciRoot>>,
}

impl PciEcam {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciEcam { root }
    }

    fn decode(offset: u64) -> (u8, u8, u8, usize) {
        (
            (offset >> 20) as u8,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 0x7) as u8,
            (offset & 0xfff) as usize,
        )
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, dev, func, reg) = Self::decode(offset);
        self.root.lock().config_read(bus, dev, func, reg, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (bus, dev, func, reg) = Self::decode(offset);
        self.root.lock().config_write(bus, dev, func, reg, data);
    }
}

/// The 32-bit MMIO window: accesses go to the BAR that covers them.
pub struct PciMmioWindow {
    root: Arc<Mutex<PciRoot>>,
}

impl PciMmioWindow {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciMmioWindow { root }
    }
}

impl BusDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let target = self.root.lock().bar_at(PCI_MMIO_START + offset);
        match target {
            Some((f, bar, off)) => f.lock().read_bar(bar, off, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let target = self.root.lock().bar_at(PCI_MMIO_START + offset);
        if let Some((f, bar, off)) = target {
            f.lock().write_bar(bar, off, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A virtio-pci function's BAR size (not imported: the transport imports this).
    const BAR_SIZE: u64 = 0x8000;

    /// A function with BAR 0, noting what the bus asks of it in `log`.
    struct Function {
        config: PciConfig,
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl PciFunction for Function {
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.config.write(offset, data);
        }
        fn read_bar(&mut self, _: usize, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_bar(&mut self, _: usize, _: u64, _: &[u8]) {}
        fn save_state(&self) -> Vec<u8> {
            self.config.save()
        }
        fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
            self.log.lock().push(format!("restore {}", self.name));
            self.config.restore(state)
        }
        fn before_restore(&mut self) {
            self.log.lock().push(format!("before {}", self.name));
        }
    }

    fn function(
        root: &mut PciRoot,
        name: &'static str,
        log: &Arc<Mutex<Vec<String>>>,
    ) -> (Arc<Mutex<Function>>, Bar) {
        let bar = root.allocate_bar(BAR_SIZE).unwrap();
        let mut config = PciConfig::new(&Ids {
            vendor: 0x1af4,
            device: 0x1042,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
            revision: 1,
            class: 0x010000,
        });
        config.add_bar(0, bar);
        config.seal();
        let f = Function {
            config,
            name,
            log: log.clone(),
        };
        (Arc::new(Mutex::new(f)), bar)
    }

    #[test]
    fn slots_asked_for_are_kept_and_the_others_fill_in_from_the_lowest() {
        let root = PciRoot::default();
        assert_eq!(root.plan_slots(&[None, None, None]).unwrap(), [1, 2, 3]);
        assert_eq!(
            root.plan_slots(&[None, Some(1), None, Some(3)]).unwrap(),
            [2, 1, 4, 3],
            "a slot asked for later is kept for it"
        );
        assert_eq!(root.plan_slots(&[Some(31), None]).unwrap(), [31, 1]);
        let err = |wanted: &[Option<u8>]| root.plan_slots(wanted).unwrap_err().to_string();
        assert_eq!(
            err(&[Some(0)]),
            "PCI slot 0 holds part of the machine (the host bridge)"
        );
        assert_eq!(
            err(&[Some(32)]),
            "PCI slot 32 does not exist (bus 0 has slots 0 to 31)"
        );
        assert_eq!(err(&[Some(4), None, Some(4)]), "PCI slot 4 is in use");
        assert_eq!(err(&[None; 32]), "no free PCI slot");
        assert_eq!(root.plan_slots(&[None; 31]).unwrap().last(), Some(&31));
    }

    #[test]
    fn functions_present_keep_their_slots() {
        let log = Arc::default();
        let mut root = PciRoot::default();
        let (f, _) = function(&mut root, "a", &log);
        root.add(f.clone(), 2).unwrap();
        assert!(root.occupied(2) && root.occupied(0) && !root.occupied(1));
        assert!(!root.occupied(200));
        assert_eq!(root.plan_slots(&[None, None]).unwrap(), [1, 3]);
        assert!(matches!(
            root.plan_slots(&[Some(2)]),
            Err(PciError::SlotTaken(2))
        ));
        assert!(matches!(
            root.add(f.clone(), 2),
            Err(PciError::SlotTaken(2))
        ));
        assert!(matches!(
            root.add(f.clone(), 0),
            Err(PciError::NotHotpluggable(0))
        ));
        assert!(matches!(root.add(f, 40), Err(PciError::NoSuchSlot(40))));
    }

    #[test]
    fn a_bar_the_guest_moved_is_not_handed_out_again() {
        let log = Arc::default();
        let mut root = PciRoot::default();
        let (f, bar) = function(&mut root, "a", &log);
        assert_eq!(bar.addr, PCI_MMIO_START);
        root.add(f.clone(), 1).unwrap();
        // The guest moves it to where the next BAR would have gone.
        let moved = PCI_MMIO_START + BAR_SIZE;
        f.lock()
            .write_config(config::BAR0, &(moved as u32).to_le_bytes());
        let next = root.allocate_bar(BAR_SIZE).unwrap();
        assert_eq!(next.addr, PCI_MMIO_START + 2 * BAR_SIZE);
    }

    /// The source's hot-plugs left its two functions' BARs the other way round from
    /// where this bus, built in launch order, put them.
    #[test]
    fn a_restore_takes_the_sources_bars_as_the_functions_homes() {
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut source = PciRoot::default();
        let (a, _) = function(&mut source, "a", &log);
        let (b, _) = function(&mut source, "b", &log);
        let (c, _) = function(&mut source, "c", &log);
        source.add(a.clone(), 1).unwrap();
        source.add(b, 2).unwrap();
        source.add(c, 3).unwrap();
        // a leaves; a new function in slot 4 gets its range.
        source.slots[1] = None;
        for bar in (0..6).filter_map(|i| a.lock().config().assigned_bar(i)) {
            source.release_bar(bar);
        }
        let (d, d_bar) = function(&mut source, "d", &log);
        assert_eq!(d_bar.addr, PCI_MMIO_START);
        source.add(d, 4).unwrap();
        let saved = source.save_states();

        let mut here = PciRoot::default();
        let mut bars = Vec::new();
        for (slot, name) in [(2, "b"), (3, "c"), (4, "d")] {
            let (f, bar) = function(&mut here, name, &log);
            here.add(f, slot).unwrap();
            bars.push(bar.addr);
        }
        assert_eq!(
            here.function(0, 4, 0)
                .unwrap()
                .lock()
                .config()
                .bar(0)
                .unwrap()
                .addr,
            bars[2]
        );
        log.lock().clear();
        here.restore_states(&saved).unwrap();
        assert_eq!(
            *log.lock(),
            [
                "before b",
                "before c",
                "before d",
                "restore b",
                "restore c",
                "restore d"
            ],
            "every BAR is let go of before any moves"
        );
        let bar_of = |root: &PciRoot, slot| {
            let f = root.function(0, slot, 0).unwrap().lock();
            (
                f.config().bar(0).unwrap().addr,
                f.config().assigned_bar(0).unwrap().addr,
            )
        };
        let d_home = (PCI_MMIO_START, PCI_MMIO_START);
        assert_eq!(bar_of(&here, 4), d_home);
        assert_eq!(
            bar_of(&here, 2),
            (PCI_MMIO_START + BAR_SIZE, PCI_MMIO_START + BAR_SIZE)
        );
        // A reset keeps them there; a new BAR goes past all three.
        here.reset();
        assert_eq!(bar_of(&here, 4), d_home);
        assert_eq!(
            here.allocate_bar(BAR_SIZE).unwrap().addr,
            PCI_MMIO_START + 3 * BAR_SIZE
        );
    }

    /// The source's first function left: the range it had is free here too after a
    /// restore, though this bus had given it to another function when it was built.
    #[test]
    fn after_a_restore_the_window_counts_the_bars_where_they_are() {
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut source = PciRoot::default();
        let (a, _) = function(&mut source, "a", &log);
        let (b, _) = function(&mut source, "b", &log);
        source.add(a, 1).unwrap();
        source.add(b, 2).unwrap();
        source.slots[1] = None;
        let saved = source.save_states();
        let mut here = PciRoot::default();
        let (b, bar) = function(&mut here, "b", &log);
        assert_eq!(bar.addr, PCI_MMIO_START);
        here.add(b, 2).unwrap();
        here.restore_states(&saved).unwrap();
        assert_eq!(here.allocate_bar(BAR_SIZE).unwrap().addr, PCI_MMIO_START);
    }
}
