//! Guest pages as the balloon sees them: which page frame numbers are guest RAM (anything
//! else, beyond RAM or in the 32-bit MMIO gap, is not), where each lies in the guest-RAM
//! memfd, and giving a run of them back to the host. Giving back is a hole punched in the
//! memfd (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): the pages leave every process that
//! maps the file (vmm-core, the device daemons, a migration agent) at once, and read as
//! zeroes afterwards, whoever touches them first. An madvise on one mapping would free
//! nothing while another mapping still held the page.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::memory::{GuestRam, RamRegion};

/// The balloon's page: PFNs count 4 KiB pages whatever the guest's page size (virtio 1.2,
/// 5.5.6: VIRTIO_BALLOON_PFN_SHIFT).
pub const PAGE: u64 = 4096;

/// Guest RAM's layout and its memfd.
pub struct RamPages {
    memfd: File,
    regions: Vec<RamRegion>,
    size: u64,
}

/// A page of guest RAM: its guest physical address and its offset in the memfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamPage {
    pub gpa: u64,
    pub offset: u64,
}

impl RamPages {
    pub fn new(ram: &GuestRam) -> std::io::Result<RamPages> {
        Ok(RamPages {
            memfd: ram.memfd().try_clone()?,
            regions: ram.regions().to_vec(),
            size: ram.size(),
        })
    }

    /// Guest RAM's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Page `pfn`, if it is guest RAM.
    pub fn page(&self, pfn: u32) -> Option<RamPage> {
        let gpa = u64::from(pfn) * PAGE;
        let region = self
            .regions
            .iter()
            .find(|r| gpa >= r.guest_addr && gpa - r.guest_addr < r.size)?;
        Some(RamPage {
            gpa,
            offset: region.file_offset + (gpa - region.guest_addr),
        })
    }

    /// Gives the pages of `run` back to the host.
    pub fn punch(&self, run: &Run) -> std::io::Result<()> {
        let (offset, len) = (run.first.offset, run.pages * PAGE);
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        };
        // SAFETY: fallocate on a file descriptor we own; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.memfd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match rc {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

/// Pages that follow one another both in guest physical memory and in the memfd (so one
/// region), from `first` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub first: RamPage,
    pub pages: u64,
}

impl Run {
    /// The guest physical range it covers.
    pub fn guest_range(&self) -> (u64, u64) {
        (self.first.gpa, self.first.gpa + self.pages * PAGE)
    }

    /// Takes `page` in if it extends the run at either end (guests hand pages over in
    /// either order).
    pub fn extend(&mut self, page: RamPage) -> bool {
        let end = self.guest_range().1;
        let after = page.gpa == end && page.offset == self.first.offset + self.pages * PAGE;
        let before = page.gpa.checked_add(PAGE) == Some(self.first.gpa)
            && page.offset.checked_add(PAGE) == Some(self.first.offset);
        if after {
            self.pages += 1;
        } else if before {
            self.first = page;
            self.pages += 1;
        }
        after || before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MMIO_GAP_END;
    use crate::memory::MIB;

    #[test]
    fn only_ram_has_pages() {
        let ram = GuestRam::new(4).unwrap();
        let pages = RamPages::new(&ram).unwrap();
        assert_eq!(pages.page(0), Some(RamPage { gpa: 0, offset: 0 }));
        assert_eq!(
            pages.page(1023),
            Some(RamPage {
                gpa: 1023 * PAGE,
                offset: 1023 * PAGE
            })
        );
        assert_eq!(pages.page(1024), None);
        assert_eq!(pages.page(u32::MAX), None);
        assert_eq!(pages.page((MMIO_GAP_END / PAGE) as u32), None);
    }

    #[test]
    fn pages_above_the_gap_are_the_memfd_after_the_low_part() {
        // Only the layout matters: 3 GiB + 4 MiB of RAM is never touched here.
        let ram = GuestRam::new(3 * 1024 + 4).unwrap();
        let pages = RamPages::new(&ram).unwrap();
        let low = crate::layout::MMIO_GAP_START;
        assert_eq!(pages.page((low / PAGE) as u32), None, "the gap is not RAM");
        assert_eq!(
            pages.page((MMIO_GAP_END / PAGE) as u32 + 1),
            Some(RamPage {
                gpa: MMIO_GAP_END + PAGE,
                offset: low + PAGE
            })
        );
        assert_eq!(
            pages.page(((MMIO_GAP_END + 4 * MIB) / PAGE) as u32),
            None,
            "beyond RAM"
        );
    }

    #[test]
    fn runs_grow_at_either_end_and_stop_at_gaps() {
        let page = |n: u64| RamPage {
            gpa: n * PAGE,
            offset: n * PAGE,
        };
        let mut run = Run {
            first: page(10),
            pages: 1,
        };
        assert!(run.extend(page(11)));
        assert!(run.extend(page(9)));
        assert_eq!(
            run,
            Run {
                first: page(9),
                pages: 3
            }
        );
        assert!(!run.extend(page(13)));
        assert!(!run.extend(page(10)));
        // Next in guest memory but elsewhere in the file: another region.
        assert!(!run.extend(RamPage {
            gpa: 12 * PAGE,
            offset: 99 * PAGE
        }));
        assert_eq!(run.guest_range(), (9 * PAGE, 12 * PAGE));
    }

    #[test]
    fn a_punched_run_reads_as_zeroes_and_leaves_the_file() {
        use vm_memory::{Bytes, GuestAddress};
        let ram = GuestRam::new(4).unwrap();
        let pages = RamPages::new(&ram).unwrap();
        let blocks = || {
            use std::os::unix::fs::MetadataExt;
            ram.memfd().metadata().unwrap().blocks() * 512
        };
        ram.memory()
            .write_slice(&[0xab; 4 * PAGE as usize], GuestAddress(8 * PAGE))
            .unwrap();
        let full = blocks();
        assert!(full >= 4 * PAGE);
        let run = Run {
            first: pages.page(9).unwrap(),
            pages: 2,
        };
        pages.punch(&run).unwrap();
        assert_eq!(blocks(), full - 2 * PAGE);
        let mut got = [0u8; 4 * PAGE as usize];
        ram.memory()
            .read_slice(&mut got, GuestAddress(8 * PAGE))
            .unwrap();
        assert!(got[..PAGE as usize].iter().all(|&b| b == 0xab));
        assert!(got[PAGE as usize..3 * PAGE as usize]
            .iter()
            .all(|&b| b == 0));
        assert!(got[3 * PAGE as usize..].iter().all(|&b| b == 0xab));
    }
}
