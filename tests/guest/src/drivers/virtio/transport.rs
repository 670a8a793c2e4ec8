//! The virtio 1.x PCI transport of one device ([`Transport`], ring 0): the vendor-specific
//! capabilities (common configuration, notification with its offset multiplier, device
//! configuration; the ISR status only serves INTx, which is never used) in memory BARs, device
//! reset, feature negotiation (VIRTIO_F_VERSION_1 required; INDIRECT_DESC, EVENT_IDX,
//! ACCESS_PLATFORM and ORDER_PLATFORM taken when offered, plus what the device driver asks
//! for), MSI-X (one vector for configuration changes, one per queue when the table is big
//! enough, else one shared by the queues), queue set-up ([`Virtqueue`]s, sizes from the device
//! capped at [`MAX_QUEUE_SIZE`]), DRIVER_OK and device configuration reads (and 32-bit writes).

use super::virtqueue::{Virtqueue, MAX_QUEUE_SIZE, USED_OFFSET};
use crate::arch::phys::{mmio_read, mmio_write};
use crate::arch::{apic, interrupts, memory};
use crate::console;
use crate::drivers::pci::bar::map_bar;
use crate::drivers::pci::capabilities::{find_caps, MsiX, CAP_VENDOR};
use crate::drivers::pci::config::{self, Address};
use crate::drivers::pci::scan::Function;

// Transport feature bits (virtio 1.x, 6).
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;
pub const F_ORDER_PLATFORM: u64 = 1 << 36;

/// Transport features taken whenever the device offers them.
const TRANSPORT_FEATURES: u64 =
    F_INDIRECT_DESC | F_EVENT_IDX | F_VERSION_1 | F_ACCESS_PLATFORM | F_ORDER_PLATFORM;

// Device status bits (virtio 1.x, 2.1).
const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_FAILED: u8 = 128;

// Vendor capability types (virtio 1.x, 4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_DEVICE: u8 = 4;

// Common configuration structure (virtio 1.x, 4.1.4.3).
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
const COMMON_MIN_LEN: u32 = 0x38;
pub const NO_VECTOR: u16 = 0xffff;

/// Polls of device_status after a reset before giving up.
const RESET_POLLS: u32 = 10_000;

/// A virtio PCI function whose capabilities have been found and mapped.
pub struct Transport {
    pub pci: Address,
    pub device_id: u16,
    common: u64,
    notify: u64,
    notify_len: u32,
    notify_multiplier: u32,
    device_cfg: u64,
    pub device_cfg_len: u32,
    msix: Option<MsiX>,
    /// IDT vector of configuration-change interrupts, if the device took its MSI-X entry.
    pub config_vector: Option<u8>,
    /// MSI-X entry and IDT vector for each queue (None: polled only).
    queue_vectors: QueueVectors,
    /// Consecutive IDT vectors (first, count) to take MSI-X vectors from instead of
    /// allocating fresh ones (a hotplug slot reuses its own).
    vector_block: Option<(u8, u8)>,
    pub offered: u64,
    pub features: u64,
}

#[derive(Clone, Copy)]
enum QueueVectors {
    None,
    Shared(u8),
    PerQueue { first: u8, count: u16 },
}

fn error(at: Address) -> console::Line {
    at.print(console::error("virtio ")).s(": ")
}

/// A vendor capability's fields.
struct VirtioCap {
    cfg_type: u8,
    bar: u8,
    offset: u32,
    length: u32,
    extra: u32,
}

fn read_cap(at: Address, cap: u16) -> VirtioCap {
    let head = config::read32(at, cap);
    let cap_len = (head >> 16) as u8;
    let bar = config::read32(at, cap + 4);
    VirtioCap {
        cfg_type: (head >> 24) as u8,
        bar: bar as u8,
        offset: config::read32(at, cap + 8),
        length: config::read32(at, cap + 12),
        extra: if cap_len >= 20 {
            config::read32(at, cap + 16)
        } else {
            0
        },
    }
}

