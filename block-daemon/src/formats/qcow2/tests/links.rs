//! Linking the allocations of several finished write mappings at once
//! (`Format::finish_writes`, as the io_uring engine ends a batch of completions): the
//! entries one L2 table gained go out as one write, whatever order the requests end
//! in, joined requests included; a failed table write fails exactly the requests whose
//! clusters it named. qemu-img check and compare are the oracles.

use super::alloc::write_extents;
use super::concurrency::host_of;
use super::oracle::{check_no_corruption, img_create, TempDir};
use super::rw::{open, read_all};
use crate::formats::qcow2::Qcow2;
use crate::formats::{Format, MapGuard, Mapping};

/// File writes `f` makes (the test hook counts them down).
fn writes_of<T>(q: &Qcow2, f: impl FnOnce() -> T) -> (T, usize) {
    const LOTS: usize = 1_000_000;
    q.with_meta(|m| m.crash.0 = Some(LOTS));
    let r = f();
    let left = q.with_meta(|m| m.crash.0.take()).unwrap();
    (r, LOTS - left)
}

/// Maps `len` bytes at `at` for writing and writes `byte` there (the engine's part).
fn mapped_write(q: &Qcow2, mirror: &mut [u8], at: u64, len: usize, byte: u8) -> Mapping {
    let m = q.map(at, len as u64, true).unwrap();
    assert!(
        m.guard.has_commit(),
        "the write at {at:#x} allocates nothing"
    );
    write_extents(&m, &vec![byte; len]);
    mirror[at as usize..at as usize + len].fill(byte);
    m
}

#[test]
fn allocations_sharing_an_l2_sector_are_linked_by_one_write() {
    const CS: u64 = 65536;
    let d = TempDir::new();
    let p = d.path("s.qcow2");
    img_create(&p, "cluster_size=64k", "16M");
    let q = open(&p, None, true);
    let mut mirror = vec![0u8; 16 << 20];
    // Eight neighbouring clusters (one 512-byte sector of their L2 table), and a
    // second write into cluster 2 that joins its allocation.
    let mut maps: Vec<Mapping> = (0..8u64)
        .map(|gc| mapped_write(&q, &mut mirror, gc * CS + 512 * gc, 4096, gc as u8 + 1))
        .collect();
    maps.push(mapped_write(&q, &mut mirror, 2 * CS + 32768, 4096, 0x77));
    assert_eq!(host_of(&q, 2), None, "linked before the data was written");
    // The completions come back in another order than they went out.
    maps.reverse();
    maps.swap(0, 4);
    let ends: Vec<(MapGuard, bool)> = maps.into_iter().map(|m| (m.guard, true)).collect();
    let (results, writes) = writes_of(&q, || q.finish_writes(ends));
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        writes, 1,
        "nine requests, eight entries in one sector: one write"
    );
    let mut hosts: Vec<u64> = (0..8).map(|gc| host_of(&q, gc).unwrap()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    assert_eq!(hosts.len(), 8, "a host cluster was given out twice");
    assert!(read_all(&q) == mirror, "read back differs");
    drop(q);
    super::oracle::compare_with_raw(&d, &p, &mirror);
}

#[test]
fn a_failed_table_write_fails_exactly_the_requests_that_needed_it() {
    // 4 KiB clusters: an L2 table covers 2 MiB of the guest.
    const CS: u64 = 4096;
    let d = TempDir::new();
    let p = d.path("e.qcow2");
    img_create(&p, "cluster_size=4k", "8M");
    let q = open(&p, None, true);
    let mut mirror = vec![0u8; 8 << 20];
    // (guest offset, length, byte): two clusters in the first 2 MiB, two in the next
    // 2 MiB (one of them written by two requests: one links, the other joins).
    let writes = [
        (CS, 4096usize, 1u8),
        (3 * CS, 4096, 3),
        (600 * CS, 2048, 4),
        (600 * CS + 2048, 2048, 2),
        (700 * CS + 1024, 1024, 5),
    ];
    let maps: Vec<Mapping> = writes
        .iter()
        .map(|&(at, len, b)| mapped_write(&q, &mut mirror, at, len, b))
        .collect();
    let table_of = |gc: u64| q.with_meta(|m| m.l2_offset(gc)).unwrap().unwrap().0;
    let (low, high) = (table_of(1), table_of(600));
    assert_ne!(low, high);
    // Tables are written in offset order: the second write fails (the process "dies"
    // at it: nothing more reaches the file).
    let second = low.max(high);
    let ends: Vec<(MapGuard, bool)> = maps.into_iter().rev().map(|m| (m.guard, true)).collect();
    q.with_meta(|m| m.crash.0 = Some(1));
    let results = q.finish_writes(ends);
    let failed: Vec<bool> = results.iter().rev().map(Result::is_err).collect();
    let expected: Vec<bool> = writes
        .iter()
        .map(|&(at, _, _)| table_of(at / CS) == second)
        .collect();
    assert!(expected.contains(&true) && expected.contains(&false));
    assert_eq!(failed, expected, "{results:?}");
    // Only the linked clusters are named: what failed reads as it did before.
    for (i, &(at, len, _)) in writes.iter().enumerate() {
        if expected[i] {
            mirror[at as usize..at as usize + len].fill(0);
        }
    }
    std::mem::forget(q);
    check_no_corruption(&p);
    let q = open(&p, None, true);
    assert!(
        read_all(&q) == mirror,
        "a failed request's data is visible, or a completed one's lost"
    );
}
