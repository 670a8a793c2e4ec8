//! The source's side of the migration connection: its writes, whose failures are
//! worded as QEMU's, and how long a silent peer is given.

use std::fs::File;
use std::io::Write;
use std::time::Duration;

/// How long a socket may take nothing before the connection counts as lost (a peer gone
/// without a reset, a network gone silent).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The channel, whose write failures are worded as QEMU's ("Unable to write to socket:
/// Broken pipe" for a destination gone).
pub struct Labelled {
    file: File,
    what: &'static str,
}

impl Labelled {
    /// `what`: how the failures name the channel ("socket", "the migration stream").
    pub fn new(file: File, what: &'static str) -> Labelled {
        Labelled { file, what }
    }
}

impl Labelled {
    fn failed(&self, e: std::io::Error) -> std::io::Error {
        let why = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                "the destination took nothing for {} s",
                STALL_TIMEOUT.as_secs()
            ),
            _ => ipc::errno_text(&e),
        };
        std::io::Error::new(e.kind(), format!("Unable to write to {}: {why}", self.what))
    }
}

impl Write for Labelled {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf).map_err(|e| self.failed(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().map_err(|e| self.failed(e))
    }
}
