//! The source's postcopy phase: the VM is stopped here and runs at the destination; the
//! pages it does not have yet go from a thread of their own, the ones its vCPUs and
//! devices wait for (requests on the return path, read by a second thread) first, the
//! rest in address order from the last request on (a guest touches memory near what it
//! touched). It ends when every page went and the destination says it placed them all.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc::PostcopyReport;
use parking_lot::{Condvar, Mutex};

use super::pages::PageSet;
use crate::channel::Labelled;
use crate::pacer::Pacer;
use crate::ram::{is_zero, GuestRam};
use crate::stream::{self, Answer, StreamError, MAX_PAGES_PER_RECORD, MAX_ZERO_RUN};

/// Pages sent between looks at the requests: small, so a request waits behind little.
const BACKGROUND_RUN: u64 = 16;
/// Pages of holes named in one go (zero runs cost no bandwidth to speak of).
const HOLE_RUN: u64 = 1 << 16;
/// How long the destination may take to say it placed everything, once all went.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Inner {
    requests: VecDeque<(u64, u32)>,
    report: PostcopyReport,
    outcome: Option<Result<(), String>>,
    /// When the last page went (END written).
    all_sent: Option<Instant>,
    /// The destination said it had every page before END was written: right if the last
    /// page had gone (it may answer before the sender notes that), a lie if the sender
    /// finds another page to send.
    complete_early: bool,
    failed: Option<String>,
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Shared {
    fn fail(&self, why: String) {
        let mut i = self.inner.lock();
        if i.failed.is_none() && !i.report.complete {
            i.failed = Some(why);
        }
        self.changed.notify_all();
    }
}

/// The postcopy phase under way (`crate::outgoing::Outgoing::into_postcopy` starts it).
pub struct PostcopySource {
    shared: Arc<Shared>,
    /// The connection, to shut down when the phase is dropped unfinished.
    connection: File,
    _sender: JoinHandle<()>,
    _reader: JoinHandle<()>,
}

/// What the sending thread works with.
pub struct Sending {
    pub ram: GuestRam,
    pub out: BufWriter<Labelled>,
    pub pending: PageSet,
    /// Pending pages known to be holes of the memfd: zero pages, not read.
    pub holes: PageSet,
    pub pacer: Pacer,
}

impl PostcopySource {
    /// Starts the threads: `answers` is the connection's read side (its timeout set).
    pub fn start(sending: Sending, answers: File) -> std::io::Result<PostcopySource> {
        let shared = Arc::new(Shared::default());
        shared.inner.lock().report.remaining_pages = sending.pending.len();
        let connection = answers.try_clone()?;
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("postcopy-answers".into())
                .spawn(move || read_answers(&shared, answers))?
        };
        let sender = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("postcopy-pages".into())
                .spawn(move || {
                    if let Err(e) = send_pages(&shared, sending) {
                        shared.fail(e.to_string());
                    }
                })?
        };
        Ok(PostcopySource {
            shared,
            connection,
            _sender: sender,
            _reader: reader,
        })
    }

    /// Waits up to `timeout` for the destination's word on the state: its VM runs, or it
    /// could not take the state (the VM may then run here again).
    pub fn outcome(&self, timeout: Duration) -> Result<(), StreamError> {
        let deadline = Instant::now() + timeout;
        let mut i = self.shared.inner.lock();
        loop {
            if let Some(outcome) = i.outcome.clone() {
                return outcome.map_err(StreamError::DestinationFailed);
            }
            if let Some(why) = &i.failed {
                return Err(StreamError::Malformed(why.clone()));
            }
            if self.shared.changed.wait_until(&mut i, deadline).timed_out() {
                return Err(StreamError::NoAnswer);
            }
        }
    }

    /// The phase so far, once it completes or after `wait` at most; its failure if it
    /// failed.
    pub fn progress(&self, wait: Duration) -> Result<PostcopyReport, String> {
        let deadline = Instant::now() + wait;
        let mut i = self.shared.inner.lock();
        loop {
            if let Some(why) = &i.failed {
                return Err(why.clone());
            }
            if i.report.complete || self.shared.changed.wait_until(&mut i, deadline).timed_out() {
                return match &i.failed {
                    Some(why) => Err(why.clone()),
                    None => Ok(i.report),
                };
            }
        }
    }
}

impl Drop for PostcopySource {
    fn drop(&mut self) {
        self.shared.fail("the postcopy phase was abandoned".into());
        // Both threads block on the connection: this ends them.
        // SAFETY: shutdown on a socket we hold (on a pipe it fails, harmlessly).
        unsafe {
            libc::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&self.connection),
                libc::SHUT_RDWR,
            )
        };
    }
}

