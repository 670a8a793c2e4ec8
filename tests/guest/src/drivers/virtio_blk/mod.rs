//! Virtio-blk driver: device discovery on the PCI scan (vendor 0x1af4, device 0x1042, or the
//! transitional 0x1001 driven through its modern interface), feature negotiation (SIZE_MAX,
//! SEG_MAX, BLK_SIZE, FLUSH, MQ, DISCARD, WRITE_ZEROES and RO when offered), the configuration
//! (capacity, limits, queue count) and a request engine per queue (queue.rs). The numbers from
//! the specification are in spec.rs.

pub mod queue;
pub mod spec;

use crate::drivers::pci::config::Address;
use crate::drivers::pci::scan::Functions;
use crate::drivers::virtio::discovery::probe_each;
use crate::drivers::virtio::transport::{Transport, F_EVENT_IDX, F_INDIRECT_DESC};
use crate::drivers::virtio::virtqueue::MAX_QUEUE_SIZE;
use queue::{BlkQueue, MAX_REQUEST, MAX_SEGMENTS};
use spec::{
    BLK, CFG_BLK_SIZE, CFG_CAPACITY, CFG_NUM_QUEUES, CFG_SEG_MAX, CFG_SIZE_MAX, F_BLK_SIZE,
    F_DISCARD, F_FLUSH, F_MQ, F_RO, F_SEG_MAX, F_SIZE_MAX, F_WRITE_ZEROES, SECTOR,
};

pub const MAX_DEVICES: usize = 4;
pub const MAX_QUEUES: usize = 16;
const WANTED: u64 =
    F_SIZE_MAX | F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH | F_MQ | F_DISCARD | F_WRITE_ZEROES;
/// Segment size when the device gives no SIZE_MAX.
const DEFAULT_SEGMENT: u32 = 1 << 20;

pub struct BlkDevice {
    pub number: usize,
    pub transport: Transport,
    /// In 512-byte sectors.
    pub capacity: u64,
    pub blk_size: u32,
    pub size_max: u32,
    pub seg_max: u32,
    /// Largest Read/Write request the queues accept (bytes, a multiple of 512).
    pub max_request: u32,
    pub queue_count: usize,
    pub queues: [Option<BlkQueue>; MAX_QUEUES],
}

impl BlkDevice {
    pub fn pci(&self) -> Address {
        self.transport.pci
    }

    pub fn has(&self, feature: u64) -> bool {
        self.transport.has(feature)
    }

    pub fn queue(&mut self, index: usize) -> &mut BlkQueue {
        self.queues[index]
            .as_mut()
            .expect("queues below queue_count are set up")
    }

    /// Re-reads the capacity (after a configuration change).
    pub fn read_capacity(&mut self) -> u64 {
        self.capacity = self.transport.read_config(|t| t.config64(CFG_CAPACITY));
        self.capacity
    }
}

/// The virtio-blk devices found, numbered in scan order.
pub struct BlkDevices {
    pub list: [Option<BlkDevice>; MAX_DEVICES],
    pub count: usize,
}

/// Probes every virtio-blk function of the scan and brings it to DRIVER_OK. Devices that fail
/// are reported and skipped.
pub fn probe_all(functions: &Functions) -> BlkDevices {
    let mut found = BlkDevices {
        list: [const { None }; MAX_DEVICES],
        count: 0,
    };
    probe_each(functions, &BLK, MAX_DEVICES, |transport, number| {
        let Some(device) = bring_up(transport, number) else {
            return false;
        };
        found.list[number] = Some(device);
        found.count += 1;
        true
    });
    found
}

