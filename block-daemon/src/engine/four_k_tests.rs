//! The engines on a device with 4 KiB logical sectors and O_DIRECT (a loop device made
//! with `losetup --sector-size 4096`), where a guest's 512-byte write is smaller than
//! the device takes: it goes through the format's read-modify-write, and an engine
//! write in flight on the same block holds that block's window until it completes, so
//! the read-modify-write never writes stale bytes over it.

use std::fs::File;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{sync::SyncEngine, uring::UringEngine, Done, Engine};
use crate::disk::{CacheMode, Disk};
use crate::formats::direct::{read_some, write_all};
use crate::formats::raw::Raw;
use crate::request::{Kind, Request, Segment};
use crate::testing::{LoopDevice, Scratch};

/// A raw node (O_DIRECT) over a new 4 KiB-sector loop device of 1 MiB, and a second
/// O_DIRECT fd of that device for the test's own I/O.
fn four_k_node(tag: &str) -> (Scratch, LoopDevice, Arc<Disk>, File) {
    let backing = Scratch::new(tag, 1 << 20);
    let dev = LoopDevice::over(&backing.path, 4096);
    let (image, own) = (dev.open_direct(), dev.open_direct());
    let raw = Raw::open(image, true).unwrap();
    let disk = Arc::new(Disk::new(Arc::new(raw), None, false, CacheMode::Direct, "4k").unwrap());
    (backing, dev, disk, own)
}

/// A guest memory of 64 KiB and a request of `kind` for `len` bytes at `sector`, its
/// data at 0x1000 filled with `fill`.
fn request(kind: Kind, sector: u64, len: usize, fill: u8) -> (Arc<GuestMemoryMmap>, Request) {
    let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap());
    let host = |a: u64| mem.get_host_address(GuestAddress(a)).unwrap();
    // SAFETY: `len` (at most 32 KiB here) bytes at 0x1000 lie inside the 64 KiB mapped.
    unsafe { std::ptr::write_bytes(host(0x1000), fill, len) };
    let req = Request {
        kind,
        sector,
        data: vec![Segment {
            ptr: host(0x1000),
            len,
        }],
        data_len: len,
        status: host(0xf000),
        arrived: std::time::Instant::now(),
    };
    (mem, req)
}

fn drained(engine: &mut dyn Engine) -> Vec<Done> {
    engine.flush();
    let mut done = Vec::new();
    engine.drain(&mut done);
    done
}

/// The device's first block, read through an O_DIRECT fd.
fn first_block(file: &File) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    assert_eq!(read_some(file, 0, &mut b).unwrap(), 4096);
    b
}

/// A 512-byte write and read (smaller than the device's block) succeed through either
/// engine and keep the rest of the block (the kernel refuses them with EINVAL: they go
/// through the format's read-modify-write).
#[test]
fn sub_block_writes_and_reads_on_a_4k_sector_device() {
    let (_backing, _dev, disk, file) = four_k_node("engine-4k-sub");
    let engines: [Box<dyn Engine>; 2] = [
        Box::new(SyncEngine::new(disk.clone())),
        Box::new(UringEngine::new(disk.clone(), 8).unwrap()),
    ];
    for (i, mut e) in engines.into_iter().enumerate() {
        let fill = 0x10 + i as u8;
        write_all(&file, 0, &[0x77; 4096]).unwrap();
        let (mem, req) = request(Kind::Write, 1, 512, fill);
        e.submit(0, req, mem);
        let done = drained(&mut *e);
        assert_eq!(
            (done[0].code, done[0].error),
            (virtio::blk::S_OK, None),
            "engine {i}: the 512-byte write failed"
        );
        let block = first_block(&file);
        assert!(block[..512].iter().all(|b| *b == 0x77), "engine {i}");
        assert!(block[512..1024].iter().all(|b| *b == fill), "engine {i}");
        assert!(block[1024..].iter().all(|b| *b == 0x77), "engine {i}");
        let (mem, req) = request(Kind::Read, 1, 512, 0);
        let seg = req.data[0];
        e.submit(0, req, mem.clone());
        let done = drained(&mut *e);
        assert_eq!(
            done[0].code,
            virtio::blk::S_OK,
            "engine {i}: the read failed"
        );
        // SAFETY: the 512 bytes of the request's segment, in `mem`, still mapped.
        let got = unsafe { std::slice::from_raw_parts(seg.ptr, 512) };
        assert!(got.iter().all(|b| *b == fill), "engine {i}");
    }
}

/// A read-modify-write of a block (another queue's 512-byte write) waits while the
/// io_uring engine's write of that block is in flight, and lands after it (its order;
/// without the wait its write-back could carry the block's old bytes over the engine's
/// write). A 512-byte write on the same queue behind an engine write of its block waits
/// for that one in the queue's thread (it would wait forever for a window only that
/// thread releases).
#[test]
fn a_read_modify_write_waits_for_the_rings_write_of_its_block() {
    let (_backing, _dev, disk, file) = four_k_node("engine-4k-window");
    let file = Arc::new(file);
    let mut uring = UringEngine::new(disk.clone(), 8).unwrap();
    let (mem, req) = request(Kind::Write, 0, 8192, 0xaa);
    uring.submit(0, req, mem);
    uring.flush();
    // The other queue: its bounce write of 512 bytes at 512.
    let (tx, rx) = mpsc::channel();
    let other = file.clone();
    let rmw = std::thread::spawn(move || {
        write_all(&other, 512, &[0xbb; 512]).unwrap();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the read-modify-write did not wait for the engine's write of its block"
    );
    let done = drained(&mut uring);
    assert_eq!(done[0].code, virtio::blk::S_OK);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the read-modify-write never got its block");
    rmw.join().unwrap();
    let block = first_block(&file);
    assert!(block[..512].iter().all(|b| *b == 0xaa));
    assert!(block[512..1024].iter().all(|b| *b == 0xbb));
    assert!(block[1024..].iter().all(|b| *b == 0xaa));

    // The same queue: an engine write in flight, then a 512-byte write into its block.
    let (tx, rx) = mpsc::channel();
    let queue = std::thread::spawn(move || {
        let (mem1, req) = request(Kind::Write, 0, 4096, 0xcc);
        uring.submit(0, req, mem1);
        uring.flush();
        let (mem2, req) = request(Kind::Write, 2, 512, 0xdd);
        uring.submit(1, req, mem2);
        let _ = tx.send(drained(&mut uring));
    });
    let done = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the queue's 512-byte write waited for its own engine's write forever");
    queue.join().unwrap();
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|d| d.code == virtio::blk::S_OK), "{done:?}");
    let block = first_block(&file);
    assert!(block[..1024].iter().all(|b| *b == 0xcc));
    assert!(block[1024..1536].iter().all(|b| *b == 0xdd));
    assert!(block[1536..].iter().all(|b| *b == 0xcc));
}
