//! The source's side: the header and the destination's verdict, then passes over guest
//! RAM (the first over every page, the next ones over what the dirty log marks), each
//! page sent whole, as part of a zero run, as an XBZRLE delta or deflated (`compress`);
//! then the device state, the end mark, and the destination's answer. The gateway paces
//! the passes: each
//! `send` works for a bounded time, so the gateway can report progress, change the
//! bandwidth and cancel between calls.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::time::{Duration, Instant};

use ipc::{MigratedDisks, OutgoingStart, PageLog, PassReport};

pub use crate::channel::Labelled;
use crate::channel::STALL_TIMEOUT;
use crate::compress::{CompressError, Deflater};
use crate::disks::records;
use crate::disks::source::{DiskError, DiskSender};
use crate::pacer::Pacer;
use crate::postcopy::pages::PageSet;
use crate::postcopy::source::{PostcopySource, Sending};
use crate::ram::{is_zero, GuestRam};
use crate::stream::{self, StreamError, MAX_PAGES_PER_RECORD, MAX_ZERO_RUN, PAGE};
use crate::xbzrle::{Encoded, Xbzrle};

/// How long the destination has to check the header, and to start the VM at the end.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Pages looked at between checks of the time budget.
const BUDGET_STRIDE: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum OutgoingError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The connection's own failures say where (`Labelled`).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    State(&'static str),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Compress(#[from] CompressError),
}

/// Where the current pass is.
enum Cursor {
    /// The first pass: every page of these ranges, in order (holes of the memfd are
    /// known zero).
    First {
        segments: Vec<(Range<u64>, bool)>,
        index: usize,
        at: u64,
    },
    /// A later pass: the dirty log's words from `word` on.
    Dirty {
        word: usize,
    },
    Done,
}

pub struct Outgoing {
    ram: GuestRam,
    log: PageLog,
    out: BufWriter<Labelled>,
    /// The destination's answers (two-way channels only).
    answers: Option<File>,
    pass: u32,
    cursor: Cursor,
    pacer: Pacer,
    xbzrle: Option<Xbzrle>,
    /// compress: the workers that deflate pages. With xbzrle too, only the first pass
    /// is deflated, xbzrle takes the later ones (QEMU 7.2's choice: compression for the
    /// bulk, deltas for what the guest rewrites).
    deflater: Option<Deflater>,
    /// Block migration: the disks whose content goes too (`crate::disks`).
    disks: Option<DiskSender>,
    /// The destination was told postcopy may follow (the ADVISE record).
    postcopy: bool,
}

impl Outgoing {
    /// Sends the header and, on a two-way channel, waits for the destination to accept
    /// the machine's shape.
    pub fn start(
        ram: GuestRam,
        log: PageLog,
        channel: File,
        two_way: bool,
        start: &OutgoingStart,
    ) -> Result<Outgoing, OutgoingError> {
        let answers = match two_way {
            true => Some(channel.try_clone()?),
            false => None,
        };
        let what = match two_way {
            true => "socket",
            false => "the migration stream",
        };
        set_timeout(&channel, libc::SO_SNDTIMEO, STALL_TIMEOUT);
        set_tcp_user_timeout(&channel, STALL_TIMEOUT);
        let mut out = BufWriter::with_capacity(1 << 20, Labelled::new(channel, what));
        if start.postcopy && answers.is_none() {
            return Err(OutgoingError::State(
                "postcopy needs the destination's requests: a two-way channel (tcp:, unix:, \
                 or fd: of a socket)",
            ));
        }
        stream::write_header(&mut out, &start.shape)?;
        out.flush()?;
        if let Some(a) = &answers {
            set_timeout(a, libc::SO_RCVTIMEO, ANSWER_TIMEOUT);
            let mut a = a;
            stream::read_verdict(&mut a)?;
        }
        if start.postcopy {
            // The destination must be ready for it now, not at the switch: it answers
            // as it answered the header.
            stream::write_advise(&mut out)?;
            out.flush()?;
            if let Some(a) = &answers {
                let mut a = a;
                stream::read_verdict(&mut a)?;
            }
        }
        Ok(Outgoing {
            ram,
            log,
            out,
            answers,
            pass: 0,
            cursor: Cursor::Done,
            pacer: Pacer::new(0),
            xbzrle: start.xbzrle_cache.map(Xbzrle::new),
            deflater: start.compress.as_ref().map(Deflater::start).transpose()?,
            disks: None,
            postcopy: start.postcopy,
        })
    }

