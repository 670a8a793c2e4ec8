//! Block and PCI scenarios: `pci-list`, `blk-info`, `blk-pattern`, `blk-queues`,
//! `blk-resize`, `blk-bench`, `blk-verify-loop` (see the README for their output lines), and
//! the PCI set-up and timed halt that the network scenarios (net_scenarios.rs) share.
//!
//! Set-up (PCI scan, virtio negotiation, MSI-X) runs in ring 0. The I/O loops (submit, kick,
//! poll the used rings, fill and verify data) run in ring 3 through `user::call`, where the
//! CPU runs natively even on kvm-pvm hosts; interrupts are only waited for in ring 0, halted.
//! Data patterns: sector S of pattern P(seed) is 64 little-endian u64 words, word i =
//! (seed ^ (S << 16) ^ i) * 0x9E3779B97F4A7C15 (wrapping).

use crate::acpi::power;
use crate::acpi::Acpi;
use crate::arch::halt::halt_until;
use crate::arch::interrupts;
use crate::arch::{cpu, memory, tsc, user};
use crate::drivers::pci::bar::{self, Bar};
use crate::drivers::pci::config;
use crate::drivers::pci::scan::{self, Functions};
use crate::drivers::virtio_blk::queue::{BlkQueue, Completion, Op, Request};
use crate::drivers::virtio_blk::spec::{
    F_DISCARD, F_FLUSH, F_RO, F_WRITE_ZEROES, ID_BYTES, SECTOR, S_OK,
};
use crate::drivers::virtio_blk::{self, BlkDevice, BlkDevices, MAX_QUEUES};
use crate::{cmdline, console};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const WORDS_PER_SECTOR: usize = 64;
/// Requests in flight per queue in the whole-disk sweeps.
const SWEEP_DEPTH: usize = 16;
const SWEEP_CHUNK: u64 = 64 * 1024;
/// Requests in flight per queue in blk-queues.
const QUEUES_DEPTH: u16 = 64;
const DEFAULT_BENCH_MS: u64 = 2000;
/// A request outstanding this long (without any completion) is reported.
const STALL_MS: u64 = 10_000;
const DEFAULT_VERIFY_STALL_MS: u64 = 30_000;
const IRQ_TIMEOUT_MS: u64 = 5_000;
const RESIZE_TIMEOUT_MS: u64 = 60_000;
/// Error lines per sweep before the rest are only counted.
const ERROR_LINES: u32 = 8;

pub fn run(name: &[u8], acpi: &Acpi, cmdline: &[u8]) -> ! {
    let functions = pci_setup(acpi, cmdline);
    if name == b"pci-list" {
        pci_list(&functions);
        power::poweroff(acpi);
    }
    dma_info();
    let mut devices = virtio_blk::probe_all(&functions);
    match name {
        b"blk-info" => info(&mut devices),
        b"blk-pattern" => with_first(&mut devices, |dev| pattern(dev, cmdline)),
        b"blk-queues" => with_first(&mut devices, queues),
        b"blk-resize" => with_first(&mut devices, |dev| resize(dev, cmdline)),
        b"blk-bench" => with_first(&mut devices, |dev| bench(dev, cmdline)),
        b"blk-verify-loop" => with_first(&mut devices, |dev| verify_loop(dev, cmdline)),
        _ => console::error("unknown scenario=").ascii(name).end(),
    }
    power::poweroff(acpi)
}

/// What every PCI scenario does first (block and network, see net_scenarios.rs): calibrates
/// the TSC, picks the configuration access method, scans, applies the `pci_ecam=` and
/// `pci_assign=` test aids, and prints `GUEST INFO pci ...`.
pub fn pci_setup(acpi: &Acpi, cmdline: &[u8]) -> Functions {
    tsc::calibrate();
    // Test aids for firmware that leaves PCI half set up (QEMU microvm): see pci.rs.
    let ecam = cmdline::param(cmdline, "pci_ecam").and_then(cmdline::parse_hex);
    let access = config::init(acpi, ecam);
    let functions = scan::scan();
    let assigned = match cmdline::param(cmdline, "pci_assign") {
        Some(window) => {
            let mut parts = window.splitn(2, |&b| b == b',');
            let base = parts.next().and_then(cmdline::parse_hex);
            let size = parts.next().map_or(Some(0x2000_0000), cmdline::parse_hex);
            match (base, size) {
                (Some(base), Some(size)) => bar::assign_bars(&functions, base, size),
                _ => {
                    console::error("pci_assign= wants <hex base>[,<hex size>]").end();
                    0
                }
            }
        }
        None => 0,
    };
    let line = console::line("GUEST INFO pci access=")
        .s(access)
        .s(" functions=")
        .dec(functions.iter().count() as u64);
    let line = if assigned != 0 {
        line.s(" bars_assigned=").dec(u64::from(assigned))
    } else {
        line
    };
    line.s(" tsc_khz=").dec(tsc::hz() / 1000).end();
    functions
}

