//! Virtio-balloon driver: device discovery on the PCI scan (vendor 0x1af4, device 0x1045, or
//! the transitional 0x1002 driven through its modern interface), negotiation (no device
//! features: the statistics queue, deflate-on-OOM, free-page hints and reporting, page
//! poisoning are all declined), the two queues (inflateq, deflateq), the configuration
//! (num_pages the device asks for, actual the driver reports) and one request at a time: an
//! array of 32-bit PFNs in one device-readable buffer, waited for until the device uses it.
//! Which pages to hand over is the scenario's business (scenarios/balloon.rs).

pub mod spec;

use crate::arch::halt::halt_until;
use crate::arch::memory;
use crate::console;
use crate::drivers::pci::scan::Functions;
use crate::drivers::virtio::discovery::probe_each;
use crate::drivers::virtio::transport::{Transport, F_EVENT_IDX};
use crate::drivers::virtio::virtqueue::{Desc, Virtqueue, MAX_QUEUE_SIZE};
use spec::{BALLOON, CFG_ACTUAL, CFG_NUM_PAGES, DEFLATEQ, INFLATEQ};

/// Most PFNs per request (as Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX): one 1 KiB buffer.
pub const MAX_PFNS: usize = 256;
/// How long a request may stay unused by the device.
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Which queue a request goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inflate,
    Deflate,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Inflate => "inflate",
            Direction::Deflate => "deflate",
        }
    }
}

pub struct BalloonDevice {
    pub transport: Transport,
    inflate: Virtqueue,
    deflate: Virtqueue,
    /// The request buffer (DMA pool): MAX_PFNS little-endian u32.
    pfns: u64,
}

/// Brings up the first virtio-balloon function of the scan (devices after it are ignored).
/// None, after an error line, if there is none or it cannot be used.
pub fn probe_first(functions: &Functions) -> Option<BalloonDevice> {
    let mut found = None;
    probe_each(functions, &BALLOON, 1, |transport, _| {
        found = bring_up(transport);
        found.is_some()
    });
    if found.is_none() {
        console::error("balloon: no usable virtio-balloon device").end();
    }
    found
}

fn bring_up(mut transport: Transport) -> Option<BalloonDevice> {
    let at = transport.pci;
    if !transport.negotiate(0) {
        return None;
    }
    if transport.max_queues() < 2 {
        BALLOON
            .error(at)
            .s("common num_queues=")
            .dec(u64::from(transport.max_queues()))
            .s(" (inflateq and deflateq needed)")
            .end();
        transport.fail();
        return None;
    }
    transport.setup_msix(2);
    let event_idx = transport.has(F_EVENT_IDX);
    let mut queue = |index| {
        let vq = transport.setup_queue(index, MAX_QUEUE_SIZE, event_idx);
        if vq.is_none() {
            transport.fail();
        }
        vq
    };
    let inflate = queue(INFLATEQ)?;
    let deflate = queue(DEFLATEQ)?;
    let Some(pfns) = memory::dma_alloc_zeroed(spec::PAGE, spec::PAGE) else {
        BALLOON.error(at).s("DMA pool exhausted (PFN array)").end();
        transport.fail();
        return None;
    };
    transport.driver_ok();
    let device = BalloonDevice {
        transport,
        inflate,
        deflate,
        pfns,
    };
    let t = &device.transport;
    BALLOON
        .info(0, t)
        .s(" msix=")
        .dec(u64::from(t.msix_entries()))
        .s(" config_irq=")
        .dec(t.config_vector.map_or(0, u64::from))
        .s(" inflate_irq=")
        .dec(device.inflate.vector.map_or(0, u64::from))
        .s(" queue_size=")
        .dec(u64::from(device.inflate.size))
        .end();
    Some(device)
}

impl BalloonDevice {
    /// The number of pages the device wants in the balloon.
    pub fn num_pages(&self) -> u32 {
        self.transport.read_config(|t| t.config32(CFG_NUM_PAGES))
    }

    /// The number of pages the balloon holds, as the driver last wrote it.
    pub fn actual(&self) -> u32 {
        self.transport.read_config(|t| t.config32(CFG_ACTUAL))
    }

    /// Tells the device how many pages the balloon holds now.
    pub fn set_actual(&self, pages: u32) {
        self.transport.write_config32(CFG_ACTUAL, pages);
    }

    /// Sends `pfns` (at most MAX_PFNS) on the inflate or deflate queue and waits until the
    /// device used the buffer. False, after an error line, if it did not in time or used
    /// something else.
    pub fn request(&mut self, direction: Direction, pfns: &[u32]) -> bool {
        let count = pfns.len().min(MAX_PFNS);
        for (i, &pfn) in pfns.iter().take(count).enumerate() {
            // SAFETY: the PFN buffer is this device's DMA-pool page of MAX_PFNS u32.
            unsafe { core::ptr::write_volatile((self.pfns as usize as *mut u32).add(i), pfn) };
        }
        let vq = match direction {
            Direction::Inflate => &mut self.inflate,
            Direction::Deflate => &mut self.deflate,
        };
        vq.set_interrupts(true);
        vq.set_desc(
            0,
            Desc {
                addr: self.pfns,
                len: (count * 4) as u32,
                flags: 0,
                next: 0,
            },
        );
        vq.push(0);
        vq.kick();
        if !halt_until(REQUEST_TIMEOUT_MS, || vq.has_used()) {
            console::error("balloon: the device did not use the ")
                .s(direction.name())
                .s(" request within ")
                .dec(REQUEST_TIMEOUT_MS)
                .s(" ms")
                .end();
            return false;
        }
        match vq.pop() {
            Some((0, _)) => true,
            Some((id, len)) => {
                console::error("balloon: bogus ")
                    .s(direction.name())
                    .s(" completion id=")
                    .dec(u64::from(id))
                    .s(" len=")
                    .dec(u64::from(len))
                    .end();
                false
            }
            None => false,
        }
    }
}
