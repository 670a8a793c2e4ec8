//! Reads and writes through `Qcow2`, checked against qemu-img / qemu-io.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use super::oracle::{
    check_clean, compare_with_raw, compress, img_create, io, ok, raw_bytes, s, RawFile, Rng,
    TempDir,
};
use crate::formats::qcow2::Qcow2;
use crate::formats::{Extent, Format};

pub fn open(p: &Path, backing: Option<Arc<dyn Format>>, writable: bool) -> Qcow2 {
    let f = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(p)
        .unwrap();
    Qcow2::open(f, backing, &ipc::Qcow2Options::default(), writable).unwrap()
}

/// Every guest byte through `read`, and again through `map` (files read at the
/// extents' offsets, zeroes, and `read` for format extents): both must agree.
pub fn read_all(q: &dyn Format) -> Vec<u8> {
    let size = q.virtual_size();
    let mut a = vec![0u8; size as usize];
    // Odd request sizes cross cluster boundaries.
    let step = 3 * 4096 + 512;
    let mut at = 0;
    while at < size {
        let n = step.min(size - at);
        q.read(at, &mut a[at as usize..(at + n) as usize]).unwrap();
        at += n;
    }
    let mut b = vec![0u8; size as usize];
    let mut at = 0;
    while at < size {
        let n = step.min(size - at);
        let m = q.map(at, n, false).unwrap();
        let mut pos = at;
        for e in &m.extents {
            let dst = &mut b[pos as usize..(pos + e.len()) as usize];
            match *e {
                Extent::File { fd, offset, len } => {
                    // SAFETY: fd belongs to an image this test holds open; dst is
                    // len bytes of a live buffer.
                    let r = unsafe {
                        libc::pread(fd, dst.as_mut_ptr().cast(), len as usize, offset as i64)
                    };
                    assert_eq!(r, len as isize, "pread of a File extent");
                }
                Extent::Zero { .. } => dst.fill(0),
                Extent::Format { .. } => q.read(pos, dst).unwrap(),
            }
            pos += e.len();
        }
        assert_eq!(pos, at + n, "extents cover the range");
        at += n;
    }
    assert!(a == b, "read and map disagree");
    a
}

fn qemu_io_patterns(p: &Path, cs: u64, v3: bool) {
    io(p, &format!("write -P 0x11 0 {}", cs));
    io(p, &format!("write -P 0x22 {} 512", cs * 3 + 512));
    io(p, &format!("write -P 0x33 {} {}", cs * 5 - 1024, cs + 2048));
    io(p, &format!("write -P 0x44 {} 4096", 3 << 20));
    if v3 {
        io(p, &format!("write -z {} {}", 0, cs));
        io(p, &format!("write -P 0x55 {} {}", cs * 8, cs * 2));
        io(p, &format!("write -z {} {}", cs * 8, cs));
    }
    io(p, &format!("discard {} {}", 3 << 20, cs.max(4096)));
}

#[test]
fn reads_match_qemu_img_convert() {
    let d = TempDir::new();
    for (opts, cs, v3) in [
        ("cluster_size=512,refcount_bits=1", 512, true),
        ("cluster_size=4096,refcount_bits=2", 4096, true),
        ("cluster_size=65536", 65536, true),
        ("cluster_size=2M,refcount_bits=64", 2 << 20, true),
        ("compat=0.10", 65536, false),
        ("lazy_refcounts=on,cluster_size=4096", 4096, true),
    ] {
        let p = d.path("r.qcow2");
        img_create(&p, opts, "32M");
        qemu_io_patterns(&p, cs, v3);
        let want = raw_bytes(&p, "qcow2");
        let q = open(&p, None, false);
        assert!(
            read_all(&q) == want,
            "{opts}: bytes differ from qemu-img convert"
        );
    }
}

#[test]
fn backing_chain_and_compressed_clusters() {
    let d = TempDir::new();
    let base = d.path("base.raw");
    let mut rng = Rng(7);
    let bytes: Vec<u8> = (0..(3 << 20) + 512).map(|_| rng.next() as u8).collect();
    std::fs::write(&base, &bytes).unwrap();
    let mid = d.path("mid.qcow2");
    img_create(
        &mid,
        &format!(
            "backing_file={},backing_fmt=raw,cluster_size=4096",
            s(&base)
        ),
        "4M",
    );
    io(&mid, "write -P 0x66 8192 5000");
    let top = d.path("top.qcow2");
    img_create(
        &top,
        &format!("backing_file={},backing_fmt=qcow2", s(&mid)),
        "4M",
    );
    io(&top, "write -P 0x77 65000 70000");
    io(&top, "write -z 131072 65536");
    let want = raw_bytes(&top, "qcow2");
    let raw: Arc<dyn Format> = Arc::new(RawFile::open(&base));
    let midq: Arc<dyn Format> = Arc::new(open(&mid, Some(raw), false));
    let q = open(&top, Some(midq), false);
    assert!(
        read_all(&q) == want,
        "chain bytes differ from qemu-img convert"
    );

    // Compressed clusters (qemu-img convert -c), several cluster sizes.
    for cs in ["512", "4096", "65536"] {
        let c = d.path("c.qcow2");
        compress(&top, &c, cs);
        let q = open(&c, None, false);
        assert!(read_all(&q) == want, "compressed ({cs}) bytes differ");
    }
}

