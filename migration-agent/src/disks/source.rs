//! The source's side of block migration: each disk read through its daemon's disk
//! channel and sent as DISK_DATA records (with `zero-blocks` on, what reads as zeroes
//! as DISK_ZERO records instead, as QEMU's flagged zero blocks). A pass's disks go
//! before its pages: in the first pass every disk from its first byte
//! to its last (incremental: only what its top image holds; the rest is the base the
//! destination has), in each later pass what the guest wrote since the pass before (the
//! daemon's marks, taken with its device quiesced as the pass starts). Work comes in
//! bounded steps, so the sender keeps to its time budget and the bandwidth limit.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use ipc::disk_channel::{ChannelError, Client, MAX_IO, MAX_RUNS, MAX_ZERO, SECTOR};
use ipc::{MigratedDisks, PassReport};

use super::{channel, channel_error, records};
use crate::pacer::Pacer;

/// Most disk bytes one step of the first pass goes over (with zero-blocks, runs of
/// zeroes in them are sent as one record; a step ends after its first data).
const STEP_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A disk channel failed (the text names the disk).
    #[error("{0}")]
    Channel(String),
    /// The migration stream failed.
    #[error("{0}")]
    Stream(#[from] std::io::Error),
}

struct Disk {
    index: u32,
    size: u64,
    client: Client<UnixStream>,
    /// This pass took marks from it (its runs are to be sent).
    taken: bool,
}

impl Disk {
    fn failed(&self) -> impl Fn(ChannelError) -> DiskError + '_ {
        move |e| DiskError::Channel(channel_error(self.index, e))
    }
}

/// Where the disks' part of the current pass is.
enum Part {
    /// Done (or no pass started yet).
    Idle,
    /// The first pass: disk `disk` from byte `at`.
    Whole { disk: usize, at: u64 },
    /// A later pass: the taken runs of disk `disk`, `runs` fetched from it and not
    /// sent yet.
    Written {
        disk: usize,
        runs: VecDeque<(u64, u64)>,
    },
}

/// What one step sent, for the pass's report and the pacer.
struct Sent<'a> {
    out: &'a mut dyn Write,
    report: &'a mut PassReport,
    pacer: &'a mut Pacer,
}

impl Sent<'_> {
    fn data(&mut self, disk: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let n = records::write_data(&mut self.out, disk, offset, data)? as u64;
        self.count(n);
        Ok(())
    }

    fn zero(&mut self, disk: u32, offset: u64, len: u64) -> std::io::Result<()> {
        let n = records::write_zero(&mut self.out, disk, offset, len)? as u64;
        self.count(n);
        Ok(())
    }

    fn count(&mut self, n: u64) {
        self.report.bytes += n;
        self.report.disk_bytes += n;
        self.pacer.sent(n);
    }
}

pub struct DiskSender {
    disks: Vec<Disk>,
    incremental: bool,
    /// What reads as zeroes goes as DISK_ZERO (else as DISK_DATA).
    zero_blocks: bool,
    part: Part,
    /// How far the first pass has come over all disks (skipped bytes included).
    transferred: u64,
    /// Bytes this later pass took and has not sent yet.
    left: u64,
    buf: Vec<u8>,
}

impl DiskSender {
    /// The disks `d` lists, one channel each from `fds`, in order.
    pub fn new(d: &MigratedDisks, fds: Vec<OwnedFd>) -> Result<DiskSender, DiskError> {
        if fds.len() != d.disks.len() {
            return Err(DiskError::Channel(format!(
                "block migration: {} disk channels for {} disks",
                fds.len(),
                d.disks.len()
            )));
        }
        let disks = d
            .disks
            .iter()
            .zip(fds)
            .map(|(disk, fd)| {
                Ok(Disk {
                    index: disk.index,
                    size: disk.size,
                    client: channel(fd)
                        .map_err(|e| DiskError::Channel(channel_error(disk.index, e.into())))?,
                    taken: false,
                })
            })
            .collect::<Result<Vec<_>, DiskError>>()?;
        Ok(DiskSender {
            disks,
            incremental: d.incremental,
            zero_blocks: d.zero_blocks,
            part: Part::Idle,
            transferred: 0,
            left: 0,
            buf: Vec::new(),
        })
    }

