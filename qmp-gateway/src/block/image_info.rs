//! What a qcow2 node's image says about itself, read once when the node is opened (by
//! block-daemon's qcow2 library: the gateway never parses qcow2 itself): virtual size,
//! cluster size, features, the backing file its header names and its internal
//! snapshots, in the shape of QMP's ImageInfo members. Queries show what is kept here
//! and never read the image.

use std::fs::File;
use std::os::fd::OwnedFd;

use block_daemon::formats::qcow2::header::Header;
use block_daemon::formats::qcow2::snapshot;
use serde_json::{json, Value};

use super::error::BlockError;

/// QMP's SnapshotInfo.
pub fn snapshot_info(s: &ipc::SnapshotRecord) -> Value {
    let mut v = json!({
        "id": s.id,
        "name": s.name,
        "vm-state-size": s.vm_state_size,
        "date-sec": s.date_sec,
        "date-nsec": s.date_nsec,
        "vm-clock-sec": s.vm_clock_nsec / 1_000_000_000,
        "vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000,
    });
    if let Some(icount) = s.icount {
        v["icount"] = json!(icount);
    }
    v
}

/// A qcow2 image's header facts and snapshot table.
#[derive(Clone, Debug)]
pub struct Qcow2Image {
    pub virtual_size: u64,
    pub cluster_size: u64,
    pub version: u32,
    pub lazy_refcounts: bool,
    pub refcount_bits: u32,
    pub corrupt: bool,
    pub dirty: bool,
    pub extended_l2: bool,
    pub compression_type: u8,
    /// The backing file as the header names it.
    pub backing_file: Option<String>,
    /// The backing file's format as the header names it.
    pub backing_format: Option<String>,
    /// QMP's SnapshotInfo of each internal snapshot.
    pub snapshots: Vec<Value>,
}

impl Qcow2Image {
    /// Reads the header and snapshot table of the image behind `fd`, refusing what
    /// Flotilla cannot serve with QEMU's words.
    pub fn read(fd: &OwnedFd) -> Result<Qcow2Image, BlockError> {
        let file = File::from(fd.try_clone().map_err(BlockError::DupImage)?);
        let image = |e: block_daemon::formats::FormatError| BlockError::Image(e.to_string());
        let header = Header::read(&file).map_err(image)?;
        header.check_supported().map_err(image)?;
        let snapshots = snapshot::list(&file, &header)
            .map_err(image)?
            .iter()
            .map(|s| snapshot_info(&block_daemon::snapshots::record(s)))
            .collect();
        Ok(Qcow2Image {
            virtual_size: header.size,
            cluster_size: header.cluster_size(),
            version: header.version,
            lazy_refcounts: header.lazy_refcounts(),
            refcount_bits: header.refcount_bits(),
            corrupt: header.corrupt(),
            dirty: header.dirty(),
            extended_l2: header.extended_l2,
            compression_type: header.compression_type,
            backing_file: header.backing_file,
            backing_format: header.backing_format,
            snapshots,
        })
    }

    /// ImageInfoSpecific for qcow2.
    pub fn format_specific(&self) -> Value {
        let compat = if self.version >= 3 { "1.1" } else { "0.10" };
        let mut data = json!({"compat": compat, "refcount-bits": self.refcount_bits});
        if self.version >= 3 {
            // QEMU shows these for compat 1.1 images only.
            data["lazy-refcounts"] = json!(self.lazy_refcounts);
            data["corrupt"] = json!(self.corrupt);
            data["extended-l2"] = json!(self.extended_l2);
        }
        data["compression-type"] = json!(if self.compression_type == 0 {
            "zlib"
        } else {
            "zstd"
        });
        json!({"type": "qcow2", "data": data})
    }
}