/// The return path: requests queue for the sender; the outcome and the completion are
/// noted, in either order (a small VM's last page may be placed before the destination
/// has restored the state and said so). A read timeout is only a quiet destination,
/// unless it owes the completion. Ends once both came, or at a failure.
fn read_answers(shared: &Shared, answers: File) {
    let mut r = std::io::BufReader::new(answers);
    loop {
        {
            let i = shared.inner.lock();
            if i.report.complete && i.outcome.is_some() {
                return;
            }
        }
        match stream::read_answer(&mut r) {
            Ok(Answer::Request { first, count }) => {
                let mut i = shared.inner.lock();
                i.report.requests += 1;
                i.requests.push_back((first, count));
                shared.changed.notify_all();
            }
            Ok(Answer::Outcome(outcome)) => {
                let mut i = shared.inner.lock();
                i.outcome = Some(outcome);
                shared.changed.notify_all();
            }
            Ok(Answer::Complete) => {
                let mut i = shared.inner.lock();
                if i.all_sent.is_none() {
                    // The sender judges it: another page to send makes it a lie.
                    i.complete_early = true;
                } else {
                    i.report.complete = true;
                }
                shared.changed.notify_all();
            }
            Err(StreamError::NoAnswer) => {
                let i = shared.inner.lock();
                if i.failed.is_some() {
                    return;
                }
                if i.all_sent.is_some_and(|t| t.elapsed() > COMPLETE_TIMEOUT) {
                    drop(i);
                    shared.fail(format!(
                        "the destination did not confirm the last pages within {} s",
                        COMPLETE_TIMEOUT.as_secs()
                    ));
                    return;
                }
            }
            Err(e) => {
                shared.fail(match e {
                    StreamError::DestinationGone => {
                        "the destination closed the migration connection during postcopy"
                            .to_string()
                    }
                    other => other.to_string(),
                });
                return;
            }
        }
    }
}

/// Sends every pending page, requested ones first; then END, and waits for the word
/// that all were placed.
fn send_pages(shared: &Shared, mut s: Sending) -> Result<(), std::io::Error> {
    let started = Instant::now();
    let mut cursor = 0;
    loop {
        let request = {
            let mut i = shared.inner.lock();
            if i.failed.is_some() {
                return Ok(());
            }
            i.requests.pop_front()
        };
        let early = |shared: &Shared| {
            let told = shared.inner.lock().complete_early;
            if told {
                shared.fail("the destination said it had every page before all went".into());
            }
            told
        };
        let (bytes, normal, zero) = match request {
            // A request queued before the word came may name pages already sent: only
            // a page still to send makes the word a lie.
            Some((first, count))
                if (first..first + u64::from(count)).any(|p| s.pending.contains(p))
                    && early(shared) =>
            {
                return Ok(())
            }
            Some((first, count)) => {
                // Pages already sent are on their way: nothing to do for them.
                let sent = send_listed(&mut s, first, u64::from(count))?;
                cursor = first + u64::from(count);
                s.out.flush()?;
                sent
            }
            None => match s.pending.next_from(cursor) {
                Some(_) if early(shared) => return Ok(()),
                Some(first) => {
                    // Holes go as long zero runs (13 bytes a record); pages with data
                    // in short runs, so a request waits behind little.
                    let hole = s.holes.contains(first);
                    let most = if hole { HOLE_RUN } else { BACKGROUND_RUN };
                    let mut count = 1;
                    while count < most
                        && s.pending.contains(first + count)
                        && s.holes.contains(first + count) == hole
                        && s.ram.run_in_window(first) > count
                    {
                        count += 1;
                    }
                    cursor = first + count;
                    send_listed(&mut s, first, count)?
                }
                None => break,
            },
        };
        let mut i = shared.inner.lock();
        i.report.bytes += bytes;
        i.report.normal_pages += normal;
        i.report.zero_pages += zero;
        i.report.remaining_pages = s.pending.len();
    }
    let end = stream::write_end(&mut s.out)? as u64;
    s.out.flush()?;
    let mut i = shared.inner.lock();
    i.report.bytes += end;
    // What the phase cost, for whoever tunes it: its rate and the limit's share of it.
    log::info!(
        "postcopy: {} bytes sent in {} ms ({} ms of it held back by max-postcopy-bandwidth), \
         {} requests",
        i.report.bytes,
        started.elapsed().as_millis(),
        s.pacer.waited().as_millis(),
        i.report.requests
    );
    i.all_sent = Some(Instant::now());
    if i.complete_early {
        i.report.complete = true;
    }
    shared.changed.notify_all();
    Ok(())
}

/// Sends the pending pages among `count` from `first` (taking them out of the set), whole
/// or as zero pages; the bytes written and the pages sent each way.
fn send_listed(s: &mut Sending, first: u64, count: u64) -> std::io::Result<(u64, u64, u64)> {
    let (mut bytes, mut normal, mut zero) = (0u64, 0u64, 0u64);
    let mut page = first;
    let end = first + count;
    while page < end {
        if !s.pending.contains(page) || s.ram.run_in_window(page) == 0 {
            page += 1;
            continue;
        }
        let is_zero_page = |p: u64| s.holes.contains(p) || s.ram.page(p).is_some_and(is_zero);
        let kind = is_zero_page(page);
        // A run of holes may be long (a ZERO record names up to MAX_ZERO_RUN pages).
        let most = if s.holes.contains(page) {
            u64::from(MAX_ZERO_RUN)
        } else {
            u64::from(MAX_PAGES_PER_RECORD)
        };
        let mut n = 1;
        while page + n < end
            && n < most
            && s.pending.contains(page + n)
            && s.ram.run_in_window(page) > n
            && is_zero_page(page + n) == kind
        {
            n += 1;
        }
        for p in page..page + n {
            s.pending.remove(p);
            s.holes.remove(p);
        }
        let written = if kind {
            zero += n;
            stream::write_zero(&mut s.out, page, n as u32)?
        } else {
            normal += n;
            let data = s
                .ram
                .pages(page, n as usize)
                .ok_or_else(|| std::io::Error::other("a run of pages outside guest RAM"))?;
            stream::write_pages(&mut s.out, page, data)?
        } as u64;
        bytes += written;
        s.pacer.sent(written);
        page += n;
    }
    Ok((bytes, normal, zero))
}
