//! The migration stream, version 2 (docs/migration-stream.md is its description): a
//! header with the machine's shape, which the destination accepts or rejects, then
//! records of guest pages (whole, zero runs, XBZRLE deltas, deflated), pass markers, the device
//! state and an end mark; on two-way channels the destination's answer at the end.
//! Integers are little-endian. Everything read is bounded before it is used: a record
//! that names pages outside guest RAM, a count beyond the limits or a truncated stream
//! is an error, never a panic or a write out of place.

use std::io::{self, Read, Write};

use ipc::{DimmLaunch, MachineShape};

use crate::disks::records::{self, DiskRecord, RecordError, DISKS, DISK_DATA, DISK_ZERO};
use crate::wire::{read_u16, read_u32, read_u64, read_u8};

pub const MAGIC: &[u8; 8] = b"FLOTMIG\n";
/// 2: the header lists the DIMMs (their memory travels as further windows of pages).
pub const VERSION: u32 = 2;
pub const PAGE: usize = 4096;
/// Most pages one PAGES record carries (1 MiB), and one ZERO record names.
pub const MAX_PAGES_PER_RECORD: u32 = 256;
pub const MAX_ZERO_RUN: u32 = 1 << 20;
/// Most bytes of one deflated page: a zlib stream no shorter than the page goes whole.
pub const MAX_COMPRESSED: usize = PAGE - 1;
/// Most bytes of device state (vCPUs with their XSAVE areas, devices).
pub const MAX_STATE: u32 = 16 << 20;
/// Most disks or NICs a shape may list, and the longest rejection text.
const MAX_DEVICES: u32 = 1024;
/// Most DIMMs a shape may list: QEMU's ACPI_MAX_RAM_SLOTS.
const MAX_DIMMS: u32 = 256;
const MAX_TEXT: u32 = 4096;

const PAGES: u8 = 1;
const ZERO: u8 = 2;
const XBZRLE: u8 = 3;
const PASS_END: u8 = 4;
const STATE: u8 = 5;
const END: u8 = 6;
// 7 to 9: the disks' records (`crate::disks::records`).
const COMPRESSED: u8 = 10;
// Postcopy (`crate::postcopy`): the source may switch (answered as the header is);
// the switch, then the pages the destination must drop; then the state, and the
// remaining pages until END.
const ADVISE: u8 = 11;
const LISTEN: u8 = 12;
const DISCARD: u8 = 13;

const ACCEPT: u8 = 1;
const REJECT: u8 = 2;
const RESUMED: u8 = 3;
const FAILED: u8 = 4;
// Postcopy's return path: a page the destination waits for, and every page placed.
const REQUEST: u8 = 5;
const COMPLETE: u8 = 6;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{}", connection_error(.0))]
    Io(#[from] io::Error),
    #[error("the destination closed the migration connection")]
    DestinationGone,
    #[error("the destination did not answer in time")]
    NoAnswer,
    #[error("not a Flotilla migration stream")]
    Magic,
    #[error("migration stream version {0}; this agent speaks version {VERSION}")]
    Version(u32),
    #[error("malformed migration stream: {0}")]
    Malformed(String),
    #[error("the destination refused the migration: {0}")]
    Rejected(String),
    #[error("the destination failed to start the VM: {0}")]
    DestinationFailed(String),
}

fn malformed(what: impl Into<String>) -> StreamError {
    StreamError::Malformed(what.into())
}

/// What failed on the migration connection, said plainly: its end before the stream's
/// end is the peer gone (or a truncated stream), the rest is the system's word.
pub fn connection_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            "the migration connection closed before the end of the stream".into()
        }
        _ => format!("the migration connection: {}", ipc::errno_text(e)),
    }
}

/// A failed read of the destination's answer (on the source).
fn answer_error(e: io::Error) -> StreamError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => StreamError::DestinationGone,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => StreamError::NoAnswer,
        _ => StreamError::Io(e),
    }
}