impl Transport {
    /// Finds and maps the virtio structures of `function` and enables memory decoding and bus
    /// mastering. None (after an error line) if a required structure is missing or unusable.
    pub fn probe(function: &Function) -> Option<Transport> {
        let at = function.addr;
        let mut caps = [0u16; 8];
        let count = find_caps(at, CAP_VENDOR, &mut caps);
        let mut found: [Option<VirtioCap>; 5] = [None, None, None, None, None];
        for &cap in &caps[..count] {
            let cap = read_cap(at, cap);
            let slot = usize::from(cap.cfg_type);
            // The first structure of each type whose BAR exists wins (virtio 1.x, 4.1.4).
            if (1..=4).contains(&slot) && cap.bar <= 5 && found[slot].is_none() {
                found[slot] = Some(cap);
            }
        }
        let map = |cap: &Option<VirtioCap>, what: &str| -> Option<(u64, u32)> {
            let Some(cap) = cap else {
                error(at).s("no ").s(what).s(" capability").end();
                return None;
            };
            let addr = map_bar(
                at,
                cap.bar,
                u64::from(cap.offset),
                u64::from(cap.length),
                what,
            )?;
            Some((addr, cap.length))
        };
        let (common, common_len) = map(&found[usize::from(CAP_COMMON)], "common cfg")?;
        if common_len < COMMON_MIN_LEN {
            error(at)
                .s("common cfg length=")
                .dec(u64::from(common_len))
                .s(" is too short")
                .end();
            return None;
        }
        let (notify, notify_len) = map(&found[usize::from(CAP_NOTIFY)], "notify")?;
        let notify_multiplier = found[usize::from(CAP_NOTIFY)]
            .as_ref()
            .map_or(0, |c| c.extra);
        let (device_cfg, device_cfg_len) = map(&found[usize::from(CAP_DEVICE)], "device cfg")?;
        // The ISR status (CAP_ISR) only matters for INTx, which this driver never uses.
        config::enable(at);
        Some(Transport {
            pci: at,
            device_id: function.device,
            common,
            notify,
            notify_len,
            notify_multiplier,
            device_cfg,
            device_cfg_len,
            msix: None,
            config_vector: None,
            queue_vectors: QueueVectors::None,
            vector_block: None,
            offered: 0,
            features: 0,
        })
    }

    fn read8(&self, offset: u64) -> u8 {
        // SAFETY: `common` maps at least COMMON_MIN_LEN bytes of the common configuration.
        unsafe { mmio_read::<u8>(self.common + offset) }
    }

    fn read16(&self, offset: u64) -> u16 {
        // SAFETY: as in `read8`.
        unsafe { mmio_read::<u16>(self.common + offset) }
    }

    fn read32(&self, offset: u64) -> u32 {
        // SAFETY: as in `read8`.
        unsafe { mmio_read::<u32>(self.common + offset) }
    }

    fn write8(&self, offset: u64, value: u8) {
        // SAFETY: as in `read8`.
        unsafe { mmio_write::<u8>(self.common + offset, value) }
    }

    fn write16(&self, offset: u64, value: u16) {
        // SAFETY: as in `read8`.
        unsafe { mmio_write::<u16>(self.common + offset, value) }
    }

    fn write32(&self, offset: u64, value: u32) {
        // SAFETY: as in `read8`.
        unsafe { mmio_write::<u32>(self.common + offset, value) }
    }

    /// 64-bit fields as two 32-bit writes, low half first (allowed by virtio 1.x, 4.1.3.1).
    fn write64(&self, offset: u64, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }

    pub fn status(&self) -> u8 {
        self.read8(DEVICE_STATUS)
    }

    fn add_status(&self, bits: u8) {
        let status = self.status();
        self.write8(DEVICE_STATUS, status | bits);
    }

    /// Sets FAILED: the device gives up on this driver.
    pub fn fail(&self) {
        self.add_status(STATUS_FAILED);
    }

    /// Number of queues the common configuration offers.
    pub fn max_queues(&self) -> u16 {
        self.read16(NUM_QUEUES)
    }

