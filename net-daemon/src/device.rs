//! The virtio-net device, served by vhost-backend: rx/tx queue pairs, each tied to one
//! host port (a tap queue, or the datagram socket), and the control queue (rx mode, MAC
//! tables, VLANs, queue pairs) last. One thread, the connection's worker, serves
//! everything: guest kicks, host ports becoming readable.
//!
//! Receive: a frame read from the port goes through the receive filter and into the
//! guest's buffers (several, with mergeable rx buffers); with no buffer free it waits,
//! and the port is not watched until the guest adds buffers. Transmit: each chain is one
//! header + frame for the port. Malformed chains (broken ones included) are completed
//! unused and counted.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ipc::{NetEvent, NetStats, RxFilterState};
use parking_lot::Mutex;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_backend::{Device, HostWatch, Rings, Vring};
use virtio::{features, net, Desc};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::filter::{Outcome, RxFilter, ACK_ERR, ACK_OK};
use crate::frames::{self, Malformed, HDR_LEN, MAX_FRAME};
use crate::port::Port;

pub const QUEUE_SIZE: u16 = 256;

pub type EventSink = Arc<dyn Fn(NetEvent) + Send + Sync>;

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

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Per queue pair: a frame read from the port but not yet placed, and the buffer frames
/// are read into (allocated once, on first use).
#[derive(Default)]
struct PairState {
    pending: Option<Vec<u8>>,
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
    acked: AtomicU64,
    state: Vec<Mutex<PairState>>,
    counters: Counters,
    events: Option<EventSink>,
    logged: AtomicU64,
}

#[derive(Clone)]
pub struct NetDevice {
    inner: Arc<Inner>,
}