fn read_list(r: &mut impl Read, what: &str) -> Result<Vec<u32>, StreamError> {
    let n = read_u32(r)?;
    if n > MAX_DEVICES {
        return Err(malformed(format!("{n} {what}")));
    }
    (0..n).map(|_| Ok(read_u32(r)?)).collect()
}

fn read_text(r: &mut impl Read) -> Result<String, StreamError> {
    let n = read_u32(r)?;
    if n > MAX_TEXT {
        return Err(malformed(format!("a text of {n} bytes")));
    }
    let mut b = vec![0u8; n as usize];
    r.read_exact(&mut b)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

fn write_text(w: &mut impl Write, text: &str) -> io::Result<()> {
    let b = &text.as_bytes()[..text.len().min(MAX_TEXT as usize)];
    w.write_all(&(b.len() as u32).to_le_bytes())?;
    w.write_all(b)
}

pub fn write_header(w: &mut impl Write, shape: &MachineShape) -> io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.write_all(&shape.memory.to_le_bytes())?;
    w.write_all(&shape.vcpus.to_le_bytes())?;
    for list in [&shape.disks, &shape.nics] {
        w.write_all(&(list.len() as u32).to_le_bytes())?;
        for q in list {
            w.write_all(&q.to_le_bytes())?;
        }
    }
    w.write_all(&(shape.dimms.len() as u32).to_le_bytes())?;
    for d in &shape.dimms {
        w.write_all(&d.slot.to_le_bytes())?;
        w.write_all(&d.addr.to_le_bytes())?;
        w.write_all(&d.size.to_le_bytes())?;
    }
    Ok(())
}

fn read_dimms(r: &mut impl Read) -> Result<Vec<DimmLaunch>, StreamError> {
    let n = read_u32(r)?;
    if n > MAX_DIMMS {
        return Err(malformed(format!("{n} DIMMs")));
    }
    (0..n)
        .map(|_| {
            Ok(DimmLaunch {
                slot: read_u32(r)?,
                addr: read_u64(r)?,
                size: read_u64(r)?,
            })
        })
        .collect()
}

pub fn read_header(r: &mut impl Read) -> Result<MachineShape, StreamError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(StreamError::Magic);
    }
    let version = read_u32(r)?;
    if version != VERSION {
        return Err(StreamError::Version(version));
    }
    Ok(MachineShape {
        memory: read_u64(r)?,
        vcpus: read_u32(r)?,
        disks: read_list(r, "disks")?,
        nics: read_list(r, "NICs")?,
        dimms: read_dimms(r)?,
    })
}

/// Why the source's DIMMs cannot come here (QEMU's rule: the same DIMMs in the same
/// slots at the same addresses), naming the first slot that differs.
fn dimms_mismatch(there: &[DimmLaunch], here: &[DimmLaunch]) -> Option<String> {
    let mut slots: Vec<u32> = there.iter().chain(here).map(|d| d.slot).collect();
    slots.sort_unstable();
    slots.dedup();
    let show = |d: &DimmLaunch| format!("a DIMM of {} MiB at {:#x}", d.size >> 20, d.addr);
    for slot in slots {
        let find = |list: &[DimmLaunch]| list.iter().find(|d| d.slot == slot).copied();
        match (find(there), find(here)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), b) => {
                return Some(format!(
                    "the source has {} in memory slot {slot}, this VM {}: launch it with \
                     the same --object and --device pc-dimm",
                    show(&a),
                    b.as_ref().map_or("none".into(), show)
                ))
            }
            (None, Some(b)) => {
                return Some(format!(
                    "the source has no DIMM in memory slot {slot}, this VM {}",
                    show(&b)
                ))
            }
            (None, None) => {}
        }
    }
    None
}