    /// A pass begins: the first goes over the whole disks; a later one takes what the
    /// guest wrote since the last take (each daemon quiesces its device for it).
    pub fn start_pass(&mut self, first: bool) -> Result<(), DiskError> {
        if first {
            self.transferred = 0;
            self.part = Part::Whole { disk: 0, at: 0 };
            return Ok(());
        }
        self.left = 0;
        for d in &mut self.disks {
            // Nothing written: no quiesce.
            let pending = d.client.pending().map_err(d.failed())?;
            d.taken = pending > 0 && {
                let taken = d.client.take().map_err(d.failed())?;
                self.left += taken;
                taken > 0
            };
        }
        self.part = Part::Written {
            disk: 0,
            runs: VecDeque::new(),
        };
        Ok(())
    }

    /// The disks' part of the current pass is not done yet.
    pub fn busy(&self) -> bool {
        !matches!(self.part, Part::Idle)
    }

    /// Bytes of the disks' part of this pass not sent yet.
    pub fn remaining(&self) -> u64 {
        match &self.part {
            Part::Idle => 0,
            Part::Whole { disk, at } => {
                let rest: u64 = self.disks.iter().skip(*disk).map(|d| d.size).sum();
                rest.saturating_sub(*at).max(1)
            }
            Part::Written { .. } => self.left.max(1),
        }
    }

    /// One bounded piece of the disks' part of the pass.
    pub fn step(
        &mut self,
        out: &mut dyn Write,
        report: &mut PassReport,
        pacer: &mut Pacer,
    ) -> Result<(), DiskError> {
        let mut sent = Sent { out, report, pacer };
        match std::mem::replace(&mut self.part, Part::Idle) {
            Part::Idle => {}
            Part::Whole { disk, at } => self.whole_step(disk, at, &mut sent)?,
            Part::Written { disk, runs } => self.written_step(disk, runs, &mut sent)?,
        }
        Ok(())
    }

    /// The first pass: from byte `at` of disk `disk`, up to STEP_BYTES.
    fn whole_step(&mut self, disk: usize, at: u64, sent: &mut Sent) -> Result<(), DiskError> {
        let Some(d) = self.disks.get(disk) else {
            return Ok(());
        };
        let end = at.saturating_add(STEP_BYTES).min(d.size);
        let mut pos = at;
        // A run of zeroes read and not sent yet: (offset, len).
        let mut zeroes: Option<(u64, u64)> = None;
        while pos < end {
            let mut len = u64::from(MAX_IO).min(d.size - pos);
            if self.incremental {
                let (allocated, run) = d.client.allocated(pos, d.size - pos).map_err(d.failed())?;
                // Less than a sector unallocated counts as allocated (as QEMU's).
                let skip = run / SECTOR * SECTOR;
                if !allocated && skip > 0 {
                    if let Some((o, l)) = zeroes.take() {
                        sent.zero(d.index, o, l)?;
                    }
                    pos += skip;
                    self.transferred += skip;
                    continue;
                }
                len = len.min(run.div_ceil(SECTOR) * SECTOR);
            }
            self.buf.resize(len as usize, 0);
            let zero = d.client.read(pos, &mut self.buf).map_err(d.failed())?;
            let as_run = zero && self.zero_blocks;
            if as_run {
                zeroes = match zeroes {
                    Some((o, l)) if l + len <= MAX_ZERO => Some((o, l + len)),
                    Some((o, l)) => {
                        sent.zero(d.index, o, l)?;
                        Some((pos, len))
                    }
                    None => Some((pos, len)),
                };
            } else {
                if let Some((o, l)) = zeroes.take() {
                    sent.zero(d.index, o, l)?;
                }
                if zero {
                    // A read of zeroes leaves the buffer as it was.
                    self.buf.fill(0);
                }
                sent.data(d.index, pos, &self.buf)?;
            }
            pos += len;
            self.transferred += len;
            if !as_run {
                break;
            }
        }
        if let Some((o, l)) = zeroes {
            sent.zero(d.index, o, l)?;
        }
        self.part = match pos >= d.size {
            true if disk + 1 < self.disks.len() => Part::Whole {
                disk: disk + 1,
                at: 0,
            },
            true => Part::Idle,
            false => Part::Whole { disk, at: pos },
        };
        Ok(())
    }