enum Placed {
    Yes,
    /// No buffer large enough: the frame is dropped.
    Dropped,
    /// The ring has no (or not enough) buffers right now.
    NoRoom,
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
                acked: AtomicU64::new(0),
                state: (0..pairs)
                    .map(|_| Mutex::new(PairState::default()))
                    .collect(),
                counters: Counters::default(),
                events,
                logged: AtomicU64::new(0),
                ports,
            }),
        }
    }

    pub fn set_link(&self, up: bool) {
        self.inner.link_up.store(up, Ordering::SeqCst);
    }

    /// Sends the NIC's announcement (`frames::announcement`) on the first queue pair's
    /// port, so switches learn where its MAC now is; nothing while the link is down.
    pub fn announce(&self) -> std::io::Result<()> {
        if !self.inner.link_up.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(port) = self.inner.ports.first() else {
            return Ok(());
        };
        let mut with_hdr = vec![0u8; HDR_LEN];
        with_hdr.extend_from_slice(&frames::announcement(self.inner.mac));
        port.send(&with_hdr)?;
        count(&self.inner.counters.tx_packets, 1);
        count(
            &self.inner.counters.tx_bytes,
            (with_hdr.len() - HDR_LEN) as u64,
        );
        Ok(())
    }

    /// The filter a migration's source served (`NetRequest::RestoreRxFilter`).
    pub fn restore_rx_filter(&self, state: &RxFilterState) {
        let filter = RxFilter::from_state(state);
        *self.inner.filter.lock() = filter.clone();
        *self.inner.restore.lock() = Some(filter);
    }

    pub fn rx_filter(&self) -> RxFilterState {
        self.inner.filter.lock().state()
    }

    /// Forgets the frames each pair held for want of a receive buffer.
    fn drop_pending(&self) {
        for s in &self.inner.state {
            s.lock().pending = None;
        }
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

    fn malformed(&self, e: &Malformed) {
        count(&self.inner.counters.malformed, 1);
        let n = self.inner.logged.fetch_add(1, Ordering::Relaxed);
        if n < 20 || n.is_multiple_of(1000) {
            log::warn!("dropped a guest buffer: {e} [{} so far]", n + 1);
        }
    }

    /// Completes a chain that cannot be used, unused, and counts it.
    fn drop_malformed(
        &self,
        ring: &mut Vring,
        mem: &GuestMemoryMmap,
        head: u16,
        e: &Malformed,
    ) -> io::Result<()> {
        self.malformed(e);
        ring.add_used(mem, head, 0)
    }

    fn mergeable(&self) -> bool {
        self.inner.acked.load(Ordering::Relaxed) & net::F_MRG_RXBUF != 0
    }

    /// Guest frames of pair `p` to the port.
    fn transmit(&self, p: usize, ring: &mut Vring, mem: &GuestMemoryMmap) -> io::Result<()> {
        let c = &self.inner.counters;
        let event_idx = ring.event_idx();
        loop {
            if event_idx {
                ring.disable_notification(mem)?;
            }
            let mut sent = 0;
            while let Some((head, chain)) = ring.pop_chain(mem) {
                sent += 1;
                let bytes = chain
                    .map_err(Malformed::from)
                    .and_then(|descs| frames::gather(mem, &descs));
                match bytes {
                    Ok(bytes) if self.inner.link_up.load(Ordering::Relaxed) => {
                        let len = (bytes.len() - HDR_LEN) as u64;
                        match self.inner.ports.get(p).map(|port| port.send(&bytes)) {
                            Some(Ok(())) => {
                                count(&c.tx_packets, 1);
                                count(&c.tx_bytes, len);
                                ipc::tracepoint!(VirtioNetTx, "pair={p} len={len} result=sent");
                            }
                            // A full tap queue or a peer not listening: the frame is lost,
                            // as on a wire.
                            _ => {
                                count(&c.tx_dropped, 1);
                                ipc::tracepoint!(VirtioNetTx, "pair={p} len={len} result=dropped");
                            }
                        }
                    }
                    Ok(_) => count(&c.rx_filtered, 1),
                    Err(e) => self.malformed(&e),
                }
                ring.add_used(mem, head, 0)?;
            }
            if sent > 0 {
                ring.notify(mem)?;
            }
            // A pass that took nothing ends here even if the ring claims more: a broken
            // available index would otherwise keep this thread spinning.
            let more = event_idx && ring.enable_notification(mem)?;
            if sent == 0 || !more {
                return Ok(());
            }
        }
    }

    /// Port frames of pair `p` into the guest's receive buffers, while there are both.
    fn receive(
        &self,
        p: usize,
        ring: &mut Vring,
        mem: &GuestMemoryMmap,
        watch: &HostWatch,
    ) -> io::Result<()> {
        let Some(port) = self.inner.ports.get(p) else {
            return Ok(());
        };
        let c = &self.inner.counters;
        let mergeable = self.mergeable();
        let mut state = self.inner.state[p].lock();
        let PairState { pending, buf } = &mut *state;
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
                || !self.inner.filter.lock().accepts(&frame[HDR_LEN..])
            {
                count(&c.rx_filtered, 1);
                continue;
            }
            match self.place(ring, mem, frame, mergeable)? {
                Placed::Yes => {
                    placed += 1;
                    count(&c.rx_packets, 1);
                    count(&c.rx_bytes, (frame.len() - HDR_LEN) as u64);
                    ipc::tracepoint!(VirtioNetRx, "pair={p} len={}", frame.len() - HDR_LEN);
                }
                Placed::Dropped => count(&c.rx_no_buffer, 1),
                Placed::NoRoom => {
                    // Wait for buffers: keep the frame, stop watching the port, and ask
                    // the guest to kick when it adds some.
                    *pending = Some(match held {
                        Some(h) => h,
                        None => frame.to_vec(),
                    });
                    if ring.event_idx() {
                        ring.enable_notification(mem)?;
                    }
                    watch.pause(p);
                    break;
                }
            }
        }
        if placed > 0 {
            ring.notify(mem)?;
        }
        Ok(())
    }

    /// Puts one frame (header included) into receive buffers: one chain, or with
    /// mergeable buffers as many as it takes.
    fn place(
        &self,
        ring: &mut Vring,
        mem: &GuestMemoryMmap,
        frame: &[u8],
        mergeable: bool,
    ) -> io::Result<Placed> {
        let start = ring.next_avail();
        let mut chains: Vec<(u16, Vec<Desc>)> = Vec::new();
        // Chains found unusable: completed only once the frame is placed or dropped, so
        // that taking them back (no room yet) never completes one twice.
        let mut unusable: Vec<(u16, Malformed)> = Vec::new();
        let mut room = 0;
        while room < frame.len() {
            let Some((head, chain)) = ring.pop_chain(mem) else {
                // Not enough buffers yet: put back what was taken.
                ring.rewind(start);
                return Ok(Placed::NoRoom);
            };
            let usable = chain
                .map_err(Malformed::from)
                .and_then(|descs| frames::room(&descs).map(|r| (descs, r)));
            match usable {
                Ok((descs, r)) => {
                    room += r;
                    chains.push((head, descs));
                }
                Err(e) => unusable.push((head, e)),
            }
            if !mergeable {
                break;
            }
        }
        for (head, e) in unusable {
            self.drop_malformed(ring, mem, head, &e)?;
        }
        if room < frame.len() {
            // Without mergeable buffers one chain must hold the frame: this one cannot.
            for (head, _) in chains {
                ring.add_used(mem, head, 0)?;
            }
            return Ok(Placed::Dropped);
        }
        let header = frames::header_with_buffers(frame, chains.len() as u16);
        let payload = &frame[HDR_LEN..];
        let mut at = 0;
        for (head, descs) in chains {
            let parts: [&[u8]; 2] = match header.get(at..) {
                Some(h) => [h, payload],
                None => [&[], payload.get(at - HDR_LEN..).unwrap_or_default()],
            };
            match frames::scatter(mem, &descs, &parts) {
                Ok(n) => {
                    at += n;
                    ring.add_used(mem, head, n as u32)?;
                }
                Err(e) => self.drop_malformed(ring, mem, head, &e)?,
            }
        }
        Ok(Placed::Yes)
    }

    /// Control commands.
    fn control(&self, ring: &mut Vring, mem: &GuestMemoryMmap) -> io::Result<()> {
        let event_idx = ring.event_idx();
        let mut changed = false;
        loop {
            if event_idx {
                ring.disable_notification(mem)?;
            }
            let mut any = false;
            while let Some((head, chain)) = ring.pop_chain(mem) {
                any = true;
                let command = chain
                    .map_err(Malformed::from)
                    .and_then(|descs| frames::control(mem, &descs));
                match command {
                    Ok((class, cmd, data, ack_at)) => {
                        let outcome = self.inner.filter.lock().command(class, cmd, &data);
                        let ack = match outcome {
                            Outcome::Ok { changed: c } => {
                                changed |= c;
                                ACK_OK
                            }
                            Outcome::Pairs(n) if usize::from(n) <= self.inner.pairs => ACK_OK,
                            Outcome::Pairs(_) | Outcome::Err => ACK_ERR,
                        };
                        let _ = mem.write_obj(ack, GuestAddress(ack_at));
                        ring.add_used(mem, head, 1)?;
                    }
                    Err(e) => self.drop_malformed(ring, mem, head, &e)?,
                }
            }
            if any {
                ring.notify(mem)?;
            }
            // With EVENT_IDX the driver kicks again only once told where to (avail_event).
            // As in transmit: no progress, no second pass.
            let more = event_idx && ring.enable_notification(mem)?;
            if !any || !more {
                break;
            }
        }
        if changed {
            if let Some(events) = &self.inner.events {
                let state = self.inner.filter.lock().state();
                events(NetEvent::RxFilterChanged(Box::new(state)));
            }
        }
        Ok(())
    }
}

