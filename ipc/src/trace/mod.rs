//! Trace points in every Flotilla process: the event table (`events`), whether each event
//! is on, and the line a trace point writes when it is.
//!
//! On or off is one byte per event in a page the gateway shares with all its children (a
//! sealed memfd, mapped read-only in them): trace-event-set-state flips bytes there, and
//! every process sees the change at its next trace point, a child started later (a
//! restart, a hot-added disk's daemon, a spare) included, with no message to send to each
//! and no window in which a new child misses a change. A trace point that is off costs a
//! relaxed atomic load; its fields are formatted only when it is on (`tracepoint!`).
//!
//! Lines go to one log: the file the gateway opened for `--trace file=` (each child gets
//! a descriptor of it; opened O_APPEND, and each line is one write(2), so lines of several
//! processes never mix within a line), or else stderr, which the children share with the
//! gateway. A line: `PID@SECONDS.MICROSECONDS PROCESS EVENT FIELD=VALUE...`, the pid as
//! the host sees it.

pub mod events;
mod sink;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use std::sync::OnceLock;

pub use events::{glob, is_pattern, select, Event, EventInfo, Process, COUNT, EVENTS};

use crate::process::{take_inherited_fd, NotAnFd};

/// The state page's size: a page, which holds a byte for each event.
const PAGE: usize = 4096;
const _: () = assert!(COUNT <= PAGE);

/// The state page of this process (null until `start_gateway` or `start_child` mapped it:
/// then every event is off).
static STATES: AtomicPtr<AtomicU8> = AtomicPtr::new(std::ptr::null_mut());
/// Whether this process may change the states (the gateway's mapping is writable).
static WRITABLE: OnceLock<()> = OnceLock::new();
/// What the gateway hands each child it starts: the state page, and the log file if any.
static FOR_CHILDREN: OnceLock<(OwnedFd, Option<OwnedFd>)> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace state page: {0}")]
    Page(std::io::Error),
    #[error(transparent)]
    NotAnFd(#[from] NotAnFd),
    #[error("--trace-state-fd: {0} bytes, not a trace state page of {PAGE}")]
    ShortPage(u64),
    #[error("tracing was already set up in this process")]
    Twice,
}

/// The descriptors the gateway passes a child (`--trace-state-fd`, `--trace-log-fd`).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct TraceArgs {
    /// The gateway's page of trace event states (an inherited descriptor).
    #[arg(long, value_name = "FD")]
    pub trace_state_fd: Option<RawFd>,
    /// Where trace lines go (an inherited descriptor; default stderr).
    #[arg(long, value_name = "FD", requires = "trace_state_fd")]
    pub trace_log_fd: Option<RawFd>,
}

/// Whether `event` is on in this process: one relaxed load (after the page's address,
/// which is set once at start).
#[inline]
pub fn enabled(event: Event) -> bool {
    let page = STATES.load(Ordering::Relaxed);
    if page.is_null() {
        return false;
    }
    // SAFETY: a non-null STATES points at a mapping of PAGE bytes that is never unmapped,
    // and COUNT <= PAGE; AtomicU8 has the layout of a byte.
    unsafe { (*page.add(event as usize)).load(Ordering::Relaxed) != 0 }
}

/// Writes a trace point's line if its event is on; the fields are formatted only then.
#[macro_export]
macro_rules! tracepoint {
    ($event:ident, $($fields:tt)+) => {
        if $crate::trace::enabled($crate::trace::Event::$event) {
            $crate::trace::emit($crate::trace::Event::$event, format_args!($($fields)+));
        }
    };
}

/// Writes `event`'s line (call it through `tracepoint!`).
#[cold]
pub fn emit(event: Event, fields: std::fmt::Arguments) {
    sink::write_line(event.info().name, fields);
}

/// Maps `fd`'s first page, read-only or read-write, for ever.
fn map_page(fd: BorrowedFd, writable: bool) -> Result<NonNull<AtomicU8>, TraceError> {
    let len = crate::shm::file_len(fd).map_err(TraceError::Page)?;
    if len < PAGE as u64 {
        return Err(TraceError::ShortPage(len));
    }
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    // SAFETY: a new shared mapping at an address the kernel picks; the file is at least
    // PAGE bytes long (checked above, and it is sealed against shrinking).
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(TraceError::Page(std::io::Error::last_os_error()));
    }
    NonNull::new(ptr.cast()).ok_or(TraceError::Page(std::io::Error::other(
        "mmap gave address 0",
    )))
}