/// `GUEST INFO dma pool=<start>-<end>`.
pub fn dma_info() {
    let (dma_start, dma_end) = memory::dma_range();
    console::line("GUEST INFO dma pool=")
        .hex(dma_start)
        .s("-")
        .hex(dma_end)
        .end();
}

/// The scenario names this module handles.
pub fn handles(name: &[u8]) -> bool {
    matches!(
        name,
        b"pci-list"
            | b"blk-info"
            | b"blk-pattern"
            | b"blk-queues"
            | b"blk-resize"
            | b"blk-bench"
            | b"blk-verify-loop"
    )
}

fn with_first(devices: &mut BlkDevices, scenario: impl FnOnce(&mut BlkDevice)) {
    match devices.list[0].as_mut() {
        Some(dev) => scenario(dev),
        None => console::error("blk: no usable virtio-blk device").end(),
    }
}

fn pci_list(functions: &Functions) {
    for f in functions.iter() {
        let line = f.addr.print(console::line("GUEST PCI "));
        let mut line = line
            .s(" vendor=")
            .hex(u64::from(f.vendor))
            .s(" device=")
            .hex(u64::from(f.device))
            .s(" class=")
            .hex(u64::from(f.class))
            .s(" header=")
            .hex(u64::from(f.header_type));
        if f.header_type & 0x7f == 0 {
            let mut index = 0;
            while index < 6 {
                let bar = bar::bar(f.addr, index);
                line = match bar {
                    // A BAR reading 0 is unimplemented or unassigned: not listed.
                    Bar::Unused | Bar::Memory { addr: 0, .. } | Bar::Io(0) => line,
                    Bar::Io(port) => line
                        .s(" bar")
                        .dec(u64::from(index))
                        .s("=io:")
                        .hex(u64::from(port)),
                    Bar::Memory { addr, is64, .. } => line
                        .s(" bar")
                        .dec(u64::from(index))
                        .s(if is64 { "=mem64:" } else { "=mem32:" })
                        .hex(addr),
                };
                index += if matches!(bar, Bar::Memory { is64: true, .. }) {
                    2
                } else {
                    1
                };
            }
        }
        line.end();
    }
}

fn param(cmdline: &[u8], key: &str, default: u64) -> u64 {
    cmdline::param(cmdline, key)
        .and_then(cmdline::parse_u64)
        .unwrap_or(default)
}

fn seed(cmdline: &[u8]) -> Option<u64> {
    let seed = cmdline::param(cmdline, "seed").and_then(cmdline::parse_hex);
    if seed.is_none() {
        console::error("blk: this scenario needs seed=<hex>").end();
    }
    seed
}

fn usable(dev: &BlkDevice, writes: bool) -> bool {
    if dev.capacity == 0 {
        console::error("blk: device 0 has capacity 0").end();
        return false;
    }
    if writes && dev.has(F_RO) {
        console::error("blk: device 0 is read-only (VIRTIO_BLK_F_RO)").end();
        return false;
    }
    true
}

// --- Patterns (ring 3) ---------------------------------------------------------------------

fn fill(addr: u64, first_sector: u64, sectors: u64, seed: u64) {
    // SAFETY: `addr` is a DMA buffer of at least `sectors` sectors owned by the caller and not
    // in flight.
    let words = unsafe {
        core::slice::from_raw_parts_mut(
            addr as usize as *mut u64,
            sectors as usize * WORDS_PER_SECTOR,
        )
    };
    for (s, sector) in words.chunks_exact_mut(WORDS_PER_SECTOR).enumerate() {
        let base = seed ^ ((first_sector + s as u64) << 16);
        for (i, word) in sector.iter_mut().enumerate() {
            *word = (base ^ i as u64).wrapping_mul(GOLDEN);
        }
    }
}

#[derive(Clone, Copy)]
struct Mismatch {
    sector: u64,
    word: usize,
    got: u64,
    want: u64,
}

/// Mismatching sectors of a buffer read from `first_sector`, and the first mismatch.
fn check(addr: u64, first_sector: u64, sectors: u64, seed: u64) -> (u64, Option<Mismatch>) {
    // SAFETY: as in `fill`; the device finished writing the buffer (completion reaped).
    let words = unsafe {
        core::slice::from_raw_parts(
            addr as usize as *const u64,
            sectors as usize * WORDS_PER_SECTOR,
        )
    };
    let mut bad = 0;
    let mut first = None;
    for (s, sector) in words.chunks_exact(WORDS_PER_SECTOR).enumerate() {
        let number = first_sector + s as u64;
        let base = seed ^ (number << 16);
        let wrong = sector
            .iter()
            .enumerate()
            .position(|(i, &word)| word != (base ^ i as u64).wrapping_mul(GOLDEN));
        if let Some(word) = wrong {
            bad += 1;
            first.get_or_insert(Mismatch {
                sector: number,
                word,
                got: sector[word],
                want: (base ^ word as u64).wrapping_mul(GOLDEN),
            });
        }
    }
    (bad, first)
}