    /// A later pass: the next piece of disk `disk`'s taken runs.
    fn written_step(
        &mut self,
        disk: usize,
        mut runs: VecDeque<(u64, u64)>,
        sent: &mut Sent,
    ) -> Result<(), DiskError> {
        let Some(d) = self.disks.get(disk) else {
            self.left = 0;
            return Ok(());
        };
        if runs.is_empty() && d.taken {
            runs = d.client.runs(MAX_RUNS).map_err(d.failed())?.into();
        }
        let Some((offset, len)) = runs.pop_front() else {
            // This disk is done.
            self.part = match disk + 1 < self.disks.len() {
                true => Part::Written {
                    disk: disk + 1,
                    runs,
                },
                false => {
                    self.left = 0;
                    Part::Idle
                }
            };
            return Ok(());
        };
        if offset.checked_add(len).is_none_or(|e| e > d.size) {
            return Err(DiskError::Channel(format!(
                "block migration of disk {}: its daemon named bytes {offset}+{len} of {}",
                d.index, d.size
            )));
        }
        let piece = len.min(u64::from(MAX_IO));
        self.buf.resize(piece as usize, 0);
        let zero = d.client.read(offset, &mut self.buf).map_err(d.failed())?;
        if zero && self.zero_blocks {
            sent.zero(d.index, offset, piece)?;
        } else {
            if zero {
                self.buf.fill(0);
            }
            sent.data(d.index, offset, &self.buf)?;
        }
        self.left = self.left.saturating_sub(piece);
        if piece < len {
            runs.push_front((offset + piece, len - piece));
        }
        self.part = Part::Written { disk, runs };
        Ok(())
    }