/// Applies random writes (partial clusters included) to both the image and a mirror.
fn random_writes(q: &dyn Format, mirror: &mut [u8], rng: &mut Rng, count: usize, cs: u64) {
    let size = mirror.len() as u64;
    for i in 0..count {
        let len = match rng.below(4) {
            0 => 1 + rng.below(cs),
            1 => cs,
            2 => 512 * (1 + rng.below(16)),
            _ => 1 + rng.below(3 * cs),
        }
        .min(size);
        let at = rng.below(size - len + 1);
        let data: Vec<u8> = (0..len).map(|j| (i as u64 * 31 + j) as u8 | 1).collect();
        q.write(at, &data).unwrap();
        mirror[at as usize..(at + len) as usize].copy_from_slice(&data);
    }
}

#[test]
fn writes_pass_qemu_img_check_and_compare() {
    let d = TempDir::new();
    for (opts, cs) in [
        ("cluster_size=512,refcount_bits=1", 512u64),
        ("cluster_size=4096,refcount_bits=2", 4096),
        ("cluster_size=65536,refcount_bits=16", 65536),
        (
            "cluster_size=65536,refcount_bits=64,lazy_refcounts=on",
            65536,
        ),
        ("compat=0.10,cluster_size=4096", 4096),
    ] {
        let p = d.path("w.qcow2");
        img_create(&p, opts, "4M");
        io(&p, "write -P 0x5a 100000 300000");
        let mut mirror = raw_bytes(&p, "qcow2");
        let mut rng = Rng(42);
        {
            let q = open(&p, None, true);
            random_writes(&q, &mut mirror, &mut rng, 300, cs);
            assert!(read_all(&q) == mirror, "{opts}: read back");
        }
        compare_with_raw(&d, &p, &mirror);
        // A second session finds everything.
        let q = open(&p, None, true);
        assert!(read_all(&q) == mirror, "{opts}: reopened");
        random_writes(&q, &mut mirror, &mut rng, 50, cs);
        drop(q);
        compare_with_raw(&d, &p, &mirror);
    }
}

#[test]
fn writes_over_a_backing_file_copy_the_rest_of_the_cluster() {
    let d = TempDir::new();
    let base = d.path("base.qcow2");
    img_create(&base, "cluster_size=4096", "2M");
    io(&base, "write -P 0x21 0 2M");
    compress(&base, &d.path("basec.qcow2"), "65536");
    let basec = d.path("basec.qcow2");
    let top = d.path("top.qcow2");
    img_create(
        &top,
        &format!(
            "backing_file={},backing_fmt=qcow2,cluster_size=65536",
            s(&basec)
        ),
        "3M",
    );
    let mut mirror = raw_bytes(&top, "qcow2");
    let bq: Arc<dyn Format> = Arc::new(open(&basec, None, false));
    let q = open(&top, Some(bq.clone()), true);
    random_writes(&q, &mut mirror, &mut Rng(3), 100, 65536);
    q.write_zeroes(65536 * 10, 65536 * 2, true).unwrap();
    mirror[65536 * 10..65536 * 12].fill(0);
    q.discard(65536 * 20, 65536).unwrap(); // v3: reads as zeroes, not as the backing file
    mirror[65536 * 20..65536 * 21].fill(0);
    assert!(read_all(&q) == mirror);
    drop(q);
    check_clean(&top);
    let got = raw_bytes(&top, "qcow2");
    assert!(
        got == mirror,
        "qemu-img reads what we wrote over the backing file"
    );
}