// --- Whole-disk sweeps over every queue (ring 3) ----------------------------------------------

#[derive(Default)]
struct SweepResult {
    bytes: u64,
    ticks: u64,
    io_errors: u64,
    bad_sectors: u64,
    first_mismatch: Option<Mismatch>,
    bogus: u64,
    stalled: bool,
}

impl SweepResult {
    fn errors(&self) -> u64 {
        self.io_errors + self.bad_sectors + self.bogus + u64::from(self.stalled)
    }
}

struct Sweep<'a> {
    dev: &'a mut BlkDevice,
    queues: usize,
    depth: usize,
    chunk_sectors: u64,
    buffers: u64,
    sector: [[u64; SWEEP_DEPTH]; MAX_QUEUES],
    count: [[u64; SWEEP_DEPTH]; MAX_QUEUES],
    stall_ticks: u64,
    /// Keep waiting after reporting a stall (blk-verify-loop) instead of giving up.
    wait_forever: bool,
    /// Round number for error lines (blk-verify-loop); None: mismatches are left to the caller.
    round: Option<u64>,
    error_lines: u32,
}

impl<'a> Sweep<'a> {
    /// Sizes the sweep (every queue, up to SWEEP_DEPTH in flight each, SWEEP_CHUNK requests)
    /// to the DMA pool. None after an error line if not even one small buffer per queue fits.
    fn new(dev: &'a mut BlkDevice, stall_ms: u64, wait_forever: bool) -> Option<Sweep<'a>> {
        let queues = dev.queue_count;
        let slots = (0..queues)
            .map(|q| usize::from(dev.queue(q).slots()))
            .min()
            .unwrap_or(0);
        let mut depth = slots.min(SWEEP_DEPTH);
        let mut chunk = SWEEP_CHUNK.min(u64::from(dev.max_request));
        let room = memory::dma_remaining().saturating_sub(64 * 1024);
        while (queues * depth) as u64 * chunk > room {
            if depth > 4 {
                depth /= 2;
            } else if chunk > 4096 {
                chunk /= 2;
            } else {
                break;
            }
        }
        let total = (queues * depth) as u64 * chunk;
        let buffers = memory::dma_alloc(total, 4096);
        let (Some(buffers), true) = (buffers, depth > 0 && chunk >= SECTOR) else {
            console::error("blk: no DMA memory for ")
                .dec((queues * depth) as u64)
                .s(" buffers of ")
                .dec(chunk)
                .s(" bytes")
                .end();
            return None;
        };
        Some(Sweep {
            dev,
            queues,
            depth,
            chunk_sectors: chunk / SECTOR,
            buffers,
            sector: [[0; SWEEP_DEPTH]; MAX_QUEUES],
            count: [[0; SWEEP_DEPTH]; MAX_QUEUES],
            stall_ticks: tsc::from_ms(stall_ms),
            wait_forever,
            round: None,
            error_lines: 0,
        })
    }

    fn buffer(&self, queue: usize, slot: usize) -> u64 {
        self.buffers + (queue * self.depth + slot) as u64 * self.chunk_sectors * SECTOR
    }

    /// Whether another error line may be printed (the one that exhausts the budget says so).
    fn may_print(&mut self) -> bool {
        self.error_lines += 1;
        if self.error_lines == ERROR_LINES + 1 {
            console::error("blk: further errors of this pass are only counted").end();
        }
        self.error_lines <= ERROR_LINES
    }

    fn round_suffix(&self, line: console::Line) -> console::Line {
        match self.round {
            Some(round) => line.s(" round=").dec(round),
            None => line,
        }
    }

    /// Submits the next chunk from `next` in `slot` of `queue`; false when the disk is done
    /// (or the queue refused, after an error line).
    fn issue(&mut self, queue: usize, slot: usize, next: &mut u64, write: bool, seed: u64) -> bool {
        let capacity = self.dev.capacity;
        if *next >= capacity {
            return false;
        }
        let sectors = self.chunk_sectors.min(capacity - *next);
        let addr = self.buffer(queue, slot);
        if write {
            fill(addr, *next, sectors, seed);
        }
        let request = Request {
            op: if write { Op::Write } else { Op::Read },
            sector: *next,
            addr,
            len: (sectors * SECTOR) as u32,
        };
        if !self.dev.queue(queue).submit(slot as u16, &request) {
            console::error("blk: queue ")
                .dec(queue as u64)
                .s(" refused a request in slot ")
                .dec(slot as u64)
                .end();
            return false;
        }
        self.sector[queue][slot] = *next;
        self.count[queue][slot] = sectors;
        *next += sectors;
        true
    }

    /// Writes P(seed) over the whole disk, or reads it and checks it against P(seed), keeping
    /// `depth` requests in flight on every queue. Runs in ring 3.
    fn run(&mut self, write: bool, seed: u64) -> SweepResult {
        let mut result = SweepResult::default();
        self.error_lines = 0;
        let start = cpu::rdtsc();
        let mut next = 0;
        for queue in 0..self.queues {
            for slot in 0..self.depth {
                if !self.issue(queue, slot, &mut next, write, seed) {
                    break;
                }
            }
            self.dev.queue(queue).kick();
        }
        let mut last_progress = start;
        let mut stall_reported = false;
        loop {
            let mut progress = false;
            let mut outstanding = 0;
            for queue in 0..self.queues {
                let mut resubmitted = false;
                while let Some(completion) = self.dev.queue(queue).complete() {
                    progress = true;
                    match completion {
                        Completion::Done { slot, status } => {
                            let slot = usize::from(slot);
                            self.completed(queue, slot, status, write, seed, &mut result);
                            resubmitted |= self.issue(queue, slot, &mut next, write, seed);
                        }
                        Completion::Bogus { id, len } => {
                            result.bogus += 1;
                            if self.may_print() {
                                let line = console::error("blk: bogus completion queue=")
                                    .dec(queue as u64)
                                    .s(" id=")
                                    .dec(u64::from(id))
                                    .s(" len=")
                                    .dec(u64::from(len));
                                self.round_suffix(line).end();
                            }
                        }
                    }
                }
                if resubmitted {
                    self.dev.queue(queue).kick();
                }
                outstanding += usize::from(self.dev.queue(queue).inflight());
            }
            let now = cpu::rdtsc();
            if progress {
                // Reported even when this progress ends the sweep.
                if stall_reported {
                    console::line("GUEST INFO blk: I/O resumed after ")
                        .dec(tsc::to_us(now - last_progress) / 1000)
                        .s(" ms")
                        .end();
                    stall_reported = false;
                }
                last_progress = now;
            }
            if outstanding == 0 {
                break;
            }
            if progress {
                continue;
            } else if now - last_progress > self.stall_ticks && !stall_reported {
                let line = console::error("blk: no completion for ")
                    .dec(tsc::to_us(now - last_progress) / 1000)
                    .s(" ms, requests in flight=")
                    .dec(outstanding as u64);
                self.round_suffix(line).end();
                stall_reported = true;
                if !self.wait_forever {
                    result.stalled = true;
                    break;
                }
            } else {
                core::hint::spin_loop();
            }
        }
        result.ticks = cpu::rdtsc() - start;
        result
    }

    fn completed(
        &mut self,
        queue: usize,
        slot: usize,
        status: u8,
        write: bool,
        seed: u64,
        result: &mut SweepResult,
    ) {
        let (sector, sectors) = (self.sector[queue][slot], self.count[queue][slot]);
        if status != S_OK {
            result.io_errors += 1;
            if self.may_print() {
                let line = console::error("blk io error op=")
                    .s(if write { "write" } else { "read" })
                    .s(" queue=")
                    .dec(queue as u64)
                    .s(" sector=")
                    .dec(sector)
                    .s(" sectors=")
                    .dec(sectors)
                    .s(" status=")
                    .dec(u64::from(status));
                self.round_suffix(line).end();
            }
            return;
        }
        result.bytes += sectors * SECTOR;
        if write {
            return;
        }
        let (bad, first) = check(self.buffer(queue, slot), sector, sectors, seed);
        if bad == 0 {
            return;
        }
        result.bad_sectors += bad;
        // Completions arrive out of order: keep the lowest sector.
        if let Some(m) = first {
            if result.first_mismatch.is_none_or(|f| m.sector < f.sector) {
                result.first_mismatch = first;
            }
        }
        if let (Some(round), Some(m)) = (self.round, first) {
            if self.may_print() {
                console::error("blk verify mismatch round=")
                    .dec(round)
                    .s(" sector=")
                    .dec(m.sector)
                    .s(" word=")
                    .dec(m.word as u64)
                    .s(" got=")
                    .hex(m.got)
                    .s(" want=")
                    .hex(m.want)
                    .s(" bad_sectors_in_request=")
                    .dec(bad)
                    .end();
            }
        }
    }
}

/// Runs one sweep in ring 3.
fn sweep(sweep: &mut Sweep, write: bool, seed: u64) -> SweepResult {
    let mut result = SweepResult::default();
    let mut work = || {
        result = sweep.run(write, seed);
        0
    };
    if let Err(fault) = user::call(&mut work) {
        fault.report("blk", if write { "write sweep" } else { "read sweep" });
        result.stalled = true;
    }
    result
}

// --- Single requests ---------------------------------------------------------------------------

/// One request in slot 0 of `queue`, polled from ring 3. Ok(status) or Err(why).
fn single(dev: &mut BlkDevice, queue: usize, request: Request) -> Result<u8, &'static str> {
    let stall = tsc::from_ms(STALL_MS);
    let q = dev.queue(queue);
    let mut outcome = Err("not submitted");
    let mut work = || {
        if !q.submit(0, &request) {
            outcome = Err("slot 0 refused the request");
            return 0;
        }
        q.kick();
        let start = cpu::rdtsc();
        loop {
            match q.complete() {
                Some(Completion::Done { status, .. }) => {
                    outcome = Ok(status);
                    return 0;
                }
                Some(Completion::Bogus { .. }) => {
                    outcome = Err("bogus completion");
                    return 0;
                }
                None if cpu::rdtsc() - start > stall => {
                    outcome = Err("no completion within 10 s");
                    return 0;
                }
                None => core::hint::spin_loop(),
            }
        }
    };
    if let Err(fault) = user::call(&mut work) {
        fault.report("blk", "single request");
        return Err("ring-3 fault");
    }
    outcome
}

