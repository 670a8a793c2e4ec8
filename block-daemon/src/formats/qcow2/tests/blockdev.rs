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
