//! Virtio 1.x over PCI (the "modern" transport) and split virtqueues.
//!
//! Transport ([`Transport`], ring 0): the vendor-specific capabilities (common configuration,
//! notification with its offset multiplier, device configuration; the ISR status only serves
//! INTx, which is never used) in memory BARs, device
//! reset, feature negotiation (VIRTIO_F_VERSION_1 required; INDIRECT_DESC, EVENT_IDX,
//! ACCESS_PLATFORM and ORDER_PLATFORM taken when offered, plus what the device driver asks
//! for), MSI-X (one vector for configuration changes, one per queue when the table is big
//! enough, else one shared by the queues), queue setup and DRIVER_OK. INTx is never used.
//!
//! Virtqueues ([`Virtqueue`]): split rings in DMA-pool memory (queue sizes from the device,
//! capped at [`MAX_QUEUE_SIZE`]), made for use from ring 3: publishing buffers, the doorbell
//! (a plain MMIO write to the queue's notify address, skipped when the device asked for no
//! notification), reaping used entries, and interrupt suppression (avail flags, or the used
//! event index with EVENT_IDX). Guest memory is identity mapped: addresses in descriptors
//! are the buffers' own addresses.

use crate::arch::interrupts;
use crate::arch::phys::{mmio_read, mmio_write};
use crate::arch::{apic, memory};
use crate::console;
use crate::pci::{self, Address, Function, MsiX};
use core::sync::atomic::{fence, Ordering};

pub const VENDOR: u16 = 0x1af4;

/// Whether `function` is a virtio device of one type: its modern PCI id, or the
/// transitional id with the type as subsystem id.
pub fn is_device(function: &Function, modern: u16, transitional: u16, subsystem: u16) -> bool {
    function.vendor == VENDOR
        && (function.device == modern
            || (function.device == transitional && function.subsystem == subsystem))
}
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;
pub const F_ORDER_PLATFORM: u64 = 1 << 36;
/// Transport features taken whenever the device offers them.
const TRANSPORT_FEATURES: u64 =
    F_INDIRECT_DESC | F_EVENT_IDX | F_VERSION_1 | F_ACCESS_PLATFORM | F_ORDER_PLATFORM;

pub const MAX_QUEUE_SIZE: u16 = 256;

const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_FAILED: u8 = 128;

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

pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
pub const DESC_INDIRECT: u16 = 4;
const AVAIL_NO_INTERRUPT: u16 = 1;
const USED_NO_NOTIFY: u16 = 1;
/// Offset of the used ring in the page shared with the available ring (which needs at most
/// 6 + 2 * 256 bytes; the used ring at most 6 + 8 * 256).
const USED_OFFSET: u64 = 1024;

