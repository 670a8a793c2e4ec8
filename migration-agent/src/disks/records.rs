//! The stream's block migration records (docs/migration-stream.md, "Block migration"):
//!
//! | type | name | fields after the type byte |
//! |---|---|---|
//! | 7 | DISKS | `u8` flags (bit 0: incremental), `u32` count N, N × (`u32` disk, `u64` size) |
//! | 8 | DISK_DATA | `u32` disk, `u64` offset, `u32` len, len bytes |
//! | 9 | DISK_ZERO | `u32` disk, `u64` offset, `u64` len |
//!
//! What `read` checks here is what a record says on its own (counts, flags, alignment,
//! lengths); the receiver checks the rest against the DISKS record it got. The stream's
//! `read_record` hands these types here and carries what comes back as `Record::Disk`.

use std::io::{self, Read, Write};

use crate::wire::{read_u32, read_u64, read_u8};
use ipc::disk_channel::{MAX_IO, MAX_ZERO, SECTOR};
use ipc::{MigratedDisk, MigratedDisks};

pub const DISKS: u8 = 7;
pub const DISK_DATA: u8 = 8;
pub const DISK_ZERO: u8 = 9;
/// Most disks one DISKS record lists (as many as a header's shape may).
const MAX_DISKS: u32 = 1024;
const INCREMENTAL: u8 = 1;

/// A block migration record as the destination reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum DiskRecord {
    Disks(MigratedDisks),
    /// `len` bytes of the disk follow (the caller reads them).
    Data {
        disk: u32,
        offset: u64,
        len: u32,
    },
    Zero {
        disk: u32,
        offset: u64,
        len: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// What is wrong with it (the stream's "malformed migration stream: ...").
    #[error("{0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> RecordError {
    RecordError::Malformed(what.into())
}

pub fn write_disks(w: &mut impl Write, d: &MigratedDisks) -> io::Result<usize> {
    let mut b = vec![DISKS, if d.incremental { INCREMENTAL } else { 0 }];
    b.extend_from_slice(&(d.disks.len() as u32).to_le_bytes());
    for disk in &d.disks {
        b.extend_from_slice(&disk.index.to_le_bytes());
        b.extend_from_slice(&disk.size.to_le_bytes());
    }
    w.write_all(&b)?;
    Ok(b.len())
}

