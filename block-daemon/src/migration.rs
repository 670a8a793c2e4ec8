//! A block migration's end in this daemon (QMP migrate with `blk` or `inc`): the disk
//! channel (`ipc::disk_channel`) the gateway hands over, served on a thread of its own,
//! between this node and the migration agent; data never passes through the gateway.
//!
//! - Source (`BlockRequest::MigrationSource`): from the moment the call is answered,
//!   every write, write-zeroes and discard marks the chunks it reaches in a bitmap of
//!   the migration's own (beside the disk's dirty bitmaps; no query shows it). The agent
//!   reads the node as the guest sees it (the whole chain), asks what the top image
//!   holds (an incremental copy skips the rest, which the destination has in its base),
//!   and takes the marks: with the device quiesced they move into a taken set (so each
//!   chunk taken was written before the take, and a later write marks it again), which
//!   it then reads out in runs. Marking ends when the channel closes.
//! - Destination (`BlockRequest::MigrationSink`): what arrives is written through the
//!   image's format (qcow2 allocates as it would for the guest), zeroes as write-zeroes
//!   that may unmap, and a flush makes it durable before the VM runs here.
//!
//! One migration at a time: a new channel of either kind ends the previous one.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipc::disk_channel::{check_range, reply, ChannelError, Request, SECTOR};
use ipc::{errno_text, SharedBitmap};
use parking_lot::Mutex;

use crate::device::{BlkDevice, QUIESCE_TIMEOUT};
use crate::formats::FormatError;
use crate::writeback::Writeback;

/// Disk bytes per bit of the migration's marks (QEMU's block migration tracks 1 MiB
/// chunks; finer, a write resends less).
pub const GRANULARITY: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("the node is inactive (a migration's source may still write its images)")]
    Inactive,
    #[error("the node is read-only")]
    ReadOnly,
    #[error("the migration's marks: {0}")]
    Bitmap(#[from] ipc::dirty_bitmap::BitmapError),
    #[error("the disk channel: {0}")]
    Channel(std::io::Error),
    #[error("starting the disk channel's thread: {0}")]
    Thread(std::io::Error),
}

/// The channel served now, if any.
#[derive(Default)]
pub struct Migrations {
    generation: AtomicU64,
    current: Mutex<Option<(u64, UnixStream)>>,
}

/// What a failed format call says on the channel.
fn format_error(e: FormatError) -> String {
    match e {
        FormatError::Io(e) => errno_text(&e),
        other => other.to_string(),
    }
}

