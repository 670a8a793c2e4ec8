//! The host file under an image (QEMU's protocol layer, `file` or `host_device`): a
//! regular file or a block device. Its length (BLKGETSIZE64 for a device, whose
//! `metadata().len()` is 0), freeing a range of it (a hole punched in a file, BLKDISCARD
//! on a device), and the file-level discard counters (`discard-nb-ok` and friends of
//! query-blockstats) every discard that reaches the file is counted in; and starting
//! the writeback of what a block job wrote.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::Ordering;

use ipc::BlockCounters;

// BLKGETSIZE64 / BLKDISCARD from <linux/fs.h>.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKDISCARD: libc::c_ulong = 0x1277;

pub fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether `file` is a block device.
pub fn is_block_device(file: &File) -> std::io::Result<bool> {
    Ok(file.metadata()?.file_type().is_block_device())
}

/// The length of `file`: a block device's size, a regular file's length.
pub fn length(file: &File) -> std::io::Result<u64> {
    if is_block_device(file)? {
        let mut size = 0u64;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to one.
        check(unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) })?;
        Ok(size)
    } else {
        Ok(file.metadata()?.len())
    }
}

/// Frees `offset..offset + len` of the file `fd` (a device when `block_device`): it
/// reads as zeroes afterwards and its space goes back to the host.
pub fn discard(fd: RawFd, block_device: bool, offset: u64, len: u64) -> std::io::Result<()> {
    if block_device {
        let range = [offset, len];
        // SAFETY: BLKDISCARD reads two u64s through the pointer, which points to two.
        check(unsafe { libc::ioctl(fd, BLKDISCARD, range.as_ptr()) })
    } else {
        // SAFETY: fallocate on an fd the caller owns, integer arguments.
        check(unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        })
    }
}

/// Starts writing the file's dirty pages to storage without waiting for them (the
/// kernel would otherwise keep a job's gigabyte in the page cache until its closing
/// flush, which then waits for all of it). A block device or an O_DIRECT file has
/// nothing to start; the call is harmless there.
pub fn start_writeback(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: sync_file_range on an fd the caller owns, integer arguments; offset 0
    // and length 0 mean the whole file.
    check(unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE) })
}

/// Counts one discard of `len` bytes that reached the file, as QEMU's file driver
/// does (raw_account_discard): a success adds the operation and its bytes, a failure
/// the failed operation.
pub fn count_discard(counters: &BlockCounters, len: u64, result: &std::io::Result<()>) {
    let page = counters.page();
    match result {
        Ok(()) => {
            page.discard_ok.fetch_add(1, Ordering::Relaxed);
            page.discard_bytes_ok.fetch_add(len, Ordering::Relaxed);
        }
        Err(_) => {
            page.discard_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
