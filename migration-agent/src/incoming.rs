//! The destination's side: one connection (accepted on the listener the gateway made,
//! or the one it handed over), the header checked against this VM's shape, then records
//! written straight into guest RAM until the device state and the end mark arrive. It
//! runs on a thread of its own and reports by events; the gateway answers the source
//! through `Answer` once vmm-core has taken the state.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use ipc::{AgentEvent, Channel, MachineShape};

pub use crate::answer::Answer;
use crate::compress::{CompressError, Inflater};
use crate::disks::records::DiskRecord;
use crate::disks::sink::{DiskSinks, SinkError};
use crate::postcopy::destination::{start_faults_thread, Faults, PlaceError, Placer};
use crate::postcopy::pages::PageSet;
use crate::ram::GuestRam;
use crate::stream::{self, Record, StreamError, PAGE};
use crate::workers::WorkersError;
use crate::xbzrle;

/// Progress is reported at least this often (in bytes received).
const PROGRESS_EVERY: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{}", stream::connection_error(.0))]
    Io(#[from] std::io::Error),
    #[error("the source is not compatible: {0}")]
    Incompatible(String),
    #[error("malformed migration stream: {0}")]
    Malformed(String),
    /// Block migration: the disks cannot be written here (the text says why).
    #[error("{0}")]
    Disks(String),
    #[error(transparent)]
    Disk(#[from] SinkError),
    #[error(transparent)]
    Workers(#[from] WorkersError),
    #[error("postcopy: {0}")]
    Postcopy(String),
    #[error("postcopy: {0}")]
    Place(#[from] PlaceError),
}

impl From<CompressError> for IncomingError {
    fn from(e: CompressError) -> IncomingError {
        match e {
            CompressError::Io(e) => IncomingError::Io(e),
            CompressError::Workers(e) => IncomingError::Workers(e),
            malformed @ CompressError::Malformed { .. } => {
                IncomingError::Malformed(malformed.to_string())
            }
        }
    }
}

impl From<IncomingError> for String {
    fn from(e: IncomingError) -> String {
        e.to_string()
    }
}

/// Pages that may hold data: this migration wrote them, or they held data before it
/// came (a DIMM's memory-backend-file may); a zero page for any other needs nothing (a
/// hole reads as zeros). And pages it received at all (postcopy asks the source for the
/// others).
struct Written {
    data: PageSet,
    received: PageSet,
}

impl Written {
    fn set(&mut self, page: u64) {
        self.data.insert(page);
        self.received.insert(page);
    }

    fn get(&self, page: u64) -> bool {
        self.data.contains(page)
    }

    fn zero(&mut self, page: u64) {
        self.received.insert(page);
    }

    fn discard(&mut self, page: u64) {
        self.data.remove(page);
        self.received.remove(page);
    }
}

pub struct Receiver {
    pub ram: GuestRam,
    pub shape: MachineShape,
    pub answer: Answer,
    /// The highest guest page number + 1.
    pub page_end: u64,
    /// Block migration: the disks written here, once a DISKS record came.
    pub disks: DiskSinks,
    /// Workers for COMPRESSED records (decompress-threads), started at the first.
    pub decompress_threads: u8,
    /// Postcopy: where the gateway's answer to the advice, and its userfaultfds after
    /// the state, arrive.
    pub faults: Faults,
}

impl Receiver {
    /// Takes the connection (accepting it on a listener first) and receives the whole
    /// migration; every step is reported through `event`.
    pub fn run(
        self,
        channel: Channel,
        fd: OwnedFd,
        event: impl Fn(AgentEvent),
    ) -> Result<(), IncomingError> {
        let conn: OwnedFd = match channel {
            Channel::Listener => {
                let listener = UnixListener::from(fd);
                // The listener may be a TCP or a Unix socket: accept4 works on both.
                let (stream, _) = accept(&listener)?;
                drop(listener);
                stream
            }
            Channel::Socket | Channel::OneWay => fd,
        };
        let file = File::from(conn);
        let two_way = channel != Channel::OneWay;
        if two_way {
            self.answer.set(file.try_clone()?);
        }
        let mut input = BufReader::with_capacity(1 << 20, file);
        let there = stream::read_header(&mut input)?;
        let verdict = stream::shape_mismatch(&there, &self.shape);
        if two_way {
            if let Some(f) = self.answer.0.lock().as_mut() {
                stream::write_verdict(f, verdict.as_deref().map_or(Ok(()), Err))?;
            }
        }
        if let Some(why) = verdict {
            return Err(IncomingError::Incompatible(why));
        }
        event(AgentEvent::Connected);
        self.receive(&mut input, event)
    }

    /// An inflated page into guest RAM (its number checked when its record came).
    fn put(&self, written: &mut Written, page: u64, content: &[u8]) {
        if let Some(dst) = self.ram.pages_mut(page, 1) {
            dst.copy_from_slice(content);
            written.set(page);
        }
    }

    fn verdict(&self, verdict: Result<(), &str>) -> Result<(), IncomingError> {
        if let Some(f) = self.answer.0.lock().as_mut() {
            stream::write_verdict(f, verdict)?;
        }
        Ok(())
    }

    fn receive(
        &self,
        input: &mut impl Read,
        event: impl Fn(AgentEvent),
    ) -> Result<(), IncomingError> {
        let mut written = Written {
            data: PageSet::new(self.page_end),
            received: PageSet::new(self.page_end),
        };
        for p in self.ram.data_pages()?.into_iter().flatten() {
            written.data.insert(p);
        }
        // Postcopy: the source advised it (ADVISE), then switched (LISTEN).
        let (mut advised, mut listening) = (false, false);
        let (mut bytes, mut pages, mut reported) = (0u64, 0u64, 0u64);
        let mut delta = vec![0u8; PAGE];
        let mut inflater: Option<Inflater> = None;
        loop {
            let record = stream::read_record(input)?;
            // What the workers hold for the pages a record names goes in before it, and
            // everything before a pass's end or the state.
            if let Some(i) = &mut inflater {
                let inflated = &mut |page, content: &[u8]| self.put(&mut written, page, content);
                match &record {
                    Record::Pages { first, count } | Record::Zero { first, count } => {
                        i.settle(*first, u64::from(*count), inflated)?
                    }
                    Record::Xbzrle { page, .. } => i.settle(*page, 1, inflated)?,
                    Record::PassEnd(_)
                    | Record::State { .. }
                    | Record::End
                    | Record::Advise
                    | Record::Listen
                    | Record::Discard { .. } => i.finish(inflated)?,
                    Record::Compressed { .. } | Record::Disk(_) => {}
                }
            }
            match record {
                Record::Pages { first, count } => {
                    let dst = self.ram.pages_mut(first, count as usize).ok_or_else(|| {
                        IncomingError::Malformed(format!(
                            "pages {first:#x}+{count} are not guest RAM here"
                        ))
                    })?;
                    input.read_exact(dst)?;
                    (first..first + u64::from(count)).for_each(|p| written.set(p));
                    bytes += u64::from(count) * PAGE as u64 + 13;
                    pages += u64::from(count);
                }
                Record::Zero { first, count } => {
                    if self.ram.run_in_window(first) < u64::from(count) {
                        return Err(IncomingError::Malformed(format!(
                            "zero pages {first:#x}+{count} are not guest RAM here"
                        )));
                    }
                    for p in first..first + u64::from(count) {
                        if written.get(p) {
                            if let Some(page) = self.ram.pages_mut(p, 1) {
                                page.fill(0);
                            }
                        }
                        written.zero(p);
                    }
                    bytes += 13;
                    pages += u64::from(count);
                }
                Record::Xbzrle { page, len } => {
                    let d = &mut delta[..usize::from(len)];
                    input.read_exact(d)?;
                    let dst = self.ram.pages_mut(page, 1).ok_or_else(|| {
                        IncomingError::Malformed(format!(
                            "XBZRLE page {page:#x} is not guest RAM here"
                        ))
                    })?;
                    if !xbzrle::decode(d, dst) {
                        return Err(IncomingError::Malformed(format!(
                            "a malformed XBZRLE delta for page {page:#x}"
                        )));
                    }
                    written.set(page);
                    bytes += 11 + u64::from(len);
                    pages += 1;
                }
                Record::Compressed { page, len } => {
                    if self.ram.run_in_window(page) == 0 {
                        return Err(IncomingError::Malformed(format!(
                            "compressed page {page:#x} is not guest RAM here"
                        )));
                    }
                    let i = match &mut inflater {
                        Some(i) => i,
                        None => inflater.insert(Inflater::start(self.decompress_threads)?),
                    };
                    let inflated =
                        &mut |page, content: &[u8]| self.put(&mut written, page, content);
                    i.take(page, len, input, inflated)?;
                    bytes += 11 + u64::from(len);
                    pages += 1;
                }
                Record::PassEnd(_) => {
                    event(AgentEvent::Progress { bytes, pages });
                    reported = bytes;
                }
                Record::State { running, len } if listening => {
                    let mut state = vec![0u8; len as usize];
                    input.read_exact(&mut state)?;
                    self.disks.flush()?;
                    event(AgentEvent::StateArrived {
                        state,
                        running,
                        postcopy: true,
                    });
                    return self.postcopy(input, written.received, &event, bytes, pages);
                }
                Record::State { running, len } => {
                    let mut state = vec![0u8; len as usize];
                    input.read_exact(&mut state)?;
                    match stream::read_record(input)? {
                        Record::End => {
                            // What the disks took is durable before the VM may run.
                            self.disks.flush()?;
                            event(AgentEvent::StateArrived {
                                state,
                                running,
                                postcopy: false,
                            });
                            return Ok(());
                        }
                        other => {
                            return Err(IncomingError::Malformed(format!(
                                "{other:?} after the device state"
                            )))
                        }
                    }
                }
                Record::End => {
                    return Err(IncomingError::Malformed(
                        "the stream ended without the device state".into(),
                    ))
                }
                Record::Advise => {
                    event(AgentEvent::PostcopyAdvised);
                    let advice = self.faults.take_advice();
                    self.verdict(advice.as_ref().map(|_| ()).map_err(String::as_str))?;
                    advice.map_err(IncomingError::Incompatible)?;
                    advised = true;
                }
                Record::Listen if advised && !listening => listening = true,
                Record::Listen => {
                    return Err(IncomingError::Malformed(
                        "a switch to postcopy that was not advised".into(),
                    ))
                }
                Record::Discard { first, count } if listening => {
                    self.ram.punch(first, u64::from(count)).map_err(|e| {
                        IncomingError::Malformed(format!(
                            "discarding pages {first:#x}+{count}: {e}"
                        ))
                    })?;
                    (first..first + u64::from(count)).for_each(|p| written.discard(p));
                }
                Record::Discard { .. } => {
                    return Err(IncomingError::Malformed(
                        "a discard outside postcopy".into(),
                    ))
                }
                // Block migration (`crate::disks`): the disks are readied (and the source
                // answered as for the header), then written through their daemons.
                Record::Disk(DiskRecord::Disks(disks)) => {
                    let verdict = self.disks.arriving(disks, &event);
                    if let Some(f) = self.answer.0.lock().as_mut() {
                        let v = verdict.as_ref().map(|_| ()).map_err(String::as_str);
                        stream::write_verdict(f, v)?;
                    }
                    verdict.map_err(IncomingError::Disks)?;
                }
                Record::Disk(DiskRecord::Data { disk, offset, len }) => {
                    self.disks.data(disk, offset, len, input)?;
                    bytes += 17 + u64::from(len);
                }
                Record::Disk(DiskRecord::Zero { disk, offset, len }) => {
                    self.disks.zero(disk, offset, len)?;
                    bytes += 21;
                }
            }
            if bytes - reported >= PROGRESS_EVERY {
                event(AgentEvent::Progress { bytes, pages });
                reported = bytes;
            }
        }
    }
}

impl Receiver {
    /// The postcopy phase: the gateway's userfaultfds, then every page that is not here
    /// placed as it comes (asked for or not) until END; then the source is told.
    fn postcopy(
        &self,
        input: &mut impl Read,
        received: PageSet,
        event: &impl Fn(AgentEvent),
        mut bytes: u64,
        mut pages: u64,
    ) -> Result<(), IncomingError> {
        let given = self.faults.take().map_err(IncomingError::Postcopy)?;
        let placer = Arc::new(Placer::new(
            given,
            received,
            self.ram.total_pages(),
            self.answer.clone(),
        ));
        start_faults_thread(&placer)?;
        self.faults
            .started(placer.clone())
            .map_err(IncomingError::Postcopy)?;
        let result = self.place_pages(input, &placer, event, &mut bytes, &mut pages);
        if result.is_err() {
            placer.stop();
        }
        result?;
        self.answer.complete()?;
        // How the vhost-user backends fared (the operator's view of what postcopy cost
        // the devices; the tests look at it too).
        let backends: Vec<String> = placer
            .backend_faults()
            .iter()
            .map(|(faults, waited)| format!("{faults} faults, {waited} waited"))
            .collect();
        log::info!(
            "postcopy complete: the vhost-user backends' faults: [{}]",
            backends.join("; ")
        );
        event(AgentEvent::Progress { bytes, pages });
        event(AgentEvent::PostcopyDone);
        // The faults thread goes on until the agent ends: a backend's thread that found
        // a page missing just before it was placed still waits to be woken.
        Ok(())
    }

    fn place_pages(
        &self,
        input: &mut impl Read,
        placer: &Placer,
        event: &impl Fn(AgentEvent),
        bytes: &mut u64,
        pages: &mut u64,
    ) -> Result<(), IncomingError> {
        let mut buffer = vec![0u8; stream::MAX_PAGES_PER_RECORD as usize * PAGE];
        let mut reported = *bytes;
        loop {
            if let Some(why) = placer.failure() {
                return Err(IncomingError::Postcopy(why));
            }
            match stream::read_record(input)? {
                Record::Pages { first, count } => {
                    if self.ram.run_in_window(first) < u64::from(count) {
                        return Err(IncomingError::Malformed(format!(
                            "pages {first:#x}+{count} are not guest RAM here"
                        )));
                    }
                    let data = &mut buffer[..count as usize * PAGE];
                    input.read_exact(data)?;
                    for (i, content) in data.chunks_exact(PAGE).enumerate() {
                        placer.place(first + i as u64, Some(content))?;
                    }
                    *bytes += u64::from(count) * PAGE as u64 + 13;
                    *pages += u64::from(count);
                }
                Record::Zero { first, count } => {
                    if self.ram.run_in_window(first) < u64::from(count) {
                        return Err(IncomingError::Malformed(format!(
                            "zero pages {first:#x}+{count} are not guest RAM here"
                        )));
                    }
                    for p in first..first + u64::from(count) {
                        placer.zero_arrived(p)?;
                    }
                    *bytes += 13;
                    *pages += u64::from(count);
                }
                Record::End => {
                    let missing = placer.missing();
                    if missing > 0 {
                        return Err(IncomingError::Malformed(format!(
                            "the source ended postcopy with {missing} pages not sent"
                        )));
                    }
                    return Ok(());
                }
                other => {
                    return Err(IncomingError::Malformed(format!(
                        "{other:?} during postcopy"
                    )))
                }
            }
            if *bytes - reported >= PROGRESS_EVERY {
                event(AgentEvent::Progress {
                    bytes: *bytes,
                    pages: *pages,
                });
                reported = *bytes;
            }
        }
    }
}

fn accept(listener: &UnixListener) -> std::io::Result<(OwnedFd, ())> {
    use std::os::fd::{AsRawFd, FromRawFd};
    loop {
        // SAFETY: accept4 on a listening socket we hold, without an address buffer.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a new descriptor that nobody else owns.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, ()));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use flate2::{Compress, Compression};
    use ipc::{shm, RamWindow};

    use super::*;
    use crate::disks::sink::SinkSlot;

    const PAGES: u64 = 64;

    fn deflated(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(crate::compress::deflate_page(
            &mut Compress::new(Compression::new(6), true),
            content,
            &mut out
        ));
        out
    }

    fn filled(byte: u8) -> Vec<u8> {
        let mut page = vec![byte; PAGE];
        page[0] = !byte;
        page
    }

    /// Receives `records` (a stream after its header) into fresh guest RAM; the RAM's
    /// file and the outcome.
    fn receive(records: &[u8]) -> (File, Result<(), String>) {
        let size = PAGES * PAGE as u64;
        let fd = shm::memfd(c"ram", size, false).unwrap();
        let file = File::from(fd.try_clone().unwrap());
        let windows = [RamWindow {
            guest_addr: 0,
            size,
            file_offset: 0,
            file: 0,
        }];
        let receiver = Receiver {
            ram: GuestRam::map(vec![fd], &windows, true).unwrap(),
            shape: MachineShape {
                memory: size,
                vcpus: 1,
                disks: vec![],
                nics: vec![],
                dimms: vec![],
            },
            answer: Answer::default(),
            page_end: PAGES,
            disks: DiskSinks::new(SinkSlot::default()),
            decompress_threads: 2,
            faults: Default::default(),
        };
        let result = receiver.receive(&mut &records[..], |_| {});
        (file, result.map_err(|e| e.to_string()))
    }

    fn page(file: &File, page: u64) -> Vec<u8> {
        let mut content = vec![0u8; PAGE];
        file.read_exact_at(&mut content, page * PAGE as u64)
            .unwrap();
        content
    }

    #[test]
    fn a_record_for_a_page_a_worker_holds_comes_after_it() {
        // Page 5 deflated then zero, 6 deflated then whole, 8 deflated twice, 9 deflated
        // then changed by a delta: the later record wins each time, though the workers
        // would apply the earlier one later if nothing held the later back.
        let mut s = Vec::new();
        stream::write_compressed(&mut s, 5, &deflated(&filled(1))).unwrap();
        stream::write_zero(&mut s, 5, 1).unwrap();
        stream::write_compressed(&mut s, 6, &deflated(&filled(2))).unwrap();
        stream::write_pages(&mut s, 6, &filled(3)).unwrap();
        stream::write_compressed(&mut s, 8, &deflated(&filled(4))).unwrap();
        stream::write_compressed(&mut s, 8, &deflated(&filled(5))).unwrap();
        stream::write_compressed(&mut s, 9, &deflated(&filled(6))).unwrap();
        let mut delta = Vec::new();
        let mut changed = filled(6);
        changed[10] = 0xee;
        crate::xbzrle::encode(&filled(6), &changed, &mut delta, PAGE).unwrap();
        stream::write_xbzrle(&mut s, 9, &delta).unwrap();
        stream::write_compressed(&mut s, 10, &deflated(&filled(7))).unwrap();
        stream::write_state(&mut s, true, b"").unwrap();
        stream::write_end(&mut s).unwrap();
        let (ram, result) = receive(&s);
        assert_eq!(result, Ok(()));
        // (Compared whole, shown by their first bytes.)
        for (at, expected) in [
            (5, vec![0; PAGE]),
            (6, filled(3)),
            (8, filled(5)),
            (9, changed),
        ]
        .into_iter()
        .chain([(10, filled(7))])
        {
            let found = page(&ram, at);
            assert!(
                found == expected,
                "page {at}: {:?}, expected {:?}",
                &found[..16],
                &expected[..16]
            );
        }
    }

    #[test]
    fn malformed_compressed_records_fail_the_migration() {
        let record = |page: u64, data: &[u8]| {
            let mut s = Vec::new();
            s.push(10);
            s.extend_from_slice(&page.to_le_bytes());
            s.extend_from_slice(&(data.len() as u16).to_le_bytes());
            s.extend_from_slice(data);
            stream::write_state(&mut s, true, b"").unwrap();
            stream::write_end(&mut s).unwrap();
            s
        };
        let good = deflated(&filled(1));
        for (stream, error) in [
            (
                record(PAGES, &good),
                "malformed migration stream: compressed page 0x40 is not guest RAM here",
            ),
            (
                record(3, b"not zlib"),
                "malformed migration stream: compressed page 0x3: not a zlib stream",
            ),
            (
                record(3, &good[..good.len() - 2]),
                "malformed migration stream: compressed page 0x3: its zlib stream ends early",
            ),
            (
                record(3, &[0u8; PAGE]),
                "malformed migration stream: a compressed page of 4096 bytes",
            ),
        ] {
            let got = receive(&stream).1.unwrap_err();
            assert!(got.starts_with(error), "{got}");
        }
        // Cut short inside the record: the connection closed early.
        let cut = &record(3, &good)[..20];
        assert_eq!(
            receive(cut).1.unwrap_err(),
            "the migration connection closed before the end of the stream"
        );
    }
}
