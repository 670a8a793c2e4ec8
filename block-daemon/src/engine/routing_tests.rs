//! How the engines route reads and writes by the format's mapping: a scripted format
//! (a mock, for these unit tests only) answers `map`, and each engine must take the
//! path the answer calls for.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{sync::SyncEngine, uring::UringEngine, Done, Engine};
use crate::disk::{CacheMode, Disk};
use crate::formats::{Extent, Format, FormatError, MapGuard, MappedRequests, Mapping};
use crate::request::{Kind, Request, Segment};
use crate::testing::Scratch;

/// A format whose guest bytes live in memory, and whose `map` answers what the test
/// scripts: how the request path routes each answer is what is tested.
struct Scripted {
    data: Mutex<Vec<u8>>,
    extents: Vec<Extent>,
    mapped: Arc<MappedRequests>,
    calls: Mutex<Vec<&'static str>>,
}

impl Format for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn virtual_size(&self) -> u64 {
        self.data.lock().len() as u64
    }
    fn map(&self, _: u64, _: u64, _: bool) -> Result<Mapping, FormatError> {
        Ok(Mapping {
            extents: self.extents.clone(),
            guard: MapGuard::new(&self.mapped),
        })
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        self.calls.lock().push("read");
        let o = offset as usize;
        buf.copy_from_slice(&self.data.lock()[o..o + buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), FormatError> {
        self.calls.lock().push("write");
        let o = offset as usize;
        self.data.lock()[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), FormatError> {
        self.calls.lock().push("flush");
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> Result<(), FormatError> {
        Err(FormatError::Unsupported("no".into()))
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> Result<(), FormatError> {
        Err(FormatError::Corrupt("corrupt".into()))
    }
    fn resize(&self, _: u64) -> Result<(), FormatError> {
        Err(FormatError::ReadOnly)
    }
}

fn scripted(extents: Vec<Extent>) -> Arc<Scripted> {
    Arc::new(Scripted {
        data: Mutex::new((0..1 << 16).map(|i| (i % 253) as u8).collect()),
        extents,
        mapped: Arc::new(MappedRequests::default()),
        calls: Mutex::new(Vec::new()),
    })
}

fn disk(format: Arc<Scripted>, cache: CacheMode) -> Arc<Disk> {
    Arc::new(Disk::new(format, None, false, cache, "t").unwrap())
}

/// A guest memory with a request of `kind` for 4 KiB at sector 8 whose data is at
/// 0x1000 (filled with 0xee) and status at 0x3000.
fn request(kind: Kind) -> (Arc<GuestMemoryMmap>, Request) {
    let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap());
    let host = |a: u64| mem.get_host_address(GuestAddress(a)).unwrap();
    // SAFETY: 4 KiB at 0x1000 lie inside the 64 KiB just mapped.
    unsafe { std::ptr::write_bytes(host(0x1000), 0xee, 4096) };
    let req = Request {
        kind,
        sector: 8,
        data: vec![Segment {
            ptr: host(0x1000),
            len: 4096,
        }],
        data_len: 4096,
        status: host(0x3000),
        arrived: std::time::Instant::now(),
    };
    (mem, req)
}

/// A scratch file in O_DIRECT mode holding 4 KiB of `byte` at `offset`, and the extent
/// that maps a request onto those bytes.
fn direct_block(tag: &str, byte: u8, offset: u64) -> (Scratch, Extent) {
    let s = Scratch::new(tag, 1 << 20);
    s.file.write_all_at(&[byte; 4096], offset).unwrap();
    crate::formats::direct::set_direct(&s.file, true).unwrap();
    let at = Extent::File {
        fd: s.file.as_raw_fd(),
        offset,
        len: 4096,
    };
    (s, at)
}

fn guest_data(data: &[Segment]) -> Vec<u8> {
    // SAFETY: the segment is the 4 KiB mapped by `request`, still held by the test.
    unsafe { std::slice::from_raw_parts(data[0].ptr, 4096) }.to_vec()
}

fn run(engine: &mut dyn Engine, req: Request, mem: Arc<GuestMemoryMmap>) -> Done {
    engine.submit(0, req, mem);
    engine.flush();
    let mut done = Vec::new();
    engine.drain(&mut done);
    assert_eq!(done.len(), 1);
    done.pop().unwrap()
}

fn engines(d: &Arc<Disk>) -> Vec<Box<dyn Engine>> {
    vec![
        Box::new(SyncEngine::new(d.clone())),
        Box::new(UringEngine::new(d.clone(), 8).unwrap()),
    ]
}

#[test]
fn zero_extents_read_as_zeroes_without_the_format() {
    let f = scripted(vec![Extent::Zero { len: 1024 }, Extent::Zero { len: 3072 }]);
    let d = disk(f.clone(), CacheMode::Writeback);
    for mut e in engines(&d) {
        let (mem, req) = request(Kind::Read);
        let seg = req.data.clone();
        let done = run(&mut *e, req, mem.clone());
        assert_eq!((done.code, done.used_len), (virtio::blk::S_OK, 4097));
        assert!(guest_data(&seg).iter().all(|b| *b == 0));
    }
    assert!(f.calls.lock().is_empty(), "{:?}", f.calls.lock());
    assert_eq!(f.mapped.in_flight(), 0);
}

/// Several extents, or data only the format can move: the format reads and writes
/// through a bounce buffer, at the guest's offset.
#[test]
fn anything_else_goes_through_the_format() {
    for extents in [
        vec![Extent::Format { len: 4096 }],
        vec![Extent::Zero { len: 512 }, Extent::Format { len: 3584 }],
        // A file extent that does not cover the request is not trusted.
        vec![Extent::File {
            fd: -1,
            offset: 0,
            len: 512,
        }],
    ] {
        let f = scripted(extents.clone());
        let d = disk(f.clone(), CacheMode::Writeback);
        for mut e in engines(&d) {
            let (mem, req) = request(Kind::Read);
            let seg = req.data.clone();
            let done = run(&mut *e, req, mem.clone());
            assert_eq!(done.code, virtio::blk::S_OK, "{extents:?}");
            assert_eq!(guest_data(&seg), f.data.lock()[4096..8192], "{extents:?}");
            let (mem, req) = request(Kind::Write);
            let done = run(&mut *e, req, mem.clone());
            assert_eq!(done.code, virtio::blk::S_OK, "{extents:?}");
            assert!(f.data.lock()[4096..8192].iter().all(|b| *b == 0xee));
            f.data.lock()[4096..8192].fill(1);
        }
        assert_eq!(
            *f.calls.lock(),
            ["read", "write", "read", "write"],
            "{extents:?}"
        );
        assert_eq!(f.mapped.in_flight(), 0);
    }
}

/// One file extent: the data moves between the guest and that file at the extent's
/// offset, and the mapping stays claimed until the request is reaped.
#[test]
fn one_file_extent_goes_to_its_file_and_keeps_its_guard_until_reaped() {
    let (s, at) = direct_block("mapped", 0x5a, 65536);
    let path = &s.path;
    let f = scripted(vec![at]);
    let d = disk(f.clone(), CacheMode::Direct);
    let mut uring = UringEngine::new(d.clone(), 8).unwrap();
    let (mem, req) = request(Kind::Read);
    let seg = req.data.clone();
    uring.submit(0, req, mem.clone());
    uring.flush();
    assert_eq!(f.mapped.in_flight(), 1, "the slot holds the guard");
    let mut done = Vec::new();
    uring.drain(&mut done);
    assert_eq!(f.mapped.in_flight(), 0);
    assert_eq!(done[0].code, virtio::blk::S_OK);
    assert!(guest_data(&seg).iter().all(|b| *b == 0x5a));
    // A write lands in the file at the extent's offset, by either engine.
    for mut e in engines(&d) {
        let (mem, req) = request(Kind::Write);
        assert_eq!(run(&mut *e, req, mem).code, virtio::blk::S_OK);
        let mut back = [0u8; 4096];
        File::open(path)
            .unwrap()
            .read_exact_at(&mut back, 65536)
            .unwrap();
        assert!(back.iter().all(|b| *b == 0xee));
        // (Through another open file: the engines' one is O_DIRECT.)
        let plain = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        plain.write_all_at(&[0; 4096], 65536).unwrap();
    }
    assert!(f.calls.lock().is_empty(), "{:?}", f.calls.lock());
}

/// A format's failure reaches the guest as its errno (and the node's policy).
#[test]
fn format_errors_become_the_guests_errors() {
    let f = scripted(vec![Extent::Format { len: 4096 }]);
    let d = disk(f, CacheMode::Writeback);
    for mut e in engines(&d) {
        let (mem, mut req) = request(Kind::Flush);
        req.kind = Kind::WriteZeroes(vec![crate::request::SectorRange {
            sector: 0,
            sectors: 1,
            unmap: false,
        }]);
        let done = run(&mut *e, req, mem);
        assert_eq!(done.code, virtio::blk::S_IOERR);
        assert_eq!(done.error, Some(libc::EIO));
        let (mem, mut req) = request(Kind::Flush);
        req.kind = Kind::Discard(vec![crate::request::SectorRange {
            sector: 0,
            sectors: 1,
            unmap: false,
        }]);
        assert_eq!(run(&mut *e, req, mem).error, Some(libc::ENOTSUP));
    }
}

/// Several extents of files (and zeroes, for a read): each piece goes to its file at its
/// offset, without the format, by either engine, buffered or O_DIRECT.
#[test]
fn split_requests_go_piece_by_piece_to_their_files() {
    let s = Scratch::new("split", 1 << 20);
    let (file, path) = (&s.file, &s.path);
    file.write_all_at(&vec![0x33; 1 << 20], 0).unwrap();
    file.write_all_at(&[0x44; 1024], 8192).unwrap();
    file.write_all_at(&[0x55; 2048], 131072).unwrap();
    let fd = file.as_raw_fd();
    for cache in [CacheMode::Writeback, CacheMode::Direct] {
        crate::formats::direct::set_direct(file, cache.direct()).unwrap();
        let read = scripted(vec![
            Extent::File {
                fd,
                offset: 8192,
                len: 1024,
            },
            Extent::Zero { len: 1024 },
            Extent::File {
                fd,
                offset: 131072,
                len: 2048,
            },
        ]);
        let d = disk(read.clone(), cache);
        for mut e in engines(&d) {
            let (mem, req) = request(Kind::Read);
            let seg = req.data.clone();
            let done = run(&mut *e, req, mem.clone());
            assert_eq!(
                (done.code, done.used_len),
                (virtio::blk::S_OK, 4097),
                "{cache:?}"
            );
            let got = guest_data(&seg);
            assert!(got[..1024].iter().all(|b| *b == 0x44), "{cache:?}");
            assert!(got[1024..2048].iter().all(|b| *b == 0), "{cache:?}");
            assert!(got[2048..].iter().all(|b| *b == 0x55), "{cache:?}");
        }
        assert!(read.calls.lock().is_empty(), "{:?}", read.calls.lock());
        assert_eq!(read.mapped.in_flight(), 0);
        let write = scripted(vec![
            Extent::File {
                fd,
                offset: 262144,
                len: 2560,
            },
            Extent::File {
                fd,
                offset: 65536,
                len: 1536,
            },
        ]);
        let d = disk(write.clone(), cache);
        for mut e in engines(&d) {
            let (mem, req) = request(Kind::Write);
            assert_eq!(run(&mut *e, req, mem).code, virtio::blk::S_OK, "{cache:?}");
            let plain = File::open(path).unwrap();
            let mut back = vec![0u8; 2560];
            plain.read_exact_at(&mut back, 262144).unwrap();
            assert!(back.iter().all(|b| *b == 0xee), "{cache:?}");
            let mut back = vec![0u8; 1536];
            plain.read_exact_at(&mut back, 65536).unwrap();
            assert!(back.iter().all(|b| *b == 0xee), "{cache:?}");
            let mut around = [0u8; 1];
            plain.read_exact_at(&mut around, 65536 + 1536).unwrap();
            assert_eq!(around, [0x33], "{cache:?}: past the piece");
        }
        assert!(write.calls.lock().is_empty(), "{:?}", write.calls.lock());
    }
    // A write mapping with zeroes in it is the format's to do.
    let f = scripted(vec![
        Extent::File {
            fd,
            offset: 0,
            len: 512,
        },
        Extent::Zero { len: 3584 },
    ]);
    let d = disk(f.clone(), CacheMode::Writeback);
    for mut e in engines(&d) {
        let (mem, req) = request(Kind::Write);
        assert_eq!(run(&mut *e, req, mem).code, virtio::blk::S_OK);
    }
    assert_eq!(*f.calls.lock(), ["write", "write"]);
}

/// Whether `fd` polls readable within `ms`.
fn readable(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack, for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

/// The uring engine's notifier (the ring's own fd) polls readable while completions wait
/// and not once they are reaped, and a request with more pieces than the rings hold
/// (depth 1: one submission, room for 2 completions) completes whole. (Whether the
/// kernel had to hold completions back in its overflow list depends on timing: this
/// test does not force that path.)
#[test]
fn the_rings_fd_tells_of_completions_of_more_pieces_than_the_rings_hold() {
    let s = Scratch::new("overflow", 1 << 20);
    let file = &s.file;
    let fd = file.as_raw_fd();
    for i in 0..8u64 {
        file.write_all_at(&[i as u8 + 1; 512], 65536 * i).unwrap();
    }
    let extents = (0..8u64)
        .map(|i| Extent::File {
            fd,
            offset: 65536 * i,
            len: 512,
        })
        .collect();
    let d = disk(scripted(extents), CacheMode::Direct);
    crate::formats::direct::set_direct(file, true).unwrap();
    let mut uring = UringEngine::new(d, 1).unwrap();
    let notifier = uring.notifier().unwrap();
    assert!(!readable(notifier, 0), "nothing submitted yet");
    let (mem, req) = request(Kind::Read);
    let seg = req.data.clone();
    uring.submit(0, req, mem.clone());
    uring.flush();
    let mut done = Vec::new();
    for _ in 0..100 {
        if !done.is_empty() {
            break;
        }
        assert!(readable(notifier, 5000), "no completion signalled");
        uring.reap(&mut done);
    }
    assert_eq!(done.len(), 1, "the request never completed");
    assert_eq!(done[0].code, virtio::blk::S_OK);
    let got = guest_data(&seg);
    for i in 0..8 {
        assert!(got[i * 512..(i + 1) * 512]
            .iter()
            .all(|b| *b == i as u8 + 1));
    }
    assert_eq!(uring.in_flight(), 0);
    assert!(!readable(notifier, 0), "readable with nothing left to reap");
}

/// While a batch is parsed, its requests go to the kernel four at a time, not only at
/// the batch's end (the flush): the first three wait in the ring, the fourth takes all
/// four in, and they complete without a flush.
#[test]
fn submissions_go_to_the_kernel_in_groups_of_four_before_the_flush() {
    let (_s, at) = direct_block("groups", 0x77, 65536);
    let d = disk(scripted(vec![at]), CacheMode::Direct);
    let mut uring = UringEngine::new(d, 8).unwrap();
    let notifier = uring.notifier().unwrap();
    let mut segs = Vec::new();
    let mut mems = Vec::new();
    for i in 0..4 {
        let (mem, req) = request(Kind::Read);
        segs.push(req.data.clone());
        uring.submit(i, req, mem.clone());
        mems.push(mem);
        if i < 3 {
            assert_eq!(
                uring.unsubmitted(),
                i as usize + 1,
                "request {i} went alone"
            );
        }
    }
    assert_eq!(
        uring.unsubmitted(),
        0,
        "the fourth did not hand the group over"
    );
    let mut done = Vec::new();
    while done.len() < 4 {
        assert!(
            readable(notifier, 5000),
            "{} of 4 completed without a flush",
            done.len()
        );
        uring.reap(&mut done);
    }
    assert!(done.iter().all(|d| d.code == virtio::blk::S_OK));
    assert!(segs
        .iter()
        .all(|s| guest_data(s).iter().all(|b| *b == 0x77)));
}

/// The ring does not interrupt the worker to finish a request (COOP_TASKRUN, kernel 5.19
/// and later, as here), and a worker that watches without sleeping still sees the
/// completion: `has_completions` enters the kernel when the ring says work is waiting.
#[test]
fn a_watching_worker_sees_completions_the_kernel_did_not_interrupt_it_for() {
    let (_s, at) = direct_block("coop", 0x5a, 8192);
    let d = disk(scripted(vec![at]), CacheMode::Direct);
    let mut uring = UringEngine::new(d, 8).unwrap();
    assert!(
        uring.coop_taskrun(),
        "the ring was made without COOP_TASKRUN"
    );
    let (mem, req) = request(Kind::Read);
    let seg = req.data.clone();
    uring.submit(0, req, mem.clone());
    uring.flush();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !uring.has_completions() {
        assert!(Instant::now() < deadline, "no completion seen in 5 s");
        std::hint::spin_loop();
    }
    let mut done = Vec::new();
    uring.reap(&mut done);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].code, virtio::blk::S_OK);
    assert!(guest_data(&seg).iter().all(|b| *b == 0x5a));
}

/// A format whose write mappings carry a commit (as qcow2's allocating writes do): it
/// logs each commit and the size of each `finish_writes` batch.
struct Linking {
    extent: Extent,
    mapped: Arc<MappedRequests>,
    log: Arc<Mutex<Vec<String>>>,
}

struct Logged(Arc<Mutex<Vec<String>>>);

impl crate::formats::Commit for Logged {
    fn commit(self: Box<Self>, written: bool) -> Result<(), FormatError> {
        self.0.lock().push(format!("commit {written}"));
        Ok(())
    }
}

impl Format for Linking {
    fn name(&self) -> &'static str {
        "linking"
    }
    fn virtual_size(&self) -> u64 {
        1 << 16
    }
    fn map(&self, _: u64, _: u64, write: bool) -> Result<Mapping, FormatError> {
        let guard = MapGuard::new(&self.mapped);
        Ok(Mapping {
            extents: vec![self.extent],
            guard: if write {
                guard.with_commit(Box::new(Logged(self.log.clone())))
            } else {
                guard
            },
        })
    }
    fn finish_writes(&self, ends: Vec<(MapGuard, bool)>) -> Vec<Result<(), FormatError>> {
        self.log.lock().push(format!("batch of {}", ends.len()));
        ends.into_iter().map(|(g, w)| g.finish(w)).collect()
    }
    fn read(&self, _: u64, _: &mut [u8]) -> Result<(), FormatError> {
        Err(FormatError::ReadOnly)
    }
    fn write(&self, _: u64, _: &[u8]) -> Result<(), FormatError> {
        Err(FormatError::ReadOnly)
    }
    fn flush(&self) -> Result<(), FormatError> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> Result<(), FormatError> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> Result<(), FormatError> {
        Ok(())
    }
    fn resize(&self, _: u64) -> Result<(), FormatError> {
        Err(FormatError::ReadOnly)
    }
}

/// Writes whose mapping carries a commit: the data reaches the file first, the guest
/// hears only after the commit, and the buffered (sync engine) ones of one batch are
/// committed together in one `finish_writes`.
#[test]
fn commits_run_after_the_data_and_before_the_guest_hears_in_batches() {
    for (cache, engine_kind) in [(CacheMode::Writeback, "sync"), (CacheMode::Direct, "uring")] {
        let s = Scratch::new("linking", 1 << 20);
        if cache.direct() {
            crate::formats::direct::set_direct(&s.file, true).unwrap();
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let f = Arc::new(Linking {
            extent: Extent::File {
                fd: s.file.as_raw_fd(),
                offset: 8192,
                len: 4096,
            },
            mapped: Arc::new(MappedRequests::default()),
            log: log.clone(),
        });
        let d = Arc::new(Disk::new(f.clone(), None, false, cache, "t").unwrap());
        let mut engine: Box<dyn Engine> = match engine_kind {
            "sync" => Box::new(SyncEngine::new(d.clone())),
            _ => Box::new(UringEngine::new(d.clone(), 8).unwrap()),
        };
        let mut keep = Vec::new();
        for head in 0..4 {
            let (mem, req) = request(Kind::Write);
            keep.push(mem.clone());
            engine.submit(head, req, mem);
        }
        engine.flush();
        assert!(log.lock().is_empty(), "{engine_kind}: committed in submit");
        let mut back = [0u8; 4096];
        File::open(&s.path)
            .unwrap()
            .read_exact_at(&mut back, 8192)
            .unwrap();
        if engine_kind == "sync" {
            assert!(
                back.iter().all(|b| *b == 0xee),
                "the data is not in the file"
            );
        }
        let mut done = Vec::new();
        engine.drain(&mut done);
        assert_eq!(done.len(), 4);
        assert!(done.iter().all(|d| d.code == virtio::blk::S_OK));
        assert_eq!(f.mapped.in_flight(), 0);
        let log = log.lock();
        let commits = log.iter().filter(|l| l.as_str() == "commit true").count();
        assert_eq!(commits, 4, "{engine_kind}: {log:?}");
        if engine_kind == "sync" {
            assert_eq!(log[0], "batch of 4", "{log:?}");
        } else {
            assert!(log.iter().all(|l| l != "commit false"), "{log:?}");
            assert!(log[0].starts_with("batch of "), "{log:?}");
        }
    }
}