impl Migrations {
    /// Ends the channel served now (its thread sees the channel closed).
    pub fn stop(&self) {
        if let Some((_, stream)) = self.current.lock().take() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Takes over `fd` as the current channel: the previous one ends.
    fn begin(&self, fd: OwnedFd) -> Result<(u64, UnixStream), MigrationError> {
        self.stop();
        let stream = UnixStream::from(fd);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let kept = stream.try_clone().map_err(MigrationError::Channel)?;
        *self.current.lock() = Some((generation, kept));
        Ok((generation, stream))
    }

    /// Whether `generation` is still the current channel.
    fn current(&self, generation: u64) -> bool {
        self.current
            .lock()
            .as_ref()
            .is_some_and(|(g, _)| *g == generation)
    }

    /// `BlockRequest::MigrationSource`: marking is on when this returns.
    pub fn source(self: &Arc<Self>, device: &BlkDevice, fd: OwnedFd) -> Result<(), MigrationError> {
        let size = device.disk().size();
        let marks = Arc::new(SharedBitmap::create(size, GRANULARITY)?);
        let taken = SharedBitmap::create(size, GRANULARITY)?;
        let (generation, stream) = self.begin(fd)?;
        device.dirty_bitmaps().set_migration(Some(marks.clone()));
        let mut source = Source {
            device: device.clone(),
            marks,
            taken,
            cursor: 0,
            buf: Vec::new(),
        };
        let me = self.clone();
        let marking = device.clone();
        std::thread::Builder::new()
            .name("migration-source".into())
            .spawn(move || {
                serve(stream, |r, s| source.call(r, s));
                if me.current(generation) {
                    marking.dirty_bitmaps().set_migration(None);
                    me.current.lock().take();
                }
                log::info!("block migration: the source's channel closed");
            })
            .map_err(|e| {
                self.current.lock().take();
                device.dirty_bitmaps().set_migration(None);
                MigrationError::Thread(e)
            })?;
        Ok(())
    }

    /// `BlockRequest::MigrationSink`.
    pub fn sink(self: &Arc<Self>, device: &BlkDevice, fd: OwnedFd) -> Result<(), MigrationError> {
        if device.disk().inactive() {
            return Err(MigrationError::Inactive);
        }
        if device.disk().read_only() {
            return Err(MigrationError::ReadOnly);
        }
        let (generation, stream) = self.begin(fd)?;
        let me = self.clone();
        let device = device.clone();
        std::thread::Builder::new()
            .name("migration-sink".into())
            .spawn(move || {
                let mut buf = Vec::new();
                // Written back as it comes: the flush before the VM runs here (inside
                // the downtime) then has little left to write.
                let mut writeback = Writeback::new(device.disk().format());
                serve(stream, |r, s| {
                    sink_call(&device, r, s, &mut buf, &mut writeback)
                });
                if me.current(generation) {
                    me.current.lock().take();
                }
                log::info!("block migration: the destination's channel closed");
            })
            .map_err(|e| {
                self.current.lock().take();
                MigrationError::Thread(e)
            })?;
        Ok(())
    }
}

/// The source's side of one channel.
struct Source {
    device: BlkDevice,
    marks: Arc<SharedBitmap>,
    /// Marks taken and not handed out yet.
    taken: SharedBitmap,
    /// The first chunk RUNS looks at (those before it were handed out).
    cursor: u64,
    buf: Vec<u8>,
}

impl Source {
    fn call(&mut self, request: Request, stream: &mut UnixStream) -> Result<(), Answer> {
        let disk = self.device.disk();
        let size = disk.size();
        match request {
            Request::Read { offset, len } => {
                check_range(offset, u64::from(len), size).map_err(Answer::Refused)?;
                self.buf.resize(len as usize, 0);
                disk.format()
                    .read(offset, &mut self.buf)
                    .map_err(|e| Answer::Refused(format_error(e)))?;
                Ok(reply::read(stream, &self.buf)?)
            }
            Request::Allocated { offset, len } => {
                check_range(offset, SECTOR, size).map_err(Answer::Refused)?;
                let len = len.min(size - offset);
                let (allocated, run) = disk
                    .format()
                    .allocated(offset, len)
                    .map_err(|e| Answer::Refused(format_error(e)))?;
                Ok(reply::allocated(stream, allocated, run.clamp(1, len))?)
            }
            Request::Take => {
                {
                    let _quiesced = self
                        .device
                        .quiesce(QUIESCE_TIMEOUT)
                        .map_err(|e| Answer::Refused(e.to_string()))?;
                    self.marks
                        .take_into(&self.taken)
                        .map_err(|e| Answer::Refused(e.to_string()))?;
                }
                self.cursor = 0;
                Ok(reply::bytes(stream, self.taken.dirty_bytes())?)
            }
            Request::Runs { max } => {
                let runs = self.runs(max as usize);
                Ok(reply::runs(stream, &runs)?)
            }
            Request::Pending => Ok(reply::bytes(stream, self.marks.dirty_bytes())?),
            Request::Write { len, .. } => {
                skip(stream, len)?;
                Err(refused_here("reads the disk (a migration's source)"))
            }
            Request::Zero { .. } | Request::Flush => {
                Err(refused_here("reads the disk (a migration's source)"))
            }
        }
    }

