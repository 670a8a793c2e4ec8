//! Allocating writes: partial writes into new clusters (fresh ones, past the old end
//! of the file, written without their zeroes; reused ones, freed before, filled), and
//! allocations of the same and of neighbouring clusters from several threads at once.
//! qemu-img check and compare are the oracles.

use std::sync::Arc;

use super::oracle::{compare_with_raw, img_create, TempDir};
use super::rw::{open, read_all};
use crate::formats::qcow2::tables::Cluster;
use crate::formats::{Extent, Format};

const CS: u64 = 65536;

fn host_of(q: &crate::formats::qcow2::Qcow2, gc: u64) -> Option<u64> {
    match q.with_meta(|m| m.lookup(gc)).unwrap() {
        Cluster::Normal { offset, .. } => Some(offset),
        _ => None,
    }
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
    // Four threads; in each of 64 guest clusters, thread t writes sectors t, t + 4,
    // ... (the same cluster from all at once), and clusters 64.. are written whole,
    // one thread per neighbour.
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                for gc in 0..64u64 {
                    for s in (t..128).step_by(4) {
                        q.write(gc * CS + s * 512, &[(t + 1) as u8; 512]).unwrap();
                    }
                    q.write((64 + gc * 4 + t) * CS, &vec![(t + 1) as u8; CS as usize])
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
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
    let mut hosts: Vec<u64> = (0..320).filter_map(|gc| host_of(&q, gc)).collect();
    assert_eq!(hosts.len(), 320);
    hosts.sort_unstable();
    hosts.dedup();
    assert_eq!(hosts.len(), 320, "a host cluster was given out twice");
    assert!(read_all(q.as_ref()) == mirror, "read back differs");
    drop(q);
    compare_with_raw(&d, &p, &mirror);
}
