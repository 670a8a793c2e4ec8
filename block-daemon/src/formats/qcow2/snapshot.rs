//! The internal snapshot table: reading it (`list`, QEMU's qcow2_read_snapshots with
//! its checks and texts) and encoding it for a rewrite.

use std::fs::File;

use crate::formats::qcow2::header::{validate_table, Header};
use crate::formats::qcow2::io::read_meta;
use crate::formats::qcow2::layout::{
    be16, be32, be64, put16, put32, put64, MAX_L1_BYTES, MAX_SNAPSHOTS_BYTES,
    MAX_SNAPSHOT_EXTRA_DATA, SNAPSHOT_HEADER_LEN,
};
use crate::formats::FormatError;

/// One internal snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub vm_state_size: u64,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    /// Instructions executed (record/replay), when the entry has it.
    pub icount: Option<u64>,
    /// The guest size when the snapshot was taken.
    pub disk_size: u64,
    pub l1_table_offset: u64,
    pub l1_size: u32,
    /// Extra data this implementation does not know, kept for a rewrite.
    pub unknown_extra: Vec<u8>,
}

/// Reads the snapshot table `header` names.
pub fn list(file: &File, header: &Header) -> Result<Vec<SnapshotInfo>, FormatError> {
    Ok(read_table(file, header)?.0)
}

/// The snapshots and the table's size in bytes.
pub fn read_table(file: &File, header: &Header) -> Result<(Vec<SnapshotInfo>, u64), FormatError> {
    let start = header.snapshots_offset;
    let mut offset = start;
    let mut out = Vec::with_capacity(header.nb_snapshots.min(1024) as usize);
    for i in 0..header.nb_snapshots {
        offset = offset.next_multiple_of(8);
        let mut h = [0u8; SNAPSHOT_HEADER_LEN as usize];
        read_meta(file, offset, &mut h, "Snapshot table")?;
        offset += SNAPSHOT_HEADER_LEN;
        let l1_table_offset = be64(&h, 0);
        let l1_size = be32(&h, 8);
        let id_len = be16(&h, 12);
        let name_len = be16(&h, 14);
        let extra_len = be32(&h, 36);
        if extra_len > MAX_SNAPSHOT_EXTRA_DATA {
            return Err(FormatError::Invalid(format!(
                "Too much extra metadata in snapshot table entry {i}"
            )));
        }
        let mut extra = vec![0u8; extra_len as usize];
        read_meta(file, offset, &mut extra, "Snapshot table")?;
        offset += u64::from(extra_len);
        let mut id = vec![0u8; usize::from(id_len)];
        read_meta(file, offset, &mut id, "Snapshot table")?;
        offset += u64::from(id_len);
        let mut name = vec![0u8; usize::from(name_len)];
        read_meta(file, offset, &mut name, "Snapshot table")?;
        offset += u64::from(name_len);
        if offset - start > MAX_SNAPSHOTS_BYTES {
            return Err(FormatError::Invalid("Snapshot table is too big".into()));
        }
        validate_table(
            l1_table_offset,
            u64::from(l1_size),
            8,
            MAX_L1_BYTES,
            header.cluster_size(),
            "Snapshot L1 table",
        )?;
        let mut vm_state_size = u64::from(be32(&h, 32));
        let mut disk_size = header.size;
        let mut icount = None;
        if extra.len() >= 8 {
            vm_state_size = be64(&extra, 0);
        }
        if extra.len() >= 16 {
            disk_size = be64(&extra, 8);
        }
        if extra.len() >= 24 {
            let v = be64(&extra, 16);
            icount = (v != u64::MAX).then_some(v);
        }
        out.push(SnapshotInfo {
            id: String::from_utf8_lossy(&id).into_owned(),
            name: String::from_utf8_lossy(&name).into_owned(),
            vm_state_size,
            date_sec: be32(&h, 16),
            date_nsec: be32(&h, 20),
            vm_clock_nsec: be64(&h, 24),
            icount,
            disk_size,
            l1_table_offset,
            l1_size,
            unknown_extra: extra.get(24..).map(<[u8]>::to_vec).unwrap_or_default(),
        });
    }
    Ok((out, offset - start))
}

/// Encodes a snapshot table as QEMU writes it (24 bytes of extra data: large vm state
/// size, disk size, icount; unknown extra data kept).
pub fn encode(snaps: &[SnapshotInfo]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in snaps {
        out.resize(out.len().next_multiple_of(8), 0);
        let extra_len = 24 + s.unknown_extra.len();
        let mut h = [0u8; SNAPSHOT_HEADER_LEN as usize];
        put64(&mut h, 0, s.l1_table_offset);
        put32(&mut h, 8, s.l1_size);
        put16(&mut h, 12, s.id.len() as u16);
        put16(&mut h, 14, s.name.len() as u16);
        put32(&mut h, 16, s.date_sec);
        put32(&mut h, 20, s.date_nsec);
        put64(&mut h, 24, s.vm_clock_nsec);
        put32(&mut h, 32, u32::try_from(s.vm_state_size).unwrap_or(0));
        put32(&mut h, 36, extra_len as u32);
        out.extend_from_slice(&h);
        let mut e = [0u8; 24];
        put64(&mut e, 0, s.vm_state_size);
        put64(&mut e, 8, s.disk_size);
        put64(&mut e, 16, s.icount.unwrap_or(u64::MAX));
        out.extend_from_slice(&e);
        out.extend_from_slice(&s.unknown_extra);
        out.extend_from_slice(s.id.as_bytes());
        out.extend_from_slice(s.name.as_bytes());
    }
    out
}
