//! Hostile images: valid images qemu-img made, their header, L1, L2, refcount and
//! snapshot bytes mutated at random (seeded), opened read-only and read-write, every
//! cluster read and some written. Nothing may panic, no mapping may point outside the
//! file, and the file may not grow beyond a cap.

use std::fs::OpenOptions;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use super::oracle::{compress, img_create, io, io_then_abort, ok, s, Rng, TempDir};
use crate::formats::qcow2::header::Header;
use crate::formats::qcow2::layout::{be64, L1E_OFFSET_MASK};
use crate::formats::qcow2::Qcow2;
use crate::formats::{Extent, Format};

/// Byte ranges worth mutating: header, L1, refcount table, first refcount block, L2
/// tables, snapshot table.
fn regions(img: &[u8], h: &Header) -> Vec<(usize, usize)> {
    let mut r = vec![(0, 512)];
    let mut add = |off: u64, len: u64| {
        let (a, b) = (off as usize, (off + len) as usize);
        if len > 0 && b <= img.len() {
            r.push((a, b));
        }
    };
    add(h.l1_table_offset, u64::from(h.l1_size) * 8);
    add(h.refcount_table_offset, 64);
    let rb = be64(img, h.refcount_table_offset as usize);
    add(rb, 256);
    for i in 0..h.l1_size as usize {
        let l2 = be64(img, h.l1_table_offset as usize + i * 8) & L1E_OFFSET_MASK;
        add(l2, 512);
    }
    add(h.snapshots_offset, 160);
    r
}

fn exercise(p: &Path, writable: bool, rng: &mut Rng) {
    let Ok(f) = OpenOptions::new().read(true).write(writable).open(p) else {
        return;
    };
    let Ok(q) = Qcow2::open(f, None, &ipc::Qcow2Options::default(), writable) else {
        return;
    };
    let flen = std::fs::metadata(p).unwrap().len();
    let size = q.virtual_size().min(2 << 20);
    let mut buf = vec![0u8; 65536];
    let mut at = 0;
    while at < size {
        let n = 65536.min(size - at);
        let _ = q.read(at, &mut buf[..n as usize]);
        if let Ok(m) = q.map(at, n, rng.below(2) == 0) {
            let total: u64 = m.extents.iter().map(Extent::len).sum();
            assert_eq!(total, n, "extents cover the range");
            for e in &m.extents {
                if let Extent::File { offset, len, .. } = *e {
                    let now = std::fs::metadata(p).unwrap().len().max(flen);
                    assert!(
                        offset + len <= now,
                        "mapping {offset:#x}+{len} outside the file"
                    );
                }
            }
        }
        at += n;
    }
    if writable && size > 0 {
        for i in 0..6 {
            let len = 1 + rng.below(9000).min(size - 1);
            let off = rng.below(size - len + 1);
            let _ = match i % 3 {
                0 => q.write(off, &vec![0xa5; len as usize]),
                1 => q.discard(off, len),
                _ => q.write_zeroes(off, len, i % 2 == 0),
            };
        }
        let _ = q.flush();
    }
}

#[test]
fn mutated_images_never_panic() {
    let d = TempDir::new();
    let mut bases = Vec::new();
    for (opts, snap) in [
        ("cluster_size=4096", true),
        ("cluster_size=512,refcount_bits=1", false),
        ("compat=0.10", true),
        (
            "cluster_size=65536,refcount_bits=64,lazy_refcounts=on",
            false,
        ),
    ] {
        let p = d.path("base.qcow2");
        img_create(&p, opts, "512k");
        io(&p, "write -P 0x17 0 100k");
        if !opts.contains("compat=0.10") {
            io(&p, "write -z 200k 64k");
        }
        if snap {
            ok("qemu-img", &["snapshot", "-c", "s1", s(&p)]);
            io(&p, "write -P 0x18 4k 8k");
        }
        bases.push(std::fs::read(&p).unwrap());
    }
    // Left dirty by a crash (lazy refcounts): opening it read-write repairs it.
    let p = d.path("dirty.qcow2");
    img_create(&p, "cluster_size=4096,lazy_refcounts=on", "512k");
    io_then_abort(&p, &["write -P 0x19 0 200k"]);
    bases.push(std::fs::read(&p).unwrap());
    let c = d.path("compressed.qcow2");
    compress(&d.path("base.qcow2"), &c, "4096");
    bases.push(std::fs::read(&c).unwrap());

    let p = d.path("fuzz.qcow2");
    let cases = 2500;
    for case in 0..cases {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ case);
        let base = &bases[case as usize % bases.len()];
        let mut img = base.clone();
        let h = Header::read(&{
            std::fs::write(&p, base).unwrap();
            std::fs::File::open(&p).unwrap()
        })
        .unwrap();
        let regions = regions(base, &h);
        for _ in 0..1 + rng.below(4) {
            let (a, b) = regions[rng.below(regions.len() as u64) as usize];
            let at = a + rng.below((b - a) as u64) as usize;
            img[at] = match rng.below(3) {
                0 => img[at] ^ (1 << rng.below(8)),
                1 => rng.next() as u8,
                _ => 0xff,
            };
        }
        std::fs::write(&p, &img).unwrap();
        let writable = case % 2 == 1;
        let r = catch_unwind(AssertUnwindSafe(|| exercise(&p, writable, &mut rng)));
        assert!(
            r.is_ok(),
            "case {case} (base {}) panicked",
            case as usize % bases.len()
        );
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(
            len <= img.len() as u64 + (64 << 20),
            "case {case}: the file grew to {len}"
        );
    }
}
