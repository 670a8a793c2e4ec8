//! The compress capability (QEMU's "compress"): on the source, each non-zero page is
//! deflated (zlib, at compress-level) by one of compress-threads workers and goes as a
//! COMPRESSED record; one whose zlib stream would be no shorter than the page goes whole
//! (PAGES), which is what level 0 (no compression) always gives. Zero pages stay ZERO
//! runs, as in QEMU. At the destination decompress-threads workers inflate the records;
//! each must inflate to exactly one page, or the stream is malformed.
//!
//! Order: the workers' results are written (source) or applied to guest RAM
//! (destination) in the order their pages came, before any other record for the same
//! page is (`settle`), and all of them before a pass ends (`finish`). So a page that goes
//! twice arrives in order: the later copy is the one that stays.
//!
//! With all workers busy the source waits for the oldest (compress-wait-thread, the
//! default) or sends the page whole and counts it busy, as QEMU does.

use std::io::{self, Read, Write};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use ipc::{CompressParams, PassReport};

use crate::stream::{self, MAX_COMPRESSED, PAGE};
use crate::workers::{OrderedWorkers, WorkersError};

/// Why a COMPRESSED record's bytes are not one page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("not a zlib stream ({0})")]
    Corrupt(String),
    #[error("it inflates to more than a page")]
    TooLong,
    #[error("its zlib stream ends early")]
    Truncated,
    #[error("it inflates to {0} bytes, not a page")]
    Short(usize),
    #[error("{0} bytes follow its zlib stream")]
    Trailing(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Workers(#[from] WorkersError),
    #[error("compressed page {page:#x}: {why}")]
    Malformed { page: u64, why: InflateError },
}

/// `page` deflated into `out` as a zlib stream; false when that would not be shorter
/// than the page (the zlib state is reset first, so one state serves every page).
pub fn deflate_page(zlib: &mut Compress, page: &[u8], out: &mut Vec<u8>) -> bool {
    zlib.reset();
    // Room for MAX_COMPRESSED bytes only: a longer stream is not worth sending.
    out.resize(MAX_COMPRESSED, 0);
    let status = zlib.compress(page, out, FlushCompress::Finish);
    out.truncate(zlib.total_out() as usize);
    matches!(status, Ok(Status::StreamEnd)) && zlib.total_in() as usize == page.len()
}

/// Inflates `data` into `page`, which has room for one byte more than a page so that a
/// stream that inflates to more is seen; Ok only for one whole page from all of `data`.
pub fn inflate_page(
    zlib: &mut Decompress,
    data: &[u8],
    page: &mut [u8; PAGE + 1],
) -> Result<(), InflateError> {
    zlib.reset(true);
    let status = zlib
        .decompress(data, page, FlushDecompress::Finish)
        .map_err(|e| InflateError::Corrupt(e.to_string()))?;
    let (read, made) = (zlib.total_in() as usize, zlib.total_out() as usize);
    if made > PAGE {
        return Err(InflateError::TooLong);
    }
    if status != Status::StreamEnd {
        return Err(InflateError::Truncated);
    }
    if made != PAGE {
        return Err(InflateError::Short(made));
    }
    if read != data.len() {
        return Err(InflateError::Trailing(data.len() - read));
    }
    Ok(())
}

/// A page on its way through a compress worker: the page's bytes, and the zlib stream
/// if it came out shorter.
struct DeflateJob {
    input: Vec<u8>,
    output: Vec<u8>,
    compressed: bool,
}

/// The source's workers.
pub struct Deflater {
    workers: OrderedWorkers<DeflateJob, DeflateJob>,
    wait: bool,
    /// Jobs whose buffers are free again.
    spare: Vec<DeflateJob>,
}

impl Deflater {
    pub fn start(params: &CompressParams) -> Result<Deflater, CompressError> {
        let level = Compression::new(u32::from(params.level.min(9)));
        let workers = OrderedWorkers::start("compress", usize::from(params.threads), || {
            let mut zlib = Compress::new(level, true);
            move |mut job: DeflateJob| {
                job.compressed = deflate_page(&mut zlib, &job.input, &mut job.output);
                job
            }
        })?;
        Ok(Deflater {
            workers,
            wait: params.wait_thread,
            spare: Vec::new(),
        })
    }

    /// Hands non-zero page `page` (`content`) to a worker, after writing to `out` what
    /// the workers have ready; returns the bytes written.
    pub fn send(
        &mut self,
        page: u64,
        content: &[u8],
        out: &mut impl Write,
        report: &mut PassReport,
    ) -> Result<usize, CompressError> {
        let mut bytes = 0;
        while let Some(b) = self.write_oldest(false, out, report)? {
            bytes += b;
        }
        if self.workers.is_full() {
            if !self.wait {
                report.compress_busy += 1;
                bytes += self.settle(page, 1, out, report)?;
                report.normal_pages += 1;
                return Ok(bytes + stream::write_pages(out, page, content)?);
            }
            bytes += self.write_oldest(true, out, report)?.unwrap_or(0);
        }
        let mut job = self.spare.pop().unwrap_or_else(|| DeflateJob {
            input: Vec::with_capacity(PAGE),
            output: Vec::with_capacity(MAX_COMPRESSED),
            compressed: false,
        });
        job.input.clear();
        job.input.extend_from_slice(content);
        self.workers.submit(page, job)?;
        Ok(bytes)
    }

    /// Writes what is in flight for pages `first..first + count` (and everything handed
    /// out before it), so that a record for them written next comes after.
    pub fn settle(
        &mut self,
        first: u64,
        count: u64,
        out: &mut impl Write,
        report: &mut PassReport,
    ) -> Result<usize, CompressError> {
        let mut bytes = 0;
        for _ in 0..self.workers.jobs_through(first, count) {
            bytes += self.write_oldest(true, out, report)?.unwrap_or(0);
        }
        Ok(bytes)
    }

    /// Writes everything in flight.
    pub fn finish(
        &mut self,
        out: &mut impl Write,
        report: &mut PassReport,
    ) -> Result<usize, CompressError> {
        let mut bytes = 0;
        while let Some(b) = self.write_oldest(true, out, report)? {
            bytes += b;
        }
        Ok(bytes)
    }

    /// The oldest page's record (if `wait`, once it is ready; else only if it is).
    fn write_oldest(
        &mut self,
        wait: bool,
        out: &mut impl Write,
        report: &mut PassReport,
    ) -> Result<Option<usize>, CompressError> {
        let Some((page, job)) = self.workers.oldest(wait)? else {
            return Ok(None);
        };
        let bytes = if job.compressed {
            report.compressed_pages += 1;
            report.compressed_bytes += job.output.len() as u64;
            stream::write_compressed(out, page, &job.output)?
        } else {
            report.normal_pages += 1;
            stream::write_pages(out, page, &job.input)?
        };
        self.spare.push(job);
        Ok(Some(bytes))
    }
}

/// A COMPRESSED record on its way through a decompress worker.
struct InflateJob {
    data: Vec<u8>,
    page: Box<[u8; PAGE + 1]>,
    result: Result<(), InflateError>,
}

/// The destination's workers. What they inflate is handed back through `apply`
/// (page number, its bytes), on the caller's thread, in the records' order.
pub struct Inflater {
    workers: OrderedWorkers<InflateJob, InflateJob>,
    spare: Vec<InflateJob>,
}

impl Inflater {
    pub fn start(threads: u8) -> Result<Inflater, CompressError> {
        let workers = OrderedWorkers::start("decompress", usize::from(threads), || {
            let mut zlib = Decompress::new(true);
            move |mut job: InflateJob| {
                job.result = inflate_page(&mut zlib, &job.data, &mut job.page);
                job
            }
        })?;
        Ok(Inflater {
            workers,
            spare: Vec::new(),
        })
    }

    /// Reads a COMPRESSED record's `len` bytes (at most MAX_COMPRESSED: `read_record`
    /// checked) from `input` and hands them to a worker, after applying what is ready.
    pub fn take(
        &mut self,
        page: u64,
        len: u16,
        input: &mut impl Read,
        apply: &mut impl FnMut(u64, &[u8]),
    ) -> Result<(), CompressError> {
        while self.apply_oldest(false, apply)? {}
        if self.workers.is_full() {
            self.apply_oldest(true, apply)?;
        }
        let mut job = self.spare.pop().unwrap_or_else(|| InflateJob {
            data: Vec::with_capacity(MAX_COMPRESSED),
            page: Box::new([0; PAGE + 1]),
            result: Ok(()),
        });
        job.data.resize(usize::from(len).min(MAX_COMPRESSED), 0);
        let read = input.read_exact(&mut job.data);
        if let Err(e) = read {
            self.spare.push(job);
            return Err(e.into());
        }
        self.workers.submit(page, job)?;
        Ok(())
    }

    /// Applies what is in flight for pages `first..first + count` (and everything
    /// before it), so that another record for them applied next comes after.
    pub fn settle(
        &mut self,
        first: u64,
        count: u64,
        apply: &mut impl FnMut(u64, &[u8]),
    ) -> Result<(), CompressError> {
        for _ in 0..self.workers.jobs_through(first, count) {
            self.apply_oldest(true, apply)?;
        }
        Ok(())
    }

    /// Applies everything in flight.
    pub fn finish(&mut self, apply: &mut impl FnMut(u64, &[u8])) -> Result<(), CompressError> {
        while self.apply_oldest(true, apply)? {}
        Ok(())
    }

    fn apply_oldest(
        &mut self,
        wait: bool,
        apply: &mut impl FnMut(u64, &[u8]),
    ) -> Result<bool, CompressError> {
        let Some((page, job)) = self.workers.oldest(wait)? else {
            return Ok(false);
        };
        if let Err(why) = &job.result {
            return Err(CompressError::Malformed {
                page,
                why: why.clone(),
            });
        }
        apply(page, &job.page[..PAGE]);
        self.spare.push(job);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Record;
    use crate::testing::noise;

    /// A page that deflates well: a short motif and its page number.
    fn motif(page: u64, round: u8) -> Vec<u8> {
        let mut p: Vec<u8> = b"flotilla compress "
            .iter()
            .cycle()
            .take(PAGE)
            .map(|b| b ^ round)
            .collect();
        p[..8].copy_from_slice(&page.to_le_bytes());
        p
    }

    fn zlib(data: &[u8], level: u32) -> Vec<u8> {
        let mut z = Compress::new(Compression::new(level), true);
        let mut out = vec![0; data.len() * 2 + 64];
        assert_eq!(
            z.compress(data, &mut out, FlushCompress::Finish).unwrap(),
            Status::StreamEnd
        );
        out.truncate(z.total_out() as usize);
        out
    }

    fn inflate(data: &[u8]) -> Result<Vec<u8>, InflateError> {
        let mut page = Box::new([0u8; PAGE + 1]);
        inflate_page(&mut Decompress::new(true), data, &mut page)?;
        Ok(page[..PAGE].to_vec())
    }

    fn params(level: u8, threads: u8, wait_thread: bool) -> CompressParams {
        CompressParams {
            level,
            threads,
            wait_thread,
        }
    }

    /// Every record of `stream` with its page made whole: (page, kind, content).
    fn read_back(stream: &[u8]) -> Vec<(u64, &'static str, Vec<u8>)> {
        let mut r = stream;
        let mut out = Vec::new();
        while !r.is_empty() {
            match stream::read_record(&mut r).unwrap() {
                Record::Compressed { page, len } => {
                    let (data, rest) = r.split_at(usize::from(len));
                    out.push((page, "compressed", inflate(data).unwrap()));
                    r = rest;
                }
                Record::Pages { first, count: 1 } => {
                    out.push((first, "whole", r[..PAGE].to_vec()));
                    r = &r[PAGE..];
                }
                Record::Zero { first, count: 1 } => out.push((first, "zero", vec![0; PAGE])),
                other => panic!("{other:?}"),
            }
        }
        out
    }

    #[test]
    fn pages_round_trip_through_the_stream_at_every_level() {
        for level in [1, 6, 9] {
            let mut d = Deflater::start(&params(level, 2, true)).unwrap();
            let (mut stream, mut report) = (Vec::new(), PassReport::default());
            let mut bytes = 0;
            for page in 0..40u64 {
                let content = if page % 5 == 4 {
                    noise(page)
                } else {
                    motif(page, 0)
                };
                bytes += d.send(page, &content, &mut stream, &mut report).unwrap();
            }
            bytes += d.finish(&mut stream, &mut report).unwrap();
            assert_eq!(bytes, stream.len(), "the bytes written are counted");
            // The motif compresses, the noise goes whole; all in the order given.
            assert_eq!((report.compressed_pages, report.normal_pages), (32, 8));
            assert!(report.compressed_bytes < 32 * 200, "{report:?}");
            let back = read_back(&stream);
            for (page, (at, kind, content)) in back.iter().enumerate() {
                let page = page as u64;
                assert_eq!(*at, page);
                if page % 5 == 4 {
                    assert_eq!((*kind, content), ("whole", &noise(page)));
                } else {
                    assert_eq!((*kind, content), ("compressed", &motif(page, 0)));
                }
            }
        }
        // Level 0 stores: never shorter, so every page goes whole.
        let mut d = Deflater::start(&params(0, 1, true)).unwrap();
        let (mut stream, mut report) = (Vec::new(), PassReport::default());
        d.send(3, &motif(3, 0), &mut stream, &mut report).unwrap();
        d.finish(&mut stream, &mut report).unwrap();
        assert_eq!((report.compressed_pages, report.normal_pages), (0, 1));
        assert_eq!(read_back(&stream)[0].1, "whole");
    }

    #[test]
    fn a_page_sent_again_arrives_after_its_earlier_copy() {
        // Page 7 three times, with a zero run for it in between (written by the caller
        // after `settle`), among other pages: the copies stay in order, the last wins.
        let mut d = Deflater::start(&params(9, 3, true)).unwrap();
        let (mut s, mut r) = (Vec::new(), PassReport::default());
        d.send(7, &motif(7, 1), &mut s, &mut r).unwrap();
        d.send(8, &motif(8, 1), &mut s, &mut r).unwrap();
        d.settle(7, 1, &mut s, &mut r).unwrap();
        stream::write_zero(&mut s, 7, 1).unwrap();
        d.send(7, &motif(7, 2), &mut s, &mut r).unwrap();
        d.send(9, &motif(9, 1), &mut s, &mut r).unwrap();
        d.send(7, &motif(7, 3), &mut s, &mut r).unwrap();
        d.finish(&mut s, &mut r).unwrap();
        let sevens: Vec<_> = read_back(&s)
            .into_iter()
            .filter(|(page, ..)| *page == 7)
            .map(|(_, kind, content)| (kind, content))
            .collect();
        // Which copy each is (compared whole, named by its round: None for zeroes).
        let copies: Vec<_> = sevens
            .iter()
            .map(|(kind, content)| {
                let round = (0..4).find(|r| *content == motif(7, *r));
                (*kind, round)
            })
            .collect();
        assert_eq!(
            copies,
            [
                ("compressed", Some(1)),
                ("zero", None),
                ("compressed", Some(2)),
                ("compressed", Some(3))
            ]
        );
    }

    #[test]
    fn busy_workers_without_waiting_send_pages_whole() {
        let mut d = Deflater::start(&params(9, 1, false)).unwrap();
        let (mut s, mut r) = (Vec::new(), PassReport::default());
        for page in 0..200 {
            d.send(page, &motif(page, 0), &mut s, &mut r).unwrap();
        }
        d.finish(&mut s, &mut r).unwrap();
        // One worker holds two pages at most: the sender, much faster at copying than
        // the worker at deflating, finds it full most times.
        assert!(r.compress_busy > 0, "{r:?}");
        assert_eq!(r.normal_pages, r.compress_busy);
        assert_eq!(r.compressed_pages + r.normal_pages, 200);
        let back = read_back(&s);
        let mut pages: Vec<u64> = back.iter().map(|(p, ..)| *p).collect();
        pages.sort_unstable();
        assert_eq!(pages, (0..200).collect::<Vec<_>>());
        assert!(back.iter().all(|(p, _, c)| *c == motif(*p, 0)));
    }

    #[test]
    fn malformed_compressed_pages_are_errors() {
        let page = motif(1, 0);
        let good = zlib(&page, 6);
        assert_eq!(inflate(&good).unwrap(), page);
        // Bytes that are not zlib at all, and a good stream with a byte changed (the
        // checksum or the data no longer agree).
        assert!(matches!(
            inflate(b"not zlib at all"),
            Err(InflateError::Corrupt(_))
        ));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        assert!(matches!(inflate(&flipped), Err(InflateError::Corrupt(_))));
        // More than a page, less than a page, a stream cut short, bytes after its end.
        assert_eq!(
            inflate(&zlib(&[7u8; PAGE + 1], 6)),
            Err(InflateError::TooLong)
        );
        assert_eq!(
            inflate(&zlib(&[7u8; 2 * PAGE], 6)),
            Err(InflateError::TooLong)
        );
        assert_eq!(
            inflate(&zlib(&[7u8; PAGE - 1], 6)),
            Err(InflateError::Short(PAGE - 1))
        );
        assert_eq!(inflate(&zlib(&[], 6)), Err(InflateError::Short(0)));
        assert_eq!(
            inflate(&good[..good.len() / 2]),
            Err(InflateError::Truncated)
        );
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"xyz");
        assert_eq!(inflate(&trailing), Err(InflateError::Trailing(3)));
        // The record's length is bounded before anything is read: one page or more, or
        // none, is malformed.
        for len in [0u16, PAGE as u16, u16::MAX] {
            let mut record = vec![10u8];
            record.extend_from_slice(&1u64.to_le_bytes());
            record.extend_from_slice(&len.to_le_bytes());
            assert!(matches!(
                stream::read_record(&mut record.as_slice()),
                Err(stream::StreamError::Malformed(_))
            ));
        }
    }

    #[test]
    fn the_inflater_applies_in_order_and_stops_at_a_bad_page() {
        let mut stream = Vec::new();
        for (page, round) in [(1u64, 1u8), (2, 1), (1, 2), (3, 1), (1, 3)] {
            stream::write_compressed(&mut stream, page, &zlib(&motif(page, round), 9)).unwrap();
        }
        let mut inflater = Inflater::start(2).unwrap();
        let mut applied: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut apply = |page: u64, content: &[u8]| applied.push((page, content.to_vec()));
        let mut r = stream.as_slice();
        while let Ok(Record::Compressed { page, len }) = stream::read_record(&mut r) {
            inflater.take(page, len, &mut r, &mut apply).unwrap();
        }
        inflater.finish(&mut apply).unwrap();
        let ones: Vec<_> = applied.iter().filter(|(p, _)| *p == 1).collect();
        assert_eq!(ones.len(), 3);
        assert_eq!(ones[2].1, motif(1, 3), "the last copy stays");
        assert_eq!(applied.len(), 5);
        // A record that does not inflate to a page fails when its turn comes, and names
        // its page; nothing after it is applied.
        let mut stream = Vec::new();
        stream::write_compressed(&mut stream, 4, &zlib(&[1u8; 100], 9)).unwrap();
        stream::write_compressed(&mut stream, 5, &zlib(&motif(5, 0), 9)).unwrap();
        let mut r = stream.as_slice();
        let mut applied = Vec::new();
        let mut apply = |page: u64, _: &[u8]| applied.push(page);
        let mut result = Ok(());
        while let Ok(Record::Compressed { page, len }) = stream::read_record(&mut r) {
            result = result.and(inflater.take(page, len, &mut r, &mut apply));
        }
        let e = result.and(inflater.finish(&mut apply)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "compressed page 0x4: it inflates to 100 bytes, not a page"
        );
        assert!(applied.is_empty());
        // A record cut short is the connection's error.
        let mut short = &stream[11..20];
        assert!(matches!(
            Inflater::start(1)
                .unwrap()
                .take(4, 100, &mut short, &mut |_, _| {}),
            Err(CompressError::Io(_))
        ));
    }
}
