//! Early links (`early_link`): an allocating O_DIRECT write into a fresh cluster with
//! nothing to copy puts its L2 entry in flight at map time, next to its data; a
//! backing file under the cluster keeps the ordered way; a join waits for the entry;
//! one early link at a time; a failed entry write leaves a cluster that is linked or
//! leaked, never handed out again. qemu-img check, map and compare are the oracles.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use super::concurrency::host_of;
use super::oracle::{check_no_corruption, compare_with_raw, img_create, ok, s, Rng, TempDir};
use crate::formats::direct::AlignedBuf;
use crate::formats::qcow2::Qcow2;
use crate::formats::{Extent, Format, Mapping};

const CS: u64 = 65536;

fn open_direct(p: &Path, backing: Option<Arc<dyn Format>>) -> Qcow2 {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .unwrap();
    Qcow2::open(f, backing, &ipc::Qcow2Options::default(), true).unwrap()
}

fn in_flight(q: &Qcow2) -> Option<u64> {
    q.with_meta(|m| m.links.as_ref().and_then(|l| l.in_flight()))
}

/// The engine's part: `byte` into the mapping's one file extent, O_DIRECT.
fn write_direct(m: &Mapping, byte: u8) {
    let [Extent::File { fd, offset, len }] = m.extents[..] else {
        panic!("not one file extent: {:?}", m.extents);
    };
    let mut buf = AlignedBuf::new(len as usize, 4096).unwrap();
    buf.as_mut_slice().fill(byte);
    // SAFETY: fd is the image's, held open by the Qcow2; buf holds len bytes.
    let r = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), len as usize, offset as i64) };
    assert_eq!(r, len as isize);
}

/// Whether qemu-img map says guest cluster `gc` is allocated in the image itself.
fn mapped_by_qemu(p: &Path, gc: u64) -> bool {
    let out = ok("qemu-img", &["map", "--output=json", "-U", s(p)]);
    out.lines().any(|l| {
        let field = |k: &str| -> Option<u64> {
            let at = l.find(&format!("\"{k}\": "))? + k.len() + 4;
            l[at..].split([',', ' ', '}']).next()?.parse().ok()
        };
        let (Some(start), Some(length)) = (field("start"), field("length")) else {
            return false;
        };
        l.contains("\"data\": true")
            && l.contains("\"depth\": 0")
            && (start..start + length).contains(&(gc * CS))
    })
}

#[test]
fn a_fresh_allocation_puts_its_entry_in_flight_with_its_data() {
    let d = TempDir::new();
    let p = d.path("e.qcow2");
    img_create(&p, "cluster_size=64k", "16M");
    let q = open_direct(&p, None);
    let mut mirror = vec![0u8; 16 << 20];
    let m = q.map(3 * CS + 8192, 4096, true).unwrap();
    assert!(m.guard.has_commit());
    // The entry went to the kernel before the data did (the test has not written it).
    assert_eq!(in_flight(&q), Some(3), "no early link for a fresh cluster");
    q.with_meta(|m| m.settle_early());
    assert!(
        mapped_by_qemu(&p, 3),
        "the entry is not in the file before the data"
    );
    write_direct(&m, 0x5a);
    mirror[(3 * CS + 8192) as usize..(3 * CS + 12288) as usize].fill(0x5a);
    assert!(q.finish_writes(vec![(m.guard, true)])[0].is_ok());
    assert!(host_of(&q, 3).is_some());
    // A second write into the linked cluster goes in place.
    let m2 = q.map(3 * CS, 4096, true).unwrap();
    assert!(!m2.guard.has_commit());
    drop(m2);
    q.close().unwrap();
    drop(q);
    compare_with_raw(&d, &p, &mirror);
}