    /// The disks' counters for the report of a `send`: the first pass's progress, the
    /// rest of this pass, and what the guest wrote for the next one.
    pub fn report(&self, report: &mut PassReport) -> Result<(), DiskError> {
        report.disk_transferred = self.transferred;
        report.disk_remaining = self.remaining();
        report.disk_dirty = 0;
        for d in &self.disks {
            report.disk_dirty += d.client.pending().map_err(d.failed())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ipc::MigratedDisk;
    use parking_lot::Mutex;

    use super::*;
    use crate::disks::fake::{serve, FakeDisk};
    use crate::disks::records::DiskRecord as Record;
    use crate::stream::{read_record, Record as StreamRecord};

    const MIB: u64 = 1 << 20;

    /// How a sender sends what reads as zeroes (the zero-blocks capability).
    #[derive(Clone, Copy, Debug)]
    enum Zeroes {
        AsData,
        AsRuns,
    }

    fn sender(
        disks: &[(u32, &Arc<Mutex<FakeDisk>>)],
        incremental: bool,
        zeroes: Zeroes,
    ) -> DiskSender {
        let list = MigratedDisks {
            incremental,
            zero_blocks: matches!(zeroes, Zeroes::AsRuns),
            disks: disks
                .iter()
                .map(|(index, d)| MigratedDisk {
                    index: *index,
                    size: d.lock().data.len() as u64,
                })
                .collect(),
        };
        let fds = disks.iter().map(|(_, d)| serve((*d).clone())).collect();
        DiskSender::new(&list, fds).unwrap()
    }

    /// Steps the disks' part of a pass to its end; the records it wrote (data skipped)
    /// and the report.
    fn pass(s: &mut DiskSender, first: bool) -> (Vec<Record>, PassReport) {
        let (records, _, report) = pass_with_data(s, first);
        (records, report)
    }

    /// The same, with the bytes each DISK_DATA carried (in the records' order).
    fn pass_with_data(s: &mut DiskSender, first: bool) -> (Vec<Record>, Vec<Vec<u8>>, PassReport) {
        s.start_pass(first).unwrap();
        let (mut out, mut report, mut pacer) = (Vec::new(), PassReport::default(), Pacer::new(0));
        while s.busy() {
            s.step(&mut out, &mut report, &mut pacer).unwrap();
        }
        s.report(&mut report).unwrap();
        assert_eq!(report.bytes, out.len() as u64);
        assert_eq!(report.disk_bytes, out.len() as u64);
        let mut r = out.as_slice();
        let (mut records, mut data) = (Vec::new(), Vec::new());
        while !r.is_empty() {
            let StreamRecord::Disk(record) = read_record(&mut r).unwrap() else {
                panic!("not a disk record");
            };
            if let Record::Data { len, .. } = record {
                data.push(r[..len as usize].to_vec());
                r = &r[len as usize..];
            }
            records.push(record);
        }
        (records, data, report)
    }

    fn data(disk: u32, offset: u64, len: u64) -> Record {
        Record::Data {
            disk,
            offset,
            len: len as u32,
        }
    }

    fn zero(disk: u32, offset: u64, len: u64) -> Record {
        Record::Zero { disk, offset, len }
    }

    #[test]
    fn the_first_pass_copies_every_disk_with_zero_blocks_as_runs() {
        let a = FakeDisk::new(4 * MIB as usize);
        a.lock().data[MIB as usize + 7] = 1;
        let b = FakeDisk::new(512);
        b.lock().data[0] = 2;
        let mut s = sender(&[(0, &a), (3, &b)], false, Zeroes::AsRuns);
        let (records, report) = pass(&mut s, true);
        assert_eq!(
            records,
            [
                zero(0, 0, MIB),
                data(0, MIB, MIB),
                zero(0, 2 * MIB, 2 * MIB),
                data(3, 0, 512)
            ]
        );
        assert_eq!(report.disk_transferred, 4 * MIB + 512);
        assert_eq!((report.disk_remaining, report.disk_dirty), (0, 0));
    }

    /// zero-blocks off (QEMU's default): every chunk goes as data, zeroes too, and their
    /// bytes are zeroes, not what the buffer held from the chunk before.
    #[test]
    fn without_zero_blocks_the_first_pass_sends_zeroes_as_data() {
        let a = FakeDisk::new(4 * MIB as usize);
        a.lock().data[MIB as usize + 7] = 1;
        let b = FakeDisk::new(512);
        let mut s = sender(&[(0, &a), (3, &b)], false, Zeroes::AsData);
        let (records, payloads, report) = pass_with_data(&mut s, true);
        assert_eq!(
            records,
            [
                data(0, 0, MIB),
                data(0, MIB, MIB),
                data(0, 2 * MIB, MIB),
                data(0, 3 * MIB, MIB),
                data(3, 0, 512)
            ]
        );
        let mut expected = a.lock().data.clone();
        expected.extend_from_slice(&b.lock().data);
        assert_eq!(payloads.concat(), expected);
        assert_eq!(report.disk_bytes, 4 * MIB + 512 + 5 * 17);
        assert_eq!(report.disk_transferred, 4 * MIB + 512);
    }

    #[test]
    fn an_incremental_first_pass_copies_only_what_the_top_holds() {
        let a = FakeDisk::new(4 * MIB as usize);
        {
            let mut d = a.lock();
            d.data[..4 * MIB as usize].fill(9);
            // Held by the top, and zeroes.
            d.data[3 * MIB as usize..3 * MIB as usize + 512].fill(0);
            d.allocated = vec![MIB..MIB + 65536, 3 * MIB..3 * MIB + 512];
        }
        // What the top does not hold is skipped, whatever zero-blocks says; what it
        // holds goes as zero-blocks says.
        for (zeroes, held_zeroes) in [
            (Zeroes::AsData, data(1, 3 * MIB, 512)),
            (Zeroes::AsRuns, zero(1, 3 * MIB, 512)),
        ] {
            let mut s = sender(&[(1, &a)], true, zeroes);
            let (records, report) = pass(&mut s, true);
            assert_eq!(records, [data(1, MIB, 65536), held_zeroes], "{zeroes:?}");
            assert_eq!(report.disk_transferred, 4 * MIB, "skipped bytes count");
        }
    }

    #[test]
    fn later_passes_send_what_the_guest_wrote() {
        let a = FakeDisk::new(4 * MIB as usize);
        let b = FakeDisk::new(MIB as usize);
        let mut s = sender(&[(0, &a), (1, &b)], false, Zeroes::AsRuns);
        pass(&mut s, true);
        {
            let mut d = a.lock();
            d.data[2 * MIB as usize] = 5;
            d.marks = vec![(0, 65536), (2 * MIB, 2 * MIB)];
        }
        let (records, report) = pass(&mut s, false);
        assert_eq!(
            records,
            [
                zero(0, 0, 65536),
                data(0, 2 * MIB, MIB),
                zero(0, 3 * MIB, MIB)
            ]
        );
        assert_eq!(report.disk_remaining, 0);
        // Written meanwhile: what the next pass sends, for the downtime estimate.
        b.lock().marks = vec![(0, 4096)];
        let mut r = PassReport::default();
        s.report(&mut r).unwrap();
        assert_eq!(r.disk_dirty, 4096);
        let (records, _) = pass(&mut s, false);
        assert_eq!(records, [zero(1, 0, 4096)]);
        // Nothing written: nothing sent.
        assert!(pass(&mut s, false).0.is_empty());
    }

    #[test]
    fn without_zero_blocks_later_passes_send_written_zeroes_as_data() {
        let a = FakeDisk::new(4 * MIB as usize);
        let mut s = sender(&[(0, &a)], false, Zeroes::AsData);
        pass(&mut s, true);
        {
            let mut d = a.lock();
            d.data[2 * MIB as usize] = 5;
            d.marks = vec![(0, 65536), (2 * MIB, 2 * MIB)];
        }
        let (records, payloads, _) = pass_with_data(&mut s, false);
        assert_eq!(
            records,
            [
                data(0, 0, 65536),
                data(0, 2 * MIB, MIB),
                data(0, 3 * MIB, MIB)
            ]
        );
        let d = a.lock();
        let (low, high) = (2 * MIB as usize, 4 * MIB as usize);
        assert_eq!(
            payloads.concat(),
            [&d.data[..65536], &d.data[low..high]].concat()
        );
    }

    #[test]
    fn a_daemon_gone_fails_with_the_disk_named() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let list = MigratedDisks {
            incremental: false,
            zero_blocks: false,
            disks: vec![MigratedDisk {
                index: 4,
                size: 512,
            }],
        };
        let mut s = DiskSender::new(&list, vec![ours.into()]).unwrap();
        s.start_pass(true).unwrap();
        let err = s
            .step(
                &mut Vec::new(),
                &mut PassReport::default(),
                &mut Pacer::new(0),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "block migration of disk 4: its block daemon closed the disk channel"
        );
        assert!(
            DiskSender::new(&list, Vec::new()).is_err(),
            "a channel per disk"
        );
    }
}