    /// Up to `max` runs of taken chunks, as disk bytes, handed out (cleaned) now.
    fn runs(&mut self, max: usize) -> Vec<(u64, u64)> {
        let size = self.taken.size();
        let mut runs = Vec::new();
        while runs.len() < max {
            let Some(first) = self.taken.next_dirty(self.cursor) else {
                self.cursor = self.taken.chunks();
                break;
            };
            let mut end = first;
            while end < self.taken.chunks() && self.taken.is_dirty(end * GRANULARITY) {
                self.taken.clean_chunk(end);
                end += 1;
            }
            self.cursor = end;
            let offset = first * GRANULARITY;
            runs.push((offset, (end * GRANULARITY).min(size) - offset));
        }
        runs
    }
}

/// The destination's side of one channel: WRITE, ZERO and FLUSH through the format.
fn sink_call(
    device: &BlkDevice,
    request: Request,
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    writeback: &mut Writeback,
) -> Result<(), Answer> {
    let disk = device.disk();
    let size = disk.size();
    match request {
        Request::Write { offset, len } => {
            buf.resize(len as usize, 0);
            stream.read_exact(buf)?;
            check_range(offset, u64::from(len), size).map_err(Answer::Refused)?;
            disk.format()
                .write(offset, buf)
                .map_err(|e| Answer::Refused(format_error(e)))?;
            writeback.wrote(u64::from(len));
        }
        Request::Zero { offset, len } => {
            check_range(offset, len, size).map_err(Answer::Refused)?;
            disk.format()
                .write_zeroes(offset, len, true)
                .map_err(|e| Answer::Refused(format_error(e)))?;
        }
        Request::Flush => disk
            .format()
            .flush()
            .map_err(|e| Answer::Refused(format_error(e)))?,
        Request::Read { .. }
        | Request::Allocated { .. }
        | Request::Take
        | Request::Runs { .. }
        | Request::Pending => {
            return Err(refused_here("writes the disk (a migration's destination)"))
        }
    }
    Ok(reply::done(stream)?)
}

fn refused_here(what: &str) -> Answer {
    Answer::Refused(format!("this disk channel {what}"))
}

/// Reads and drops `len` bytes of a request's data.
fn skip(stream: &mut UnixStream, len: u32) -> Result<(), Answer> {
    let copied = std::io::copy(&mut (&*stream).take(u64::from(len)), &mut std::io::sink())?;
    if copied < u64::from(len) {
        return Err(Answer::Broken(ChannelError::Io(
            std::io::ErrorKind::UnexpectedEof.into(),
        )));
    }
    Ok(())
}

/// Serves requests until the channel closes or breaks: `call` answers each one (a
/// WRITE's data is read by it), a refusal it returns goes back as such.
fn serve(
    mut stream: UnixStream,
    mut call: impl FnMut(Request, &mut UnixStream) -> Result<(), Answer>,
) {
    loop {
        let request = match Request::read_from(&mut stream) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                log::warn!("block migration: {e}");
                return;
            }
        };
        match call(request, &mut stream) {
            Ok(()) => {}
            Err(Answer::Refused(why)) => {
                if let Err(e) = reply::refused(&mut stream, &why) {
                    log::warn!("block migration: answering: {e}");
                    return;
                }
            }
            Err(Answer::Broken(e)) => {
                log::warn!("block migration: the disk channel: {e}");
                return;
            }
        }
    }
}

/// Why a call was not answered with a result.
enum Answer {
    /// Refused with these words (the channel goes on).
    Refused(String),
    /// The channel broke.
    Broken(ChannelError),
}