    /// Resets the device, then ACKNOWLEDGE, DRIVER, feature negotiation and FEATURES_OK.
    /// `wanted` are the device-specific features the driver can use; the transport adds its
    /// own. False (after an error line) if the device does not offer VIRTIO_F_VERSION_1 or
    /// refuses the features.
    pub fn negotiate(&mut self, wanted: u64) -> bool {
        self.negotiate_with(|_| wanted)
    }

    /// As [`negotiate`](Self::negotiate), with the device-specific features chosen by `choose`
    /// from the offer (for features that only make sense together).
    pub fn negotiate_with(&mut self, choose: impl FnOnce(u64) -> u64) -> bool {
        self.write8(DEVICE_STATUS, 0);
        let mut polls = 0;
        while self.status() != 0 {
            polls += 1;
            if polls == RESET_POLLS {
                error(self.pci)
                    .s("device status stays ")
                    .hex(u64::from(self.status()))
                    .s(" after reset")
                    .end();
                return false;
            }
        }
        self.add_status(STATUS_ACKNOWLEDGE);
        self.add_status(STATUS_DRIVER);
        self.write32(DEVICE_FEATURE_SELECT, 0);
        let low = self.read32(DEVICE_FEATURE);
        self.write32(DEVICE_FEATURE_SELECT, 1);
        let high = self.read32(DEVICE_FEATURE);
        self.offered = u64::from(low) | (u64::from(high) << 32);
        if self.offered & F_VERSION_1 == 0 {
            error(self.pci)
                .s("VIRTIO_F_VERSION_1 not offered (features=")
                .hex(self.offered)
                .s(")")
                .end();
            self.fail();
            return false;
        }
        self.features = self.offered & (choose(self.offered) | TRANSPORT_FEATURES);
        self.write32(DRIVER_FEATURE_SELECT, 0);
        self.write32(DRIVER_FEATURE, self.features as u32);
        self.write32(DRIVER_FEATURE_SELECT, 1);
        self.write32(DRIVER_FEATURE, (self.features >> 32) as u32);
        self.add_status(STATUS_FEATURES_OK);
        if self.status() & STATUS_FEATURES_OK == 0 {
            error(self.pci)
                .s("device refused features=")
                .hex(self.features)
                .end();
            self.fail();
            return false;
        }
        true
    }

    pub fn has(&self, feature: u64) -> bool {
        self.features & feature != 0
    }

    /// Enables MSI-X (if the function has it) and programs its entries for `queues` queues:
    /// entry 0 for configuration changes, entries 1.. for the queues (one each if the table
    /// is big enough, else one shared), all on this CPU. Devices without MSI-X stay polled.
    pub fn setup_msix(&mut self, queues: u16) {
        let Some(msix) = MsiX::find(self.pci) else {
            return;
        };
        msix.enable_masked();
        let apic_id = apic::id();
        let mut next_entry = 0u16;
        let block = self.vector_block;
        let mut take = |msix: &MsiX| -> Option<(u16, u8)> {
            if next_entry >= msix.table_size {
                return None;
            }
            let vector = match block {
                Some((first, count)) => {
                    (next_entry < u16::from(count)).then(|| first + next_entry as u8)?
                }
                None => interrupts::alloc_vector()?,
            };
            msix.set_entry(next_entry, apic_id, vector);
            next_entry += 1;
            Some((next_entry - 1, vector))
        };
        if let Some((entry, vector)) = take(&msix) {
            self.write16(CONFIG_MSIX_VECTOR, entry);
            if self.read16(CONFIG_MSIX_VECTOR) == entry {
                self.config_vector = Some(vector);
            } else {
                error(self.pci)
                    .s("device refused MSI-X entry ")
                    .dec(u64::from(entry))
                    .s(" for configuration changes")
                    .end();
            }
        }
        self.queue_vectors = if msix.table_size > queues {
            match take(&msix) {
                Some((_, first)) => {
                    let mut count = 1;
                    while count < queues && take(&msix).is_some() {
                        count += 1;
                    }
                    QueueVectors::PerQueue { first, count }
                }
                None => QueueVectors::None,
            }
        } else {
            take(&msix).map_or(QueueVectors::None, |(_, v)| QueueVectors::Shared(v))
        };
        msix.unmask_function();
        self.msix = Some(msix);
    }

