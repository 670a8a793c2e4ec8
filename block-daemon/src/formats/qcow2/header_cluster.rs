//! Rewriting the first cluster: the header, its extensions and the backing file name
//! after them. QEMU's change-backing-file (qemu-img rebase -u) replaces the name and
//! the backing format extension; storing persistent bitmaps replaces the bitmaps
//! extension. The cluster is built again with the other extensions as they are on disk
//! and written in one piece, as QEMU's qcow2_update_header does. The data and the other
//! metadata do not change.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::formats::qcow2::header::Header;
use crate::formats::qcow2::io::write_at;
use crate::formats::qcow2::layout::{
    be32, be64, put32, put64, EXT_BACKING_FORMAT, MAX_BACKING_FILE_NAME, OFF_BACKING_FILE_OFFSET,
};
use crate::formats::FormatError;

fn past_cluster() -> FormatError {
    FormatError::Invalid("qcow2 header extensions run past the first cluster".into())
}

/// The first cluster of the image in `file`, and where its extensions start.
fn read_cluster(file: &File) -> Result<(Vec<u8>, usize), FormatError> {
    let header = Header::read(file)?;
    let mut cluster = vec![0u8; header.cluster_size() as usize];
    file.read_exact_at(&mut cluster, 0)?;
    Ok((cluster, header.header_length as usize))
}

/// The extensions from `start` of `cluster`, each whole (type, length, data, padding).
fn extensions(cluster: &[u8], start: usize) -> Result<Vec<(u32, Vec<u8>)>, FormatError> {
    let mut out = Vec::new();
    let mut at = start;
    loop {
        if at + 8 > cluster.len() {
            return Err(past_cluster());
        }
        let kind = be32(cluster, at);
        let len = be32(cluster, at + 4) as usize;
        if kind == 0 {
            return Ok(out);
        }
        let next = at + 8 + len.next_multiple_of(8);
        if next > cluster.len() {
            return Err(past_cluster());
        }
        out.push((kind, cluster[at..next].to_vec()));
        at = next;
    }
}

/// One extension entry: type, length, `data`, padding.
fn extension(kind: u32, data: &[u8]) -> Vec<u8> {
    let mut ext = vec![0u8; 8 + data.len().next_multiple_of(8)];
    put32(&mut ext, 0, kind);
    put32(&mut ext, 4, data.len() as u32);
    ext[8..8 + data.len()].copy_from_slice(data);
    ext
}

/// Writes `cluster` with `exts`, the end marker and `backing` (empty: none) from
/// `start`, made durable.
fn write_cluster(
    file: &File,
    mut cluster: Vec<u8>,
    start: usize,
    exts: Vec<(u32, Vec<u8>)>,
    backing: &[u8],
) -> Result<(), FormatError> {
    let mut kept: Vec<u8> = exts.into_iter().flat_map(|(_, e)| e).collect();
    kept.extend_from_slice(&[0u8; 8]);
    let name_at = start + kept.len();
    if name_at + backing.len() > cluster.len() {
        return Err(FormatError::Io(std::io::Error::from_raw_os_error(
            libc::ENOSPC,
        )));
    }
    cluster[start..].fill(0);
    cluster[start..name_at].copy_from_slice(&kept);
    cluster[name_at..name_at + backing.len()].copy_from_slice(backing);
    let (offset, size) = if backing.is_empty() {
        (0, 0)
    } else {
        (name_at as u64, backing.len() as u32)
    };
    put64(&mut cluster, OFF_BACKING_FILE_OFFSET as usize, offset);
    put32(&mut cluster, OFF_BACKING_FILE_OFFSET as usize + 8, size);
    write_at(file, 0, &cluster)?;
    file.sync_data()?;
    Ok(())
}

/// Names `backing` (empty: none) with `format` in the header of the image in `file`.
pub fn change_backing(file: &File, backing: &str, format: Option<&str>) -> Result<(), FormatError> {
    if backing.len() > MAX_BACKING_FILE_NAME as usize {
        return Err(FormatError::Invalid("Backing file name too long".into()));
    }
    let (cluster, start) = read_cluster(file)?;
    let mut exts = extensions(&cluster, start)?;
    exts.retain(|(kind, _)| *kind != EXT_BACKING_FORMAT);
    if let Some(f) = format.filter(|_| !backing.is_empty()) {
        exts.push((
            EXT_BACKING_FORMAT,
            extension(EXT_BACKING_FORMAT, f.as_bytes()),
        ));
    }
    write_cluster(file, cluster, start, exts, backing.as_bytes())
}

/// Sets the extension of type `kind` to `data` (None: removes it), keeping the others
/// and the backing file name.
pub fn set_extension(file: &File, kind: u32, data: Option<&[u8]>) -> Result<(), FormatError> {
    let (cluster, start) = read_cluster(file)?;
    let mut exts = extensions(&cluster, start)?;
    let backing = {
        let offset = be64(&cluster, OFF_BACKING_FILE_OFFSET as usize) as usize;
        let len = be32(&cluster, OFF_BACKING_FILE_OFFSET as usize + 8) as usize;
        if offset == 0 {
            Vec::new()
        } else {
            cluster
                .get(offset..offset.saturating_add(len))
                .ok_or_else(past_cluster)?
                .to_vec()
        }
    };
    match exts.iter_mut().find(|(k, _)| *k == kind) {
        Some(e) => match data {
            Some(d) => e.1 = extension(kind, d),
            None => exts.retain(|(k, _)| *k != kind),
        },
        None => {
            if let Some(d) = data {
                exts.push((kind, extension(kind, d)));
            }
        }
    }
    write_cluster(file, cluster, start, exts, &backing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> String {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img (qemu-utils) is needed");
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_name_and_format_change_and_the_image_stays_clean() {
        let dir = std::env::temp_dir().join(format!("flotilla-rebase-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.raw");
        let top = dir.join("top.qcow2");
        let (b, t) = (base.to_str().unwrap(), top.to_str().unwrap());
        qemu_img(&["create", "-f", "raw", b, "1M"]);
        qemu_img(&["create", "-f", "qcow2", "-b", b, "-F", "raw", t]);
        qemu_img(&["snapshot", "-c", "keep", t]);
        let rw = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&top)
                .unwrap()
        };
        // A relative name of the same file: qemu-img still finds it.
        change_backing(&rw(), "base.raw", Some("raw")).unwrap();
        let info = qemu_img(&["info", "-U", t]);
        assert!(info.contains("backing file: base.raw"), "{info}");
        assert!(qemu_img(&["check", t]).contains("No errors were found"));
        change_backing(&rw(), "/some/other/name.img", Some("qcow2")).unwrap();
        let info = qemu_img(&["info", "-U", t]);
        assert!(
            info.contains("backing file: /some/other/name.img\n"),
            "{info}"
        );
        assert!(info.contains("backing file format: qcow2\n"), "{info}");
        assert!(info.contains("keep"), "{info}");
        change_backing(&rw(), "", None).unwrap();
        let info = qemu_img(&["info", "-U", t]);
        assert!(!info.contains("backing file"), "{info}");
        assert!(qemu_img(&["check", t]).contains("No errors were found"));
        let long = "x".repeat(MAX_BACKING_FILE_NAME as usize + 1);
        assert!(change_backing(&rw(), &long, None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
