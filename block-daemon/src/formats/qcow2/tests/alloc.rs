//! Allocating writes: partial writes into new clusters (fresh ones, past the old end
//! of the file, written without their zeroes; reused ones, freed before, filled);
//! allocations of the same and of neighbouring clusters from several threads at once;
//! and write mappings that allocate (as the engines use them: map, write the data to
//! the file, finish), linked only after the data, joined by other writes to the same
//! cluster, undone when the data did not get there. qemu-img check and compare are
//! the oracles.

use std::sync::Arc;

use super::concurrency::host_of;
use super::oracle::{check_no_corruption, compare_with_raw, img_create, TempDir};
use super::rw::{open, read_all};
use crate::formats::qcow2::Qcow2;
use crate::formats::{Extent, Format, Mapping};

const CS: u64 = 65536;

/// Four threads (as four queues) each run `each(q, t, gc)` for guest clusters 0..64.
fn in_four_threads(q: &Arc<Qcow2>, each: fn(&Qcow2, u64, u64)) {
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || (0..64u64).for_each(|gc| each(&q, t, gc)))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// After `in_four_threads`: 320 guest clusters, each with a host cluster of its own,
/// reading as `mirror`, which qemu-img check and compare agree with.
fn distinct_hosts_and_equal(d: &TempDir, p: &std::path::Path, q: Arc<Qcow2>, mirror: &[u8]) {
    let mut hosts: Vec<u64> = (0..320).filter_map(|gc| host_of(&q, gc)).collect();
    assert_eq!(hosts.len(), 320);
    hosts.sort_unstable();
    hosts.dedup();
    assert_eq!(hosts.len(), 320, "a host cluster was given out twice");
    assert!(read_all(q.as_ref()) == mirror, "read back differs");
    drop(q);
    compare_with_raw(d, p, mirror);
}

/// What an engine does with a write mapping's extents: `data` to the files.
pub fn write_extents(m: &Mapping, data: &[u8]) {
    let mut pos = 0usize;
    for e in &m.extents {
        let Extent::File { fd, offset, len } = *e else {
            panic!("not a file extent: {:?}", m.extents);
        };
        let src = &data[pos..pos + len as usize];
        // SAFETY: fd is the image's, held open by the Qcow2; src is len bytes.
        let r = unsafe { libc::pwrite(fd, src.as_ptr().cast(), len as usize, offset as i64) };
        assert_eq!(r, len as isize);
        pos += len as usize;
    }
    assert_eq!(pos, data.len());
}

#[test]
fn partial_writes_into_fresh_and_reused_clusters() {
    let d = TempDir::new();
    let p = d.path("a.qcow2");
    img_create(&p, "cluster_size=64k", "16M");
    let q = open(&p, None, true);
    let mut mirror = vec![0u8; 16 << 20];
    // 40 whole clusters of 0xAA, then discarded: their host clusters are free again
    // but still hold 0xAA.
    q.write(0, &vec![0xAAu8; 40 * CS as usize]).unwrap();
    let old_hosts: Vec<u64> = (0..40).filter_map(|gc| host_of(&q, gc)).collect();
    assert_eq!(old_hosts.len(), 40);
    q.discard(0, 40 * CS).unwrap();
    q.flush().unwrap();
    q.with_meta(|m| m.release_reserved()).unwrap();
    // 4 KiB in the middle of 80 new guest clusters: the first ones reuse the freed
    // host clusters, the later ones lie past the old end of the file.
    for gc in 60..140u64 {
        let at = gc * CS + 8192;
        q.write(at, &[0x55u8; 4096]).unwrap();
        mirror[at as usize..at as usize + 4096].fill(0x55);
    }
    let hosts: Vec<u64> = (60..140).filter_map(|gc| host_of(&q, gc)).collect();
    assert!(
        hosts.iter().any(|h| old_hosts.contains(h)),
        "no freed cluster was reused"
    );
    assert!(
        hosts.iter().any(|h| h > old_hosts.iter().max().unwrap()),
        "no cluster past the old end was allocated"
    );
    // Every new cluster is readable by the engines: one file extent (the file covers
    // it), not the format's slow path.
    for gc in 60..140u64 {
        let m = q.map(gc * CS, CS, false).unwrap();
        assert!(
            matches!(m.extents.as_slice(), [Extent::File { len, .. }] if *len == CS),
            "guest cluster {gc}: {:?}",
            m.extents
        );
    }
    assert!(read_all(&q) == mirror, "read back differs");
    drop(q);
    compare_with_raw(&d, &p, &mirror);
    let q = open(&p, None, false);
    assert!(read_all(&q) == mirror, "read back after reopening differs");
}

