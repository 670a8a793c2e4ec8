//! The virtio-net device behind the vhost-user connection (vhost-user-backend): rx/tx
//! queue pairs, each tied to one host port (a tap queue, or the datagram socket), and the
//! control queue (rx mode, MAC tables, VLANs, queue pairs) last. One thread serves
//! everything: guest kicks, host ports becoming readable.
//!
//! Receive: a frame read from the port goes through the receive filter and into the
//! guest's buffers (several, with mergeable rx buffers); with no buffer free it waits,
//! and the port is not watched until the guest adds buffers. Transmit: each chain is one
//! header + frame for the port. Malformed chains are completed unused and counted.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ipc::{NetEvent, NetStats, RxFilterState};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::filter::{Outcome, RxFilter, ACK_ERR, ACK_OK};
use crate::frames::{self, Desc, HDR_LEN, MAX_CHAIN, MAX_FRAME};
use crate::port::{Port, F_GUEST_CSUM, F_GUEST_ECN, F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_UFO};

pub const QUEUE_SIZE: usize = 256;

const F_CSUM: u64 = 1 << 0;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_HOST_ECN: u64 = 1 << 13;
const F_HOST_UFO: u64 = 1 << 14;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_CTRL_VQ: u64 = 1 << 17;
const F_CTRL_RX: u64 = 1 << 18;
const F_CTRL_VLAN: u64 = 1 << 19;
const F_CTRL_RX_EXTRA: u64 = 1 << 20;
const F_MQ: u64 = 1 << 22;
const F_CTRL_MAC_ADDR: u64 = 1 << 23;
const F_VERSION_1: u64 = 1 << 32;
const F_INDIRECT_DESC: u64 = 1 << 28;
const F_EVENT_IDX: u64 = 1 << 29;
const F_LOG_ALL: u64 = 1 << 26;

pub type EventSink = Arc<dyn Fn(NetEvent) + Send + Sync>;
type Handler = Arc<VringEpollHandler<NetDevice>>;

#[derive(Default)]
struct Counters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    rx_filtered: AtomicU64,
    rx_no_buffer: AtomicU64,
    malformed: AtomicU64,
}

/// Per queue pair: a frame read from the port but not yet placed, whether the port is
/// watched, and the buffer frames are read into (allocated once, on first use).
#[derive(Default)]
struct PairState {
    pending: Option<Vec<u8>>,
    unwatched: bool,
    buf: Vec<u8>,
}

struct Inner {
    pairs: usize,
    ports: Vec<Port>,
    mac: [u8; 6],
    filter: Mutex<RxFilter>,
    /// A filter to take up at the first feature negotiation (after a restart, vmm-core
    /// replays the driver's features; the driver programs nothing again).
    restore: Mutex<Option<RxFilter>>,
    link_up: AtomicBool,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
    acked: AtomicU64,
    state: Vec<Mutex<PairState>>,
    counters: Counters,
    events: Option<EventSink>,
    handler: Mutex<Option<Handler>>,
    logged: AtomicU64,
}

#[derive(Clone)]
pub struct NetDevice {
    inner: Arc<Inner>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NetDevice {
    /// One port per queue pair.
    pub fn new(
        ports: Vec<Port>,
        mac: [u8; 6],
        link_up: bool,
        restore: Option<RxFilter>,
        events: Option<EventSink>,
    ) -> NetDevice {
        let pairs = ports.len().max(1);
        NetDevice {
            inner: Arc::new(Inner {
                pairs,
                mac,
                filter: Mutex::new(restore.clone().unwrap_or_else(|| RxFilter::new(mac))),
                restore: Mutex::new(restore),
                link_up: AtomicBool::new(link_up),
                mem: RwLock::new(None),
                acked: AtomicU64::new(0),
                state: (0..pairs)
                    .map(|_| Mutex::new(PairState::default()))
                    .collect(),
                counters: Counters::default(),
                events,
                handler: Mutex::new(None),
                logged: AtomicU64::new(0),
                ports,
            }),
        }
    }

    /// The epoll `data` of port `p`'s readiness (after the library's queue and exit ids).
    fn port_event(&self, p: usize) -> u64 {
        (self.num_queues() + 1 + p) as u64
    }

    /// Watches the ports through the library's worker (call once the daemon exists).
    pub fn attach(&self, handler: Handler) -> io::Result<()> {
        for (p, port) in self.inner.ports.iter().enumerate() {
            handler.register_listener(port.raw(), EventSet::IN, self.port_event(p))?;
        }
        *lock(&self.inner.handler) = Some(handler);
        Ok(())
    }

    pub fn set_link(&self, up: bool) {
        self.inner.link_up.store(up, Ordering::SeqCst);
    }

    pub fn rx_filter(&self) -> RxFilterState {
        lock(&self.inner.filter).state()
    }

    pub fn stats(&self) -> NetStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetStats {
            rx_packets: get(&c.rx_packets),
            rx_bytes: get(&c.rx_bytes),
            tx_packets: get(&c.tx_packets),
            tx_bytes: get(&c.tx_bytes),
            tx_dropped: get(&c.tx_dropped),
            rx_filtered: get(&c.rx_filtered),
            rx_no_buffer: get(&c.rx_no_buffer),
            malformed: get(&c.malformed),
        }
    }

