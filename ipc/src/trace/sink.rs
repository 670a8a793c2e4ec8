//! Where this process's trace lines go, and how one is written: one write(2) per line.

use std::fmt::Write as _;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::events::Process;

struct Sink {
    /// The log's descriptor (open for the process's life), or stderr.
    fd: RawFd,
    process: &'static str,
    pid: u32,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// A line is cut at this length: pipes keep writes up to PIPE_BUF whole.
const MAX_LINE: usize = 4096;

pub(super) fn set(process: Process, fd: Option<RawFd>, pid: u32) {
    let _ = SINK.set(Sink {
        fd: fd.unwrap_or(libc::STDERR_FILENO),
        process: process.name(),
        pid,
    });
}

/// `PID@SECONDS.MICROSECONDS PROCESS NAME FIELDS`, control characters in the fields
/// (a client's command name may hold a newline) escaped so that a line stays one line.
pub(super) fn write_line(name: &str, fields: std::fmt::Arguments) {
    let Some(sink) = SINK.get() else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut line = String::with_capacity(128);
    let _ = write!(
        line,
        "{}@{}.{:06} {} {} ",
        sink.pid,
        now.as_secs(),
        now.subsec_micros(),
        sink.process,
        name
    );
    let mut body = String::new();
    let _ = body.write_fmt(fields);
    for c in body.chars() {
        if line.len() >= MAX_LINE - 16 {
            line.push_str("...");
            break;
        }
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line.push('\n');
    let mut bytes = line.as_bytes();
    while !bytes.is_empty() {
        // SAFETY: writing from a live buffer to a descriptor this process keeps open.
        let n = unsafe { libc::write(sink.fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}