/// Brings the device behind `transport` to DRIVER_OK as device `number` (negotiation,
/// configuration, MSI-X, queues); None after an error line.
pub fn bring_up(mut transport: Transport, number: usize) -> Option<BlkDevice> {
    let at = transport.pci;
    if !transport.negotiate(WANTED) {
        return None;
    }
    let (capacity, size_max, seg_max, blk_size, num_queues) = transport.read_config(|t| {
        (
            t.config64(CFG_CAPACITY),
            t.config32(CFG_SIZE_MAX),
            t.config32(CFG_SEG_MAX),
            t.config32(CFG_BLK_SIZE),
            t.config16(CFG_NUM_QUEUES),
        )
    });
    let offered_queues = if transport.has(F_MQ) { num_queues } else { 1 };
    let transport_queues = transport.max_queues();
    if offered_queues == 0 || transport_queues == 0 {
        BLK.error(at)
            .s("no queues (num_queues=")
            .dec(u64::from(offered_queues))
            .s(" common num_queues=")
            .dec(u64::from(transport_queues))
            .s(")")
            .end();
        transport.fail();
        return None;
    }
    let queue_count = usize::from(offered_queues.min(transport_queues)).min(MAX_QUEUES);
    let blk_size = if transport.has(F_BLK_SIZE) {
        blk_size
    } else {
        SECTOR as u32
    };
    if blk_size < SECTOR as u32 || !blk_size.is_power_of_two() || blk_size > 64 * 1024 {
        BLK.error(at)
            .s("impossible blk_size=")
            .dec(u64::from(blk_size))
            .end();
        transport.fail();
        return None;
    }
    // Segment size and count per request.
    let segment_bytes = if transport.has(F_SIZE_MAX) && size_max >= blk_size {
        (size_max & !(blk_size - 1)).min(DEFAULT_SEGMENT)
    } else {
        DEFAULT_SEGMENT
    };
    let device_segments = if transport.has(F_SEG_MAX) && seg_max > 0 {
        seg_max.min(u32::from(MAX_SEGMENTS)) as u16
    } else {
        1
    };
    transport.setup_msix(queue_count as u16);
    let event_idx = transport.has(F_EVENT_IDX);
    let indirect = transport.has(F_INDIRECT_DESC);
    let mut queues = [const { None }; MAX_QUEUES];
    let mut max_request = MAX_REQUEST;
    for (index, entry) in queues.iter_mut().enumerate().take(queue_count) {
        let Some(vq) = transport.setup_queue(index as u16, MAX_QUEUE_SIZE, event_idx) else {
            transport.fail();
            return None;
        };
        let Some(queue) = BlkQueue::new(vq, at, indirect, device_segments, segment_bytes) else {
            transport.fail();
            return None;
        };
        max_request = max_request.min(queue.max_request());
        *entry = Some(queue);
    }
    transport.driver_ok();
    let max_request = max_request & !(blk_size - 1);
    let device = BlkDevice {
        number,
        transport,
        capacity,
        blk_size,
        size_max,
        seg_max,
        max_request,
        queue_count,
        queues,
    };
    report(&device, offered_queues);
    Some(device)
}

/// `GUEST INFO virtio-blk ...`: what was offered, negotiated and set up.
fn report(device: &BlkDevice, offered_queues: u16) {
    let t = &device.transport;
    let first = device.queues[0].as_ref();
    BLK.info(device.number, t)
        .s(" queues=")
        .dec(device.queue_count as u64)
        .s("/")
        .dec(u64::from(offered_queues))
        .s(" queue_size=")
        .dec(first.map_or(0, |q| u64::from(q.vq.size)))
        .s(" slots=")
        .dec(first.map_or(0, |q| u64::from(q.slots())))
        .s(" msix=")
        .dec(u64::from(t.msix_entries()))
        .s(" config_irq=")
        .dec(t.config_vector.map_or(0, u64::from))
        .s(" queue_irq=")
        .dec(first.and_then(|q| q.vq.vector).map_or(0, u64::from))
        .s(" max_request=")
        .dec(u64::from(device.max_request))
        .s(" blk_size=")
        .dec(u64::from(device.blk_size))
        .s(" seg_max=")
        .dec(u64::from(device.seg_max))
        .s(" size_max=")
        .dec(u64::from(device.size_max))
        .s(" capacity=")
        .dec(device.capacity)
        .end();
    if device.capacity == 0 {
        BLK.error(device.pci()).s("capacity is 0").end();
    }
}
