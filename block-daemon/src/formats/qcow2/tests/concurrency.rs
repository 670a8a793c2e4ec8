//! Several queue threads at once, and the MapGuard rule: a cluster freed while a
//! mapping of it may be in flight is not handed out again until the mapping is gone.

use std::sync::Arc;

use super::oracle::{check_clean, compare_with_raw, img_create, Rng, TempDir};
use super::rw::{open, read_all};
use crate::formats::qcow2::tables::Cluster;
use crate::formats::{Extent, Format};

pub fn host_of(q: &crate::formats::qcow2::Qcow2, gc: u64) -> Option<u64> {
    match q.with_meta(|m| m.lookup(gc)).unwrap() {
        Cluster::Normal { offset, .. } => Some(offset),
        _ => None,
    }
}

#[test]
fn freed_cluster_waits_for_mappings_in_flight() {
    let d = TempDir::new();
    let p = d.path("g.qcow2");
    img_create(&p, "cluster_size=4096", "1M");
    let q = open(&p, None, true);
    q.write(0, &[1u8; 4096]).unwrap();
    let h = host_of(&q, 0).unwrap();
    let mapping = q.map(0, 4096, true).unwrap();
    assert_eq!(
        mapping.extents,
        vec![Extent::File {
            fd: mapping_fd(&mapping),
            offset: h,
            len: 4096
        }]
    );
    q.discard(0, 4096).unwrap();
    q.with_meta(|m| m.release_reserved()).unwrap();
    q.write(5 * 4096, &[2u8; 4096]).unwrap();
    assert_ne!(
        host_of(&q, 5),
        Some(h),
        "reused while a mapping was in flight"
    );
    drop(mapping);
    q.with_meta(|m| m.release_reserved()).unwrap();
    q.write(6 * 4096, &[3u8; 4096]).unwrap();
    assert_eq!(
        host_of(&q, 6),
        Some(h),
        "reused once no mapping was in flight"
    );
    drop(q);
    check_clean(&p);
}

fn mapping_fd(m: &crate::formats::Mapping) -> i32 {
    match m.extents[0] {
        Extent::File { fd, .. } => fd,
        _ => -1,
    }
}

#[test]
fn threads_write_at_once() {
    let d = TempDir::new();
    let p = d.path("t.qcow2");
    img_create(&p, "cluster_size=512,refcount_bits=8", "8M");
    let q = Arc::new(open(&p, None, true));
    let region = 2 << 20;
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut mirror = vec![0u8; region];
                let mut rng = Rng(100 + t);
                for i in 0..300 {
                    let len = 1 + rng.below(3000) as usize;
                    let at = rng.below((region - len) as u64) as usize;
                    let data = vec![(t as u8) << 6 | (i % 64) as u8; len];
                    q.write(t * region as u64 + at as u64, &data).unwrap();
                    mirror[at..at + len].copy_from_slice(&data);
                    if i % 10 == 0 {
                        let mut b = vec![0u8; len];
                        q.read(t * region as u64 + at as u64, &mut b).unwrap();
                        assert!(b == data);
                    }
                }
                mirror
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    assert!(read_all(q.as_ref()) == all);
    drop(q);
    check_clean(&p);
    compare_with_raw(&d, &p, &all);
}

#[test]
fn writes_discards_and_mapped_reads_at_once() {
    let d = TempDir::new();
    let p = d.path("m.qcow2");
    img_create(&p, "cluster_size=4096", "4M");
    let q = Arc::new(open(&p, None, true));
    let size = 4u64 << 20;
    let writer = {
        let q = q.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(1);
            for i in 0..400 {
                let len = 1 + rng.below(20000);
                let at = rng.below(size - len);
                q.write(at, &vec![i as u8 | 1; len as usize]).unwrap();
            }
        })
    };
    let discarder = {
        let q = q.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(2);
            for i in 0..400 {
                let at = rng.below(size / 4096 - 4) * 4096;
                if i % 2 == 0 {
                    q.discard(at, 16384).unwrap();
                } else {
                    q.write_zeroes(at, 8192, true).unwrap();
                }
            }
        })
    };
    let mapper = {
        let q = q.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(3);
            let mut buf = vec![0u8; 65536];
            for _ in 0..400 {
                let at = rng.below(size - 65536);
                let m = q.map(at, 65536, rng.below(2) == 0).unwrap();
                let mut pos = 0usize;
                for e in &m.extents {
                    if let Extent::File { fd, offset, len } = *e {
                        let dst = &mut buf[pos..pos + len as usize];
                        // SAFETY: fd is the image's, held open by q; dst is len bytes.
                        let r = unsafe {
                            libc::pread(fd, dst.as_mut_ptr().cast(), len as usize, offset as i64)
                        };
                        assert_eq!(r, len as isize);
                    }
                    pos += e.len() as usize;
                }
                assert_eq!(pos, 65536);
                drop(m);
                // And through read, which reads data clusters without the lock.
                q.read(at, &mut buf).unwrap();
            }
        })
    };
    for t in [writer, discarder, mapper] {
        t.join().unwrap();
    }
    let _ = read_all(q.as_ref());
    drop(q);
    check_clean(&p);
}