impl Device for NetDevice {
    fn num_queues(&self) -> usize {
        2 * self.inner.pairs + 1
    }

    fn max_queue_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = features::VERSION_1
            | features::INDIRECT_DESC
            | features::EVENT_IDX
            | net::F_MRG_RXBUF
            | net::F_CTRL_VQ
            | net::F_CTRL_RX
            | net::F_CTRL_VLAN
            | net::F_CTRL_RX_EXTRA
            | net::F_CTRL_MAC_ADDR;
        if self.inner.pairs > 1 {
            f |= net::F_MQ;
        }
        if self.inner.ports.first().map(Port::kind) == Some(ipc::NetBackendKind::Tap) {
            // The tap's vnet header carries checksum and segmentation offloads both ways.
            f |= net::F_CSUM
                | net::F_GUEST_CSUM
                | net::F_GUEST_TSO4
                | net::F_GUEST_TSO6
                | net::F_GUEST_ECN
                | net::F_GUEST_UFO
                | net::F_HOST_TSO4
                | net::F_HOST_TSO6
                | net::F_HOST_ECN
                | net::F_HOST_UFO;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
    }

    /// The frontend presents virtio-net's configuration space itself (MAC, status, queue
    /// pairs): CONFIG is not offered, and this is never asked.
    fn read_config(&self, _offset: u32, _size: u32) -> Vec<u8> {
        Vec::new()
    }

    fn host_fds(&self) -> Vec<RawFd> {
        self.inner.ports.iter().map(Port::raw).collect()
    }

    fn features_acked(&self, features: u64) {
        log::debug!("features acked: {features:#x}");
        // A driver negotiating features starts from the device's reset state; a
        // frontend that only turns dirty logging on or off (F_LOG_ALL) is not one.
        let old = self.inner.acked.swap(features, Ordering::SeqCst);
        let renegotiated = old ^ features != VhostUserVirtioFeatures::LOG_ALL.bits();
        {
            // One lock for the reset, the restored filter and the VLAN bit: a
            // query-rx-filter in between would report the reset filter, not the guest's.
            let mut filter = self.inner.filter.lock();
            if renegotiated {
                let restored = self.inner.restore.lock().take();
                *filter = restored.unwrap_or_else(|| RxFilter::new(self.inner.mac));
            }
            filter.vlan_filtering = features & net::F_CTRL_VLAN != 0;
        }
        if renegotiated {
            self.drop_pending();
        }
        for port in &self.inner.ports {
            if let Err(e) = port.set_offloads(features) {
                log::warn!("setting the tap's offloads: {e}");
            }
        }
    }

