//! Damaged tables, one test per class, with QEMU's texts where qemu-io shows them:
//! an L2 table offset, a data cluster offset, a zero flag in a v2 image, a refcount
//! block offset, a compressed cluster's bytes. The damaged range fails, the rest of
//! the image still reads, and a writable image is marked corrupt as QEMU marks it.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use super::oracle::{compress, img_create, info, io, s, TempDir};
use super::rw::open;
use crate::formats::qcow2::layout::L1E_OFFSET_MASK;
use crate::formats::Format;

/// (L1 table offset, first L2 table offset).
fn tables(p: &Path) -> (u64, u64) {
    let q = open(p, None, false);
    let r = q.with_meta(|m| (m.l1_offset, m.l1[0] & L1E_OFFSET_MASK));
    drop(q);
    r
}

fn poke(p: &Path, at: u64, v: u64) {
    let f = OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(&v.to_be_bytes(), at).unwrap();
}

fn peek(p: &Path, at: u64) -> u64 {
    let f = std::fs::File::open(p).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

/// qemu-io's stderr for a read of `at` (writable open, as ours).
fn qemu_read(p: &Path, at: u64) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("read {at} 512"), s(p)])
        .output()
        .expect("qemu-io is needed by this test");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Opens writable, reads `bad` (must fail with `text`) and `good` (must work), and
/// checks the corrupt bit afterwards (v3; a v2 header has no place for it).
fn expect(p: &Path, bad: u64, good: u64, text: &str, v3: bool) {
    let q = open(p, None, true);
    let mut b = vec![0u8; 512];
    let err = q.read(bad, &mut b).unwrap_err().to_string();
    assert!(err.contains(text), "{err}");
    q.read(good, &mut b).unwrap();
    assert!(q.write(good, &b).is_err(), "writes refused once corrupt");
    drop(q);
    assert_eq!(info(p).contains("\"corrupt\": true"), v3);
    super::oracle::ok("qemu-img", &["info", s(p)]);
}

#[test]
fn unaligned_data_cluster_offset() {
    let d = TempDir::new();
    let p = d.path("a.qcow2");
    img_create(&p, "cluster_size=4096", "4M");
    io(&p, "write -P 1 0 8k");
    io(&p, "write -P 2 2M 4k");
    let (_, l2) = tables(&p);
    poke(&p, l2 + 8, peek(&p, l2 + 8) + 0x200);
    let copy = d.path("q.qcow2");
    std::fs::copy(&p, &copy).unwrap();
    let text = format!(
        "Cluster allocation offset {:#x} unaligned (L2 offset: {l2:#x}, L2 index: 0x1)",
        (peek(&p, l2 + 8) & 0xff_ffff_ffff_fe00)
    );
    assert!(
        qemu_read(&copy, 4096).contains(&text),
        "{}",
        qemu_read(&copy, 4096)
    );
    expect(&p, 4096, 2 << 20, &text, true);
}

#[test]
fn l2_table_offset_unaligned_or_outside() {
    let d = TempDir::new();
    for (delta, why) in [(0x200u64, "unaligned"), (1 << 40, "outside the image")] {
        let p = d.path("b.qcow2");
        img_create(&p, "cluster_size=4096", "4M");
        io(&p, "write -P 1 0 8k");
        io(&p, "write -P 2 3M 4k");
        let (l1, l2) = tables(&p);
        poke(&p, l1, (l2 + delta) | 1 << 63);
        let text = format!("L2 table offset {:#x} {why} (L1 index: 0)", l2 + delta);
        if why == "unaligned" {
            let copy = d.path("q.qcow2");
            std::fs::copy(&p, &copy).unwrap();
            assert!(
                qemu_read(&copy, 0).contains(&text),
                "{}",
                qemu_read(&copy, 0)
            );
        }
        expect(&p, 0, 3 << 20, &text, true);
    }
}

#[test]
fn zero_flag_in_a_v2_image() {
    let d = TempDir::new();
    let p = d.path("c.qcow2");
    img_create(&p, "cluster_size=4096,compat=0.10", "4M");
    io(&p, "write -P 1 0 8k");
    io(&p, "write -P 2 3M 4k");
    let (_, l2) = tables(&p);
    poke(&p, l2 + 8, peek(&p, l2 + 8) | 1);
    let text =
        format!("Zero cluster entry found in pre-v3 image (L2 offset: {l2:#x}, L2 index: 0x1)");
    let copy = d.path("q.qcow2");
    std::fs::copy(&p, &copy).unwrap();
    assert!(
        qemu_read(&copy, 4096).contains(&text),
        "{}",
        qemu_read(&copy, 4096)
    );
    expect(&p, 4096, 3 << 20, &text, false);
}

#[test]
fn refcount_block_offset_unaligned() {
    let d = TempDir::new();
    let p = d.path("r.qcow2");
    img_create(&p, "cluster_size=4096", "4M");
    io(&p, "write -P 1 0 8k");
    let rt = open(&p, None, false).with_meta(|m| m.reftable_offset);
    poke(&p, rt, peek(&p, rt) + 0x200);
    let q = open(&p, None, true);
    let mut b = vec![0u8; 4096];
    q.read(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 1), "reads need no refcounts");
    let err = q.write(2 << 20, &b).unwrap_err().to_string();
    assert!(
        err.contains("Refblock offset") && err.contains("unaligned (reftable index: 0)"),
        "{err}"
    );
    drop(q);
    assert!(info(&p).contains("\"corrupt\": true"));
}

#[test]
fn compressed_cluster_that_does_not_inflate() {
    let d = TempDir::new();
    let src = d.path("src.qcow2");
    img_create(&src, "cluster_size=4096", "1M");
    io(&src, "write -P 0x33 0 64k");
    let p = d.path("c.qcow2");
    compress(&src, &p, "4096");
    let (_, l2) = tables(&p);
    let e = peek(&p, l2);
    assert!(e & 1 << 62 != 0, "a compressed entry");
    let host = e & ((1u64 << 54) - 1);
    poke(&p, host, 0xffff_ffff_ffff_ffff);
    let q = open(&p, None, false);
    let mut b = vec![0u8; 512];
    assert!(q.read(0, &mut b).is_err());
    q.read(8192, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x33));
    assert!(qemu_read(&p, 0).contains("Input/output error"));
}