    /// MSI-X entries in the table (0 without MSI-X).
    pub fn msix_entries(&self) -> u16 {
        self.msix.map_or(0, |m| m.table_size)
    }

    /// MSI-X entry and IDT vector of queue `index`, if any.
    fn queue_vector(&self, index: u16) -> Option<(u16, u8)> {
        match self.queue_vectors {
            QueueVectors::None => None,
            QueueVectors::Shared(vector) => Some((1, vector)),
            // Vectors of consecutive entries were allocated consecutively (see setup_msix).
            QueueVectors::PerQueue { first, count } => {
                (index < count).then(|| (1 + index, first + index as u8))
            }
        }
    }

    /// Sets up and enables queue `index` with at most `max_size` entries. None (after an
    /// error line) if the device reports an impossible size, keeps a size we did not ask
    /// for, or the DMA pool is exhausted.
    pub fn setup_queue(&mut self, index: u16, max_size: u16, event_idx: bool) -> Option<Virtqueue> {
        let vector = self.queue_vector(index);
        self.setup_queue_with(index, max_size, event_idx, vector)
    }

    /// As [`setup_queue`](Self::setup_queue), for a queue that is only ever polled: its MSI-X
    /// vector is NO_VECTOR whatever the table size.
    pub fn setup_polled_queue(
        &mut self,
        index: u16,
        max_size: u16,
        event_idx: bool,
    ) -> Option<Virtqueue> {
        self.setup_queue_with(index, max_size, event_idx, None)
    }

    fn setup_queue_with(
        &mut self,
        index: u16,
        max_size: u16,
        event_idx: bool,
        msix: Option<(u16, u8)>,
    ) -> Option<Virtqueue> {
        self.write16(QUEUE_SELECT, index);
        let offered = self.read16(QUEUE_SIZE);
        if offered == 0 || !offered.is_power_of_two() {
            error(self.pci)
                .s("queue ")
                .dec(u64::from(index))
                .s(" has size ")
                .dec(u64::from(offered))
                .s(" (must be a non-zero power of two)")
                .end();
            return None;
        }
        let size = offered.min(max_size).min(MAX_QUEUE_SIZE);
        if size != offered {
            self.write16(QUEUE_SIZE, size);
            let kept = self.read16(QUEUE_SIZE);
            if kept != size {
                error(self.pci)
                    .s("queue ")
                    .dec(u64::from(index))
                    .s(" size stays ")
                    .dec(u64::from(kept))
                    .s(" after writing ")
                    .dec(u64::from(size))
                    .end();
                return None;
            }
        }
        let Some(desc) = memory::dma_alloc(16 * u64::from(size), 4096) else {
            error(self.pci).s("DMA pool exhausted (queue rings)").end();
            return None;
        };
        let Some(rings) = memory::dma_alloc_zeroed(4096, 4096) else {
            error(self.pci).s("DMA pool exhausted (queue rings)").end();
            return None;
        };
        let vector = match msix {
            Some((entry, vector)) => {
                self.write16(QUEUE_MSIX_VECTOR, entry);
                if self.read16(QUEUE_MSIX_VECTOR) == entry {
                    Some(vector)
                } else {
                    error(self.pci)
                        .s("device refused MSI-X entry ")
                        .dec(u64::from(entry))
                        .s(" for queue ")
                        .dec(u64::from(index))
                        .end();
                    None
                }
            }
            None => {
                self.write16(QUEUE_MSIX_VECTOR, NO_VECTOR);
                None
            }
        };
        self.write64(QUEUE_DESC, desc);
        self.write64(QUEUE_DRIVER, rings);
        self.write64(QUEUE_DEVICE, rings + USED_OFFSET);
        let notify_off = u64::from(self.read16(QUEUE_NOTIFY_OFF));
        let offset = notify_off * u64::from(self.notify_multiplier);
        if offset + 2 > u64::from(self.notify_len) {
            error(self.pci)
                .s("queue ")
                .dec(u64::from(index))
                .s(" notify offset ")
                .hex(offset)
                .s(" is outside the notify region (length ")
                .hex(u64::from(self.notify_len))
                .s(")")
                .end();
            return None;
        }
        self.write16(QUEUE_ENABLE, 1);
        Some(Virtqueue::new(
            index,
            size,
            desc,
            rings,
            self.notify + offset,
            event_idx,
            vector,
        ))
    }

