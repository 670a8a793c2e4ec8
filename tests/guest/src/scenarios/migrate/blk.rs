//! `mig-blk=1`: block I/O that goes on while the pages are dirtied, one request at a time on
//! queue 0 of virtio-blk device 0, never waited for: the dirtying loop calls [`BlkLoad::poll`]
//! between pages. The disk's first `REGION_SECTORS` (or all of a smaller disk) are cut into
//! chunks; pass k over the region does, per chunk, (1) read it and check it still holds what
//! pass k - 1 wrote (from pass 1 on), (2) write P(seed + k), the block scenarios' pattern
//! (blk/pattern.rs), (3) read it back and check it. So a write lost or left stale by a
//! migration (or a backend) is caught, at the latest one pass later. Ring 3, except `new`.

use super::super::blk::pattern;
use crate::arch::{cpu, memory, tsc};
use crate::console;
use crate::drivers::virtio_blk::queue::{Completion, Op, Request};
use crate::drivers::virtio_blk::spec::{F_RO, SECTOR, S_OK};
use crate::drivers::virtio_blk::BlkDevice;

const REGION_SECTORS: u64 = 2048;
const CHUNK_SECTORS: u64 = 64;
/// Pause between two chunks (3 requests each), so the disk traffic stays light next to the
/// memory traffic.
const GAP_MS: u64 = 1;
/// A request outstanding this long is an error (a migration's downtime is far shorter).
const STALL_MS: u64 = 30_000;
const REPORT_MS: u64 = 1000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Reading the chunk to check the previous pass's data.
    ReadOld,
    Write,
    /// Reading back what this pass wrote.
    ReadBack,
}

pub struct BlkLoad<'a> {
    dev: &'a mut BlkDevice,
    buffer: u64,
    chunk_sectors: u64,
    chunks: u64,
    seed: u64,
    chunk: u64,
    pass: u64,
    step: Step,
    /// TSC at submission of the request in flight.
    in_flight: Option<u64>,
    next_at: u64,
    /// Chunks written and read back intact.
    pub verified: u64,
    reported: u64,
    last_report: u64,
}

