//! Crash consistency, dirty and corrupt bits: a "process" that stops writing after its
//! k-th file write (every k), checked with qemu-img check; lazy refcounts repaired on
//! open; images left dirty by qemu-io's abort; metadata overlap marking the image
//! corrupt.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use super::oracle::{check_clean, fails, img_create, info, ok, raw_bytes, s, Rng, TempDir};
use super::rw::{open, read_all};
use crate::formats::qcow2::header::Header;
use crate::formats::qcow2::Qcow2;
use crate::formats::{Format, FormatError};

/// qemu-img check's exit code: 0 clean, 2 corruptions, 3 leaks only.
fn check_code(p: &Path) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(["check", s(p)])
        .output()
        .expect("qemu-img is needed by this test");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs `ops` random writes on a copy of `base`, the process "dying" after `k` file
/// writes; returns the mirror of returned writes and the failed write's range.
fn session(
    p: &Path,
    k: Option<usize>,
    ops: usize,
    mirror: &mut [u8],
) -> (Option<(usize, usize)>, usize) {
    let q = open(p, None, true);
    q.with_meta(|m| m.crash.0 = Some(k.unwrap_or(usize::MAX)));
    let mut rng = Rng(11);
    let size = mirror.len() as u64;
    let mut failed = None;
    for i in 0..ops {
        let len = 1 + rng.below(1536);
        let at = rng.below(size - len);
        let data = vec![(i as u8) | 0x80; len as usize];
        let (a, b) = (at as usize, (at + len) as usize);
        let r = if i % 7 == 6 {
            q.write_zeroes(at & !511, 4096.min(size - (at & !511)), true)
                .map(|_| (at & !511) as usize..((at & !511) + 4096).min(size) as usize)
        } else {
            q.write(at, &data).map(|_| a..b)
        };
        match r {
            Ok(range) => {
                if i % 7 == 6 {
                    mirror[range].fill(0);
                } else {
                    mirror[a..b].copy_from_slice(&data);
                }
            }
            Err(_) => {
                failed = Some((a.min(at as usize & !511), (b + 4096).min(size as usize)));
                break;
            }
        }
    }
    let left = q.with_meta(|m| m.crash.0.unwrap_or(0));
    (failed, left)
}

fn crash_every_write(opts: &str) {
    let d = TempDir::new();
    let base = d.path("base.qcow2");
    img_create(&base, opts, "1M");
    let start = std::fs::read(&base).unwrap();
    let p = d.path("c.qcow2");
    std::fs::write(&p, &start).unwrap();
    let ops = 40;
    let mut full = vec![0u8; 1 << 20];
    let (failed, left) = session(&p, None, ops, &mut full);
    assert!(failed.is_none());
    let total = usize::MAX - left;
    assert!(total > 50, "the sequence makes many writes ({total})");
    let lazy = opts.contains("lazy_refcounts=on");
    for k in 0..total {
        std::fs::write(&p, &start).unwrap();
        let mut mirror = vec![0u8; 1 << 20];
        let (failed, _) = session(&p, Some(k), ops, &mut mirror);
        let (code, text) = check_code(&p);
        if lazy {
            // Refcounts may lag behind (the dirty bit says so); no L2 entry may be
            // wrong, which the repair below and the read back show.
            assert!(code == 0 || code == 3 || code == 2, "k={k}: {text}");
        } else {
            assert!(
                code == 0 || code == 3,
                "k={k}: corruption after a crash:\n{text}"
            );
        }
        // A new daemon finds every returned write.
        let q = open(&p, None, true);
        let mut got = read_all(&q);
        drop(q);
        if let Some((a, b)) = failed {
            got[a..b].copy_from_slice(&mirror[a..b]);
        }
        assert!(got == mirror, "k={k}: a returned write is missing");
        let (code, text) = check_code(&p);
        assert!(code == 0 || code == 3, "k={k}: after reopen:\n{text}");
        if lazy {
            assert_eq!(code, 0, "k={k}: the repair left leaks:\n{text}");
        }
    }
}