/// FLUSH if the device has it; false after an error line if it failed.
fn flush(dev: &mut BlkDevice) -> bool {
    if !dev.has(F_FLUSH) {
        return true;
    }
    let request = Request {
        op: Op::Flush,
        sector: 0,
        addr: 0,
        len: 0,
    };
    match single(dev, 0, request) {
        Ok(S_OK) => true,
        Ok(status) => {
            console::error("blk io error op=flush queue=0 status=")
                .dec(u64::from(status))
                .end();
            false
        }
        Err(why) => {
            console::error("blk flush: ").s(why).end();
            false
        }
    }
}

/// One request in slot 0 of `queue`, waiting for its MSI-X interrupt (halted, in ring 0)
/// rather than polling. Ok(status) or Err(why).
fn request_by_interrupt(
    dev: &mut BlkDevice,
    queue: usize,
    request: Request,
) -> Result<u8, &'static str> {
    let q = dev.queue(queue);
    let Some(vector) = q.vq.vector else {
        return Err("the queue has no MSI-X vector");
    };
    q.vq.set_interrupts(true);
    // Interrupts raised while we polled with interrupts off (e.g. QEMU signals the first used
    // buffers even when suppressed) are pending: take them before counting.
    cpu::take_pending_interrupts();
    let before = interrupts::count(vector);
    if !q.submit(0, &request) {
        q.vq.set_interrupts(false);
        return Err("slot 0 refused the request");
    }
    q.kick();
    let interrupted = halt_until(IRQ_TIMEOUT_MS, || {
        interrupts::count(vector) != before && q.vq.has_used()
    });
    q.vq.set_interrupts(false);
    let interrupted = interrupted || interrupts::count(vector) != before;
    let completion = q.complete();
    match (interrupted, completion) {
        (true, Some(Completion::Done { status, .. })) => Ok(status),
        (true, None) => Err("interrupt arrived but no completion"),
        (_, Some(Completion::Bogus { .. })) => Err("bogus completion"),
        (false, Some(_)) => Err("completed without an interrupt within 5 s"),
        (false, None) => Err("neither interrupt nor completion within 5 s"),
    }
}