impl From<std::io::Error> for Answer {
    fn from(e: std::io::Error) -> Answer {
        Answer::Broken(e.into())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    use ipc::disk_channel::Client;

    use super::*;
    use crate::device::{Policy, QUEUE_SIZE};
    use crate::disk::{CacheMode, Disk};
    use crate::engine::{self, EngineKind};
    use crate::formats::raw::Raw;
    use crate::request::{Kind, Request as GuestRequest};
    use crate::stats::Stats;
    use crate::testing::Scratch;

    const SIZE: u64 = 1 << 20;

    /// A device over a writable raw scratch image of SIZE bytes.
    fn device(tag: &str) -> (BlkDevice, Scratch) {
        let scratch = Scratch::new(tag, SIZE);
        let file = scratch.file.try_clone().unwrap();
        let raw = Arc::new(Raw::open(file, true).unwrap());
        let disk = Arc::new(Disk::new(raw, None, false, CacheMode::Writeback, "d").unwrap());
        let engines = engine::per_queue(EngineKind::Sync, &disk, 1, u32::from(QUEUE_SIZE)).unwrap();
        let counters = Arc::new(ipc::BlockCounters::create().unwrap());
        let stats = Arc::new(Stats::new(&[], counters));
        let device = BlkDevice::new(disk, engines, stats, Policy::default()).unwrap();
        (device, scratch)
    }

    /// What a guest write of `len` bytes at `offset` marks (the device marks each
    /// request as it goes to the engine).
    fn guest_write(device: &BlkDevice, offset: u64, len: usize) {
        device.dirty_bitmaps().mark(&GuestRequest {
            kind: Kind::Write,
            sector: offset / SECTOR,
            data: Vec::new(),
            data_len: len,
            status: std::ptr::null_mut(),
            arrived: Instant::now(),
        });
    }

    fn channel() -> (OwnedFd, Client<UnixStream>) {
        let (daemon, agent) = UnixStream::pair().unwrap();
        (daemon.into(), Client::new(agent))
    }

    /// Waits (up to 5 s) for the channel's thread to let go of it.
    fn ended(m: &Migrations) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while m.current.lock().is_some() {
            assert!(Instant::now() < deadline, "the channel's thread goes on");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_source_reads_the_disk_and_hands_out_what_the_guest_wrote() {
        let (device, scratch) = device("mig-source");
        scratch.file.write_all_at(&[0xab; 4096], 65536).unwrap();
        let m = Arc::new(Migrations::default());
        let (fd, agent) = channel();
        m.source(&device, fd).unwrap();
        let mut buf = vec![0u8; 8192];
        assert!(agent.read(0, &mut buf).unwrap(), "zeroes say so");
        assert!(!agent.read(65536, &mut buf).unwrap());
        assert_eq!(&buf[..4096], &[0xab; 4096][..]);
        assert_eq!(agent.allocated(0, SIZE).unwrap(), (true, SIZE));
        // Nothing written yet.
        assert_eq!((agent.pending().unwrap(), agent.take().unwrap()), (0, 0));
        assert!(agent.runs(8).unwrap().is_empty());
        // Two writes in one chunk and one across two more.
        guest_write(&device, 512, 512);
        guest_write(&device, 4096, 4096);
        guest_write(&device, 3 * GRANULARITY - 512, 1024);
        assert_eq!(agent.pending().unwrap(), 3 * GRANULARITY);
        assert_eq!(agent.take().unwrap(), 3 * GRANULARITY);
        assert_eq!(agent.pending().unwrap(), 0, "taken: the marks start over");
        // Written after the take: the next take's.
        guest_write(&device, 10 * GRANULARITY, 512);
        assert_eq!(
            agent.runs(1).unwrap(),
            [(0, GRANULARITY)],
            "at most as many runs as asked"
        );
        assert_eq!(agent.runs(8).unwrap(), [(2 * GRANULARITY, 2 * GRANULARITY)]);
        assert!(agent.runs(8).unwrap().is_empty(), "each run goes once");
        assert_eq!(agent.take().unwrap(), GRANULARITY);
        assert_eq!(agent.runs(8).unwrap(), [(10 * GRANULARITY, GRANULARITY)]);
        // Bad requests are refused, and the channel goes on.
        for refused in [
            agent.read(SIZE, &mut buf[..512]).unwrap_err(),
            agent.read(100, &mut buf[..512]).unwrap_err(),
            agent.write(0, &[1; 512]).unwrap_err(),
            agent.flush().unwrap_err(),
        ] {
            assert!(matches!(refused, ChannelError::Refused(_)), "{refused}");
        }
        assert!(agent.read(0, &mut buf[..512]).unwrap());
        // The channel closed: marking ends.
        drop(agent);
        ended(&m);
        guest_write(&device, 0, 512);
        let (fd, agent) = channel();
        m.source(&device, fd).unwrap();
        assert_eq!(agent.pending().unwrap(), 0, "a new channel, new marks");
    }

    #[test]
    fn a_new_channel_ends_the_previous_one() {
        let (device, _scratch) = device("mig-replace");
        let m = Arc::new(Migrations::default());
        let (fd, first) = channel();
        m.source(&device, fd).unwrap();
        let (fd, second) = channel();
        m.source(&device, fd).unwrap();
        assert!(matches!(first.pending(), Err(ChannelError::Io(_))));
        guest_write(&device, 0, 512);
        assert_eq!(second.pending().unwrap(), GRANULARITY);
    }

    #[test]
    fn a_sink_writes_through_the_format() {
        let (device, scratch) = device("mig-sink");
        scratch.file.write_all_at(&[0x55; 8192], 0).unwrap();
        let m = Arc::new(Migrations::default());
        let (fd, agent) = channel();
        m.sink(&device, fd).unwrap();
        agent.write(8192, &[0x77; 4096]).unwrap();
        agent.zero(0, 4096).unwrap();
        agent.flush().unwrap();
        let mut back = vec![0u8; 16384];
        scratch.file.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(back[4096..8192].iter().all(|&b| b == 0x55));
        assert!(back[8192..12288].iter().all(|&b| b == 0x77));
        for refused in [
            agent.write(SIZE - 512, &[1; 1024]).unwrap_err(),
            agent.zero(SIZE, 512).unwrap_err(),
            agent.take().unwrap_err(),
        ] {
            assert!(matches!(refused, ChannelError::Refused(_)), "{refused}");
        }
        agent.write(0, &[1; 512]).unwrap();
    }

    #[test]
    fn an_inactive_node_takes_no_sink() {
        let (device, _scratch) = device("mig-inactive");
        device.disk().set_inactive();
        let (fd, _agent) = channel();
        assert!(matches!(
            Arc::new(Migrations::default()).sink(&device, fd),
            Err(MigrationError::Inactive)
        ));
    }
}