    /// Block migration, before the first pass: the DISKS record goes and, on a two-way
    /// channel, the destination's answer (its disks checked and made writable) comes
    /// back; from then on each pass sends the disks before the pages.
    pub fn add_disks(
        &mut self,
        disks: &MigratedDisks,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<(), OutgoingError> {
        if self.pass > 0 || !matches!(self.cursor, Cursor::Done) || self.disks.is_some() {
            return Err(OutgoingError::State("the disks come before the first pass"));
        }
        let sender = DiskSender::new(disks, fds)?;
        records::write_disks(&mut self.out, disks)?;
        self.out.flush()?;
        if let Some(a) = &self.answers {
            let mut a = a;
            stream::read_verdict(&mut a)?;
        }
        self.disks = Some(sender);
        Ok(())
    }

    /// Sends pages for at most `budget`: the first pass (`first`) or the next dirty pass
    /// (started when the previous one is done).
    pub fn send(
        &mut self,
        first: bool,
        budget: Duration,
        max_bandwidth: u64,
    ) -> Result<PassReport, OutgoingError> {
        self.pacer.set_limit(max_bandwidth);
        if matches!(self.cursor, Cursor::Done) {
            self.cursor = if first {
                Cursor::First {
                    segments: self.first_pass_segments()?,
                    index: 0,
                    at: 0,
                }
            } else {
                Cursor::Dirty { word: 0 }
            };
            if let Some(d) = &mut self.disks {
                d.start_pass(first)?;
            }
        }
        let deadline = Instant::now() + budget;
        let mut report = PassReport::default();
        loop {
            // A pass's disks go before its pages.
            if let Some(d) = self.disks.as_mut().filter(|d| d.busy()) {
                d.step(&mut self.out, &mut report, &mut self.pacer)?;
                if Instant::now() >= deadline {
                    break;
                }
                continue;
            }
            let more = match &mut self.cursor {
                Cursor::First { .. } => self.first_step(&mut report)?,
                Cursor::Dirty { .. } => self.dirty_step(&mut report)?,
                Cursor::Done => false,
            };
            if !more {
                // The pass's pages all go before its end.
                self.write_deflated(&mut report)?;
                report.bytes += stream::write_pass_end(&mut self.out, self.pass)? as u64;
                self.pass += 1;
                self.cursor = Cursor::Done;
                break;
            }
            // Out of time, but only with pages left to send: the gateway takes
            // `remaining_pages` 0 for the pass's end, so a pass with nothing left ahead
            // of its cursor is walked to its end now (the rest of the log is clear, which
            // takes no time). Otherwise the next call, after the gateway's sync, would go
            // on from here and miss what the sync marked behind the cursor.
            if Instant::now() >= deadline && self.remaining() > 0 {
                break;
            }
        }
        // Nothing stays with the workers between calls: what the call sent is on the wire.
        self.write_deflated(&mut report)?;
        self.out.flush()?;
        // 0 exactly when the pass is complete: pages are only added to the log meanwhile.
        report.remaining_pages = self.remaining();
        if let Some(d) = &self.disks {
            d.report(&mut report)?;
        }
        if let Some(x) = &mut self.xbzrle {
            x.take_counters(&mut report);
        }
        Ok(report)
    }

    /// Every page of guest RAM as segments, marked with whether they may hold data.
    fn first_pass_segments(&self) -> Result<Vec<(Range<u64>, bool)>, OutgoingError> {
        let data = self.ram.data_pages()?;
        let mut segments = Vec::new();
        let mut pages = self.ram.page_numbers().peekable();
        // Walk the windows' pages as runs, split by the data ranges.
        while let Some(start) = pages.next() {
            let mut end = start + 1;
            while pages.peek() == Some(&end) {
                pages.next();
                end += 1;
            }
            let mut at = start;
            for d in data.iter().filter(|d| d.start < end && d.end > start) {
                let (s, e) = (d.start.max(start), d.end.min(end));
                if at < s {
                    segments.push((at..s, false));
                }
                segments.push((s..e, true));
                at = e;
            }
            if at < end {
                segments.push((at..end, false));
            }
        }
        Ok(segments)
    }

    /// Sends up to BUDGET_STRIDE pages of the first pass; false once it is complete.
    fn first_step(&mut self, report: &mut PassReport) -> Result<bool, OutgoingError> {
        let Cursor::First {
            segments,
            index,
            at,
        } = &mut self.cursor
        else {
            return Ok(false);
        };
        let Some((range, data)) = segments.get(*index).cloned() else {
            return Ok(false);
        };
        let from = range.start + *at;
        let count = (range.end - from).min(if data {
            BUDGET_STRIDE
        } else {
            u64::from(MAX_ZERO_RUN)
        });
        *at += count;
        if range.start + *at >= range.end {
            *index += 1;
            *at = 0;
        }
        if data {
            self.send_run(from, count, report)?;
        } else {
            report.bytes += stream::write_zero(&mut self.out, from, count as u32)? as u64;
            report.zero_pages += count;
        }
        Ok(true)
    }

    /// Sends the pages of up to BUDGET_STRIDE / 64 words of the dirty log; false once
    /// the log has been walked to its end.
    fn dirty_step(&mut self, report: &mut PassReport) -> Result<bool, OutgoingError> {
        let Cursor::Dirty { word } = &mut self.cursor else {
            return Ok(false);
        };
        let end = (*word + (BUDGET_STRIDE / 64) as usize).min(self.log.word_count());
        let start = *word;
        *word = end;
        for w in start..end {
            let mut bits = self.log.take_word(w);
            while bits != 0 {
                let first_bit = bits.trailing_zeros() as u64;
                let run = (bits >> first_bit).trailing_ones() as u64;
                let first = w as u64 * 64 + first_bit;
                bits &= !(((1u128 << run) - 1) as u64) << first_bit;
                // Pages of the log outside guest RAM (the MMIO gap) have nothing to
                // send; a run may also end a window.
                let mut page = first;
                while page < first + run {
                    let in_window = self.ram.run_in_window(page).min(first + run - page);
                    if in_window == 0 {
                        page += 1;
                        continue;
                    }
                    self.send_run(page, in_window, report)?;
                    page += in_window;
                }
            }
        }
        Ok(end < self.log.word_count())
    }

    /// Sends `count` pages from `first` (all in one window), zero pages as zero runs.
    fn send_run(
        &mut self,
        first: u64,
        count: u64,
        report: &mut PassReport,
    ) -> Result<(), OutgoingError> {
        let mut page = first;
        let end = first + count;
        while page < end {
            let zero = self.ram.page(page).is_some_and(is_zero);
            let mut n = 1;
            while page + n < end
                && n < u64::from(MAX_PAGES_PER_RECORD)
                && self.ram.page(page + n).is_some_and(is_zero) == zero
            {
                n += 1;
            }
            let bytes = if zero {
                report.zero_pages += n;
                if let Some(x) = &mut self.xbzrle {
                    x.forget(page, n);
                }
                let mut bytes = 0;
                if let Some(d) = &mut self.deflater {
                    bytes += d.settle(page, n, &mut self.out, report)?;
                }
                bytes + stream::write_zero(&mut self.out, page, n as u32)?
            } else {
                self.send_data(page, n, report)?
            };
            report.bytes += bytes as u64;
            self.pacer.sent(bytes as u64);
            page += n;
        }
        Ok(())
    }

    /// Non-zero pages: whole, or (XBZRLE) each as a delta from the cached copy where
    /// that is smaller, whole (the cached copy) otherwise, not at all if unchanged, or
    /// (compress) each deflated by the workers.
    fn send_data(
        &mut self,
        first: u64,
        count: u64,
        report: &mut PassReport,
    ) -> Result<usize, OutgoingError> {
        let data = self
            .ram
            .pages(first, count as usize)
            .ok_or(OutgoingError::State("a run of pages outside guest RAM"))?;
        let mut bytes = 0;
        if let Some(d) = &mut self.deflater {
            if self.xbzrle.is_none() || self.pass == 0 {
                for (i, content) in data.chunks_exact(PAGE).enumerate() {
                    bytes += d.send(first + i as u64, content, &mut self.out, report)?;
                }
                return Ok(bytes);
            }
            bytes += d.settle(first, count, &mut self.out, report)?;
        }
        let Some(x) = &mut self.xbzrle else {
            report.normal_pages += count;
            return Ok(bytes + stream::write_pages(&mut self.out, first, data)?);
        };
        for (i, content) in data.chunks_exact(PAGE).enumerate() {
            let page = first + i as u64;
            bytes += match x.encode(page, content) {
                Encoded::Unchanged => 0,
                Encoded::Delta(delta) => stream::write_xbzrle(&mut self.out, page, delta)?,
                Encoded::Whole(copy) => {
                    report.normal_pages += 1;
                    stream::write_pages(&mut self.out, page, copy)?
                }
            };
        }
        Ok(bytes)
    }

    /// Writes what the workers still hold, counted and paced as the pages are.
    fn write_deflated(&mut self, report: &mut PassReport) -> Result<(), OutgoingError> {
        if let Some(d) = &mut self.deflater {
            let bytes = d.finish(&mut self.out, report)? as u64;
            report.bytes += bytes;
            self.pacer.sent(bytes);
        }
        Ok(())
    }

    /// Pages of the current pass not sent yet.
    fn remaining(&self) -> u64 {
        match &self.cursor {
            Cursor::First {
                segments,
                index,
                at,
            } => segments
                .iter()
                .skip(*index)
                .map(|(r, _)| r.end - r.start)
                .sum::<u64>()
                .saturating_sub(*at),
            Cursor::Dirty { word } => self.log.count_from(*word),
            Cursor::Done => 0,
        }
    }

    /// The device state and the end mark; on a two-way channel, the destination's
    /// answer (its VM runs, or why not).
    pub fn finish(&mut self, state: &[u8], running: bool) -> Result<u64, OutgoingError> {
        if !matches!(self.cursor, Cursor::Done) {
            return Err(OutgoingError::State("a pass is still under way"));
        }
        let mut bytes = stream::write_state(&mut self.out, running, state)? as u64;
        bytes += stream::write_end(&mut self.out)? as u64;
        self.out.flush()?;
        if let Some(a) = &self.answers {
            let mut a = a;
            stream::read_outcome(&mut a)?;
        }
        Ok(bytes)
    }
}

impl Outgoing {
    /// The switch to postcopy (the VM stopped, the dirty log synced): the disks' last
    /// writes go (block migration), then LISTEN, the pages the destination must drop
    /// (this pass's unsent ones and every one the log marks) as DISCARD runs, and the
    /// state; from then on those pages go from a thread of their own
    /// (`crate::postcopy::source`), at most `max_bandwidth` bytes per second (0:
    /// unlimited).
    pub fn into_postcopy(
        mut self,
        state: &[u8],
        running: bool,
        max_bandwidth: u64,
    ) -> Result<PostcopySource, OutgoingError> {
        if !self.postcopy {
            return Err(OutgoingError::State(
                "postcopy-ram was not on when the migration started",
            ));
        }
        let Some(answers) = self.answers.take() else {
            return Err(OutgoingError::State("postcopy needs a two-way channel"));
        };
        let mut report = PassReport::default();
        self.write_deflated(&mut report)?;
        if let Some(d) = &mut self.disks {
            // What the guest wrote to its disks goes now, with the VM stopped, as at a
            // precopy's end: the destination's disks are complete before it runs.
            let mut pacer = Pacer::new(0);
            while d.busy() {
                d.step(&mut self.out, &mut report, &mut pacer)?;
            }
            d.start_pass(false)?;
            while d.busy() {
                d.step(&mut self.out, &mut report, &mut pacer)?;
            }
        }
        let end = self
            .ram
            .page_numbers()
            .max()
            .map_or(0, |p| p + 1)
            .max(self.log.word_count() as u64 * 64);
        let mut pending = PageSet::new(end);
        // Pending pages that are holes of the memfd (never written): they go as zero
        // runs without being read (a read would allocate them here).
        let mut holes = PageSet::new(end);
        if self.pass == 0 && matches!(self.cursor, Cursor::Done) {
            // Switched before the first pass began: every page is still to send.
            self.cursor = Cursor::First {
                segments: self.first_pass_segments()?,
                index: 0,
                at: 0,
            };
        }
        if let Cursor::First {
            segments,
            index,
            at,
        } = &self.cursor
        {
            for (i, (range, data)) in segments.iter().enumerate().skip(*index) {
                let from = if i == *index {
                    range.start + at
                } else {
                    range.start
                };
                (from..range.end).for_each(|p| {
                    pending.insert(p);
                    if !data {
                        holes.insert(p);
                    }
                });
            }
        }
        for w in 0..self.log.word_count() {
            let mut bits = self.log.take_word(w);
            while bits != 0 {
                let page = w as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                if self.ram.run_in_window(page) > 0 {
                    pending.insert(page);
                    // Written since the pass began: no longer known to be a hole.
                    holes.remove(page);
                }
            }
        }
        stream::write_listen(&mut self.out)?;
        for (first, count) in pending.runs(u64::from(MAX_ZERO_RUN)) {
            stream::write_discard(&mut self.out, first, count as u32)?;
        }
        stream::write_state(&mut self.out, running, state)?;
        self.out.flush()?;
        self.cursor = Cursor::Done;
        let sending = Sending {
            ram: self.ram,
            out: self.out,
            pending,
            holes,
            pacer: Pacer::new(max_bandwidth),
        };
        Ok(PostcopySource::start(sending, answers)?)
    }
}

/// How long sent data may stay unacknowledged (a zero window included) before a TCP
/// connection fails with ETIMEDOUT: a send timeout alone lets a peer that never reads
/// hold the writes for longer, as the buffers keep taking a little.
fn set_tcp_user_timeout(f: &File, timeout: Duration) {
    let ms = libc::c_uint::try_from(timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: setsockopt with a c_uint on a descriptor we hold; on a Unix socket or a
    // pipe it fails, which leaves the send timeout alone.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(f),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
}

/// SO_RCVTIMEO or SO_SNDTIMEO.
fn set_timeout(f: &File, option: libc::c_int, timeout: Duration) {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a timeval on a descriptor we hold; on a pipe it fails
    // with ENOTSOCK, which leaves the call without a timeout (the gateway's own timeout
    // still applies).
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(f),
            libc::SOL_SOCKET,
            option,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Read};
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::FileExt;
    use std::os::unix::net::UnixStream;

    use crate::testing::noise;
    use ipc::{shm, AgentEvent, Channel, CompressParams, MachineShape, RamWindow};

    use super::*;
    use crate::stream::Record;

    const PAGES: u64 = 4096;

    /// An outgoing migration of PAGES pages over a one-way socket, its RAM file, a second
    /// mapping of its dirty log, and the socket's other end.
    fn outgoing() -> (Outgoing, File, PageLog, UnixStream) {
        outgoing_with(None, None)
    }

    /// The same with xbzrle's cache or compress.
    fn outgoing_with(
        xbzrle_cache: Option<u64>,
        compress: Option<CompressParams>,
    ) -> (Outgoing, File, PageLog, UnixStream) {
        let size = PAGES * PAGE as u64;
        let memfd = shm::memfd(c"ram", size, false).unwrap();
        let ram_file = File::from(memfd.try_clone().unwrap());
        let windows = vec![RamWindow {
            guest_addr: 0,
            size,
            file_offset: 0,
            file: 0,
        }];
        let ram = GuestRam::map(vec![memfd], &windows, false).unwrap();
        let log = PageLog::create(size).unwrap();
        let marks = PageLog::from_fd(log.fd().try_clone_to_owned().unwrap(), log.len()).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let start = OutgoingStart {
            channel: Channel::OneWay,
            windows,
            log_len: log.len(),
            shape: MachineShape {
                memory: size,
                vcpus: 1,
                disks: vec![],
                nics: vec![],
                dimms: vec![],
            },
            xbzrle_cache,
            compress,
            postcopy: false,
        };
        let channel = File::from(OwnedFd::from(ours));
        let out = Outgoing::start(ram, log, channel, false, &start).unwrap();
        (out, ram_file, marks, theirs)
    }

    /// The records the stream holds up to its end, page data skipped.
    fn records(theirs: UnixStream) -> Vec<Record> {
        let mut input = BufReader::new(theirs);
        stream::read_header(&mut input).unwrap();
        let mut out = Vec::new();
        while let Ok(record) = stream::read_record(&mut input) {
            if let Record::Pages { count, .. } = record {
                let mut data = vec![0u8; count as usize * PAGE];
                input.read_exact(&mut data).unwrap();
            }
            out.push(record);
        }
        out
    }

    #[test]
    fn a_pass_reported_complete_is_complete() {
        let (mut out, ram, marks, theirs) = outgoing();
        for page in [3u64, 5] {
            ram.write_all_at(&[7; PAGE], page * PAGE as u64).unwrap();
        }
        let page = |p: u64| (p * PAGE as u64, (p + 1) * PAGE as u64);
        // A pass whose only dirty page lies in its first steps, with no time to spare:
        // once nothing is left ahead it says it is complete, and it is.
        marks.mark_range(page(5).0, page(5).1);
        let report = out.send(false, Duration::ZERO, 0).unwrap();
        assert_eq!((report.remaining_pages, report.normal_pages), (0, 1));
        // The next sync marks a page behind where the first steps ended: the next pass
        // starts from the beginning and sends it.
        marks.mark_range(page(3).0, page(3).1);
        let mut report = out.send(false, Duration::ZERO, 0).unwrap();
        while report.remaining_pages > 0 {
            report = out.send(false, Duration::ZERO, 0).unwrap();
        }
        drop(out);
        assert_eq!(
            records(theirs),
            [
                Record::Pages { first: 5, count: 1 },
                Record::PassEnd(0),
                Record::Pages { first: 3, count: 1 },
                Record::PassEnd(1),
            ]
        );
    }

    /// A page that deflates well (a motif, its number and `round`).
    fn motif(page: u64, round: u8) -> Vec<u8> {
        let mut p: Vec<u8> = b"pages of a guest "
            .iter()
            .cycle()
            .take(PAGE)
            .copied()
            .collect();
        p[..9].copy_from_slice(&[&page.to_le_bytes()[..], &[round]].concat());
        p
    }

    /// A source with compress on (and xbzrle, if `xbzrle`) sends three passes to a
    /// receiver: pages that deflate, pages that do not, zero pages and holes, some
    /// rewritten between the passes (deflated, then zero, then deflated again). The
    /// destination's RAM ends as the source's; the passes' reports.
    fn compressed_migration(xbzrle: bool) -> Vec<PassReport> {
        let compress = CompressParams {
            level: 1,
            threads: 2,
            wait_thread: true,
        };
        let cache = xbzrle.then_some(PAGES * PAGE as u64);
        let (mut out, ram, marks, theirs) = outgoing_with(cache, Some(compress));
        let size = PAGES * PAGE as u64;
        let dst_fd = shm::memfd(c"dst", size, false).unwrap();
        let dst_file = File::from(dst_fd.try_clone().unwrap());
        let windows = [RamWindow {
            guest_addr: 0,
            size,
            file_offset: 0,
            file: 0,
        }];
        let receiver = crate::incoming::Receiver {
            ram: GuestRam::map(vec![dst_fd], &windows, true).unwrap(),
            shape: MachineShape {
                memory: size,
                vcpus: 1,
                disks: vec![],
                nics: vec![],
                dimms: vec![],
            },
            answer: crate::incoming::Answer::default(),
            page_end: PAGES,
            disks: crate::disks::sink::DiskSinks::new(Default::default()),
            decompress_threads: 3,
            faults: Default::default(),
        };
        let receiving = std::thread::spawn(move || {
            let state = std::sync::Mutex::new(None);
            let result = receiver.run(Channel::OneWay, OwnedFd::from(theirs), |e| {
                if let AgentEvent::StateArrived { state: s, .. } = e {
                    *state.lock().unwrap() = Some(s);
                }
            });
            (
                result.map_err(|e| e.to_string()),
                state.into_inner().unwrap(),
            )
        });
        let write = |page: u64, content: &[u8]| ram.write_all_at(content, page * PAGE as u64);
        for page in 0..PAGES / 2 {
            match page % 3 {
                0 => write(page, &motif(page, 0)).unwrap(),
                1 => write(page, &noise(page)).unwrap(),
                _ => write(page, &[0; PAGE]).unwrap(),
            }
        }
        let mut reports = Vec::new();
        let mut pass = |out: &mut Outgoing, first: bool| {
            let mut total = PassReport::default();
            loop {
                let r = out.send(first, Duration::from_millis(5), 0).unwrap();
                total.bytes += r.bytes;
                total.normal_pages += r.normal_pages;
                total.zero_pages += r.zero_pages;
                total.compressed_pages += r.compressed_pages;
                total.compressed_bytes += r.compressed_bytes;
                total.xbzrle_pages += r.xbzrle_pages;
                if r.remaining_pages == 0 {
                    reports.push(total);
                    return;
                }
            }
        };
        pass(&mut out, true);
        let rewrite = |page: u64, content: &[u8]| {
            write(page, content).unwrap();
            marks.mark_range(page * PAGE as u64, (page + 1) * PAGE as u64);
        };
        rewrite(3, &[0; PAGE]);
        rewrite(6, &motif(6, 1));
        rewrite(4, &noise(1000));
        let mut near = motif(9, 0);
        near[100] ^= 1;
        rewrite(9, &near);
        pass(&mut out, false);
        rewrite(3, &motif(3, 2));
        rewrite(6, &motif(6, 2));
        pass(&mut out, false);
        out.finish(b"state", true).unwrap();
        drop(out);
        let (result, state) = receiving.join().unwrap();
        assert_eq!(result, Ok(()));
        assert_eq!(state.as_deref(), Some(&b"state"[..]));
        let (mut here, mut there) = (vec![0u8; size as usize], vec![0u8; size as usize]);
        ram.read_exact_at(&mut here, 0).unwrap();
        dst_file.read_exact_at(&mut there, 0).unwrap();
        for page in 0..PAGES as usize {
            let range = page * PAGE..(page + 1) * PAGE;
            assert!(here[range.clone()] == there[range], "page {page} differs");
        }
        reports
    }

    #[test]
    fn compressed_pages_arrive_intact_and_the_last_copy_stays() {
        let reports = compressed_migration(false);
        // Pass 0: the motif pages deflated, the noise whole, the rest zero.
        let motifs = (0..PAGES / 2).filter(|p| p % 3 == 0).count() as u64;
        let noises = (0..PAGES / 2).filter(|p| p % 3 == 1).count() as u64;
        assert_eq!(reports[0].compressed_pages, motifs);
        assert_eq!(reports[0].normal_pages, noises);
        assert!(
            reports[0].compressed_bytes < motifs * 100,
            "{:?}",
            reports[0]
        );
        // Pass 1: pages 6 and 9 deflated, 4 whole, 3 zero; pass 2: 3 and 6 deflated.
        let counts = |r: &PassReport| (r.compressed_pages, r.normal_pages, r.zero_pages);
        assert_eq!(counts(&reports[1]), (2, 1, 1));
        assert_eq!(counts(&reports[2]), (2, 0, 0));
    }

    #[test]
    fn with_xbzrle_too_only_the_first_pass_is_deflated() {
        let reports = compressed_migration(true);
        assert!(reports[0].compressed_pages > 0);
        // Later passes: xbzrle's (page 9 a delta, the others cache misses, sent whole).
        for r in &reports[1..] {
            assert_eq!(r.compressed_pages, 0, "{r:?}");
        }
        assert_eq!(reports[1].xbzrle_pages, 0, "nothing cached from pass 0");
        // Page 6, cached as pass 1 sent it, goes as a delta in pass 2; page 3 (zero in
        // pass 1, so not cached) whole.
        assert_eq!((reports[2].xbzrle_pages, reports[2].normal_pages), (1, 1));
    }
}
