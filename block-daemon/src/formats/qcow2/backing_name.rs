//! Rewriting the backing file an image's header names (QEMU's change-backing-file,
//! qemu-img rebase -u): the header cluster is built again with its extensions as they
//! are, the backing format extension replaced (or dropped with the name), the name
//! after them, and written in one piece, as QEMU's qcow2_update_header does. The data
//! and the other metadata do not change.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::formats::qcow2::header::Header;
use crate::formats::qcow2::io::write_at;
use crate::formats::qcow2::layout::{
    be32, put32, put64, EXT_BACKING_FORMAT, MAX_BACKING_FILE_NAME, OFF_BACKING_FILE_OFFSET,
};
use crate::formats::FormatError;

/// Names `backing` (empty: none) with `format` in the header of the image in `file`.
pub fn change(file: &File, backing: &str, format: Option<&str>) -> Result<(), FormatError> {
    let header = Header::read(file)?;
    if backing.len() > MAX_BACKING_FILE_NAME as usize {
        return Err(FormatError::Invalid("Backing file name too long".into()));
    }
    let cs = header.cluster_size() as usize;
    let mut cluster = vec![0u8; cs];
    file.read_exact_at(&mut cluster, 0)?;
    let start = header.header_length as usize;
    // The extensions but the backing format's, as they are on disk.
    let mut kept = Vec::new();
    let mut at = start;
    loop {
        if at + 8 > cs {
            return Err(FormatError::Invalid(
                "qcow2 header extensions run past the first cluster".into(),
            ));
        }
        let kind = be32(&cluster, at);
        let len = be32(&cluster, at + 4) as usize;
        if kind == 0 {
            break;
        }
        let next = at + 8 + len.next_multiple_of(8);
        if next > cs {
            return Err(FormatError::Invalid(
                "qcow2 header extensions run past the first cluster".into(),
            ));
        }
        if kind != EXT_BACKING_FORMAT {
            kept.extend_from_slice(&cluster[at..next]);
        }
        at = next;
    }
    if let Some(f) = format.filter(|_| !backing.is_empty()) {
        let mut ext = vec![0u8; 8 + f.len().next_multiple_of(8)];
        put32(&mut ext, 0, EXT_BACKING_FORMAT);
        put32(&mut ext, 4, f.len() as u32);
        ext[8..8 + f.len()].copy_from_slice(f.as_bytes());
        kept.extend_from_slice(&ext);
    }
    kept.extend_from_slice(&[0u8; 8]);
    let name_at = start + kept.len();
    if name_at + backing.len() > cs {
        return Err(FormatError::Io(std::io::Error::from_raw_os_error(
            libc::ENOSPC,
        )));
    }
    cluster[start..].fill(0);
    cluster[start..name_at].copy_from_slice(&kept);
    cluster[name_at..name_at + backing.len()].copy_from_slice(backing.as_bytes());
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
        change(&rw(), "base.raw", Some("raw")).unwrap();
        let info = qemu_img(&["info", "-U", t]);
        assert!(info.contains("backing file: base.raw"), "{info}");
        assert!(qemu_img(&["check", t]).contains("No errors were found"));
        change(&rw(), "/some/other/name.img", Some("qcow2")).unwrap();
        let info = qemu_img(&["info", "-U", t]);
        assert!(
            info.contains("backing file: /some/other/name.img\n"),
            "{info}"
        );
        assert!(info.contains("backing file format: qcow2\n"), "{info}");
        assert!(info.contains("keep"), "{info}");
        change(&rw(), "", None).unwrap();
        let info = qemu_img(&["info", "-U", t]);
        assert!(!info.contains("backing file"), "{info}");
        assert!(qemu_img(&["check", t]).contains("No errors were found"));
        let long = "x".repeat(MAX_BACKING_FILE_NAME as usize + 1);
        assert!(change(&rw(), &long, None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
