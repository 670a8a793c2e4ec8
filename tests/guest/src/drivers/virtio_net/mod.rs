//! Virtio-net driver: device discovery on the PCI scan (vendor 0x1af4, device 0x1041, or the
//! transitional 0x1000 with subsystem 1 driven through its modern interface), feature
//! negotiation (MAC, STATUS, CTRL_VQ, CTRL_RX, CTRL_RX_EXTRA, CTRL_VLAN, CTRL_MAC_ADDR, MQ,
//! MRG_RXBUF when offered; no checksum or segmentation offloads), the configuration (MAC,
//! link status, max_virtqueue_pairs), and the queues: receive (rx.rs) and transmit (tx.rs) of
//! each queue pair, and the control queue (ctrl.rs). The numbers from the specification are
//! in spec.rs.
//!
//! Queue layout (virtio 1.x, 5.1.2): receiveq N = 2N, transmitq N = 2N + 1, controlq =
//! 2 * max_virtqueue_pairs (2 without MQ). Every frame is preceded by the 12-byte
//! `virtio_net_hdr` (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
//! num_buffers).
//!
//! Set-up runs in ring 0; everything that walks the rings (posting buffers, sending, polling)
//! is plain memory plus doorbell writes and runs in ring 3 (see scenarios/net/).

pub mod ctrl;
pub mod rx;
pub mod spec;
pub mod tx;

use crate::arch::{cpu, user};
use crate::drivers::pci::config::Address;
use crate::drivers::pci::scan::Functions;
use crate::drivers::virtio::discovery::probe_each;
use crate::drivers::virtio::transport::Transport;
use crate::netproto::{self, Mac};
use ctrl::CtrlQueue;
use rx::{RxQueue, MAX_RX_BUFFER, MIN_MERGEABLE_RX_BUFFER, MIN_RX_BUFFER};
use spec::{
    CFG_MAC, CFG_MAX_PAIRS, CFG_STATUS, CTRL_CLASS_MAC, CTRL_CLASS_MQ, CTRL_MAC_ADDR_SET,
    CTRL_MQ_VQ_PAIRS_SET, CTRL_OK, F_CTRL_MAC_ADDR, F_CTRL_RX, F_CTRL_RX_EXTRA, F_CTRL_VLAN,
    F_CTRL_VQ, F_MAC, F_MQ, F_MRG_RXBUF, F_STATUS, MAX_PAIRS_LIMIT, NET, STATUS_LINK_UP,
};
use tx::TxQueue;

pub const MAX_DEVICES: usize = 4;
/// Queue pairs the driver enables at most.
pub const MAX_QUEUE_PAIRS: usize = 8;

const WANTED: u64 = F_MAC
    | F_MRG_RXBUF
    | F_STATUS
    | F_CTRL_VQ
    | F_CTRL_RX
    | F_CTRL_VLAN
    | F_CTRL_RX_EXTRA
    | F_MQ
    | F_CTRL_MAC_ADDR;

/// Features that need the control queue (virtio 1.x, 5.1.3.1).
const NEEDS_CTRL_VQ: u64 = F_CTRL_RX | F_CTRL_VLAN | F_CTRL_RX_EXTRA | F_MQ | F_CTRL_MAC_ADDR;

pub struct NetDevice {
    pub number: usize,
    pub transport: Transport,
    pub mac: Mac,
    /// max_virtqueue_pairs (1 without MQ).
    pub max_pairs: u16,
    /// Queue pairs in use (receive on all, transmit on all).
    pub pairs: usize,
    pub rx_buffer: u32,
    pub rx: [Option<RxQueue>; MAX_QUEUE_PAIRS],
    pub tx: [Option<TxQueue>; MAX_QUEUE_PAIRS],
    pub ctrl: Option<CtrlQueue>,
}

impl NetDevice {
    pub fn pci(&self) -> Address {
        self.transport.pci
    }

    pub fn has(&self, feature: u64) -> bool {
        self.transport.has(feature)
    }

    pub fn rx(&mut self, pair: usize) -> &mut RxQueue {
        self.rx[pair]
            .as_mut()
            .expect("receive queues below `pairs` are set up")
    }

    pub fn tx(&mut self, pair: usize) -> &mut TxQueue {
        self.tx[pair]
            .as_mut()
            .expect("transmit queues below `pairs` are set up")
    }

    /// The status field (VIRTIO_NET_S_LINK_UP = 1); LINK_UP without VIRTIO_NET_F_STATUS.
    pub fn status(&self) -> u16 {
        if !self.has(F_STATUS) {
            return STATUS_LINK_UP;
        }
        self.transport.read_config(|t| t.config16(CFG_STATUS))
    }

    pub fn link_up(&self) -> bool {
        self.status() & STATUS_LINK_UP != 0
    }