#[test]
fn discard_and_write_zeroes_as_qemu() {
    let d = TempDir::new();
    for (opts, v3) in [
        ("cluster_size=4096", true),
        ("cluster_size=4096,compat=0.10", false),
    ] {
        let p = d.path("z.qcow2");
        img_create(&p, opts, "1M");
        let q = open(&p, None, true);
        let mut mirror = vec![0u8; 1 << 20];
        random_writes(&q, &mut mirror, &mut Rng(5), 100, 4096);
        // Partial clusters of a discard are ignored; whole ones read as zeroes.
        q.discard(1000, 20000).unwrap();
        mirror[4096..16384].fill(0);
        q.write_zeroes(5000, 30000, false).unwrap();
        mirror[5000..35000].fill(0);
        q.write_zeroes(40960, 8192, true).unwrap();
        mirror[40960..49152].fill(0);
        assert!(read_all(&q) == mirror, "{opts}");
        drop(q);
        compare_with_raw(&d, &p, &mirror);
        let map = ok("qemu-img", &["map", "--output=json", s(&p)]);
        if v3 {
            // The whole zeroed clusters are zero clusters, not written zeroes.
            assert!(map.contains("\"start\": 40960, \"length\": 8192, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false"), "{map}");
        }
    }
}

#[test]
fn growth_across_refcount_blocks_and_table() {
    let d = TempDir::new();
    for rb in [1, 16, 64] {
        let p = d.path("g.qcow2");
        img_create(&p, &format!("cluster_size=512,refcount_bits={rb}"), "24M");
        let q = open(&p, None, true);
        let mut mirror = vec![0u8; 24 << 20];
        // Sequential then random: thousands of clusters, many new refcount blocks and
        // (with 64-bit refcounts) several refcount table moves.
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 | 1).collect();
        for i in 0..(16 << 20) / chunk.len() {
            let at = i * chunk.len();
            q.write(at as u64, &chunk).unwrap();
            mirror[at..at + chunk.len()].copy_from_slice(&chunk);
        }
        random_writes(&q, &mut mirror, &mut Rng(rb), 200, 512);
        drop(q);
        compare_with_raw(&d, &p, &mirror);
        let h = crate::formats::qcow2::header::Header::read(&File::open(&p).unwrap()).unwrap();
        if rb == 64 {
            assert!(h.refcount_table_clusters > 1, "the refcount table grew");
        }
    }
}

#[test]
fn resize_grow_and_shrink() {
    let d = TempDir::new();
    let p = d.path("rs.qcow2");
    img_create(&p, "cluster_size=512", "64k");
    let q = open(&p, None, true);
    let mut mirror = vec![0u8; 65536];
    random_writes(&q, &mut mirror, &mut Rng(9), 20, 512);
    q.resize(8 << 20).unwrap();
    mirror.resize(8 << 20, 0);
    q.write((8 << 20) - 1000, &[7u8; 1000]).unwrap();
    mirror[(8 << 20) - 1000..].fill(7);
    assert!(read_all(&q) == mirror);
    q.resize(40960).unwrap();
    mirror.truncate(40960);
    assert!(read_all(&q) == mirror);
    drop(q);
    compare_with_raw(&d, &p, &mirror);
    let info = super::oracle::info(&p);
    assert!(info.contains("\"virtual-size\": 40960,"), "{info}");
}

#[test]
fn works_on_an_o_direct_file_description() {
    use std::os::unix::fs::OpenOptionsExt;
    let d = TempDir::new();
    for opts in [
        "cluster_size=512,refcount_bits=16",
        "cluster_size=65536,refcount_bits=1",
    ] {
        let p = d.path("direct.qcow2");
        img_create(&p, opts, "2M");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
            .unwrap();
        let q = Qcow2::open(f, None, &ipc::Qcow2Options::default(), true).unwrap();
        // Read once at open: metadata I/O asks no fcntl.
        assert!(q.with_meta(|m| m.direct), "{opts}");
        let cs = if opts.contains("=512,") { 512 } else { 65536 };
        let mut mirror = vec![0u8; 2 << 20];
        random_writes(&q, &mut mirror, &mut Rng(77), 150, cs);
        q.write_zeroes(8192, 70000, true).unwrap();
        mirror[8192..78192].fill(0);
        let mut back = vec![0u8; 2 << 20];
        q.read(0, &mut back).unwrap();
        assert!(back == mirror, "{opts}");
        drop(q);
        compare_with_raw(&d, &p, &mirror);
    }
}

/// O_DIRECT switched on after the image was opened buffered (the mode the image read
/// at open is stale): metadata writes of any size still reach the file.
#[test]
fn works_when_o_direct_is_switched_on_after_open() {
    let d = TempDir::new();
    let p = d.path("late.qcow2");
    img_create(&p, "cluster_size=512", "1M");
    let q = open(&p, None, true);
    assert!(!q.with_meta(|m| m.direct));
    q.with_meta(|m| crate::formats::direct::set_direct(&m.file, true))
        .unwrap();
    let mut mirror = vec![0u8; 1 << 20];
    random_writes(&q, &mut mirror, &mut Rng(78), 60, 512);
    let mut back = vec![0u8; 1 << 20];
    q.read(0, &mut back).unwrap();
    assert!(back == mirror);
    drop(q);
    compare_with_raw(&d, &p, &mirror);
}