/// Why `there` (the source) cannot come into `here`, if it cannot.
pub fn shape_mismatch(there: &MachineShape, here: &MachineShape) -> Option<String> {
    if there.memory != here.memory {
        return Some(format!(
            "the source has {} MiB of memory, this VM {} MiB",
            there.memory >> 20,
            here.memory >> 20
        ));
    }
    if there.vcpus != here.vcpus {
        return Some(format!(
            "the source has {} vCPUs, this VM {}",
            there.vcpus, here.vcpus
        ));
    }
    let count = |n: usize, what: &str| match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    };
    for (what, there, here) in [
        ("disk", &there.disks, &here.disks),
        ("NIC", &there.nics, &here.nics),
    ] {
        if there.len() != here.len() {
            return Some(format!(
                "the source has {}, this VM {}",
                count(there.len(), what),
                here.len()
            ));
        }
    }
    if there.disks != here.disks {
        return Some(format!(
            "the source has disks with {:?} queues, this VM {:?}",
            there.disks, here.disks
        ));
    }
    if there.nics != here.nics {
        return Some(format!(
            "the source has NICs with {:?} queue pairs, this VM {:?}",
            there.nics, here.nics
        ));
    }
    dimms_mismatch(&there.dimms, &here.dimms)
}

/// The destination's answer to the header.
pub fn write_verdict(w: &mut impl Write, verdict: Result<(), &str>) -> io::Result<()> {
    match verdict {
        Ok(()) => w.write_all(&[ACCEPT])?,
        Err(why) => {
            w.write_all(&[REJECT])?;
            write_text(w, why)?;
        }
    }
    w.flush()
}

pub fn read_verdict(r: &mut impl Read) -> Result<(), StreamError> {
    match read_u8(r).map_err(answer_error)? {
        ACCEPT => Ok(()),
        REJECT => Err(StreamError::Rejected(read_text(r)?)),
        other => Err(malformed(format!("answer {other} to the header"))),
    }
}

/// The destination's answer at the end: its VM runs (or failed to).
pub fn write_outcome(w: &mut impl Write, outcome: Result<(), &str>) -> io::Result<()> {
    match outcome {
        Ok(()) => w.write_all(&[RESUMED])?,
        Err(why) => {
            w.write_all(&[FAILED])?;
            write_text(w, why)?;
        }
    }
    w.flush()
}

pub fn read_outcome(r: &mut impl Read) -> Result<(), StreamError> {
    match read_u8(r).map_err(answer_error)? {
        RESUMED => Ok(()),
        FAILED => Err(StreamError::DestinationFailed(read_text(r)?)),
        other => Err(malformed(format!("answer {other} at the end"))),
    }
}

/// One record as the destination reads it; page data is read by the caller straight
/// into guest memory (`Pages` says how many pages follow). `Disk` is block migration's
/// (`crate::disks::records`).
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Pages {
        first: u64,
        count: u32,
    },
    Zero {
        first: u64,
        count: u32,
    },
    Xbzrle {
        page: u64,
        len: u16,
    },
    /// `len` bytes of a zlib stream follow that inflate to the page (`crate::compress`).
    Compressed {
        page: u64,
        len: u16,
    },
    PassEnd(u32),
    State {
        running: bool,
        len: u32,
    },
    End,
    Disk(DiskRecord),
    /// Postcopy may follow (the source has postcopy-ram on): answered as the header.
    Advise,
    /// The switch to postcopy: DISCARD records, then STATE, then pages until END.
    Listen,
    /// Pages the destination received but must not keep (the source has them anew, or
    /// never sent them): they arrive again in the postcopy phase.
    Discard {
        first: u64,
        count: u32,
    },
}