    /// Queues 2p and 2p+1 are pair p's receive and transmit queues; the control queue
    /// is last.
    fn queue_kicked(
        &self,
        q: usize,
        ring: &mut Vring,
        mem: &Arc<GuestMemoryMmap>,
        watch: &HostWatch,
    ) -> io::Result<()> {
        if q + 1 == self.num_queues() {
            return self.control(ring, mem);
        }
        let p = q / 2;
        if q % 2 == 1 {
            return self.transmit(p, ring, mem);
        }
        // The guest added receive buffers: watch the port again if it waited for them.
        watch.resume(p);
        self.receive(p, ring, mem, watch)
    }

    /// Port `source` (pair `source`'s) has frames.
    fn host_ready(
        &self,
        source: usize,
        rings: &Rings,
        mem: Option<&Arc<GuestMemoryMmap>>,
        watch: &HostWatch,
    ) -> io::Result<()> {
        let Some(mem) = mem else {
            // No guest memory, so no receive buffers yet: the first receive kick resumes.
            watch.pause(source);
            return Ok(());
        };
        match rings.lock(2 * source, mem) {
            Some(mut ring) => self.receive(source, &mut ring, mem, watch),
            None => Ok(()),
        }
    }

    fn reset(&self) {
        *self.inner.filter.lock() = RxFilter::new(self.inner.mac);
        self.drop_pending();
    }
}

#[cfg(test)]
mod tests {
    //! The whole data path (virtqueues, chains, headers, control commands, frames from the
    //! host side) under random guest input, through the framework's rings: never a panic,
    //! every malformed buffer counted.

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
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap(),
        );
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
        let watch = HostWatch::for_testing(dev.host_fds()).unwrap();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut sink = [0u8; 70_000];
        for round in 0..3000 {
            let event_idx = round % 3 == 0;
            let features = features::VERSION_1
                | net::F_CTRL_VQ
                | net::F_CTRL_RX
                | net::F_CTRL_VLAN
                | net::F_CTRL_MAC_ADDR
                | if round % 2 == 0 { net::F_MRG_RXBUF } else { 0 }
                | if event_idx { features::EVENT_IDX } else { 0 }
                | if round % 5 == 0 {
                    features::INDIRECT_DESC
                } else {
                    0
                };
            dev.features_acked(features);
            let rings = Rings::live_for_testing(&RINGS, QSIZE, event_idx).unwrap();
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
            for q in 0..RINGS.len() {
                let mut ring = rings.lock(q, &mem).unwrap();
                let _ = dev.queue_kicked(q, &mut ring, &mem, &watch);
            }
            let _ = dev.host_ready(0, &rings, Some(&mem), &watch);
            while host.recv(&mut sink).is_ok() {}
        }
        let stats = dev.stats();
        assert!(
            stats.malformed > 0,
            "random chains were never found malformed: {stats:?}"
        );
    }

    /// A restarted daemon is handed the guest's filter; the frontend's SET_FEATURES
    /// then resets the device. A query at any moment of that sees the guest's filter,
    /// never the reset one (a query-rx-filter right after a restart once did).
    #[test]
    fn a_restored_filter_is_never_seen_reset_while_features_are_acked() {
        let (ours, _host) = UnixDatagram::pair().unwrap();
        let port = Port::new(OwnedFd::from(ours), ipc::NetBackendKind::Datagram).unwrap();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let guests = RxFilterState {
            promiscuous: false,
            all_multi: true,
            main_mac: mac,
            unicast: vec![[2, 0, 0, 0, 0, 1]],
            vlan_filtering: true,
            vlans: vec![5, 100],
            ..RxFilterState::default()
        };
        let dev = NetDevice::new(vec![port], mac, true, None, None);
        let features = features::VERSION_1 | net::F_CTRL_VQ | net::F_CTRL_RX | net::F_CTRL_VLAN;
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut reads = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let seen = dev.rx_filter();
                    if seen != guests {
                        return Err(format!("after {reads} reads: {seen:?}"));
                    }
                    reads += 1;
                }
                Ok(reads)
            });
            dev.restore_rx_filter(&guests);
            for round in 0..20_000u64 {
                // Each round a frontend that connects anew: features from 0, the filter
                // handed over again.
                dev.inner.acked.store(0, Ordering::SeqCst);
                dev.restore_rx_filter(&guests);
                dev.features_acked(features | ((round % 2) * features::EVENT_IDX));
            }
            stop.store(true, Ordering::SeqCst);
            let reads = reader.join().unwrap().unwrap();
            assert!(reads > 0, "the reader never ran");
        });
    }
}