// --- Scenarios -----------------------------------------------------------------------------

fn info(devices: &mut BlkDevices) {
    if devices.count == 0 {
        console::error("blk: no usable virtio-blk device").end();
        return;
    }
    for dev in devices.list.iter().flatten() {
        let line = console::line("GUEST BLK dev=")
            .dec(dev.number as u64)
            .s(" pci=");
        dev.pci()
            .print(line)
            .s(" capacity=")
            .dec(dev.capacity)
            .s(" queues=")
            .dec(dev.queue_count as u64)
            .s(" features=")
            .hex(dev.transport.features)
            .end();
    }
    let Some(dev) = devices.list[0].as_mut() else {
        return;
    };
    let Some(buffer) = memory::dma_alloc_zeroed(4096, 4096) else {
        console::error("blk: no DMA memory for GET_ID").end();
        return;
    };
    let request = Request {
        op: Op::GetId,
        sector: 0,
        addr: buffer,
        len: ID_BYTES,
    };
    // Completion by interrupt where the queue has a vector, else polled.
    let (result, how) = if dev.queue(0).vq.vector.is_some() {
        (request_by_interrupt(dev, 0, request), "irq")
    } else {
        (single(dev, 0, request), "poll")
    };
    match result {
        Ok(S_OK) => {
            // SAFETY: the device wrote at most ID_BYTES into our buffer.
            let id = unsafe { memory_bytes(buffer, ID_BYTES as usize) };
            let len = id.iter().position(|&b| b == 0).unwrap_or(id.len());
            console::line("GUEST BLK ID ").ascii(&id[..len]).end();
            console::line("GUEST INFO blk GET_ID completion=")
                .s(how)
                .end();
        }
        Ok(status) => console::error("blk GET_ID status=")
            .dec(u64::from(status))
            .end(),
        Err(why) => console::error("blk GET_ID: ").s(why).end(),
    }
}

/// # Safety
/// `[addr, addr + len)` must be RAM we own and nobody writes while the slice lives.
unsafe fn memory_bytes(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len) }
}