#[test]
fn threads_allocate_the_same_and_neighbouring_clusters() {
    let d = TempDir::new();
    let p = d.path("n.qcow2");
    img_create(&p, "cluster_size=64k", "32M");
    let q = Arc::new(open(&p, None, true));
    // In each of 64 guest clusters, thread t writes sectors t, t + 4, ... (the same
    // cluster from all at once); clusters 64.. are written whole, one thread per
    // neighbour.
    in_four_threads(&q, |q, t, gc| {
        for s in (t..128).step_by(4) {
            q.write(gc * CS + s * 512, &[(t + 1) as u8; 512]).unwrap();
        }
        q.write((64 + gc * 4 + t) * CS, &vec![(t + 1) as u8; CS as usize])
            .unwrap();
    });
    let mut mirror = vec![0u8; 32 << 20];
    for gc in 0..64u64 {
        for s in 0..128u64 {
            let at = (gc * CS + s * 512) as usize;
            mirror[at..at + 512].fill((s % 4 + 1) as u8);
        }
        for t in 0..4u64 {
            let at = ((64 + gc * 4 + t) * CS) as usize;
            mirror[at..at + CS as usize].fill((t + 1) as u8);
        }
    }
    distinct_hosts_and_equal(&d, &p, q, &mirror);
}

#[test]
fn write_mappings_allocate_and_link_after_the_data() {
    let d = TempDir::new();
    let p = d.path("m.qcow2");
    img_create(&p, "cluster_size=64k", "16M");
    let q = open(&p, None, true);
    let mut mirror = vec![0u8; 16 << 20];
    // Two writes into cluster 5 and one into its neighbour 6, all in flight at once.
    let a = q.map(5 * CS + 4096, 8192, true).unwrap();
    let b = q.map(5 * CS + 32768, 4096, true).unwrap();
    let c = q.map(6 * CS, 4096, true).unwrap();
    let (
        Extent::File { offset: ha, .. },
        Extent::File { offset: hb, .. },
        Extent::File { offset: hc, .. },
    ) = (a.extents[0], b.extents[0], c.extents[0])
    else {
        panic!("allocating write mappings are not file extents");
    };
    assert_eq!(
        ha - 4096,
        hb - 32768,
        "one guest cluster, two host clusters"
    );
    assert_ne!(ha / CS, hc / CS, "neighbours share a host cluster");
    write_extents(&a, &[1u8; 8192]);
    write_extents(&b, &[2u8; 4096]);
    write_extents(&c, &[3u8; 4096]);
    // Data in the file, entries not yet: the guest clusters still read as zeroes.
    assert_eq!(host_of(&q, 5), None, "linked before the data was written");
    assert_eq!(host_of(&q, 6), None, "linked before the data was written");
    b.guard.finish(true).unwrap();
    assert_eq!(host_of(&q, 5), Some(ha - 4096));
    a.guard.finish(true).unwrap();
    c.guard.finish(true).unwrap();
    assert_eq!(host_of(&q, 6), Some(hc));
    mirror[(5 * CS + 4096) as usize..(5 * CS + 12288) as usize].fill(1);
    mirror[(5 * CS + 32768) as usize..(5 * CS + 36864) as usize].fill(2);
    mirror[(6 * CS) as usize..(6 * CS + 4096) as usize].fill(3);
    // A slow-path write joining an allocation in flight: the same host cluster.
    let e = q.map(9 * CS, 4096, true).unwrap();
    q.write(9 * CS + 8192, &[4u8; 4096]).unwrap();
    mirror[(9 * CS + 8192) as usize..(9 * CS + 12288) as usize].fill(4);
    let Extent::File { offset: he, .. } = e.extents[0] else {
        panic!("not a file extent");
    };
    assert_eq!(host_of(&q, 9), Some(he), "the slow path allocated again");
    write_extents(&e, &[5u8; 4096]);
    e.guard.finish(true).unwrap();
    mirror[(9 * CS) as usize..(9 * CS + 4096) as usize].fill(5);
    assert!(read_all(&q) == mirror, "read back differs");
    drop(q);
    compare_with_raw(&d, &p, &mirror);
}

#[test]
fn a_write_mapping_whose_data_failed_links_nothing() {
    let d = TempDir::new();
    let p = d.path("f.qcow2");
    img_create(&p, "cluster_size=64k", "16M");
    let q = open(&p, None, true);
    let a = q.map(3 * CS, 4096, true).unwrap();
    write_extents(&a, &[7u8; 4096]);
    a.guard.finish(false).unwrap();
    assert_eq!(host_of(&q, 3), None, "a failed write was linked");
    // Dropped unfinished: the same.
    let b = q.map(4 * CS, 4096, true).unwrap();
    drop(b);
    assert_eq!(host_of(&q, 4), None, "an abandoned write was linked");
    assert!(read_all(&q) == vec![0u8; 16 << 20]);
    drop(q);
    compare_with_raw(&d, &p, &vec![0u8; 16 << 20]);
}

