//! Freed clusters passed down to the file (discard=unmap), checked against QEMU 7.2:
//! qemu-io with `-d unmap` on a copy of the same image punches the same holes.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ipc::BlockCounters;

use super::concurrency::host_of;
use super::oracle::{check_clean, img_create, io, ok, s, TempDir};
use super::rw::open;
use crate::formats::qcow2::snapshot_ops::NewSnapshot;
use crate::formats::qcow2::Qcow2;
use crate::formats::Format;

/// The data ranges of the file (SEEK_DATA / SEEK_HOLE) from `from` on, and its
/// allocated blocks.
fn layout_from(p: &Path, from: i64) -> (Vec<(i64, i64)>, u64) {
    let f = File::open(p).unwrap();
    let end = f.metadata().unwrap().len() as i64;
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut at = 0;
    while at < end {
        // SAFETY: lseek on an fd `f` owns.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole > from {
            out.push((data.max(from), hole));
        }
        at = hole;
    }
    (
        out,
        std::os::unix::fs::MetadataExt::blocks(&f.metadata().unwrap()),
    )
}

fn layout(p: &Path) -> (Vec<(i64, i64)>, u64) {
    layout_from(p, 0)
}

fn passing(p: &Path) -> (Qcow2, Arc<BlockCounters>) {
    let counters = Arc::new(BlockCounters::create().unwrap());
    (
        open(p, None, true).pass_discards(counters.clone()),
        counters,
    )
}

fn counted(c: &BlockCounters) -> (u64, u64, u64) {
    let p = c.page();
    (
        p.discard_ok.load(Ordering::Relaxed),
        p.discard_bytes_ok.load(Ordering::Relaxed),
        p.discard_failed.load(Ordering::Relaxed),
    )
}

/// 2 MiB of data in a 16 MiB image, and a copy of it.
fn two_copies(d: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let a = d.path("qemu.qcow2");
    img_create(&a, "cluster_size=64k", "16M");
    io(&a, "write -P 0xaa 0 2M");
    let b = d.path("ours.qcow2");
    std::fs::copy(&a, &b).unwrap();
    (a, b)
}

#[test]
fn discard_and_unmapping_write_zeroes_punch_as_qemu() {
    let d = TempDir::new();
    let (qemu, ours) = two_copies(&d);
    let before = layout(&ours);
    ok(
        "qemu-io",
        &[
            "-d",
            "unmap",
            "-c",
            "discard 256k 768k",
            "-c",
            "write -z -u 1536k 128k",
            s(&qemu),
        ],
    );
    let (q, counters) = passing(&ours);
    // The data clusters (the metadata before them is written differently: QEMU writes
    // parts of a table cluster, which stays sparse).
    let data = host_of(&q, 0).unwrap() as i64;
    q.discard(256 << 10, 768 << 10).unwrap();
    q.write_zeroes(1536 << 10, 128 << 10, true).unwrap();
    q.flush().unwrap();
    // QSD with the same requests (through NBD, discard=unmap) counted 2 discards of
    // 917504 bytes in all on its file node: one merged range per request.
    assert_eq!(counted(&counters), (2, 917504, 0));
    drop(q);
    let after = layout(&ours);
    assert_eq!(
        layout_from(&ours, data).0,
        layout_from(&qemu, data).0,
        "the same holes as QEMU's"
    );
    assert!(after.1 < before.1, "blocks freed: {before:?} -> {after:?}");
    check_clean(&ours);
}

#[test]
fn nothing_is_punched_without_discard_unmap() {
    let d = TempDir::new();
    let (_, ours) = two_copies(&d);
    let before = layout(&ours);
    let q = open(&ours, None, true);
    q.discard(256 << 10, 768 << 10).unwrap();
    q.write_zeroes(1536 << 10, 128 << 10, true).unwrap();
    q.flush().unwrap();
    drop(q);
    assert_eq!(layout(&ours).0, before.0);
    // Write-zeroes without unmap keeps its clusters (zero flag, still allocated).
    let (q, counters) = passing(&ours);
    q.write_zeroes(0, 128 << 10, false).unwrap();
    q.flush().unwrap();
    assert_eq!(counted(&counters), (0, 0, 0));
    drop(q);
    assert_eq!(layout(&ours).0, before.0);
}

#[test]
fn clusters_a_snapshot_holds_are_punched_when_it_goes() {
    let d = TempDir::new();
    let (_, ours) = two_copies(&d);
    let (q, counters) = passing(&ours);
    let h = host_of(&q, 4).unwrap();
    q.snapshot_create(NewSnapshot {
        name: "s".into(),
        ..Default::default()
    })
    .unwrap();
    q.discard(4 << 16, 1 << 16).unwrap();
    q.flush().unwrap();
    let mut b = [0u8; 4];
    let f = File::open(&ours).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, h).unwrap();
    assert_eq!(b, [0xaa; 4], "the snapshot's cluster was punched");
    assert_eq!(counted(&counters).0, 0);
    q.snapshot_delete(None, Some("s")).unwrap();
    q.flush().unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, h).unwrap();
    assert_eq!(b, [0; 4], "not punched once the snapshot went");
    assert!(counted(&counters).0 >= 1);
    drop(q);
    check_clean(&ours);
}

#[test]
fn a_cluster_mapped_in_flight_is_punched_after_and_not_reused_before() {
    let d = TempDir::new();
    let (_, ours) = two_copies(&d);
    let (q, counters) = passing(&ours);
    let h = host_of(&q, 0).unwrap();
    let mapping = q.map(0, 4096, false).unwrap();
    q.discard(0, 1 << 16).unwrap();
    q.flush().unwrap();
    let f = File::open(&ours).unwrap();
    let mut b = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, h).unwrap();
    assert_eq!(b, [0xaa; 4], "punched under a read in flight");
    // Allocations meanwhile go elsewhere.
    q.write(100 << 16, &[7u8; 1 << 16]).unwrap();
    assert_ne!(host_of(&q, 100), Some(h));
    drop(mapping);
    q.flush().unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, h).unwrap();
    assert_eq!(b, [0; 4], "not punched once the mapping is gone");
    assert_eq!(counted(&counters), (1, 1 << 16, 0));
    drop(q);
    check_clean(&ours);
}

#[test]
fn a_freed_cluster_is_not_reused_before_its_punch() {
    // With lazy refcounts nothing syncs between a free and the next allocation: a
    // cluster handed out again before its punch would lose the data written to it.
    let d = TempDir::new();
    let p = d.path("lazy.qcow2");
    img_create(&p, "cluster_size=64k,lazy_refcounts=on", "16M");
    io(&p, "write -P 0xaa 0 2M");
    let (q, _) = passing(&p);
    let h = host_of(&q, 0).unwrap();
    q.discard(0, 1 << 16).unwrap();
    q.write(100 << 16, &[7u8; 1 << 16]).unwrap();
    q.flush().unwrap();
    let mut b = vec![0u8; 1 << 16];
    q.read(100 << 16, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 7), "data lost to a punch");
    assert_ne!(host_of(&q, 100), Some(h));
    drop(q);
    check_clean(&p);
}