    fn memory(&self) -> Option<GuestMemoryMmap> {
        let mem = self.inner.mem.read().unwrap_or_else(|e| e.into_inner());
        mem.as_ref().map(|m| (*m.memory()).clone())
    }

    fn malformed(&self, e: &frames::Malformed) {
        self.inner
            .counters
            .malformed
            .fetch_add(1, Ordering::Relaxed);
        let n = self.inner.logged.fetch_add(1, Ordering::Relaxed);
        if n < 20 || n.is_multiple_of(1000) {
            log::warn!("dropped a guest buffer: {e} [{} so far]", n + 1);
        }
    }

    fn pop(vring: &VringRwLock, mem: &GuestMemoryMmap) -> Option<(u16, Vec<Desc>)> {
        let mut state = vring.get_mut();
        // A kick or a readable port can race with the frontend stopping the ring.
        if !state.is_enabled() || !state.get_queue().ready() {
            return None;
        }
        let chain = state.get_queue_mut().pop_descriptor_chain(mem)?;
        let head = chain.head_index();
        let descs = chain
            .take(MAX_CHAIN)
            .map(|d| Desc {
                addr: d.addr().0,
                len: d.len(),
                writable: d.is_write_only(),
            })
            .collect();
        Some((head, descs))
    }

    fn signal(vring: &VringRwLock) -> io::Result<()> {
        if vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Guest frames of pair `p` to the port.
    fn transmit(&self, p: usize, vring: &VringRwLock, mem: &GuestMemoryMmap) -> io::Result<()> {
        let event_idx = self.inner.acked.load(Ordering::Relaxed) & F_EVENT_IDX != 0;
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let mut sent = 0;
            while let Some((head, descs)) = NetDevice::pop(vring, mem) {
                sent += 1;
                match frames::gather(mem, &descs) {
                    Ok(bytes) if self.inner.link_up.load(Ordering::Relaxed) => {
                        let len = (bytes.len() - HDR_LEN) as u64;
                        match self.inner.ports.get(p).map(|port| port.send(&bytes)) {
                            Some(Ok(())) => {
                                self.inner
                                    .counters
                                    .tx_packets
                                    .fetch_add(1, Ordering::Relaxed);
                                self.inner
                                    .counters
                                    .tx_bytes
                                    .fetch_add(len, Ordering::Relaxed);
                            }
                            // A full tap queue or a peer not listening: the frame is lost,
                            // as on a wire.
                            _ => {
                                self.inner
                                    .counters
                                    .tx_dropped
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(_) => {
                        self.inner
                            .counters
                            .rx_filtered
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => self.malformed(&e),
                }
                vring.add_used(head, 0).map_err(io::Error::other)?;
            }
            if sent > 0 {
                NetDevice::signal(vring)?;
            }
            // A pass that took nothing ends here even if the ring claims more: a broken
            // available index would otherwise keep this thread spinning.
            let more = event_idx && vring.enable_notification().map_err(io::Error::other)?;
            if sent == 0 || !more {
                return Ok(());
            }
        }
    }

    /// Port frames of pair `p` into the guest's receive buffers, while there are both.
    fn receive(&self, p: usize, vring: &VringRwLock, mem: &GuestMemoryMmap) -> io::Result<()> {
        let Some(port) = self.inner.ports.get(p) else {
            return Ok(());
        };
        let mergeable = self.inner.acked.load(Ordering::Relaxed) & F_MRG_RXBUF != 0;
        let event_idx = self.inner.acked.load(Ordering::Relaxed) & F_EVENT_IDX != 0;
        let mut state = lock(&self.inner.state[p]);
        let PairState {
            pending,
            unwatched,
            buf,
        } = &mut *state;
        if buf.is_empty() {
            buf.resize(HDR_LEN + MAX_FRAME, 0);
        }
        let mut placed = 0;
        loop {
            // A frame is copied out of the buffer only when it has to wait for room.
            let held = pending.take();
            let frame: &[u8] = match &held {
                Some(f) => f,
                None => match port.recv(buf)? {
                    Some(n) if n > HDR_LEN => &buf[..n],
                    Some(_) => continue,
                    None => break,
                },
            };
            if !self.inner.link_up.load(Ordering::Relaxed)
                || !lock(&self.inner.filter).accepts(&frame[HDR_LEN..])
            {
                self.inner
                    .counters
                    .rx_filtered
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.place(vring, mem, frame, mergeable)? {
                Placed::Yes => {
                    placed += 1;
                    self.inner
                        .counters
                        .rx_packets
                        .fetch_add(1, Ordering::Relaxed);
                    self.inner
                        .counters
                        .rx_bytes
                        .fetch_add((frame.len() - HDR_LEN) as u64, Ordering::Relaxed);
                }
                Placed::Dropped => {
                    self.inner
                        .counters
                        .rx_no_buffer
                        .fetch_add(1, Ordering::Relaxed);
                }
                Placed::NoRoom => {
                    // Wait for buffers: keep the frame, stop watching the port, and ask
                    // the guest to kick when it adds some.
                    *pending = Some(match held {
                        Some(h) => h,
                        None => frame.to_vec(),
                    });
                    if event_idx {
                        vring.enable_notification().map_err(io::Error::other)?;
                    }
                    if !*unwatched {
                        if let Some(h) = lock(&self.inner.handler).as_ref() {
                            let _ =
                                h.unregister_listener(port.raw(), EventSet::IN, self.port_event(p));
                        }
                        *unwatched = true;
                    }
                    break;
                }
            }
        }
        if placed > 0 {
            NetDevice::signal(vring)?;
        }
        Ok(())
    }

    /// The guest added receive buffers: watch the port again if it waited for them.
    fn buffers_added(&self, p: usize) {
        let mut state = lock(&self.inner.state[p]);
        if state.unwatched {
            if let (Some(h), Some(port)) =
                (lock(&self.inner.handler).as_ref(), self.inner.ports.get(p))
            {
                let _ = h.register_listener(port.raw(), EventSet::IN, self.port_event(p));
            }
            state.unwatched = false;
        }
    }

    fn place(
        &self,
        vring: &VringRwLock,
        mem: &GuestMemoryMmap,
        frame: &[u8],
        mergeable: bool,
    ) -> io::Result<Placed> {
        let start = vring.get_ref().get_queue().next_avail();
        let mut chains: Vec<(u16, Vec<Desc>, usize)> = Vec::new();
        let mut room = 0;
        while room < frame.len() {
            let Some((head, descs)) = NetDevice::pop(vring, mem) else {
                // Not enough buffers yet: put back what was taken.
                vring.get_mut().get_queue_mut().set_next_avail(start);
                return Ok(Placed::NoRoom);
            };
            match frames::room(&descs) {
                Ok(r) => {
                    room += r;
                    chains.push((head, descs, r));
                }
                Err(e) => {
                    self.malformed(&e);
                    vring.add_used(head, 0).map_err(io::Error::other)?;
                }
            }
            if !mergeable {
                break;
            }
        }
        if room < frame.len() {
            // Without mergeable buffers one chain must hold the frame: this one cannot.
            for (head, _, _) in chains {
                vring.add_used(head, 0).map_err(io::Error::other)?;
            }
            return Ok(Placed::Dropped);
        }
        let mut frame = frame.to_vec();
        let num_buffers = chains.len() as u16;
        frame[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        let mut at = 0;
        for (head, descs, _) in chains {
            match frames::scatter(mem, &descs, &frame[at..]) {
                Ok(n) => {
                    at += n;
                    vring.add_used(head, n as u32).map_err(io::Error::other)?;
                }
                Err(e) => {
                    self.malformed(&e);
                    vring.add_used(head, 0).map_err(io::Error::other)?;
                }
            }
        }
        Ok(Placed::Yes)
    }

    /// Control commands.
    fn control(&self, vring: &VringRwLock, mem: &GuestMemoryMmap) -> io::Result<()> {
        let event_idx = self.inner.acked.load(Ordering::Relaxed) & F_EVENT_IDX != 0;
        let mut changed = false;
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let mut any = false;
            while let Some((head, descs)) = NetDevice::pop(vring, mem) {
                any = true;
                match frames::control(mem, &descs) {
                    Ok((class, cmd, data, ack_at)) => {
                        let outcome = lock(&self.inner.filter).command(class, cmd, &data);
                        let ack = match outcome {
                            Outcome::Ok { changed: c } => {
                                changed |= c;
                                ACK_OK
                            }
                            Outcome::Pairs(n) if usize::from(n) <= self.inner.pairs => ACK_OK,
                            Outcome::Pairs(_) | Outcome::Err => ACK_ERR,
                        };
                        let _ = mem.write_obj(ack, GuestAddress(ack_at));
                        vring.add_used(head, 1).map_err(io::Error::other)?;
                    }
                    Err(e) => {
                        self.malformed(&e);
                        vring.add_used(head, 0).map_err(io::Error::other)?;
                    }
                }
            }
            if any {
                NetDevice::signal(vring)?;
            }
            // With EVENT_IDX the driver kicks again only once told where to (avail_event).
            // As in transmit: no progress, no second pass.
            let more = event_idx && vring.enable_notification().map_err(io::Error::other)?;
            if !any || !more {
                break;
            }
        }
        if changed {
            if let Some(events) = &self.inner.events {
                let state = lock(&self.inner.filter).state();
                events(NetEvent::RxFilterChanged(Box::new(state)));
            }
        }
        Ok(())
    }
}

enum Placed {
    Yes,
    /// No buffer large enough: the frame is dropped.
    Dropped,
    /// The ring has no (or not enough) buffers right now.
    NoRoom,
}

impl VhostUserBackend for NetDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 * self.inner.pairs + 1
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = F_VERSION_1
            | F_INDIRECT_DESC
            | F_EVENT_IDX
            | F_MRG_RXBUF
            | F_CTRL_VQ
            | F_CTRL_RX
            | F_CTRL_VLAN
            | F_CTRL_RX_EXTRA
            | F_CTRL_MAC_ADDR
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.inner.pairs > 1 {
            f |= F_MQ;
        }
        if self.inner.ports.first().map(Port::kind) == Some(ipc::NetBackendKind::Tap) {
            // The tap's vnet header carries checksum and segmentation offloads both ways.
            f |= F_CSUM
                | F_GUEST_CSUM
                | F_GUEST_TSO4
                | F_GUEST_TSO6
                | F_GUEST_ECN
                | F_GUEST_UFO
                | F_HOST_TSO4
                | F_HOST_TSO6
                | F_HOST_ECN
                | F_HOST_UFO;
        }
        f
    }

    fn acked_features(&self, features: u64) {
        log::debug!("features acked: {features:#x}");
        // A driver negotiating features starts from the device's reset state; a
        // frontend that only turns dirty logging on or off (F_LOG_ALL) is not one.
        let old = self.inner.acked.swap(features, Ordering::SeqCst);
        if old ^ features != F_LOG_ALL {
            self.reset_device();
            if let Some(f) = lock(&self.inner.restore).take() {
                *lock(&self.inner.filter) = f;
            }
        }
        for port in &self.inner.ports {
            if let Err(e) = port.set_offloads(features) {
                log::warn!("setting the tap's offloads: {e}");
            }
        }
        lock(&self.inner.filter).vlan_filtering = features & F_CTRL_VLAN != 0;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&self) {
        *lock(&self.inner.filter) = RxFilter::new(self.inner.mac);
        for s in &self.inner.state {
            lock(s).pending = None;
        }
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self.inner.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let Some(mem) = self.memory() else {
            return Ok(());
        };
        let e = usize::from(device_event);
        let n = self.num_queues();
        if e + 1 == n {
            return match vrings.get(e) {
                Some(v) => self.control(v, &mem),
                None => Ok(()),
            };
        }
        if e < n {
            let p = e / 2;
            let Some(v) = vrings.get(e) else {
                return Ok(());
            };
            if e % 2 == 0 {
                self.buffers_added(p);
                return self.receive(p, v, &mem);
            }
            return self.transmit(p, v, &mem);
        }
        if e > n {
            let p = e - n - 1;
            if let Some(v) = vrings.get(2 * p) {
                return self.receive(p, v, &mem);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The whole data path (virtqueues, chains, headers, frames from the host side) under
    //! random guest input: never a panic, every malformed buffer counted.

    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;

    const MEM: u64 = 1 << 20;
    const QSIZE: u16 = 64;
    /// Per queue: descriptor table, available ring, used ring.
    const RINGS: [(u64, u64, u64); 3] = [
        (0x1000, 0x2000, 0x3000),
        (0x4000, 0x5000, 0x6000),
        (0x7000, 0x8000, 0x9000),
    ];

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn descriptor(rng: &mut Rng) -> [u8; 16] {
        let v = rng.next();
        let addr = match v % 5 {
            0 => rng.next(),               // anywhere at all
            1 => MEM - (rng.next() % 128), // straddling the end of memory
            2 => rng.next() % 0xa000,      // over the rings themselves
            _ => 0x10000 + rng.next() % (MEM - 0x10000),
        };
        let len = match (v >> 8) % 4 {
            0 => rng.next() as u32,
            1 => 0,
            _ => (rng.next() % 4096) as u32,
        };
        // NEXT, WRITE and INDIRECT in every combination, and junk bits.
        let flags = (v >> 16) as u16 & 0x7 | (((v >> 40) as u16 & 1) << 9);
        let next = (v >> 24) as u16 % (QSIZE + 4);
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        d
    }

    #[test]
    fn random_rings_chains_headers_and_frames_never_panic() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let (ours, host) = UnixDatagram::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let port = Port::new(OwnedFd::from(ours), ipc::NetBackendKind::Datagram).unwrap();
        let dev = NetDevice::new(
            vec![port],
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            true,
            None,
            None,
        );
        dev.update_memory(atomic.clone()).unwrap();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut sink = [0u8; 70_000];
        for round in 0..3000 {
            let features = F_VERSION_1
                | F_CTRL_VQ
                | F_CTRL_RX
                | F_CTRL_VLAN
                | F_CTRL_MAC_ADDR
                | if round % 2 == 0 { F_MRG_RXBUF } else { 0 }
                | if round % 3 == 0 { F_EVENT_IDX } else { 0 }
                | if round % 5 == 0 { F_INDIRECT_DESC } else { 0 };
            dev.acked_features(features);
            let vrings: Vec<VringRwLock> = RINGS
                .iter()
                .map(|&(desc, avail, used)| {
                    let v = VringRwLock::new(atomic.clone(), QSIZE).unwrap();
                    v.set_queue_size(QSIZE);
                    v.set_queue_info(desc, avail, used).unwrap();
                    v.set_queue_event_idx(features & F_EVENT_IDX != 0);
                    v.set_queue_ready(true);
                    v.set_enabled(true);
                    v
                })
                .collect();
            for &(desc, avail, _) in &RINGS {
                for i in 0..u64::from(QSIZE) {
                    mem.write_slice(&descriptor(&mut rng), GuestAddress(desc + 16 * i))
                        .unwrap();
                }
                // Some random data in the buffers (headers, control commands).
                for _ in 0..16 {
                    let at = 0x10000 + rng.next() % (MEM - 0x10100);
                    mem.write_obj(rng.next(), GuestAddress(at)).unwrap();
                }
                for i in 0..u64::from(QSIZE) {
                    let head = (rng.next() % u64::from(QSIZE + 8)) as u16;
                    mem.write_obj(head, GuestAddress(avail + 4 + 2 * i))
                        .unwrap();
                }
                let idx = match rng.next() % 4 {
                    0 => rng.next() as u16,
                    _ => (rng.next() % u64::from(QSIZE)) as u16,
                };
                mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
            }
            // Frames arriving from the host side: any length, any content.
            for _ in 0..4 {
                let len = match rng.next() % 4 {
                    0 => (rng.next() % 20) as usize,
                    1 => (rng.next() % 65_000) as usize,
                    _ => 60 + (rng.next() % 1500) as usize,
                };
                let frame: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let _ = host.send(&frame);
            }
            // rx kick, tx kick, control kick, host port readable.
            for event in [0u16, 1, 2, 4] {
                let _ = dev.handle_event(event, EventSet::IN, &vrings, 0);
            }
            while host.recv(&mut sink).is_ok() {}
        }
        let stats = dev.stats();
        assert!(
            stats.malformed > 0,
            "random chains were never found malformed: {stats:?}"
        );
    }
}
