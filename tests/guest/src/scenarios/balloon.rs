//! `balloon [balloon-bad-pfn=1]`: the virtio-balloon guest. It brings up the device, takes all
//! the free memory left (the rest of the DMA pool) as the pool its balloon draws from, prints
//! `GUEST BALLOON READY num_pages=N actual=A free_mib=F` (after writing every page of the pool
//! once, so that the host holds them all), and from then on follows the
//! device: at every configuration-change interrupt (MSI-X; polled every 10 ms without it) it
//! moves the balloon toward num_pages, in requests of at most 256 PFNs, writing `actual`
//! after each, and prints `GUEST BALLOON actual=A free_mib=F` (F: the pool's pages not in the
//! balloon). It never returns: the host ends the VM.
//!
//! Inflating hands over the pool's highest pages not in the balloon, after writing a marker
//! into each (word 0 = MARKER ^ pfn); they are not touched again while ballooned. Deflating
//! takes back the most recently inflated ones; once the device has used the request, each
//! returned page is checked in ring 3 (is it all zeroes, i.e. did the host drop it, or does it
//! still hold its marker?), then written whole and read back: `GUEST BALLOON DEFLATED
//! pages=N zeroed=Z` per round, `GUEST ERROR balloon: page ...` for a page that does not keep
//! what was written. `balloon-bad-pfn=1` puts two PFNs that are not RAM (0xffffffff, beyond
//! any guest's memory, and 0xfee00, the local APIC's page in the 32-bit hole) in the middle
//! of the first inflate request; the device must ignore them and take the others.

use super::pci;
use crate::acpi::power;
use crate::acpi::Acpi;
use crate::arch::halt::halt_until;
use crate::arch::{cpu, interrupts, memory, user};
use crate::drivers::virtio_balloon::spec::PAGE;
use crate::drivers::virtio_balloon::{self, BalloonDevice, Direction, MAX_PFNS};
use crate::{cmdline, console};

/// Word 0 of a page handed to the balloon (xor its PFN).
const MARKER: u64 = 0xba11_0000_f00d_0000;
/// PFNs that are not RAM, for `balloon-bad-pfn=1`.
const BAD_PFNS: [u32; 2] = [0xffff_ffff, 0xfee00];
const WORDS: usize = (PAGE / 8) as usize;

/// The pages the balloon draws from: `count` pages at `base`; the top `ballooned` of them are
/// in the balloon.
struct Pool {
    base: u64,
    count: u64,
    ballooned: u64,
}

impl Pool {
    /// All of the DMA pool that is left, each page written once (in ring 3), so that the
    /// host holds every page before the balloon gives any back.
    fn reserve() -> Option<Pool> {
        let bytes = memory::dma_remaining().saturating_sub(PAGE) & !(PAGE - 1);
        let base = memory::dma_alloc(bytes, PAGE)?;
        let pool = Pool {
            base,
            count: bytes / PAGE,
            ballooned: 0,
        };
        let mut touch = || {
            for index in 0..pool.count {
                mark(pool.pfn(index));
            }
            0
        };
        user::call_reported("balloon", "writing the pool", &mut touch)?;
        Some(pool)
    }

    fn pfn(&self, index: u64) -> u32 {
        ((self.base >> 12) + index) as u32
    }

    fn free(&self) -> u64 {
        self.count - self.ballooned
    }

    fn free_mib(&self) -> u64 {
        (self.free() * PAGE + memory::dma_remaining()) >> 20
    }
}

/// What deflating found in the pages that came back.
#[derive(Default)]
struct Returned {
    pages: u64,
    zeroed: u64,
}

pub fn run(acpi: &Acpi, cmdline: &[u8]) -> ! {
    let Ok(bad_pfn) = cmdline::number_in(cmdline, "balloon-bad-pfn", 0..=1, "balloon") else {
        power::poweroff(acpi)
    };
    let functions = pci::setup(acpi, cmdline);
    pci::dma_info();
    let Some(mut dev) = virtio_balloon::probe_first(&functions) else {
        power::poweroff(acpi)
    };
    let Some(mut pool) = Pool::reserve() else {
        console::error("balloon: no free memory for the balloon's pool").end();
        power::poweroff(acpi)
    };
    let mut bad_pfns = bad_pfn == Some(1);
    let vector = dev.transport.config_vector;
    let mut seen = vector.map_or(0, interrupts::count);
    let mut last_target = dev.num_pages();
    console::line("GUEST BALLOON READY num_pages=")
        .dec(u64::from(last_target))
        .s(" actual=")
        .dec(u64::from(dev.actual()))
        .s(" free_mib=")
        .dec(pool.free_mib())
        .end();
    if u64::from(last_target) != pool.ballooned {
        settle(&mut dev, &mut pool, &mut bad_pfns);
    }
    loop {
        // Interrupts that came while settling count: `seen` was taken before.
        cpu::take_pending_interrupts();
        let changed = halt_until(60_000, || match vector {
            Some(v) => interrupts::count(v) != seen,
            None => dev.num_pages() != last_target,
        });
        if !changed {
            continue;
        }
        seen = vector.map_or(0, interrupts::count);
        last_target = dev.num_pages();
        settle(&mut dev, &mut pool, &mut bad_pfns);
    }
}

