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
    #[error("PCI slot {0} holds part of the machine, which cannot be hot-plugged")]
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
        let mut addr = PCI_MMIO_START.next_multiple_of(size);
        for (&start, &len) in &self.allocated {
            if addr + size <= start {
                break;
            }
            addr = addr.max((start + len).next_multiple_of(size));
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

    /// Puts a function in the first free slot; returns its device number.
    pub fn add(&mut self, function: SharedFunction) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::NoSlot)?;
        self.slots[slot] = Some(function);
        Ok(slot as u8)
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
    pub fn restore_states(&self, states: &[(u8, Vec<u8>)]) -> Result<(), String> {
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
        for (slot, state) in states {
            if let Some(Some(f)) = self.slots.get(usize::from(*slot)) {
                f.lock()
                    .restore_state(state)
                    .map_err(|e| format!("PCI slot {slot}: {e}"))?;
            }
        }
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