impl<'a> BlkLoad<'a> {
    /// Checks device 0 and takes its buffer from the DMA pool (ring 0). None after an error
    /// line.
    pub fn new(dev: &'a mut BlkDevice, seed: u64) -> Option<BlkLoad<'a>> {
        if dev.has(F_RO) {
            console::error("mig blk: device 0 is read-only (VIRTIO_BLK_F_RO)").end();
            return None;
        }
        let chunk_sectors = CHUNK_SECTORS
            .min(u64::from(dev.max_request) / SECTOR)
            .min(dev.capacity);
        if chunk_sectors == 0 {
            console::error("mig blk: device 0 has capacity ")
                .dec(dev.capacity)
                .s(" and requests of at most ")
                .dec(u64::from(dev.max_request))
                .s(" bytes")
                .end();
            return None;
        }
        let Some(buffer) = memory::dma_alloc(chunk_sectors * SECTOR, 4096) else {
            console::error("mig blk: DMA pool exhausted").end();
            return None;
        };
        let chunks = REGION_SECTORS.min(dev.capacity) / chunk_sectors;
        let now = cpu::rdtsc();
        Some(BlkLoad {
            dev,
            buffer,
            chunk_sectors,
            chunks,
            seed,
            chunk: 0,
            pass: 0,
            step: Step::Write,
            in_flight: None,
            next_at: now,
            verified: 0,
            reported: 0,
            last_report: now,
        })
    }

    /// Sectors the load cycles over.
    pub fn region_sectors(&self) -> u64 {
        self.chunks * self.chunk_sectors
    }

    fn first_sector(&self) -> u64 {
        self.chunk * self.chunk_sectors
    }

    fn pattern_seed(&self, pass: u64) -> u64 {
        self.seed.wrapping_add(pass)
    }

    fn request(&self) -> Request {
        Request {
            op: if self.step == Step::Write {
                Op::Write
            } else {
                Op::Read
            },
            sector: self.first_sector(),
            addr: self.buffer,
            len: (self.chunk_sectors * SECTOR) as u32,
        }
    }

    /// Moves the load on: submits the next request when none is in flight (and the gap has
    /// passed), or reaps and checks the one in flight. Err after an error line.
    pub fn poll(&mut self) -> Result<(), ()> {
        let now = cpu::rdtsc();
        if now.wrapping_sub(self.last_report) > tsc::from_ms(REPORT_MS)
            && self.verified != self.reported
        {
            console::line("GUEST MIG blk ")
                .dec(self.verified)
                .s(" ok pass=")
                .dec(self.pass)
                .end();
            self.reported = self.verified;
            self.last_report = now;
        }
        let Some(submitted) = self.in_flight else {
            if now < self.next_at {
                return Ok(());
            }
            let request = self.request();
            if request.op == Op::Write {
                pattern::fill(
                    self.buffer,
                    request.sector,
                    self.chunk_sectors,
                    self.pattern_seed(self.pass),
                );
            }
            let queue = self.dev.queue(0);
            if !queue.submit(0, &request) {
                console::error("mig blk: queue 0 refused a request in slot 0").end();
                return Err(());
            }
            queue.kick();
            self.in_flight = Some(cpu::rdtsc());
            return Ok(());
        };
        let status = match self.dev.queue(0).complete() {
            None if now.wrapping_sub(submitted) > tsc::from_ms(STALL_MS) => {
                self.error("no completion within 30000 ms for").end();
                return Err(());
            }
            None => return Ok(()),
            Some(Completion::Bogus { id, len }) => {
                console::error("mig blk: bogus completion id=")
                    .dec(u64::from(id))
                    .s(" len=")
                    .dec(u64::from(len))
                    .end();
                return Err(());
            }
            Some(Completion::Done { status, .. }) => status,
        };
        self.in_flight = None;
        if status != S_OK {
            self.error("io error")
                .s(" status=")
                .dec(u64::from(status))
                .end();
            return Err(());
        }
        match self.step {
            Step::ReadOld => {
                self.check(self.pass - 1, "old")?;
                self.step = Step::Write;
            }
            Step::Write => self.step = Step::ReadBack,
            Step::ReadBack => {
                self.check(self.pass, "back")?;
                self.verified += 1;
                self.chunk += 1;
                if self.chunk == self.chunks {
                    self.chunk = 0;
                    self.pass += 1;
                }
                self.step = if self.pass == 0 {
                    Step::Write
                } else {
                    Step::ReadOld
                };
                self.next_at = cpu::rdtsc() + tsc::from_ms(GAP_MS);
            }
        }
        Ok(())
    }

    /// `GUEST ERROR mig blk <what> op=read|write sector=N sectors=K pass=P`, to be ended.
    fn error(&self, what: &str) -> console::Line {
        let request = self.request();
        console::error("mig blk ")
            .s(what)
            .s(" op=")
            .s(request.op.name())
            .s(" sector=")
            .dec(request.sector)
            .s(" sectors=")
            .dec(self.chunk_sectors)
            .s(" pass=")
            .dec(self.pass)
    }

    /// Checks the buffer just read against what pass `pass` wrote.
    fn check(&self, pass: u64, read: &str) -> Result<(), ()> {
        let first = self.first_sector();
        let (bad, first_mismatch) = pattern::check(
            self.buffer,
            first,
            self.chunk_sectors,
            self.pattern_seed(pass),
        );
        match first_mismatch {
            None => Ok(()),
            Some(m) => {
                m.print(console::error("mig blk mismatch read=").s(read))
                    .s(" pass=")
                    .dec(pass)
                    .s(" bad_sectors=")
                    .dec(bad)
                    .end();
                Err(())
            }
        }
    }
}