fn pattern(dev: &mut BlkDevice, cmdline: &[u8]) {
    let Some(seed) = seed(cmdline) else {
        return;
    };
    if !usable(dev, true) {
        return;
    }
    let capacity = dev.capacity;
    let discard = dev.has(F_DISCARD);
    let write_zeroes = dev.has(F_WRITE_ZEROES);
    let Some(mut plan) = Sweep::new(dev, STALL_MS, false) else {
        return;
    };
    // (a) the whole disk must hold P(seed).
    let read = sweep(&mut plan, false, seed);
    if let Some(m) = read.first_mismatch {
        console::error("blk pattern mismatch sector=")
            .dec(m.sector)
            .s(" word=")
            .dec(m.word as u64)
            .s(" got=")
            .hex(m.got)
            .s(" want=")
            .hex(m.want)
            .end();
    }
    // (b) P(seed + 1) over the whole disk, flushed.
    let write = sweep(&mut plan, true, seed.wrapping_add(1));
    let dev = plan.dev;
    let flush_start = cpu::rdtsc();
    let mut failures = u64::from(!flush(dev));
    let write_ticks = write.ticks + (cpu::rdtsc() - flush_start);
    // (c) DISCARD [8, 16) and WRITE_ZEROES [16, 24), flushed.
    if capacity >= 24 {
        let ranges = [
            (Op::Discard, discard, 8, "GUEST BLK DISCARD "),
            (Op::WriteZeroes, write_zeroes, 16, "GUEST BLK WRITE_ZEROES "),
        ];
        for (op, offered, sector, label) in ranges {
            if !offered {
                console::line(label).s("unsupported").end();
                continue;
            }
            let request = Request {
                op,
                sector,
                addr: 0,
                len: (8 * SECTOR) as u32,
            };
            match single(dev, 0, request) {
                Ok(S_OK) => console::line(label).s("done").end(),
                Ok(status) => {
                    failures += 1;
                    console::error("blk io error op=")
                        .s(op.name())
                        .s(" queue=0 sector=")
                        .dec(sector)
                        .s(" sectors=8 status=")
                        .dec(u64::from(status))
                        .end();
                }
                Err(why) => {
                    failures += 1;
                    console::error("blk ").s(op.name()).s(": ").s(why).end();
                }
            }
        }
        failures += u64::from(!flush(dev));
    } else {
        console::error("blk: capacity ")
            .dec(capacity)
            .s(" is below 24 sectors: no DISCARD/WRITE_ZEROES step")
            .end();
        failures += 1;
    }
    let errors = read.errors() + write.errors() + failures;
    if errors == 0 {
        console::line("GUEST BLK PATTERN OK sectors=")
            .dec(capacity)
            .s(" read_mib_s=")
            .tenths(tsc::mib_s_tenths(read.bytes, read.ticks))
            .s(" write_mib_s=")
            .tenths(tsc::mib_s_tenths(write.bytes, write_ticks))
            .end();
    } else {
        console::error("blk pattern failed mismatched_sectors=")
            .dec(read.bad_sectors)
            .s(" io_errors=")
            .dec(read.io_errors + write.io_errors)
            .s(" other=")
            .dec(read.bogus + write.bogus + u64::from(read.stalled || write.stalled) + failures)
            .end();
    }
}

