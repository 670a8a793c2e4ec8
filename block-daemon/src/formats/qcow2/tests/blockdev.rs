//! qcow2 on a block device (QEMU's host_device under qcow2): a loop device the test
//! sets up over a file and tears down. The device's length comes from BLKGETSIZE64
//! (its `metadata().len()` is 0), nothing is allocated past its end, and freed clusters
//! are discarded with BLKDISCARD.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ipc::BlockCounters;

use super::oracle::{check_clean, ok, s, TempDir};
use super::rw::open;
use crate::formats::Format;
use crate::testing::LoopDevice;

#[test]
fn qcow2_on_a_loop_device() {
    const DEVICE: u64 = 8 << 20;
    let d = TempDir::new();
    let backing = d.path("device.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(DEVICE)
        .unwrap();
    let dev = LoopDevice::over(&backing, 512);
    // A guest size past the device's: allocating writes can run out of room.
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&dev.0), "64M"],
    );
    ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x5a 0 1M", s(&dev.0)],
    );
    let counters = Arc::new(BlockCounters::create().unwrap());
    let q = open(&dev.0, None, true).pass_discards(counters.clone());
    assert_eq!(q.with_meta(|m| m.file_size), DEVICE);
    let mut b = vec![0u8; 1 << 20];
    q.read(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x5a));
    q.write(2 << 20, &vec![0x33u8; 1 << 20]).unwrap();
    q.discard(0, 512 << 10).unwrap();
    q.flush().unwrap();
    assert_eq!(
        counters.page().discard_ok.load(Ordering::Relaxed),
        1,
        "BLKDISCARD of the freed clusters"
    );
    drop(q);
    check_clean(&dev.0);
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "read -P 0 0 512k",
            "-c",
            "read -P 0x5a 512k 512k",
            "-c",
            "read -P 0x33 2M 1M",
            s(&dev.0),
        ],
    );
    // Past the end of the device: ENOSPC, as QEMU's host_device gives.
    let q = open(&dev.0, None, true);
    let e = q.write(16 << 20, &vec![1u8; 16 << 20]).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
}

/// 512-byte clusters on a 4 KiB-sector device opened O_DIRECT: every metadata and
/// data write is a read-modify-write of a 4 KiB block shared with neighbouring
/// clusters. Writers of neighbouring clusters at once all keep their data.
#[test]
fn small_clusters_on_a_4k_sector_device_written_at_once() {
    let d = TempDir::new();
    let backing = d.path("device.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let dev = LoopDevice::over(&backing, 4096);
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            s(&dev.0),
            "1M",
        ],
    );
    let q = Arc::new(open(&dev.0, None, true));
    q.with_meta(|m| crate::formats::direct::set_direct(&m.file, true))
        .unwrap();
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let q = q.clone();
            std::thread::spawn(move || {
                for round in 0..40u8 {
                    // Guest clusters i, i + 8, ...: neighbours on the host.
                    let at = (u64::from(round) * 8 + u64::from(i)) * 512;
                    let mine = [i.wrapping_mul(16).wrapping_add(round); 512];
                    q.write(at, &mine).unwrap();
                    let mut back = [0u8; 512];
                    q.read(at, &mut back).unwrap();
                    assert!(back == mine, "cluster at {at:#x} lost its write");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(q);
    check_clean(&dev.0);
    for (i, round) in [(0u8, 0u8), (7, 39), (3, 17)] {
        let at = (u64::from(round) * 8 + u64::from(i)) * 512;
        let pattern = i.wrapping_mul(16).wrapping_add(round);
        ok(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("read -P {pattern} {at} 512"),
                s(&dev.0),
            ],
        );
    }
}