#[test]
fn killed_between_data_and_link_leaks_at_most() {
    let d = TempDir::new();
    let p = d.path("k.qcow2");
    img_create(&p, "cluster_size=64k", "16M");
    let q = open(&p, None, true);
    q.write(0, &[9u8; 4096]).unwrap();
    let a = q.map(2 * CS, 4096, true).unwrap();
    write_extents(&a, &[8u8; 4096]);
    // The process dies: nothing more happens to the file.
    std::mem::forget(a);
    std::mem::forget(q);
    check_no_corruption(&p);
    let mut mirror = vec![0u8; 16 << 20];
    mirror[..4096].fill(9);
    let q = open(&p, None, true);
    assert!(
        read_all(&q) == mirror,
        "completed write lost or unlinked data visible"
    );
}

#[test]
fn threads_map_and_allocate_the_same_and_neighbouring_clusters() {
    let d = TempDir::new();
    let p = d.path("t.qcow2");
    img_create(&p, "cluster_size=64k", "32M");
    let q = Arc::new(open(&p, None, true));
    // Each thread maps a 4 KiB write into every one of 64 clusters (thread t at 4 KiB
    // block t: the same clusters from all at once) and one whole neighbour cluster of
    // its own, writes the data, then finishes both.
    in_four_threads(&q, |q, t, gc| {
        let m = q.map(gc * CS + t * 4096, 4096, true).unwrap();
        write_extents(&m, &[(t + 1) as u8; 4096]);
        let n = q.map((64 + gc * 4 + t) * CS, CS, true).unwrap();
        write_extents(&n, &vec![(t + 1) as u8; CS as usize]);
        n.guard.finish(true).unwrap();
        m.guard.finish(true).unwrap();
    });
    let mut mirror = vec![0u8; 32 << 20];
    for gc in 0..64u64 {
        for t in 0..4u64 {
            let at = (gc * CS + t * 4096) as usize;
            mirror[at..at + 4096].fill((t + 1) as u8);
            let at = ((64 + gc * 4 + t) * CS) as usize;
            mirror[at..at + CS as usize].fill((t + 1) as u8);
        }
    }
    distinct_hosts_and_equal(&d, &p, q, &mirror);
}

/// Each reserve batch of a session is 4 times the one before (fewer ordering syncs while
/// a disk fills), up to 16 times the first and to a quarter of the disk's clusters.
#[test]
fn reserve_batches_grow_while_a_disk_fills_and_stay_bounded() {
    let d = TempDir::new();
    let batches = |size: &str| {
        let p = d.path(&format!("grow-{size}.qcow2"));
        img_create(&p, "cluster_size=64k", size);
        let q = open(&p, None, true);
        q.with_meta(|m| {
            (0..6)
                .map(|_| {
                    m.take_data_cluster().unwrap();
                    let batch = m.reserved.len() + 1;
                    for _ in 1..batch {
                        m.take_data_cluster().unwrap();
                    }
                    batch
                })
                .collect::<Vec<_>>()
        })
    };
    // 1 GiB: 16384 clusters, a quarter is 4096 (16 times the first batch).
    assert_eq!(batches("1G"), [256, 1024, 4096, 4096, 4096, 4096]);
    // 64 MiB: a quarter of its 1024 clusters is the first batch already.
    assert_eq!(batches("64M"), [256, 256, 256, 256, 256, 256]);
}

#[test]
fn a_reserve_batch_writes_its_refcounts_once_per_sector() {
    let d = TempDir::new();
    let p = d.path("r.qcow2");
    img_create(&p, "cluster_size=64k", "64M");
    let q = open(&p, None, true);
    // The first allocation reserves a batch of 256 clusters (16 MiB) and makes an L2
    // table: the batch's refcounts (512 bytes of 16-bit entries, two sectors at most)
    // go out as one write, not one per cluster.
    let before = q.with_meta(|m| m.reserved.len());
    assert_eq!(before, 0);
    q.with_meta(|m| m.crash.0 = Some(1_000_000));
    let m = q.map(0, 4096, true).unwrap();
    let writes = 1_000_000 - q.with_meta(|m| m.crash.0.take()).unwrap();
    assert_eq!(q.with_meta(|m| m.reserved.len()), 255);
    // The L2 table: its refcount, the table, the L1 entry; the batch: one.
    assert_eq!(writes, 4, "metadata writes of the first allocation");
    write_extents(&m, &[6u8; 4096]);
    m.guard.finish(true).unwrap();
    let mut mirror = vec![0u8; 64 << 20];
    mirror[..4096].fill(6);
    drop(q);
    compare_with_raw(&d, &p, &mirror);
}