fn queues(dev: &mut BlkDevice) {
    if !usable(dev, false) {
        return;
    }
    let queue_count = dev.queue_count;
    let depth = (0..queue_count)
        .map(|q| dev.queue(q).slots())
        .min()
        .unwrap_or(0)
        .min(QUEUES_DEPTH);
    let total = queue_count as u64 * u64::from(depth);
    // 4 KiB reads of distinct ranges if the disk is big enough, else single sectors.
    let sectors_each = if dev.capacity >= total * 8 { 8 } else { 1 };
    let Some(buffers) = memory::dma_alloc(total * sectors_each * SECTOR, 4096) else {
        console::error("blk: no DMA memory for blk-queues").end();
        return;
    };
    let capacity = dev.capacity;
    let stall = tsc::from_ms(STALL_MS);
    let mut counts = [0u16; MAX_QUEUES];
    let mut errors = 0u64;
    let mut work = || {
        for q in 0..queue_count {
            for slot in 0..depth {
                let index = q as u64 * u64::from(depth) + u64::from(slot);
                let request = Request {
                    op: Op::Read,
                    sector: (index * sectors_each) % capacity,
                    addr: buffers + index * sectors_each * SECTOR,
                    len: (sectors_each * SECTOR) as u32,
                };
                if !dev.queue(q).submit(slot, &request) {
                    console::error("blk: queue ")
                        .dec(q as u64)
                        .s(" refused a read")
                        .end();
                    errors += 1;
                }
            }
        }
        for q in 0..queue_count {
            dev.queue(q).kick();
        }
        let mut last = cpu::rdtsc();
        loop {
            let mut outstanding = 0;
            for (q, count) in counts.iter_mut().enumerate().take(queue_count) {
                let queue: &mut BlkQueue = dev.queue(q);
                while let Some(completion) = queue.complete() {
                    last = cpu::rdtsc();
                    match completion {
                        Completion::Done { status: S_OK, .. } => *count += 1,
                        Completion::Done { slot, status } => {
                            errors += 1;
                            console::error("blk io error op=read queue=")
                                .dec(q as u64)
                                .s(" slot=")
                                .dec(u64::from(slot))
                                .s(" status=")
                                .dec(u64::from(status))
                                .end();
                        }
                        Completion::Bogus { id, .. } => {
                            errors += 1;
                            console::error("blk: queue ")
                                .dec(q as u64)
                                .s(" returned id=")
                                .dec(u64::from(id))
                                .s(" that was not submitted on it")
                                .end();
                        }
                    }
                }
                outstanding += u64::from(queue.inflight());
            }
            if outstanding == 0 {
                break;
            }
            if cpu::rdtsc() - last > stall {
                errors += 1;
                console::error("blk: no completion for 10 s, requests in flight=")
                    .dec(outstanding)
                    .end();
                break;
            }
        }
        0
    };
    if let Err(fault) = user::call(&mut work) {
        fault.report("blk", "blk-queues");
        return;
    }
    for (q, &count) in counts.iter().enumerate().take(queue_count) {
        if count != depth {
            errors += 1;
            console::error("blk: queue ")
                .dec(q as u64)
                .s(" completed ")
                .dec(u64::from(count))
                .s(" of ")
                .dec(u64::from(depth))
                .s(" reads")
                .end();
        }
    }
    if errors == 0 {
        console::line("GUEST BLK QUEUES OK queues=")
            .dec(queue_count as u64)
            .s(" requests=")
            .dec(total)
            .end();
    }
    // Then one request per queue completed by its MSI-X interrupt.
    let mut irq_ok = 0;
    for q in 0..queue_count {
        let request = Request {
            op: Op::Read,
            sector: 0,
            addr: buffers,
            len: SECTOR as u32,
        };
        match request_by_interrupt(dev, q, request) {
            Ok(S_OK) => irq_ok += 1,
            Ok(status) => console::error("blk io error op=read queue=")
                .dec(q as u64)
                .s(" status=")
                .dec(u64::from(status))
                .s(" (interrupt check)")
                .end(),
            Err(why) => console::error("blk irq queue=")
                .dec(q as u64)
                .s(": ")
                .s(why)
                .end(),
        }
    }
    if irq_ok == queue_count {
        console::line("GUEST BLK IRQ OK queues=")
            .dec(queue_count as u64)
            .end();
    }
}

fn resize(dev: &mut BlkDevice, cmdline: &[u8]) {
    let timeout_ms = param(cmdline, "timeout_ms", RESIZE_TIMEOUT_MS);
    let Some(vector) = dev.transport.config_vector else {
        console::error("blk: no MSI-X vector for configuration changes").end();
        return;
    };
    cpu::take_pending_interrupts();
    let before = interrupts::count(vector);
    console::line("GUEST BLK RESIZE WAIT capacity=")
        .dec(dev.capacity)
        .end();
    if !halt_until(timeout_ms, || interrupts::count(vector) != before) {
        console::error("blk: no configuration-change interrupt within ")
            .dec(timeout_ms)
            .s(" ms")
            .end();
        return;
    }
    let capacity = dev.read_capacity();
    console::line("GUEST BLK RESIZED capacity=")
        .dec(capacity)
        .s(" irq=config")
        .end();
}

struct BenchSpec {
    rw: &'static str,
    write: bool,
    random: bool,
    bs: u32,
    qd: u16,
}

const BENCHES: [BenchSpec; 6] = [
    BenchSpec {
        rw: "randread",
        write: false,
        random: true,
        bs: 4096,
        qd: 1,
    },
    BenchSpec {
        rw: "randread",
        write: false,
        random: true,
        bs: 4096,
        qd: 32,
    },
    BenchSpec {
        rw: "randwrite",
        write: true,
        random: true,
        bs: 4096,
        qd: 1,
    },
    BenchSpec {
        rw: "randwrite",
        write: true,
        random: true,
        bs: 4096,
        qd: 32,
    },
    BenchSpec {
        rw: "seqread",
        write: false,
        random: false,
        bs: 128 * 1024,
        qd: 8,
    },
    BenchSpec {
        rw: "seqwrite",
        write: true,
        random: false,
        bs: 128 * 1024,
        qd: 8,
    },
];

#[derive(Default)]
struct BenchResult {
    ios: u64,
    ticks: u64,
    errors: u64,
    stalled: bool,
}