/// One entry of a descriptor table.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

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
    let head = pci::read32(at, cap);
    let cap_len = (head >> 16) as u8;
    let bar = pci::read32(at, cap + 4);
    VirtioCap {
        cfg_type: (head >> 24) as u8,
        bar: bar as u8,
        offset: pci::read32(at, cap + 8),
        length: pci::read32(at, cap + 12),
        extra: if cap_len >= 20 {
            pci::read32(at, cap + 16)
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
        let count = pci::find_caps(at, pci::CAP_VENDOR, &mut caps);
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
            let addr = pci::map_bar(
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
        pci::enable(at);
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
        let mut take = |msix: &MsiX| -> Option<(u16, u8)> {
            if next_entry >= msix.table_size {
                return None;
            }
            let vector = interrupts::alloc_vector()?;
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
        Some(Virtqueue {
            index,
            size,
            desc,
            avail: rings,
            used: rings + USED_OFFSET,
            notify: self.notify + offset,
            event_idx,
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            interrupts: true,
            vector,
            notifies: 0,
        })
    }

    /// DRIVER_OK: the device is live.
    pub fn driver_ok(&self) {
        self.add_status(STATUS_DRIVER_OK);
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

/// One split virtqueue. The driver owns descriptor allocation (see virtio_blk.rs); this type
/// publishes heads, rings the doorbell and reaps used entries. Usable from ring 3.
pub struct Virtqueue {
    pub index: u16,
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: u64,
    event_idx: bool,
    /// Our copy of avail.idx (the next free slot of the available ring).
    avail_idx: u16,
    /// avail.idx when the device was last considered for a notification.
    kicked_idx: u16,
    /// Used entries consumed so far.
    last_used: u16,
    interrupts: bool,
    /// IDT vector this queue's MSI-X entry raises, if it has one.
    pub vector: Option<u8>,
    /// Doorbell writes so far.
    pub notifies: u64,
}

fn load16(addr: u64) -> u16 {
    // SAFETY: ring memory from the DMA pool, shared with the device: volatile.
    unsafe { core::ptr::read_volatile(addr as usize as *const u16) }
}

fn store16(addr: u64, value: u16) {
    // SAFETY: as in `load16`.
    unsafe { core::ptr::write_volatile(addr as usize as *mut u16, value) }
}

fn load32(addr: u64) -> u32 {
    // SAFETY: as in `load16`.
    unsafe { core::ptr::read_volatile(addr as usize as *const u32) }
}

impl Virtqueue {
    /// Writes descriptor `index` of the queue's own table.
    pub fn set_desc(&self, index: u16, desc: Desc) {
        let addr = self.desc + 16 * u64::from(index % self.size);
        // SAFETY: inside the descriptor table (DMA pool), which the device only reads.
        unsafe { core::ptr::write_volatile(addr as usize as *mut Desc, desc) }
    }

    /// Puts a chain head into the available ring (visible to the device at the next `kick`).
    pub fn push(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        store16(self.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes everything pushed so far and notifies the device unless it said it does not
    /// need it (used flags, or avail_event with EVENT_IDX). Returns whether it notified.
    pub fn kick(&mut self) -> bool {
        let new = self.avail_idx;
        let old = self.kicked_idx;
        if new == old {
            return false;
        }
        // Descriptors and ring entries before the index (x86 keeps stores in order; this keeps
        // the compiler from reordering them).
        fence(Ordering::Release);
        store16(self.avail + 2, new);
        // The index store must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        self.kicked_idx = new;
        let needed = if self.event_idx {
            let event = load16(self.used + 4 + 8 * u64::from(self.size));
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            load16(self.used) & USED_NO_NOTIFY == 0
        };
        if needed {
            // SAFETY: the notify address was checked against the notify region and mapped.
            unsafe { mmio_write::<u16>(self.notify, self.index) };
            self.notifies += 1;
        }
        needed
    }

    /// Whether the device has used entries we have not reaped.
    pub fn has_used(&self) -> bool {
        load16(self.used + 2) != self.last_used
    }

    /// The next used entry (head id, bytes written), if any.
    pub fn pop(&mut self) -> Option<(u32, u32)> {
        if !self.has_used() {
            return None;
        }
        // The entry is read after the index (compiler barrier; x86 loads are ordered).
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_used % self.size);
        let entry = self.used + 4 + 8 * slot;
        let id = load32(entry);
        let len = load32(entry + 4);
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            self.write_used_event();
        }
        Some((id, len))
    }

    /// With EVENT_IDX: interrupt at the next completion, or (suppressed) not before half the
    /// index space from here, renewed at every pop.
    fn write_used_event(&self) {
        let event = if self.interrupts {
            self.last_used
        } else {
            self.last_used.wrapping_add(0x8000)
        };
        store16(self.avail + 4 + 2 * u64::from(self.size), event);
    }

    /// Asks the device for interrupts on completions (or asks it not to send them). Polling
    /// works either way; suppression saves the interrupt's cost.
    pub fn set_interrupts(&mut self, on: bool) {
        self.interrupts = on;
        if self.event_idx {
            self.write_used_event();
        } else {
            store16(self.avail, if on { 0 } else { AVAIL_NO_INTERRUPT });
        }
        fence(Ordering::SeqCst);
    }
}
