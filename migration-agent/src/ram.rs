//! Guest memory as the agent sees it: the windows of vmm-core's files (RAM's memfd, and
//! each DIMM's memory), mapped shared (read-only on the source, writable on the
//! destination), addressed by guest page number. A page outside every window is
//! refused, never reached.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;

use ipc::shm;
use ipc::RamWindow;

use crate::stream::PAGE;

#[derive(Debug, thiserror::Error)]
pub enum RamError {
    #[error("guest RAM window at {addr:#x} of {size:#x} bytes: {why}")]
    Window { addr: u64, size: u64, why: String },
    #[error("mapping guest RAM: {0}")]
    Map(std::io::Error),
    #[error("guest RAM window at {addr:#x} names file {file}, of {files}")]
    NoFile { addr: u64, file: u32, files: usize },
}

struct Mapped {
    first_page: u64,
    pages: u64,
    ptr: NonNull<u8>,
    len: usize,
    file_offset: u64,
    /// Which of `GuestRam::files`.
    file: usize,
}

pub struct GuestRam {
    files: Vec<OwnedFd>,
    windows: Vec<Mapped>,
}

// SAFETY: the mappings are plain shared memory, valid for the life of GuestRam; the
// agent's threads only read them (source) or write pages no other agent thread touches
// (destination, one receiving thread).
unsafe impl Send for GuestRam {}
// SAFETY: as above.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Maps `windows` of `files`, checked against their files' sizes and page alignment.
    pub fn map(
        files: Vec<OwnedFd>,
        windows: &[RamWindow],
        writable: bool,
    ) -> Result<GuestRam, RamError> {
        let mut mapped: Vec<Mapped> = Vec::new();
        for w in windows {
            let fd = files.get(w.file as usize).ok_or(RamError::NoFile {
                addr: w.guest_addr,
                file: w.file,
                files: files.len(),
            })?;
            let file_len = shm::file_len(fd.as_fd()).map_err(RamError::Map)?;
            let bad = |why: &str| RamError::Window {
                addr: w.guest_addr,
                size: w.size,
                why: why.into(),
            };
            let page = PAGE as u64;
            if w.size == 0
                || w.guest_addr % page != 0
                || w.size % page != 0
                || w.file_offset % page != 0
            {
                return Err(bad("not whole pages"));
            }
            if w.file_offset
                .checked_add(w.size)
                .is_none_or(|end| end > file_len)
            {
                return Err(bad("beyond the memfd"));
            }
            let (first, pages) = (w.guest_addr / PAGE as u64, w.size / PAGE as u64);
            if mapped
                .iter()
                .any(|m| first < m.first_page + m.pages && m.first_page < first + pages)
            {
                return Err(bad("overlaps another window"));
            }
            let len = usize::try_from(w.size).map_err(|_| bad("too large"))?;
            let prot = if writable {
                libc::PROT_READ | libc::PROT_WRITE
            } else {
                libc::PROT_READ
            };
            // SAFETY: a fresh shared mapping at an address the kernel picks; the window
            // lies inside the file (checked above).
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    w.file_offset as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(RamError::Map(std::io::Error::last_os_error()));
            }
            let ptr = NonNull::new(ptr.cast()).ok_or_else(|| bad("mapped at address 0"))?;
            mapped.push(Mapped {
                first_page: w.guest_addr / page,
                pages: w.size / page,
                ptr,
                len,
                file_offset: w.file_offset,
                file: w.file as usize,
            });
        }
        Ok(GuestRam {
            files,
            windows: mapped,
        })
    }

    /// Every guest page number, window by window.
    pub fn page_numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.windows
            .iter()
            .flat_map(|w| w.first_page..w.first_page + w.pages)
    }

    /// Takes `count` pages from `first` out of their files (holes again: postcopy's
    /// discarded pages, which every mapping then finds missing). They may span windows;
    /// a page outside every window is refused.
    pub fn punch(&self, first: u64, count: u64) -> std::io::Result<()> {
        let mut page = first;
        let end = first.saturating_add(count);
        while page < end {
            let Some((w, i)) = self.find(page) else {
                return Err(std::io::Error::other(format!(
                    "page {page:#x} is not guest RAM here"
                )));
            };
            let n = (w.pages - i as u64).min(end - page);
            let offset = w.file_offset + i as u64 * PAGE as u64;
            // SAFETY: fallocate on a file we hold, inside the window's bytes.
            let r = unsafe {
                libc::fallocate(
                    self.files[w.file].as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    (n * PAGE as u64) as libc::off_t,
                )
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            page += n;
        }
        Ok(())
    }

    pub fn total_pages(&self) -> u64 {
        self.windows.iter().map(|w| w.pages).sum()
    }

    /// The window holding `page`, and the page's index in it.
    fn find(&self, page: u64) -> Option<(&Mapped, usize)> {
        self.windows
            .iter()
            .find(|w| page >= w.first_page && page - w.first_page < w.pages)
            .map(|w| (w, (page - w.first_page) as usize))
    }

    /// How many pages from `page` on lie in the same window (0: none).
    pub fn run_in_window(&self, page: u64) -> u64 {
        self.find(page).map_or(0, |(w, i)| w.pages - i as u64)
    }

    /// Page `page` of guest RAM.
    pub fn page(&self, page: u64) -> Option<&[u8]> {
        let (w, i) = self.find(page)?;
        // SAFETY: page i lies inside the mapping (find checked it).
        Some(unsafe { std::slice::from_raw_parts(w.ptr.as_ptr().add(i * PAGE), PAGE) })
    }

    /// `count` pages from `page` on, when they all lie in one window.
    pub fn pages(&self, page: u64, count: usize) -> Option<&[u8]> {
        let (w, i) = self.find(page)?;
        if (i + count) as u64 > w.pages {
            return None;
        }
        // SAFETY: the range lies inside one mapping (checked above).
        Some(unsafe { std::slice::from_raw_parts(w.ptr.as_ptr().add(i * PAGE), count * PAGE) })
    }

    /// `count` pages from `page` on, for writing, when they all lie in one window. Only
    /// the destination's receiving thread writes, and the mapping is writable there.
    #[allow(clippy::mut_from_ref)]
    pub fn pages_mut(&self, page: u64, count: usize) -> Option<&mut [u8]> {
        let (w, i) = self.find(page)?;
        if (i + count) as u64 > w.pages {
            return None;
        }
        // SAFETY: the range lies inside one mapping (checked above); the one receiving
        // thread is the only writer and holds no other reference into it.
        Some(unsafe { std::slice::from_raw_parts_mut(w.ptr.as_ptr().add(i * PAGE), count * PAGE) })
    }

    /// The pages that hold memory at all: a memfd's never-written pages are holes, zero
    /// without being read (reading them through the mapping would allocate them).
    pub fn data_pages(&self) -> std::io::Result<Vec<std::ops::Range<u64>>> {
        let mut out = Vec::new();
        for w in &self.windows {
            let start = w.file_offset;
            let end = start + w.pages * PAGE as u64;
            for r in shm::data_ranges(self.files[w.file].as_fd(), end)? {
                let (s, e) = (r.start.max(start), r.end.min(end));
                if s < e {
                    let first = w.first_page + (s - start) / PAGE as u64;
                    let last = w.first_page + (e - start).div_ceil(PAGE as u64);
                    out.push(first..last);
                }
            }
        }
        Ok(out)
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        for w in &self.windows {
            // SAFETY: unmapping our own mapping; no reference into it outlives self.
            unsafe { libc::munmap(w.ptr.as_ptr().cast(), w.len) };
        }
    }
}