/// One benchmark on queue 0 (ring 3): keeps `qd` requests of `bs` bytes in flight for
/// `duration` TSC ticks, then drains.
fn bench_run(
    q: &mut BlkQueue,
    capacity: u64,
    spec: &BenchSpec,
    buffers: u64,
    bs: u32,
    qd: u16,
    duration: u64,
) -> BenchResult {
    let mut result = BenchResult::default();
    let per_io = u64::from(bs) / SECTOR;
    let blocks = capacity / per_io;
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next_seq = 0u64;
    let mut offset = || {
        if spec.random {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % blocks) * per_io
        } else {
            let sector = next_seq;
            next_seq += per_io;
            if next_seq + per_io > capacity {
                next_seq = 0;
            }
            sector
        }
    };
    let op = if spec.write { Op::Write } else { Op::Read };
    let start = cpu::rdtsc();
    let deadline = start + duration;
    let stall = tsc::from_ms(STALL_MS);
    for slot in 0..qd {
        let request = Request {
            op,
            sector: offset(),
            addr: buffers + u64::from(slot) * u64::from(bs),
            len: bs,
        };
        q.submit(slot, &request);
    }
    q.kick();
    let mut last = start;
    loop {
        let mut resubmitted = false;
        while let Some(completion) = q.complete() {
            last = cpu::rdtsc();
            match completion {
                Completion::Done { slot, status } => {
                    result.ios += 1;
                    if status != S_OK {
                        result.errors += 1;
                    }
                    if last < deadline {
                        let request = Request {
                            op,
                            sector: offset(),
                            addr: buffers + u64::from(slot) * u64::from(bs),
                            len: bs,
                        };
                        resubmitted |= q.submit(slot, &request);
                    }
                }
                Completion::Bogus { .. } => result.errors += 1,
            }
        }
        if resubmitted {
            q.kick();
        }
        if q.inflight() == 0 {
            break;
        }
        if cpu::rdtsc() - last > stall {
            result.stalled = true;
            break;
        }
    }
    result.ticks = cpu::rdtsc() - start;
    result
}

fn bench(dev: &mut BlkDevice, cmdline: &[u8]) {
    if !usable(dev, true) {
        return;
    }
    let bench_ms = param(cmdline, "bench_ms", DEFAULT_BENCH_MS).max(1);
    let capacity = dev.capacity;
    let max_request = dev.max_request;
    let slots = dev.queue(0).slots();
    let Some(buffers) = memory::dma_alloc(2 << 20, 4096) else {
        console::error("blk: no DMA memory for blk-bench").end();
        return;
    };
    for spec in &BENCHES {
        let bs = spec.bs.min(max_request);
        let qd = spec.qd.min(slots);
        if capacity < u64::from(bs) / SECTOR || u64::from(bs) * u64::from(qd) > 2 << 20 {
            console::error("blk-bench: disk too small for rw=")
                .s(spec.rw)
                .end();
            continue;
        }
        let q = dev.queue(0);
        let mut result = BenchResult::default();
        let duration = tsc::from_ms(bench_ms);
        let mut work = || {
            result = bench_run(q, capacity, spec, buffers, bs, qd, duration);
            0
        };
        if let Err(fault) = user::call(&mut work) {
            fault.report("blk", "blk-bench");
            return;
        }
        if result.errors != 0 || result.stalled {
            console::error("blk-bench rw=")
                .s(spec.rw)
                .s(" errors=")
                .dec(result.errors)
                .s(if result.stalled { " stalled" } else { "" })
                .end();
            if result.stalled {
                return;
            }
        }
        console::line("GUEST BENCH rw=")
            .s(spec.rw)
            .s(" bs=")
            .dec(u64::from(bs))
            .s(" qd=")
            .dec(u64::from(qd))
            .s(" iops=")
            .dec(tsc::per_second(result.ios, result.ticks))
            .s(" mib_s=")
            .tenths(tsc::mib_s_tenths(result.ios * u64::from(bs), result.ticks))
            .end();
    }
}

fn verify_loop(dev: &mut BlkDevice, cmdline: &[u8]) {
    let Some(seed) = seed(cmdline) else {
        return;
    };
    if !usable(dev, true) {
        return;
    }
    let rounds = param(cmdline, "rounds", 0);
    let stall_ms = param(cmdline, "stall_ms", DEFAULT_VERIFY_STALL_MS).max(1);
    let Some(mut plan) = Sweep::new(dev, stall_ms, true) else {
        return;
    };
    let mut total_errors = 0;
    let mut round = 1;
    loop {
        plan.round = Some(round);
        let pattern = seed.wrapping_add(round);
        let write = sweep(&mut plan, true, pattern);
        let flushed = flush(plan.dev);
        let read = sweep(&mut plan, false, pattern);
        let errors = write.errors() + read.errors() + u64::from(!flushed);
        total_errors += errors;
        if errors == 0 {
            console::line("GUEST BLK ROUND ")
                .dec(round)
                .s(" OK errors=0")
                .end();
        } else {
            console::line("GUEST BLK ROUND ")
                .dec(round)
                .s(" FAILED errors=")
                .dec(errors)
                .end();
        }
        if rounds != 0 && round >= rounds {
            break;
        }
        round += 1;
    }
    console::line("GUEST BLK VERIFY DONE rounds=")
        .dec(round)
        .s(" errors=")
        .dec(total_errors)
        .end();
}