    /// DRIVER_OK: the device is live.
    pub fn driver_ok(&self) {
        self.add_status(STATUS_DRIVER_OK);
    }

    /// Makes [`setup_msix`](Self::setup_msix) take its vectors from the `count` consecutive
    /// vectors from `first` (allocated by the caller, who reuses them for the next device)
    /// rather than allocate fresh ones; entries beyond them stay without a vector.
    pub fn use_vectors(&mut self, first: u8, count: u8) {
        self.vector_block = Some((first, count));
    }

    /// Quiesces the device for good (before it is ejected): resets it (device_status 0; the
    /// device then uses no buffer of ours), disables MSI-X and clears memory decoding and bus
    /// mastering. False after an error line if the reset did not complete, the rest is done
    /// all the same.
    pub fn shut_down(&mut self) -> bool {
        self.write8(DEVICE_STATUS, 0);
        let mut polls = 0;
        let reset = loop {
            if self.status() == 0 {
                break true;
            }
            polls += 1;
            if polls == RESET_POLLS {
                error(self.pci)
                    .s("device status stays ")
                    .hex(u64::from(self.status()))
                    .s(" after reset")
                    .end();
                break false;
            }
        };
        if let Some(msix) = self.msix.take() {
            msix.disable();
        }
        self.config_vector = None;
        self.queue_vectors = QueueVectors::None;
        config::disable(self.pci);
        reset
    }

    fn generation(&self) -> u8 {
        self.read8(CONFIG_GENERATION)
    }

    /// Reads device configuration through `read` until the configuration generation is the
    /// same before and after (bounded: a device whose generation never settles gets its last
    /// reading).
    pub fn read_config<T>(&self, read: impl Fn(&Self) -> T) -> T {
        let mut value;
        let mut tries = 0;
        loop {
            let before = self.generation();
            value = read(self);
            tries += 1;
            if self.generation() == before || tries == 16 {
                return value;
            }
        }
    }

    /// Device configuration field at `offset` (0 beyond the structure's length).
    pub fn config32(&self, offset: u64) -> u32 {
        if offset + 4 > u64::from(self.device_cfg_len) {
            return 0;
        }
        // SAFETY: inside the mapped device configuration.
        unsafe { mmio_read::<u32>(self.device_cfg + offset) }
    }

    /// Writes a 32-bit device configuration field (ignored beyond the structure's length).
    pub fn write_config32(&self, offset: u64, value: u32) {
        if offset + 4 > u64::from(self.device_cfg_len) {
            return;
        }
        // SAFETY: inside the mapped device configuration.
        unsafe { mmio_write::<u32>(self.device_cfg + offset, value) }
    }

    pub fn config8(&self, offset: u64) -> u8 {
        if offset + 1 > u64::from(self.device_cfg_len) {
            return 0;
        }
        // SAFETY: inside the mapped device configuration.
        unsafe { mmio_read::<u8>(self.device_cfg + offset) }
    }

    pub fn config16(&self, offset: u64) -> u16 {
        if offset + 2 > u64::from(self.device_cfg_len) {
            return 0;
        }
        // SAFETY: inside the mapped device configuration.
        unsafe { mmio_read::<u16>(self.device_cfg + offset) }
    }

    /// 64-bit fields as two 32-bit reads (callers wrap them in `read_config`).
    pub fn config64(&self, offset: u64) -> u64 {
        u64::from(self.config32(offset)) | (u64::from(self.config32(offset + 4)) << 32)
    }
}