pub fn read_record(r: &mut impl Read) -> Result<Record, StreamError> {
    Ok(match read_u8(r)? {
        PAGES => {
            let first = read_u64(r)?;
            let count = read_u32(r)?;
            if count == 0 || count > MAX_PAGES_PER_RECORD {
                return Err(malformed(format!("a record of {count} pages")));
            }
            Record::Pages { first, count }
        }
        ZERO => {
            let first = read_u64(r)?;
            let count = read_u32(r)?;
            if count == 0 || count > MAX_ZERO_RUN {
                return Err(malformed(format!("a run of {count} zero pages")));
            }
            Record::Zero { first, count }
        }
        XBZRLE => {
            let page = read_u64(r)?;
            let len = read_u16(r)?;
            if usize::from(len) > PAGE {
                return Err(malformed(format!("an XBZRLE delta of {len} bytes")));
            }
            Record::Xbzrle { page, len }
        }
        COMPRESSED => {
            let page = read_u64(r)?;
            let len = read_u16(r)?;
            if len == 0 || usize::from(len) > MAX_COMPRESSED {
                return Err(malformed(format!("a compressed page of {len} bytes")));
            }
            Record::Compressed { page, len }
        }
        PASS_END => Record::PassEnd(read_u32(r)?),
        STATE => {
            let running = read_u8(r)? != 0;
            let len = read_u32(r)?;
            if len > MAX_STATE {
                return Err(malformed(format!("device state of {len} bytes")));
            }
            Record::State { running, len }
        }
        END => Record::End,
        ADVISE => Record::Advise,
        LISTEN => Record::Listen,
        DISCARD => {
            let first = read_u64(r)?;
            let count = read_u32(r)?;
            if count == 0 || count > MAX_ZERO_RUN {
                return Err(malformed(format!("a discard of {count} pages")));
            }
            Record::Discard { first, count }
        }
        disk @ (DISKS | DISK_DATA | DISK_ZERO) => match records::read(disk, r) {
            Ok(record) => Record::Disk(record),
            Err(RecordError::Io(e)) => return Err(e.into()),
            Err(RecordError::Malformed(why)) => return Err(malformed(why)),
        },
        other => return Err(malformed(format!("record type {other}"))),
    })
}

pub fn write_pages(w: &mut impl Write, first: u64, data: &[u8]) -> io::Result<usize> {
    let count = (data.len() / PAGE) as u32;
    w.write_all(&[PAGES])?;
    w.write_all(&first.to_le_bytes())?;
    w.write_all(&count.to_le_bytes())?;
    w.write_all(data)?;
    Ok(13 + data.len())
}

pub fn write_zero(w: &mut impl Write, first: u64, count: u32) -> io::Result<usize> {
    w.write_all(&[ZERO])?;
    w.write_all(&first.to_le_bytes())?;
    w.write_all(&count.to_le_bytes())?;
    Ok(13)
}

pub fn write_xbzrle(w: &mut impl Write, page: u64, delta: &[u8]) -> io::Result<usize> {
    w.write_all(&[XBZRLE])?;
    w.write_all(&page.to_le_bytes())?;
    w.write_all(&(delta.len() as u16).to_le_bytes())?;
    w.write_all(delta)?;
    Ok(11 + delta.len())
}

/// A page as the zlib stream `deflated` (1 to MAX_COMPRESSED bytes).
pub fn write_compressed(w: &mut impl Write, page: u64, deflated: &[u8]) -> io::Result<usize> {
    w.write_all(&[COMPRESSED])?;
    w.write_all(&page.to_le_bytes())?;
    w.write_all(&(deflated.len() as u16).to_le_bytes())?;
    w.write_all(deflated)?;
    Ok(11 + deflated.len())
}

pub fn write_pass_end(w: &mut impl Write, pass: u32) -> io::Result<usize> {
    w.write_all(&[PASS_END])?;
    w.write_all(&pass.to_le_bytes())?;
    Ok(5)
}

pub fn write_state(w: &mut impl Write, running: bool, state: &[u8]) -> io::Result<usize> {
    w.write_all(&[STATE, u8::from(running)])?;
    w.write_all(&(state.len() as u32).to_le_bytes())?;
    w.write_all(state)?;
    Ok(6 + state.len())
}

pub fn write_end(w: &mut impl Write) -> io::Result<usize> {
    w.write_all(&[END])?;
    Ok(1)
}