#[test]
fn crash_after_every_write_leaks_at_most() {
    crash_every_write("cluster_size=512,refcount_bits=4");
}

#[test]
fn crash_with_lazy_refcounts_is_repaired_on_open() {
    crash_every_write("cluster_size=512,lazy_refcounts=on");
}

#[test]
fn image_left_dirty_by_qemu_is_repaired() {
    let d = TempDir::new();
    let p = d.path("dirty.qcow2");
    img_create(&p, "lazy_refcounts=on,cluster_size=4096", "4M");
    // qemu-io's abort: dies without closing, dirty bit set, refcounts not written.
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x3c 0 1M",
            "-c",
            "write -P 0x4d 2M 100k",
            "-c",
            "abort",
            s(&p),
        ])
        .output()
        .expect("qemu-io is needed by this test");
    assert!(!out.status.success());
    let h = Header::read(&std::fs::File::open(&p).unwrap()).unwrap();
    assert!(h.dirty(), "qemu-io left the dirty bit");
    let want = raw_bytes(&p, "qcow2");
    assert!(want[..1 << 20].iter().all(|&b| b == 0x3c));
    // Read-only: served as it is, not repaired.
    drop(open(&p, None, false));
    assert!(Header::read(&std::fs::File::open(&p).unwrap())
        .unwrap()
        .dirty());
    let q = open(&p, None, true);
    assert!(read_all(&q) == want);
    drop(q);
    assert!(!Header::read(&std::fs::File::open(&p).unwrap())
        .unwrap()
        .dirty());
    check_clean(&p);
}

#[test]
fn corrupt_bit_refuses_writes_with_qemus_text() {
    let d = TempDir::new();
    let p = d.path("x.qcow2");
    img_create(&p, "cluster_size=4096", "1M");
    super::oracle::io(&p, "write -P 0x61 0 64k");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&[0, 0, 0, 0, 0, 0, 0, 2], 72).unwrap();
    let qemu = fails("qemu-io", &["-f", "qcow2", "-c", "write 0 512", s(&p)]);
    let file = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let err = Qcow2::open(file, None, &Default::default(), true)
        .err()
        .unwrap()
        .to_string();
    assert!(qemu.contains(&err), "ours {err:?}, qemu-io {qemu:?}");
    // Read-only, it serves reads.
    let q = open(&p, None, false);
    let mut b = vec![0u8; 4096];
    q.read(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x61));
    assert!(matches!(q.write(0, &b), Err(FormatError::ReadOnly)));
}

#[test]
fn write_onto_metadata_marks_the_image_corrupt() {
    let d = TempDir::new();
    let p = d.path("o.qcow2");
    img_create(&p, "cluster_size=4096", "1M");
    super::oracle::io(&p, "write -P 0x61 0 8k");
    let h = Header::read(&std::fs::File::open(&p).unwrap()).unwrap();
    // Point guest cluster 1 (COPIED) at the L1 table.
    let q = open(&p, None, false);
    let l2 = q.with_meta(|m| m.l1[0] & crate::formats::qcow2::layout::L1E_OFFSET_MASK);
    drop(q);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&(h.l1_table_offset | 1 << 63).to_be_bytes(), l2 + 8)
        .unwrap();
    let q = open(&p, None, true);
    let err = q.write(4096, &[1u8; 512]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Marking image as corrupt: Preventing invalid write on metadata"),
        "{err}"
    );
    // Further writes are refused, reads go on.
    assert!(matches!(
        q.write(0, &[1u8; 512]),
        Err(FormatError::Corrupt(_))
    ));
    let mut b = vec![0u8; 4096];
    q.read(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x61));
    drop(q);
    assert!(info(&p).contains("\"corrupt\": true"));
    // And QEMU agrees the L1 table was not overwritten: the L1 entry is intact.
    let (code, _) = check_code(&p);
    assert_eq!(code, 2, "qemu-img check sees the bad L2 entry");
    ok("qemu-img", &["info", s(&p)]);
}
