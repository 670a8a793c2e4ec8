//! Internal snapshots made and deleted here, read by qemu-img; snapshots qemu-img
//! made, written over and deleted here.

use std::path::Path;

use super::oracle::{check_clean, compare_with_raw, img_create, info, io, ok, s, Rng, TempDir};
use super::rw::{open, read_all};
use crate::formats::qcow2::header::Header;
use crate::formats::qcow2::snapshot;
use crate::formats::qcow2::snapshot_ops::NewSnapshot;
use crate::formats::Format;

/// The guest bytes of snapshot `name` as qemu-img sees them.
fn snapshot_bytes(d: &TempDir, p: &Path, name: &str) -> Vec<u8> {
    let out = d.path("snap.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-l",
            &format!("snapshot.name={name}"),
            "-O",
            "raw",
            s(p),
            s(&out),
        ],
    );
    std::fs::read(&out).unwrap()
}

fn scribble(q: &dyn Format, mirror: &mut [u8], seed: u64, cs: u64) {
    let mut rng = Rng(seed);
    for i in 0..60 {
        let len = 1 + rng.below(2 * cs);
        let at = rng.below(mirror.len() as u64 - len);
        let data = vec![(seed as u8) ^ (i as u8) | 1; len as usize];
        q.write(at, &data).unwrap();
        mirror[at as usize..(at + len) as usize].copy_from_slice(&data);
    }
}