pub fn write_advise(w: &mut impl Write) -> io::Result<usize> {
    w.write_all(&[ADVISE])?;
    Ok(1)
}

pub fn write_listen(w: &mut impl Write) -> io::Result<usize> {
    w.write_all(&[LISTEN])?;
    Ok(1)
}

pub fn write_discard(w: &mut impl Write, first: u64, count: u32) -> io::Result<usize> {
    w.write_all(&[DISCARD])?;
    w.write_all(&first.to_le_bytes())?;
    w.write_all(&count.to_le_bytes())?;
    Ok(13)
}

/// What the destination says on the return path during postcopy.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The VM runs there (or failed to start: the source may run it again).
    Outcome(Result<(), String>),
    /// These pages are waited for.
    Request { first: u64, count: u32 },
    /// Every page is placed: the migration is complete.
    Complete,
}

pub fn write_request(w: &mut impl Write, first: u64, count: u32) -> io::Result<()> {
    let mut b = [0u8; 13];
    b[0] = REQUEST;
    b[1..9].copy_from_slice(&first.to_le_bytes());
    b[9..].copy_from_slice(&count.to_le_bytes());
    // One write: requests and the outcome come from different threads.
    w.write_all(&b)?;
    w.flush()
}

pub fn write_complete(w: &mut impl Write) -> io::Result<()> {
    w.write_all(&[COMPLETE])?;
    w.flush()
}