/// A page of zeros?
pub fn is_zero(page: &[u8]) -> bool {
    let (prefix, words, suffix) = {
        // SAFETY: u64 has no invalid bit patterns; align_to splits at aligned bounds.
        unsafe { page.align_to::<u64>() }
    };
    prefix.iter().all(|b| *b == 0)
        && words.iter().all(|w| *w == 0)
        && suffix.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> OwnedFd {
        shm::memfd(c"t", len, false).unwrap()
    }

    fn window(guest_addr: u64, size: u64, file_offset: u64, file: u32) -> RamWindow {
        RamWindow {
            guest_addr,
            size,
            file_offset,
            file,
        }
    }

    #[test]
    fn windows_map_by_guest_page_and_refuse_outside() {
        let fd = memfd(8 * PAGE as u64);
        let windows = [
            window(0, 4 * PAGE as u64, 0, 0),
            window(1 << 32, 4 * PAGE as u64, 4 * PAGE as u64, 0),
        ];
        let ram = GuestRam::map(vec![fd], &windows, true).unwrap();
        assert_eq!(ram.total_pages(), 8);
        ram.pages_mut((1 << 32) / 4096 + 1, 1).unwrap()[0] = 7;
        assert_eq!(ram.page((1 << 32) / 4096 + 1).unwrap()[0], 7);
        assert!(ram.page(4).is_none());
        assert!(ram.pages_mut(3, 2).is_none());
        assert_eq!(ram.run_in_window(2), 2);
        assert_eq!(
            ram.data_pages().unwrap(),
            vec![(1 << 20) + 1..(1 << 20) + 2]
        );
        assert!(is_zero(ram.page(0).unwrap()));
        assert!(!is_zero(ram.page((1 << 32) / 4096 + 1).unwrap()));
    }

    #[test]
    fn windows_beyond_the_file_or_unaligned_are_refused() {
        let w = |guest_addr, size, file_offset| window(guest_addr, size, file_offset, 0);
        for bad in [
            w(0, 8192, 4096),
            w(1, 4096, 0),
            w(0, 0, 0),
            w(0, 4096, u64::MAX),
        ] {
            assert!(GuestRam::map(vec![memfd(8192)], &[bad], false).is_err());
        }
        let two = [w(0, 4096, 0), w(0, 4096, 4096)];
        assert_eq!(
            GuestRam::map(vec![memfd(8192)], &two, false)
                .err()
                .unwrap()
                .to_string(),
            "guest RAM window at 0x0 of 0x1000 bytes: overlaps another window"
        );
        let other_file = [RamWindow {
            file: 1,
            ..w(0, 4096, 0)
        }];
        assert_eq!(
            GuestRam::map(vec![memfd(8192)], &other_file, false)
                .err()
                .unwrap()
                .to_string(),
            "guest RAM window at 0x0 names file 1, of 1"
        );
    }

    #[test]
    fn a_dimm_is_a_window_of_its_own_file() {
        let (ram_fd, dimm_fd) = (memfd(4 * PAGE as u64), memfd(2 * PAGE as u64));
        let dimm = shm::SharedMapping::new(dimm_fd.as_fd(), 2 * PAGE).unwrap();
        let windows = [
            window(0, 4 * PAGE as u64, 0, 0),
            window(1 << 32, 2 * PAGE as u64, 0, 1),
        ];
        let ram = GuestRam::map(vec![ram_fd, dimm_fd], &windows, true).unwrap();
        assert_eq!(ram.total_pages(), 6);
        let dimm_page = (1 << 32) / PAGE as u64;
        ram.pages_mut(dimm_page + 1, 1).unwrap()[5] = 9;
        // SAFETY: the mapping is 2 pages long.
        assert_eq!(unsafe { *dimm.ptr().as_ptr().add(PAGE + 5) }, 9);
        assert_eq!(
            ram.data_pages().unwrap(),
            vec![dimm_page + 1..dimm_page + 2]
        );
        ram.punch(dimm_page, 2).unwrap();
        assert!(ram.data_pages().unwrap().is_empty());
        assert!(
            ram.pages(4, 1).is_none(),
            "nothing between RAM and the DIMM"
        );
    }
}