#[test]
fn caches_stay_within_their_size() {
    let d = TempDir::new();
    let p = d.path("c.qcow2");
    img_create(&p, "cluster_size=512", "4M");
    io(&p, "write -P 0x12 0 4M");
    let want = raw_bytes(&p, "qcow2");
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let opts = ipc::Qcow2Options {
        l2_cache_bytes: Some(3 * 512),
        refcount_cache_bytes: Some(512),
        lazy_refcounts: None,
    };
    let q = Qcow2::open(f, None, &opts, true).unwrap();
    assert!(read_all(&q) == want);
    let mut mirror = want.clone();
    random_writes(&q, &mut mirror, &mut Rng(8), 100, 512);
    let (l2, l2_cap, rb, rb_cap) = q.with_meta(|m| {
        (
            m.l2_cache.len(),
            m.l2_cache.capacity(),
            m.rb_cache.len(),
            m.rb_cache.capacity(),
        )
    });
    assert_eq!(l2_cap, 3);
    assert_eq!(rb_cap, 4, "QEMU's minimum of four refcount blocks");
    assert!(l2 <= l2_cap && rb <= rb_cap);
    // The defaults: the whole disk's L2 tables, capped at 32 MiB; four refcount blocks.
    let big = d.path("big.qcow2");
    img_create(&big, "cluster_size=65536", "1T");
    let q2 = open(&big, None, false);
    assert_eq!(q2.with_meta(|m| m.l2_cache.capacity()), (32 << 20) / 65536);
    let small = d.path("small.qcow2");
    img_create(&small, "cluster_size=65536", "1G");
    let q3 = open(&small, None, false);
    assert_eq!(
        q3.with_meta(|m| (m.l2_cache.capacity(), m.rb_cache.capacity())),
        (2, 4)
    );
    drop(q);
    compare_with_raw(&d, &p, &mirror);
}

#[test]
fn compressed_writes_read_back_here_and_in_qemu() {
    // 4 KiB clusters and a size that ends inside one: 20 clusters and 1 KiB.
    let d = TempDir::new();
    let p = d.path("c.qcow2");
    let size = 20 * 4096 + 1024;
    img_create(&p, "cluster_size=4096", &size.to_string());
    let q = open(&p, None, true);
    let mut mirror = vec![0u8; size as usize];
    let mut rng = Rng(7);
    let mut put = |q: &Qcow2, at: usize, data: &[u8]| {
        q.write_compressed(at as u64, data).unwrap();
        mirror[at..at + data.len()].copy_from_slice(data);
    };
    // Compressible clusters pack into shared host clusters; noise does not shrink
    // and goes in uncompressed; the last, partial cluster is padded.
    for c in [0usize, 1, 2, 5, 9] {
        let text: Vec<u8> = (0..4096).map(|i| ((i / 7 + c) % 26) as u8 + b'a').collect();
        put(&q, c * 4096, &text);
    }
    let noise: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
    put(&q, 3 * 4096, &noise);
    put(&q, 20 * 4096, &[0x5a; 1024]);
    // What it refuses: a part of a cluster, a cluster that holds data.
    assert!(q.write_compressed(6 * 4096 + 512, &[1; 512]).is_err());
    let again = q.write_compressed(0, &[1; 4096]).unwrap_err();
    assert_eq!(again.errno(), libc::EIO);
    assert_eq!(read_all(&q), mirror);
    q.close().unwrap();
    drop(q);
    compare_with_raw(&d, &p, &mirror);
    let map = ok("qemu-img", &["map", "--output=json", s(&p)]);
    let compressed: Vec<&str> = map
        .lines()
        .filter(|l| l.contains("\"data\": true") && !l.contains("\"offset\""))
        .collect();
    assert!(
        !compressed.is_empty(),
        "qemu-img maps compressed clusters (no offset): {map}"
    );
    assert!(
        map.lines()
            .any(|l| l.contains("\"start\": 12288,") && l.contains("\"offset\"")),
        "the noise went in uncompressed: {map}"
    );
    let check = ok("qemu-img", &["check", s(&p)]);
    assert!(check.contains("compressed clusters"), "{check}");
    // QEMU writes into the image after us and reads both back.
    io(&p, "write -P 0x77 8192 4096");
    mirror[8192..12288].fill(0x77);
    compare_with_raw(&d, &p, &mirror);
    let q = open(&p, None, false);
    assert_eq!(read_all(&q), mirror);
}