fn publish(page: NonNull<AtomicU8>) -> Result<(), TraceError> {
    STATES
        .compare_exchange(
            std::ptr::null_mut(),
            page.as_ptr(),
            Ordering::Release,
            Ordering::Relaxed,
        )
        .map(drop)
        .map_err(|_| TraceError::Twice)
}

/// The gateway's start: a new state page (every event off), its lines to `log` (the
/// `--trace file=`; stderr without one). Call it before any child starts.
pub fn start_gateway(log: Option<OwnedFd>) -> Result<(), TraceError> {
    let memfd =
        crate::shm::memfd(c"flotilla-trace", PAGE as u64, true).map_err(TraceError::Page)?;
    let page = map_page(memfd.as_fd(), true)?;
    // From now on nobody can write it but through the gateway's own mapping: a child
    // cannot map it writable (nor grow or shrink it).
    // SAFETY: fcntl on a memfd we own.
    if unsafe {
        libc::fcntl(
            memfd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL,
        )
    } < 0
    {
        return Err(TraceError::Page(std::io::Error::last_os_error()));
    }
    let log_fd = log.as_ref().map(|l| l.as_raw_fd());
    FOR_CHILDREN
        .set((memfd, log))
        .map_err(|_| TraceError::Twice)?;
    sink::set(Process::Gateway, log_fd, std::process::id());
    WRITABLE.set(()).map_err(|_| TraceError::Twice)?;
    publish(page)
}

/// A child's start (before it sandboxes itself): the gateway's state page and log from
/// `args`. Without them (a daemon run on its own) every event stays off.
pub fn start_child(process: Process, args: &TraceArgs) -> Result<(), TraceError> {
    let Some(state_fd) = args.trace_state_fd else {
        return Ok(());
    };
    let state = take_inherited_fd("--trace-state-fd", state_fd)?;
    let page = map_page(state.as_fd(), false)?;
    // The mapping holds the page; the descriptor is not needed any more.
    drop(state);
    let log_fd = match args.trace_log_fd {
        // Kept open for the process's life: every line is written to it.
        Some(fd) => Some(take_inherited_fd("--trace-log-fd", fd)?),
        None => None,
    };
    sink::set(
        process,
        log_fd.map(|fd| {
            let raw = fd.as_raw_fd();
            std::mem::forget(fd);
            raw
        }),
        host_pid(),
    );
    publish(page)
}

/// This process's pid as the host sees it: /proc here is still the host's (read before
/// the sandbox replaces the root), and its `self` names us in the host's PID namespace,
/// where getpid() of a sandboxed child says 1 or so.
fn host_pid() -> u32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse().ok())
        .unwrap_or_else(std::process::id)
}

/// The descriptors a child gets at its start (the state page, the log file if there is
/// one): None until `start_gateway`.
pub fn for_children() -> Option<(BorrowedFd<'static>, Option<BorrowedFd<'static>>)> {
    FOR_CHILDREN
        .get()
        .map(|(page, log)| (page.as_fd(), log.as_ref().map(|l| l.as_fd())))
}

/// Whether event number `index` is on.
pub fn state(index: usize) -> bool {
    EVENTS.get(index).is_some_and(|_| enabled_at(index))
}

fn enabled_at(index: usize) -> bool {
    let page = STATES.load(Ordering::Relaxed);
    // SAFETY: as in `enabled`; callers check index < COUNT.
    !page.is_null() && unsafe { (*page.add(index)).load(Ordering::Relaxed) != 0 }
}

/// Turns event number `index` on or off in every process (the gateway only: false in a
/// process whose page is read-only or not mapped, and for an index beyond the table).
pub fn set_state(index: usize, on: bool) -> bool {
    let page = STATES.load(Ordering::Relaxed);
    if WRITABLE.get().is_none() || page.is_null() || index >= COUNT {
        return false;
    }
    // SAFETY: the gateway's own mapping of the page, read-write, never unmapped.
    unsafe { (*page.add(index)).store(u8::from(on), Ordering::Relaxed) };
    true
}