/// The next answer on postcopy's return path (the source reads them on a thread).
pub fn read_answer(r: &mut impl Read) -> Result<Answer, StreamError> {
    Ok(match read_u8(r).map_err(answer_error)? {
        RESUMED => Answer::Outcome(Ok(())),
        FAILED => Answer::Outcome(Err(read_text(r)?)),
        REQUEST => {
            let first = read_u64(r)?;
            let count = read_u32(r)?;
            if count == 0 || count > MAX_PAGES_PER_RECORD {
                return Err(malformed(format!("a request for {count} pages")));
            }
            Answer::Request { first, count }
        }
        COMPLETE => Answer::Complete,
        other => return Err(malformed(format!("answer {other} during postcopy"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> MachineShape {
        MachineShape {
            memory: 256 << 20,
            vcpus: 2,
            disks: vec![1, 4],
            nics: vec![1],
            dimms: vec![DimmLaunch {
                slot: 1,
                addr: 1 << 32,
                size: 128 << 20,
            }],
        }
    }

    #[test]
    fn header_round_trips_and_mismatches_are_named() {
        let mut buf = Vec::new();
        write_header(&mut buf, &shape()).unwrap();
        let read = read_header(&mut buf.as_slice()).unwrap();
        assert_eq!(read, shape());
        let mut other = shape();
        other.memory = 128 << 20;
        assert_eq!(
            shape_mismatch(&shape(), &other).unwrap(),
            "the source has 256 MiB of memory, this VM 128 MiB"
        );
        other = shape();
        other.disks.pop();
        assert_eq!(
            shape_mismatch(&shape(), &other).unwrap(),
            "the source has 2 disks, this VM 1"
        );
        other.disks.push(2);
        assert_eq!(
            shape_mismatch(&shape(), &other).unwrap(),
            "the source has disks with [1, 4] queues, this VM [1, 2]"
        );
        assert!(shape_mismatch(&shape(), &shape()).is_none());
        // The DIMMs: none here, another address, another slot.
        other = shape();
        other.dimms.clear();
        assert_eq!(
            shape_mismatch(&shape(), &other).unwrap(),
            "the source has a DIMM of 128 MiB at 0x100000000 in memory slot 1, this VM none: \
             launch it with the same --object and --device pc-dimm"
        );
        other.dimms = vec![DimmLaunch {
            addr: 5 << 30,
            ..shape().dimms[0]
        }];
        assert_eq!(
            shape_mismatch(&shape(), &other).unwrap(),
            "the source has a DIMM of 128 MiB at 0x100000000 in memory slot 1, this VM a DIMM \
             of 128 MiB at 0x140000000: launch it with the same --object and --device pc-dimm"
        );
        other.dimms = vec![DimmLaunch {
            slot: 0,
            ..shape().dimms[0]
        }];
        assert_eq!(
            shape_mismatch(&shape(), &other).unwrap(),
            "the source has no DIMM in memory slot 0, this VM a DIMM of 128 MiB at 0x100000000"
        );
        assert_eq!(
            shape_mismatch(&other, &shape()).unwrap(),
            "the source has a DIMM of 128 MiB at 0x100000000 in memory slot 0, this VM none: \
             launch it with the same --object and --device pc-dimm"
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(matches!(
            read_header(&mut &b"QEVM\0\0\0\x03xxxxxxxx"[..]),
            Err(StreamError::Magic)
        ));
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            read_header(&mut buf.as_slice()),
            Err(StreamError::Version(9))
        ));
        let mut buf = Vec::new();
        write_header(&mut buf, &shape()).unwrap();
        buf.truncate(buf.len() - 3);
        assert!(matches!(
            read_header(&mut buf.as_slice()),
            Err(StreamError::Io(_))
        ));
        // A list longer than any VM has.
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&0u64.to_le_bytes());
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_header(&mut buf.as_slice()),
            Err(StreamError::Malformed(_))
        ));
        // More DIMMs than there are memory slots.
        let mut buf = Vec::new();
        let mut none = shape();
        none.dimms.clear();
        write_header(&mut buf, &none).unwrap();
        buf.truncate(buf.len() - 4);
        buf.extend_from_slice(&257u32.to_le_bytes());
        assert!(matches!(
            read_header(&mut buf.as_slice()),
            Err(StreamError::Malformed(m)) if m.contains("257 DIMMs")
        ));
    }

    #[test]
    fn records_round_trip_and_limits_hold() {
        let mut buf = Vec::new();
        write_pages(&mut buf, 7, &[1u8; PAGE * 2]).unwrap();
        write_zero(&mut buf, 9, 100).unwrap();
        write_pass_end(&mut buf, 3).unwrap();
        write_state(&mut buf, true, b"abc").unwrap();
        write_end(&mut buf).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(
            read_record(&mut r).unwrap(),
            Record::Pages { first: 7, count: 2 }
        );
        r = &r[PAGE * 2..];
        assert_eq!(
            read_record(&mut r).unwrap(),
            Record::Zero {
                first: 9,
                count: 100
            }
        );
        assert_eq!(read_record(&mut r).unwrap(), Record::PassEnd(3));
        assert_eq!(
            read_record(&mut r).unwrap(),
            Record::State {
                running: true,
                len: 3
            }
        );
        r = &r[3..];
        assert_eq!(read_record(&mut r).unwrap(), Record::End);
        for bad in [
            vec![PAGES, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![PAGES, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0],
            vec![STATE, 1, 0xff, 0xff, 0xff, 0xff],
            vec![XBZRLE, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
            vec![COMPRESSED, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![COMPRESSED, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x10],
            vec![COMPRESSED, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
            vec![77],
        ] {
            assert!(matches!(
                read_record(&mut bad.as_slice()),
                Err(StreamError::Malformed(_))
            ));
        }
    }

    #[test]
    fn verdicts_and_outcomes_carry_reasons() {
        let mut buf = Vec::new();
        write_verdict(&mut buf, Err("too small")).unwrap();
        match read_verdict(&mut buf.as_slice()) {
            Err(StreamError::Rejected(why)) => assert_eq!(why, "too small"),
            other => panic!("{other:?}"),
        }
        let mut buf = Vec::new();
        write_outcome(&mut buf, Ok(())).unwrap();
        assert!(read_outcome(&mut buf.as_slice()).is_ok());
        assert!(read_outcome(&mut &[][..]).is_err());
    }
}