/// Moves the balloon toward num_pages (read again after every request, so a change that
/// comes meanwhile is followed too), then prints where it ended.
fn settle(dev: &mut BalloonDevice, pool: &mut Pool, bad_pfns: &mut bool) {
    let mut returned = Returned::default();
    let mut pfns = [0u32; MAX_PFNS];
    loop {
        let target = u64::from(dev.num_pages());
        let done = if target > pool.ballooned {
            let mut room = MAX_PFNS;
            if *bad_pfns {
                room -= BAD_PFNS.len();
            }
            let n = (target - pool.ballooned).min(room as u64).min(pool.free()) as usize;
            if n == 0 {
                console::line("GUEST INFO balloon: no free page left at actual=")
                    .dec(pool.ballooned)
                    .s(" num_pages=")
                    .dec(target)
                    .end();
                break;
            }
            let mut len = 0;
            for i in 0..n as u64 {
                if *bad_pfns && i == n as u64 / 2 {
                    pfns[len..len + BAD_PFNS.len()].copy_from_slice(&BAD_PFNS);
                    len += BAD_PFNS.len();
                }
                let index = pool.free() - 1 - i;
                let pfn = pool.pfn(index);
                mark(pfn);
                pfns[len] = pfn;
                len += 1;
            }
            if !dev.request(Direction::Inflate, &pfns[..len]) {
                break;
            }
            if *bad_pfns {
                console::line("GUEST INFO balloon bad_pfns=0xffffffff,0xfee00 sent with ")
                    .dec(n as u64)
                    .s(" pages")
                    .end();
                *bad_pfns = false;
            }
            pool.ballooned += n as u64;
            false
        } else if target < pool.ballooned {
            let n = (pool.ballooned - target).min(MAX_PFNS as u64) as usize;
            let first = pool.free();
            for (i, pfn) in pfns.iter_mut().take(n).enumerate() {
                *pfn = pool.pfn(first + i as u64);
            }
            if !dev.request(Direction::Deflate, &pfns[..n]) {
                break;
            }
            pool.ballooned -= n as u64;
            check_returned(&pfns[..n], &mut returned);
            false
        } else {
            true
        };
        if done {
            break;
        }
        dev.set_actual(pool.ballooned as u32);
    }
    if returned.pages != 0 {
        console::line("GUEST BALLOON DEFLATED pages=")
            .dec(returned.pages)
            .s(" zeroed=")
            .dec(returned.zeroed)
            .end();
    }
    console::line("GUEST BALLOON actual=")
        .dec(pool.ballooned)
        .s(" free_mib=")
        .dec(pool.free_mib())
        .end();
}

fn page_ptr(pfn: u32) -> *mut u64 {
    (u64::from(pfn) * PAGE) as usize as *mut u64
}

/// Word 0 of a page about to go into the balloon (the last time the guest touches it).
fn mark(pfn: u32) {
    // SAFETY: a page of the balloon's pool (DMA-pool RAM the guest owns) not in the balloon.
    unsafe { core::ptr::write_volatile(page_ptr(pfn), MARKER ^ u64::from(pfn)) };
}

/// In ring 3: whether each page the device gave back reads as zeroes (the host dropped it),
/// then that it keeps what is written into it.
fn check_returned(pfns: &[u32], returned: &mut Returned) {
    let mut bad: Option<(u32, usize, u64, u64)> = None;
    let mut zeroed = 0;
    let mut work = || {
        for &pfn in pfns {
            let page = page_ptr(pfn);
            let was_zero = (0..WORDS).all(|i| {
                // SAFETY: a page just taken back from the balloon, the guest's again;
                // identity mapped and user-accessible.
                unsafe { page.add(i).read_volatile() == 0 }
            });
            zeroed += u64::from(was_zero);
            let value = |i: usize| (u64::from(pfn) << 20 | i as u64) ^ 0x5a5a_5a5a_0000_0000;
            for i in 0..WORDS {
                // SAFETY: see above.
                unsafe { page.add(i).write_volatile(value(i)) };
            }
            for i in 0..WORDS {
                // SAFETY: see above.
                let found = unsafe { page.add(i).read_volatile() };
                if found != value(i) && bad.is_none() {
                    bad = Some((pfn, i, value(i), found));
                }
            }
        }
        0
    };
    if user::call_reported("balloon", "checking the deflated pages", &mut work).is_none() {
        return;
    }
    returned.pages += pfns.len() as u64;
    returned.zeroed += zeroed;
    if let Some((pfn, word, wrote, found)) = bad {
        console::error("balloon: page pfn=")
            .hex(u64::from(pfn))
            .s(" word=")
            .dec(word as u64)
            .s(" reads ")
            .hex(found)
            .s(" after writing ")
            .hex(wrote)
            .end();
    }
}