    /// Sends a control command (ring 0: polls in ring 3). Ok(ack: 0 = VIRTIO_NET_OK,
    /// 1 = VIRTIO_NET_ERR) or Err(why).
    pub fn ctrl(&mut self, class: u8, command: u8, parts: &[&[u8]]) -> Result<u8, &'static str> {
        let Some(ctrl) = self.ctrl.as_mut() else {
            return Err("no control queue (VIRTIO_NET_F_CTRL_VQ not negotiated)");
        };
        let mut outcome = Err("not run");
        let mut work = || {
            outcome = ctrl.command(class, command, parts);
            0
        };
        if user::call(&mut work).is_err() {
            return Err("ring-3 fault while polling the control queue");
        }
        outcome
    }
}

/// The virtio-net devices found, numbered in scan order.
pub struct NetDevices {
    pub list: [Option<NetDevice>; MAX_DEVICES],
    pub count: usize,
}

/// Driver choices from the command line.
#[derive(Clone, Copy)]
pub struct Options {
    /// Queue pairs wanted (default: as many as the device has, up to MAX_QUEUE_PAIRS).
    pub queue_pairs: Option<u16>,
    /// Receive buffer size in bytes, header included (clamped to what the features allow).
    pub rx_buffer: u32,
}

impl NetDevices {
    pub const EMPTY: NetDevices = NetDevices {
        list: [const { None }; MAX_DEVICES],
        count: 0,
    };
}

/// Probes every virtio-net function of the scan and brings it up into `found` (a static at
/// the caller: the devices are too big for the kernel stack). Devices that fail are reported
/// and skipped.
pub fn probe_all(functions: &Functions, options: &Options, found: &mut NetDevices) {
    probe_each(functions, &NET, MAX_DEVICES, |transport, number| {
        let Some(device) = bring_up(transport, number, options) else {
            return false;
        };
        found.list[number] = Some(device);
        found.count += 1;
        true
    });
}

fn read_mac(transport: &Transport) -> Mac {
    transport.read_config(|t| {
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            *byte = t.config8(CFG_MAC + i as u64);
        }
        mac
    })
}

/// A locally administered unicast MAC for a device without VIRTIO_NET_F_MAC: 02:46 ('F')
/// followed by TSC bits and the device number.
fn generated_mac(number: usize) -> Mac {
    let tsc = cpu::rdtsc();
    [
        0x02,
        0x46,
        (tsc >> 24) as u8,
        (tsc >> 16) as u8,
        (tsc >> 8) as u8,
        number as u8,
    ]
}

