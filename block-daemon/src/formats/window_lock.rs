//! Locks on byte windows of a file, for the read-modify-write of O_DIRECT bounce I/O:
//! a write that does not cover whole device blocks reads the blocks around it, changes
//! its bytes and writes the blocks back, and that write-back must not carry stale bytes
//! over a neighbour's write to the same block (two 512-byte qcow2 clusters share a
//! 4096-byte block on a 4 KiB-sector device; two sectors of a raw image do too). Every
//! bounce write holds its aligned window for the whole read-modify-write; windows
//! that overlap wait for each other. Files are told apart by device and inode, so
//! every fd of one file shares its windows.

use std::os::unix::fs::MetadataExt;

use parking_lot::{Condvar, Mutex};

/// A file (device, inode) and a byte range of it.
type Window = (u64, u64, u64, u64);

/// The windows held at the moment, in the whole process.
static HELD: Mutex<Vec<Window>> = Mutex::new(Vec::new());
static RELEASED: Condvar = Condvar::new();

/// Holds `start..end` of a file until dropped.
pub struct WindowGuard(Window);

fn overlaps(a: &Window, b: &Window) -> bool {
    a.0 == b.0 && a.1 == b.1 && a.2 < b.3 && b.2 < a.3
}

/// What tells a file apart from every other (device, inode), from the one `fstat` a
/// bounce write makes, passed to each `lock` of its pieces.
#[derive(Clone, Copy)]
pub struct FileKey(u64, u64);

impl FileKey {
    pub fn of_metadata(meta: &std::fs::Metadata) -> FileKey {
        FileKey(meta.dev(), meta.ino())
    }
}

/// Waits until no one holds a window of the file overlapping `start..end`, then holds it.
pub fn lock(file: FileKey, start: u64, end: u64) -> WindowGuard {
    let window = (file.0, file.1, start, end);
    let mut held = HELD.lock();
    while held.iter().any(|w| overlaps(w, &window)) {
        RELEASED.wait(&mut held);
    }
    held.push(window);
    WindowGuard(window)
}

impl Drop for WindowGuard {
    fn drop(&mut self) {
        let mut held = HELD.lock();
        if let Some(i) = held.iter().position(|w| *w == self.0) {
            held.swap_remove(i);
        }
        RELEASED.notify_all();
    }
}