pub fn write_data(w: &mut impl Write, disk: u32, offset: u64, data: &[u8]) -> io::Result<usize> {
    let mut b = Vec::with_capacity(17);
    b.push(DISK_DATA);
    b.extend_from_slice(&disk.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    w.write_all(&b)?;
    w.write_all(data)?;
    Ok(17 + data.len())
}

pub fn write_zero(w: &mut impl Write, disk: u32, offset: u64, len: u64) -> io::Result<usize> {
    let mut b = Vec::with_capacity(21);
    b.push(DISK_ZERO);
    b.extend_from_slice(&disk.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    w.write_all(&b)?;
    Ok(21)
}

/// A range's own checks: whole sectors, not empty, at most `max` bytes.
fn check_range(what: &str, disk: u32, offset: u64, len: u64, max: u64) -> Result<(), RecordError> {
    if len == 0 || len > max {
        return Err(malformed(format!("{what} of {len} bytes for disk {disk}")));
    }
    if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
        return Err(malformed(format!(
            "{what} at {offset}+{len} of disk {disk}: not whole sectors"
        )));
    }
    Ok(())
}

/// The record of type `kind` (DISKS, DISK_DATA or DISK_ZERO), after its type byte; a
/// DISK_DATA's bytes are left for the caller.
pub fn read(kind: u8, r: &mut impl Read) -> Result<DiskRecord, RecordError> {
    match kind {
        DISKS => {
            let flags = read_u8(r)?;
            if flags & !INCREMENTAL != 0 {
                return Err(malformed(format!("DISKS flags {flags:#x}")));
            }
            let n = read_u32(r)?;
            if n > MAX_DISKS {
                return Err(malformed(format!("{n} disks")));
            }
            let mut disks: Vec<MigratedDisk> = Vec::new();
            for _ in 0..n {
                let (index, size) = (read_u32(r)?, read_u64(r)?);
                if size == 0 || !size.is_multiple_of(SECTOR) {
                    return Err(malformed(format!("disk {index} of {size} bytes")));
                }
                if disks.last().is_some_and(|d| d.index >= index) {
                    return Err(malformed(format!("disk {index} listed out of order")));
                }
                disks.push(MigratedDisk { index, size });
            }
            Ok(DiskRecord::Disks(MigratedDisks {
                incremental: flags & INCREMENTAL != 0,
                // Not in the record: how the source sends zeroes is its own affair.
                zero_blocks: false,
                disks,
            }))
        }
        DISK_DATA => {
            let (disk, offset, len) = (read_u32(r)?, read_u64(r)?, read_u32(r)?);
            check_range("disk data", disk, offset, u64::from(len), u64::from(MAX_IO))?;
            Ok(DiskRecord::Data { disk, offset, len })
        }
        DISK_ZERO => {
            let (disk, offset, len) = (read_u32(r)?, read_u64(r)?, read_u64(r)?);
            check_range("a disk zero run", disk, offset, len, MAX_ZERO)?;
            Ok(DiskRecord::Zero { disk, offset, len })
        }
        other => Err(malformed(format!("record type {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record from `r`, its type byte first.
    fn read_record(r: &mut &[u8]) -> Result<DiskRecord, RecordError> {
        let kind = read_u8(r)?;
        read(kind, r)
    }

    fn disks() -> MigratedDisks {
        MigratedDisks {
            incremental: true,
            zero_blocks: false,
            disks: vec![
                MigratedDisk {
                    index: 0,
                    size: 1 << 20,
                },
                MigratedDisk {
                    index: 2,
                    size: 512,
                },
            ],
        }
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        assert_eq!(write_disks(&mut buf, &disks()).unwrap(), buf.len());
        assert_eq!(write_data(&mut buf, 2, 0, &[7; 512]).unwrap(), 17 + 512);
        assert_eq!(write_zero(&mut buf, 0, 4096, 1 << 20).unwrap(), 21);
        let mut r = buf.as_slice();
        assert_eq!(read_record(&mut r).unwrap(), DiskRecord::Disks(disks()));
        assert_eq!(
            read_record(&mut r).unwrap(),
            DiskRecord::Data {
                disk: 2,
                offset: 0,
                len: 512
            }
        );
        r = &r[512..];
        assert_eq!(
            read_record(&mut r).unwrap(),
            DiskRecord::Zero {
                disk: 0,
                offset: 4096,
                len: 1 << 20
            }
        );
        assert!(r.is_empty());
    }

    /// A DISKS record of `flags` listing `(index, size)` pairs, as bytes.
    fn disks_record(flags: u8, list: &[(u32, u64)]) -> Vec<u8> {
        let mut b = vec![DISKS, flags];
        b.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for (i, s) in list {
            b.extend_from_slice(&i.to_le_bytes());
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    fn data_record(disk: u32, offset: u64, len: u32) -> Vec<u8> {
        let mut b = vec![DISK_DATA];
        b.extend_from_slice(&disk.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b
    }

    fn zero_record(disk: u32, offset: u64, len: u64) -> Vec<u8> {
        let mut b = vec![DISK_ZERO];
        b.extend_from_slice(&disk.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b
    }

    #[test]
    fn malformed_disk_records_are_refused() {
        let mut too_many = vec![DISKS, 0];
        too_many.extend_from_slice(&(MAX_DISKS + 1).to_le_bytes());
        for (bad, why) in [
            (disks_record(2, &[]), "DISKS flags 0x2"),
            (too_many, "1025 disks"),
            (disks_record(0, &[(0, 0)]), "disk 0 of 0 bytes"),
            (disks_record(0, &[(0, 1000)]), "disk 0 of 1000 bytes"),
            (
                disks_record(0, &[(1, 512), (1, 512)]),
                "disk 1 listed out of order",
            ),
            (data_record(0, 0, 0), "disk data of 0 bytes for disk 0"),
            (
                data_record(0, 0, MAX_IO + 512),
                "disk data of 1049088 bytes for disk 0",
            ),
            (
                data_record(3, 100, 512),
                "disk data at 100+512 of disk 3: not whole sectors",
            ),
            (
                zero_record(0, 0, MAX_ZERO + 512),
                "a disk zero run of 1073742336 bytes for disk 0",
            ),
            (
                zero_record(0, 512, 700),
                "a disk zero run at 512+700 of disk 0: not whole sectors",
            ),
        ] {
            match read_record(&mut bad.as_slice()) {
                Err(RecordError::Malformed(w)) => assert_eq!(w, why),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // Cut short.
        let mut cut = disks_record(0, &[(0, 512)]);
        cut.pop();
        assert!(matches!(
            read_record(&mut cut.as_slice()),
            Err(RecordError::Io(_))
        ));
    }
}