#[test]
fn snapshots_made_here_are_qemus() {
    let d = TempDir::new();
    for opts in [
        "cluster_size=4096",
        "cluster_size=512,refcount_bits=2",
        "compat=0.10,cluster_size=4096",
    ] {
        let p = d.path("s.qcow2");
        img_create(&p, opts, "1M");
        let cs = Header::read(&std::fs::File::open(&p).unwrap())
            .unwrap()
            .cluster_size();
        let q = open(&p, None, true);
        let mut mirror = vec![0u8; 1 << 20];
        scribble(&q, &mut mirror, 1, cs);
        let first = mirror.clone();
        let a = q
            .snapshot_create(NewSnapshot {
                name: "first".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(a.id, "1");
        scribble(&q, &mut mirror, 2, cs);
        let second = mirror.clone();
        q.snapshot_create(NewSnapshot {
            name: "second".into(),
            ..Default::default()
        })
        .unwrap();
        scribble(&q, &mut mirror, 3, cs);
        q.discard(0, 65536).unwrap();
        if !opts.contains("compat=0.10") {
            mirror[..65536].fill(0);
        } else {
            mirror[..65536].fill(0); // no backing file: v2 reads unallocated as zeroes
        }
        assert!(read_all(&q) == mirror);
        drop(q);
        check_clean(&p);
        assert!(
            snapshot_bytes(&d, &p, "first") == first,
            "{opts}: snapshot 1"
        );
        assert!(
            snapshot_bytes(&d, &p, "second") == second,
            "{opts}: snapshot 2"
        );
        let list = ok("qemu-img", &["snapshot", "-l", s(&p)]);
        assert!(list.contains("first") && list.contains("second"), "{list}");

        // Delete the first one here: the second and the active state stay, no leaks.
        let q = open(&p, None, true);
        q.snapshot_delete(None, Some("first")).unwrap();
        assert!(q.snapshot_delete(Some("1"), None).is_err());
        assert!(read_all(&q) == mirror);
        drop(q);
        check_clean(&p);
        assert!(
            snapshot_bytes(&d, &p, "second") == second,
            "{opts}: snapshot 2 after delete"
        );
        let q = open(&p, None, true);
        q.snapshot_delete(Some("2"), None).unwrap();
        assert!(q.snapshots().is_empty());
        // With no snapshot left, writes go in place again (COPIED flags restored).
        let m = q.map(0x10000, 512, true).unwrap();
        drop(m);
        scribble(&q, &mut mirror, 4, cs);
        drop(q);
        check_clean(&p);
        assert!(!info(&p).contains("\"snapshots\""), "{opts}");
        compare_with_raw(&d, &p, &mirror);
    }
}

#[test]
fn snapshots_made_by_qemu_img_are_kept_and_deleted() {
    let d = TempDir::new();
    let p = d.path("q.qcow2");
    img_create(&p, "cluster_size=4096", "1M");
    io(&p, "write -P 0x31 0 512k");
    ok("qemu-img", &["snapshot", "-c", "base", s(&p)]);
    let base = snapshot_bytes(&d, &p, "base");
    let q = open(&p, None, true);
    let mut mirror = read_all(&q);
    scribble(&q, &mut mirror, 9, 4096);
    drop(q);
    check_clean(&p);
    assert!(
        snapshot_bytes(&d, &p, "base") == base,
        "written over shared clusters by copying"
    );
    let f = std::fs::File::open(&p).unwrap();
    let h = Header::read(&f).unwrap();
    let list = snapshot::list(&f, &h).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "base");
    let q = open(&p, None, true);
    q.snapshot_delete(Some("1"), Some("base")).unwrap();
    drop(q);
    check_clean(&p);
    compare_with_raw(&d, &p, &mirror);
}

#[test]
fn goto_reverts_as_qemu_img_snapshot_apply() {
    let d = TempDir::new();
    for opts in ["cluster_size=4096", "cluster_size=512,refcount_bits=4"] {
        let p = d.path("a.qcow2");
        img_create(&p, opts, "1M");
        io(&p, "write -P 0x41 0 300k");
        ok("qemu-img", &["snapshot", "-c", "qemu-made", s(&p)]);
        let q = open(&p, None, true);
        let mut mirror = read_all(&q);
        scribble(&q, &mut mirror, 21, 4096);
        let mine = q
            .snapshot_create(NewSnapshot {
                name: "mine".into(),
                ..Default::default()
            })
            .unwrap();
        let at_mine = mirror.clone();
        scribble(&q, &mut mirror, 22, 4096);
        drop(q);
        // qemu-img's own revert on a copy is the oracle.
        let copy = d.path("copy.qcow2");
        std::fs::copy(&p, &copy).unwrap();
        ok("qemu-img", &["snapshot", "-a", "qemu-made", s(&copy)]);
        let want = super::oracle::raw_bytes(&copy, "qcow2");

        let q = open(&p, None, true);
        assert_eq!(q.snapshot_goto(&mine.id).unwrap().name, "mine");
        assert!(read_all(&q) == at_mine, "{opts}: reverted to mine");
        q.snapshot_goto("qemu-made").unwrap();
        assert!(read_all(&q) == want, "{opts}: reverted as qemu-img does");
        assert!(q.snapshot_goto("nope").is_err());
        // Writes after a revert copy on write: the snapshots stay intact.
        let mut now = want.clone();
        scribble(&q, &mut now, 23, 4096);
        drop(q);
        check_clean(&p);
        assert!(snapshot_bytes(&d, &p, "mine") == at_mine, "{opts}");
        assert!(snapshot_bytes(&d, &p, "qemu-made") == want, "{opts}");
        compare_with_raw(&d, &p, &now);
    }
}

#[test]
fn a_reference_too_many_is_refused_before_any_change() {
    let d = TempDir::new();
    let p = d.path("one.qcow2");
    img_create(&p, "cluster_size=4096,refcount_bits=1", "1M");
    io(&p, "write -P 0x11 0 64k");
    let before = std::fs::read(&p).unwrap();
    let q = open(&p, None, true);
    let err = q.snapshot_create(NewSnapshot {
        name: "x".into(),
        ..Default::default()
    });
    assert!(err.is_err());
    assert!(q.snapshots().is_empty());
    drop(q);
    check_clean(&p);
    assert_eq!(
        std::fs::read(&p).unwrap().len(),
        before.len(),
        "nothing allocated"
    );
    // qemu-img refuses it as well.
    super::oracle::fails("qemu-img", &["snapshot", "-c", "x", s(&p)]);
}

#[test]
fn a_dropped_reference_waits_for_the_next_sync() {
    let d = TempDir::new();
    let p = d.path("w.qcow2");
    img_create(&p, "cluster_size=4096", "1M");
    io(&p, "write -P 0x51 0 4k");
    ok("qemu-img", &["snapshot", "-c", "s", s(&p)]);
    let q = open(&p, None, true);
    let old = match q.with_meta(|m| m.lookup(0)).unwrap() {
        crate::formats::qcow2::tables::Cluster::Normal { offset, .. } => offset,
        other => panic!("{other:?}"),
    };
    let refcount =
        |q: &crate::formats::qcow2::Qcow2| q.with_meta(|m| m.refcount(old >> 12)).unwrap();
    assert_eq!(refcount(&q), 2);
    q.write(0, &[7u8; 512]).unwrap(); // copies the shared cluster
                                      // The new L2 entry may not be on stable storage yet: the old cluster keeps its
                                      // reference until a sync.
    assert_eq!(refcount(&q), 2);
    q.flush().unwrap();
    assert_eq!(refcount(&q), 1);
    drop(q);
    check_clean(&p);
}