/// Brings the device behind `transport` up as device `number` (negotiation, MSI-X, queues
/// with every receive buffer posted, DRIVER_OK, queue pairs, MAC); None after an error line.
pub fn bring_up(mut transport: Transport, number: usize, options: &Options) -> Option<NetDevice> {
    let at = transport.pci;
    let negotiated = transport.negotiate_with(|offered| {
        if offered & F_CTRL_VQ == 0 {
            WANTED & !NEEDS_CTRL_VQ
        } else {
            WANTED
        }
    });
    if !negotiated {
        return None;
    }
    let mut mac = read_mac(&transport);
    let max_pairs = if transport.has(F_MQ) {
        transport.read_config(|t| t.config16(CFG_MAX_PAIRS))
    } else {
        1
    };
    if max_pairs == 0 || max_pairs > MAX_PAIRS_LIMIT {
        NET.error(at)
            .s("impossible max_virtqueue_pairs=")
            .dec(u64::from(max_pairs))
            .end();
        transport.fail();
        return None;
    }
    let wanted_pairs = options
        .queue_pairs
        .unwrap_or(MAX_QUEUE_PAIRS as u16)
        .clamp(1, MAX_QUEUE_PAIRS as u16);
    let mut pairs = usize::from(wanted_pairs.min(max_pairs));
    let transport_queues = usize::from(transport.max_queues());
    let ctrl_index = transport
        .has(F_CTRL_VQ)
        .then_some(2 * usize::from(max_pairs));
    if transport_queues < 2 * pairs || ctrl_index.is_some_and(|i| i >= transport_queues) {
        NET.error(at)
            .s("common num_queues=")
            .dec(transport_queues as u64)
            .s(" is too small for max_virtqueue_pairs=")
            .dec(u64::from(max_pairs))
            .s(if ctrl_index.is_some() {
                " and the control queue"
            } else {
                ""
            })
            .end();
        transport.fail();
        return None;
    }
    let buffer_len = if transport.has(F_MRG_RXBUF) {
        options
            .rx_buffer
            .clamp(MIN_MERGEABLE_RX_BUFFER, MAX_RX_BUFFER)
    } else {
        options.rx_buffer.clamp(MIN_RX_BUFFER, MAX_RX_BUFFER)
    };
    // Entry 0: configuration changes; entries 1..=2 * pairs: rx0, tx0, rx1, tx1, ... (or one
    // shared entry if the table is too small). The control queue is polled: no vector.
    transport.setup_msix(2 * pairs as u16);
    let mut rx = [const { None }; MAX_QUEUE_PAIRS];
    let mut tx = [const { None }; MAX_QUEUE_PAIRS];
    for pair in 0..pairs {
        let (Some(r), Some(t)) = (
            RxQueue::setup(&mut transport, pair, buffer_len),
            TxQueue::setup(&mut transport, pair),
        ) else {
            transport.fail();
            return None;
        };
        rx[pair] = Some(r);
        tx[pair] = Some(t);
    }
    let ctrl = match ctrl_index {
        Some(index) => {
            let Some(ctrl) = CtrlQueue::setup(&mut transport, index) else {
                transport.fail();
                return None;
            };
            Some(ctrl)
        }
        None => None,
    };
    // Post every receive buffer and free every transmit slot (ring 3); polling is the fast
    // path, interrupts are asked for only while a scenario waits halted.
    let mut fill = || {
        for queue in rx.iter_mut().flatten() {
            queue.fill();
            queue.vq.set_interrupts(false);
        }
        for queue in tx.iter_mut().flatten() {
            queue.init_free();
            queue.vq.set_interrupts(false);
        }
        0
    };
    if user::call(&mut fill).is_err() {
        NET.error(at)
            .s("ring-3 fault while posting receive buffers")
            .end();
        transport.fail();
        return None;
    }
    transport.driver_ok();
    for queue in rx.iter_mut().flatten() {
        queue.kick();
    }
    let mut device = NetDevice {
        number,
        transport,
        mac: [0; 6],
        max_pairs,
        pairs,
        rx_buffer: buffer_len,
        rx,
        tx,
        ctrl,
    };
    if device.has(F_MQ) {
        let value = (pairs as u16).to_le_bytes();
        match device.ctrl(CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET, &[&value]) {
            Ok(CTRL_OK) => {}
            outcome => {
                let line = NET
                    .error(at)
                    .s("VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET ")
                    .dec(pairs as u64)
                    .s(": ");
                match outcome {
                    Ok(ack) => line.s("ack=").dec(u64::from(ack)),
                    Err(why) => line.s(why),
                }
                .s("; using 1 queue pair")
                .end();
                pairs = 1;
            }
        }
    }
    device.pairs = pairs;
    if !device.has(F_MAC) {
        mac = generated_mac(number);
        if device.has(F_CTRL_MAC_ADDR) {
            match device.ctrl(CTRL_CLASS_MAC, CTRL_MAC_ADDR_SET, &[&mac]) {
                Ok(CTRL_OK) => {}
                Ok(ack) => NET
                    .error(at)
                    .s("VIRTIO_NET_CTRL_MAC_ADDR_SET of the generated MAC: ack=")
                    .dec(u64::from(ack))
                    .end(),
                Err(why) => NET
                    .error(at)
                    .s("VIRTIO_NET_CTRL_MAC_ADDR_SET of the generated MAC: ")
                    .s(why)
                    .end(),
            }
        }
    }
    device.mac = mac;
    report(&device);
    Some(device)
}

/// `GUEST INFO virtio-net ...`: what was offered, negotiated and set up.
fn report(device: &NetDevice) {
    let t = &device.transport;
    let rx0 = device.rx[0].as_ref();
    let tx0 = device.tx[0].as_ref();
    let line = NET.info(device.number, t).s(" mac=");
    netproto::print_mac(line, device.mac)
        .s(" queue_pairs=")
        .dec(device.pairs as u64)
        .s("/")
        .dec(u64::from(device.max_pairs))
        .s(" rx_size=")
        .dec(rx0.map_or(0, |q| u64::from(q.vq.size)))
        .s(" tx_size=")
        .dec(tx0.map_or(0, |q| u64::from(q.vq.size)))
        .s(" tx_slots=")
        .dec(tx0.map_or(0, |q| u64::from(q.slots())))
        .s(" ctrl_size=")
        .dec(device.ctrl.as_ref().map_or(0, |q| u64::from(q.vq.size)))
        .s(" rx_buf=")
        .dec(u64::from(device.rx_buffer))
        .s(" msix=")
        .dec(u64::from(t.msix_entries()))
        .s(" config_irq=")
        .dec(t.config_vector.map_or(0, u64::from))
        .s(" rx0_irq=")
        .dec(rx0.and_then(|q| q.vq.vector).map_or(0, u64::from))
        .end();
}
