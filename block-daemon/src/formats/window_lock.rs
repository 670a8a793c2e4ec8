//! Locks on byte windows of a file, for the read-modify-write of O_DIRECT bounce I/O:
//! a write that does not cover whole device blocks reads the blocks around it, changes
//! its bytes and writes the blocks back, and that write-back must not carry stale bytes
//! over a neighbour's write to the same block (two 512-byte qcow2 clusters share a
//! 4096-byte block on a 4 KiB-sector device; two sectors of a raw image do too). Every
//! bounce write holds its aligned window for the whole read-modify-write; windows
//! that overlap wait for each other. Files are told apart by device and inode, so
//! every fd of one file shares its windows.
//!
//! The engines' own O_DIRECT writes of whole device blocks read nothing, so they need
//! not exclude each other; on a device with blocks larger than a sector (where a guest
//! write can be smaller than a block and take the bounce path) they hold a shared
//! window for their flight (`lock_shared`), which a read-modify-write waits for, and
//! which waits only for a read-modify-write that holds its window (never for another
//! waiter: the holder of a shared window may be the very thread that would release it).

use std::os::unix::fs::MetadataExt;

use parking_lot::{Condvar, Mutex};

/// A file (device, inode), a byte range of it, and whether it is held shared.
type Window = (u64, u64, u64, u64, bool);

/// The windows held at the moment, in the whole process.
static HELD: Mutex<Vec<Window>> = Mutex::new(Vec::new());
static RELEASED: Condvar = Condvar::new();

/// Holds `start..end` of a file until dropped.
#[derive(Debug)]
pub struct WindowGuard(Window);

fn overlaps(a: &Window, b: &Window) -> bool {
    a.0 == b.0 && a.1 == b.1 && a.2 < b.3 && b.2 < a.3
}

/// What tells a file apart from every other (device, inode), from the one `fstat` a
/// bounce write makes, passed to each `lock` of its pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileKey(u64, u64);

impl FileKey {
    pub fn of_metadata(meta: &std::fs::Metadata) -> FileKey {
        FileKey(meta.dev(), meta.ino())
    }
}

/// Waits until no one holds a window of the file overlapping `start..end`, then holds it
/// alone (a read-modify-write).
pub fn lock(file: FileKey, start: u64, end: u64) -> WindowGuard {
    hold((file.0, file.1, start, end, false))
}

/// Waits until no read-modify-write holds a window of the file overlapping
/// `start..end`, then holds it shared with other whole-block writes (an engine's write
/// in flight). The wait is one read-modify-write's at most: a holder does nothing but
/// its I/O.
pub fn lock_shared(file: FileKey, start: u64, end: u64) -> WindowGuard {
    hold((file.0, file.1, start, end, true))
}

fn hold(window: Window) -> WindowGuard {
    let shared = window.4;
    let mut held = HELD.lock();
    while held
        .iter()
        .any(|w| overlaps(w, &window) && !(shared && w.4))
    {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A key no real file has (device 0 does not exist).
    fn key(ino: u64) -> FileKey {
        FileKey(0, ino)
    }

    /// Locks `start..end` exclusively in a new thread; the receiver hears when it got it.
    fn lock_in_thread(file: FileKey, start: u64, end: u64) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _g = lock(file, start, end);
            let _ = tx.send(());
        });
        rx
    }

    /// A read-modify-write waits for an engine write in flight on its block, and gets it
    /// once that is done; shared windows do not wait for each other, nor for windows of
    /// other blocks or files.
    #[test]
    fn a_read_modify_write_waits_for_shared_windows_and_shared_ones_for_it() {
        let f = key(1);
        let a = lock_shared(f, 0, 4096);
        let b = lock_shared(f, 0, 8192);
        let rmw = lock_in_thread(f, 512, 1024);
        assert!(
            rmw.recv_timeout(Duration::from_millis(200)).is_err(),
            "the read-modify-write did not wait for the shared windows"
        );
        drop(a);
        assert!(rmw.recv_timeout(Duration::from_millis(200)).is_err());
        drop(b);
        rmw.recv_timeout(Duration::from_secs(10))
            .expect("the read-modify-write never got its window");
        // Other blocks and files are not in the way.
        let _c = lock_shared(f, 0, 4096);
        lock_in_thread(f, 4096, 8192)
            .recv_timeout(Duration::from_secs(10))
            .expect("a neighbouring block waited");
        lock_in_thread(key(2), 0, 4096)
            .recv_timeout(Duration::from_secs(10))
            .expect("another file waited");
        // A shared window waits for a read-modify-write that holds its block.
        let g = lock(key(3), 0, 4096);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _s = lock_shared(key(3), 0, 4096);
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(g);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the shared window never came");
    }
}