/// The crash between the two writes that the order used to prevent: the entry is in
/// the file, the data never came. The cluster reads as zeroes, as it did before.
#[test]
fn an_entry_without_its_data_names_a_cluster_of_zeroes() {
    let d = TempDir::new();
    let p = d.path("z.qcow2");
    img_create(&p, "cluster_size=64k", "16M");
    let q = open_direct(&p, None);
    let m = q.map(5 * CS + 4096, 4096, true).unwrap();
    assert_eq!(in_flight(&q), Some(5));
    q.with_meta(|m| m.settle_early());
    // The process dies: the data write never happens, nothing else is written.
    std::mem::forget(m);
    std::mem::forget(q);
    assert!(mapped_by_qemu(&p, 5), "the entry did not reach the file");
    check_no_corruption(&p);
    let raw = d.path("zeroes.raw");
    std::fs::write(&raw, vec![0u8; 16 << 20]).unwrap();
    ok(
        "qemu-img",
        &["compare", "-U", "-f", "qcow2", "-F", "raw", s(&p), s(&raw)],
    );
}

#[test]
fn a_backing_file_under_the_cluster_keeps_the_order() {
    let d = TempDir::new();
    let base = d.path("base.qcow2");
    img_create(&base, "cluster_size=64k", "16M");
    ok("qemu-io", &["-c", "write -P 0x11 0 16M", s(&base)]);
    let top = d.path("top.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=64k",
            "-b",
            s(&base),
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    let b: Arc<dyn Format> = Arc::new(super::rw::open(&base, None, false));
    let q = open_direct(&top, Some(b));
    for (at, len) in [(2 * CS + 4096, 4096), (4 * CS, CS)] {
        let m = q.map(at, len, true).unwrap();
        assert_eq!(in_flight(&q), None, "early link over a backing file");
        assert!(!m.guard.has_commit());
    }
}

#[test]
fn a_join_waits_for_the_entry_and_one_early_link_flies_at_a_time() {
    let d = TempDir::new();
    let p = d.path("j.qcow2");
    img_create(&p, "cluster_size=64k", "16M");
    let q = open_direct(&p, None);
    let mut mirror = vec![0u8; 16 << 20];
    let a = q.map(7 * CS, 4096, true).unwrap();
    assert_eq!(in_flight(&q), Some(7));
    // Another cluster while 7's entry flies: ordered (not linked before its data).
    let b = q.map(9 * CS, 4096, true).unwrap();
    assert_eq!(in_flight(&q), Some(7));
    assert_eq!(host_of(&q, 9), None, "a second early link at once");
    // A write into cluster 7: its mapping waited for 7's entry.
    let c = q.map(7 * CS + 32768, 4096, true).unwrap();
    assert_eq!(in_flight(&q), None, "a join did not wait for the entry");
    for (m, at, byte) in [(&a, 7 * CS, 1u8), (&b, 9 * CS, 2), (&c, 7 * CS + 32768, 3)] {
        write_direct(m, byte);
        mirror[at as usize..at as usize + 4096].fill(byte);
    }
    let ends = vec![(a.guard, true), (b.guard, true), (c.guard, true)];
    assert!(q.finish_writes(ends).iter().all(Result::is_ok));
    q.close().unwrap();
    drop(q);
    compare_with_raw(&d, &p, &mirror);
}

/// The entry's write reported failed (its fate unknown; here it did land): a request
/// whose data is in the file gets its cluster linked the ordered way (here: found
/// linked already); one whose data write failed leaves its cluster named by the file
/// with zeroes around whatever part of its range was written, and the cluster is never
/// handed out again (a clean close would otherwise free a named cluster).
#[test]
fn a_failed_entry_write_never_hands_the_cluster_out_again() {
    let d = TempDir::new();
    let p = d.path("f.qcow2");
    img_create(&p, "cluster_size=64k", "16M");
    let q = open_direct(&p, None);
    let mut mirror = vec![0u8; 16 << 20];
    let fail_next = |q: &Qcow2| q.with_meta(|m| m.links.as_mut().unwrap().fail_next = true);
    // Data written, entry reported failed: the request still succeeds.
    let a = q.map(11 * CS, 4096, true).unwrap();
    assert_eq!(in_flight(&q), Some(11));
    fail_next(&q);
    write_direct(&a, 0x21);
    mirror[(11 * CS) as usize..(11 * CS + 4096) as usize].fill(0x21);
    let r = q.finish_writes(vec![(a.guard, true)]);
    assert!(r[0].is_ok(), "{r:?}");
    // Data write failed (it wrote nothing), entry reported failed.
    let b = q.map(12 * CS + 4096, 4096, true).unwrap();
    assert_eq!(in_flight(&q), Some(12));
    fail_next(&q);
    let host = match b.extents[..] {
        [Extent::File { offset, .. }] => offset & !(CS - 1),
        _ => panic!("{:?}", b.extents),
    };
    let r = q.finish_writes(vec![(b.guard, false)]);
    assert!(r[0].is_ok(), "{r:?}");
    assert!(
        !q.with_meta(|m| m.reserved.contains(&(host / CS))),
        "a cluster the file may name went back to the allocator"
    );
    q.close().unwrap();
    drop(q);
    compare_with_raw(&d, &p, &mirror);
}

/// Four threads writing 4 KiB slots of the same clusters at once (early links, joins
/// and ordered links mixed, each request ended on its own as soon as its data is
/// written), on an O_DIRECT image: every byte as written, qemu-img check clean.
#[test]
fn concurrent_writers_into_shared_clusters_lose_nothing() {
    const THREADS: u64 = 4;
    const CLUSTERS: u64 = 48;
    let d = TempDir::new();
    let p = d.path("c.qcow2");
    img_create(&p, "cluster_size=64k", "4M");
    let q = Arc::new(open_direct(&p, None));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x1234 + t);
                let mut written = Vec::new();
                for i in 0..150u64 {
                    // Thread t owns slots t, t + 4, t + 8 and t + 12 of every cluster.
                    let slot = t + THREADS * rng.below(CS / 4096 / THREADS);
                    let at = rng.below(CLUSTERS) * CS + slot * 4096;
                    let byte = (t * 64 + i % 60 + 1) as u8;
                    let m = q.map(at, 4096, true).unwrap();
                    write_direct(&m, byte);
                    let r = q.finish_writes(vec![(m.guard, true)]);
                    assert!(r[0].is_ok(), "{r:?}");
                    written.push((at, byte));
                }
                written
            })
        })
        .collect();
    let mut mirror = vec![0u8; 4 << 20];
    for h in handles {
        for (at, byte) in h.join().unwrap() {
            mirror[at as usize..at as usize + 4096].fill(byte);
        }
    }
    let q = Arc::into_inner(q).unwrap();
    q.close().unwrap();
    drop(q);
    compare_with_raw(&d, &p, &mirror);
}

/// Any other metadata write waits for the entry in flight first (two writes of one
/// block in flight could land in either order, the older last).
#[test]
fn a_metadata_write_waits_for_the_entry_in_flight() {
    let d = TempDir::new();
    let p = d.path("w.qcow2");
    img_create(&p, "cluster_size=64k", "16M");
    let q = open_direct(&p, None);
    let mut mirror = vec![0u8; 16 << 20];
    let a = q.map(3 * CS, 4096, true).unwrap();
    assert_eq!(in_flight(&q), Some(3));
    // A zero cluster's entry, in the same 4 KiB block of the same table.
    q.write_zeroes(4 * CS, CS, false).unwrap();
    assert_eq!(
        in_flight(&q),
        None,
        "a metadata write with the entry in flight"
    );
    write_direct(&a, 9);
    mirror[(3 * CS) as usize..(3 * CS + 4096) as usize].fill(9);
    assert!(q.finish_writes(vec![(a.guard, true)])[0].is_ok());
    q.close().unwrap();
    drop(q);
    compare_with_raw(&d, &p, &mirror);
}
