//! `migrate-dirty`: a guest for live-migration tests and benchmarks. It keeps rewriting a
//! working set of `dirty-mib` MiB (pages.rs) in ring 3, natively even on kvm-pvm hosts, and
//! checks every page before each rewrite, so a page that a migration lost or left stale is
//! caught the next time the walk reaches it. Round r walks the pages in order and, per page,
//! checks it holds C(r - 1) and writes C(r) (round 0 is the first fill). Optionally it is
//! rate-limited (`dirty-pages-per-ms=`), rounds rewrite only the first `dirty-words=` words of
//! each page (the rest keep round 0's, checked all the same), and block I/O (`mig-blk=1`, blk.rs) and network echoes
//! (`mig-net=1`, net.rs) go on between pages, checked in the same spirit.
//!
//! Output: `GUEST MIG ready ...` once the working set is written; `GUEST MIG round R ok
//! mib_s=X.Y` when round R is complete and `mig-report-ms` passed since the last such line
//! (X.Y: MiB rewritten per second since then); `GUEST MIG blk N ok pass=P` and `GUEST MIG net N
//! ok resent=R` about once a second while they make progress; a mismatch is one `GUEST ERROR
//! mig mismatch ...` line, then power-off. `mig-selftest=1` makes one word stale after round
//! SELFTEST_ROUND (`GUEST MIG selftest page=P word=W round=R`), which round R + 1 must report.

mod blk;
mod net;
mod pages;
mod params;

use super::pci;
use crate::acpi::power;
use crate::acpi::Acpi;
use crate::arch::{cpu, memory, tsc, user};
use crate::console;
use crate::drivers::virtio_blk;
use crate::drivers::virtio_net::{self, rx, NetDevices, Options};
use crate::netproto;
use crate::sync::Global;
use blk::BlkLoad;
use net::NetLoad;
use pages::{WorkingSet, PAGE_BYTES};
use params::Params;

/// The round after which `mig-selftest=1` makes one word stale, and the word.
const SELFTEST_ROUND: u64 = 3;
const SELFTEST_WORD: usize = 100;
/// Pages dirtied between two polls of the block and network loads (256 KiB).
const POLL_PAGES: u64 = 64;
/// How far a rate-limited walk may catch up after a pause (such as a migration's downtime).
const BURST_MS: u64 = 10;

/// The virtio-net devices (too big for the kernel stack); only `run` uses them.
static NET_DEVICES: Global<NetDevices> = Global::new(NetDevices::EMPTY);

/// The block and network loads that run between pages.
struct Loads<'a> {
    blk: Option<BlkLoad<'a>>,
    net: Option<NetLoad<'a>>,
}

impl Loads<'_> {
    fn poll(&mut self) -> Result<(), ()> {
        if let Some(blk) = self.blk.as_mut() {
            blk.poll()?;
        }
        if let Some(net) = self.net.as_mut() {
            net.poll()?;
        }
        Ok(())
    }
}

/// Spaces pages `1 / pages_per_ms` ms apart (in TSC ticks, 16 fractional bits).
struct Pacer {
    step: u128,
    next: u128,
    burst: u128,
}

impl Pacer {
    fn new(pages_per_ms: u64) -> Pacer {
        Pacer {
            step: (u128::from(tsc::hz()) << 16) / (u128::from(pages_per_ms) * 1000),
            next: u128::from(cpu::rdtsc()) << 16,
            burst: u128::from(tsc::from_ms(BURST_MS)) << 16,
        }
    }

    fn now() -> u128 {
        u128::from(cpu::rdtsc()) << 16
    }

    /// Waits until the next page is due, polling the loads meanwhile.
    fn wait(&mut self, loads: &mut Loads) -> Result<(), ()> {
        let mut now = Self::now();
        if now > self.next + self.burst {
            self.next = now - self.burst;
        }
        while now < self.next {
            loads.poll()?;
            core::hint::spin_loop();
            now = Self::now();
        }
        self.next += self.step;
        Ok(())
    }
}

pub fn run(acpi: &Acpi, cmdline: &[u8]) -> ! {
    let Ok(params) = Params::read(cmdline) else {
        power::poweroff(acpi)
    };
    let functions = if params.blk || params.net {
        let functions = pci::setup(acpi, cmdline);
        pci::dma_info();
        Some(functions)
    } else {
        tsc::calibrate();
        None
    };
    let seed = params.seed.unwrap_or_else(cpu::rdtsc);
    let mut blk_devices = match (&functions, params.blk) {
        (Some(functions), true) => Some(virtio_blk::probe_all(functions)),
        _ => None,
    };
    let blk = match blk_devices.as_mut() {
        None => None,
        Some(devices) => match devices.list[0].as_mut() {
            None => {
                console::error("mig: mig-blk=1 but no usable virtio-blk device").end();
                power::poweroff(acpi)
            }
            Some(dev) => match BlkLoad::new(dev, seed) {
                Some(load) => Some(load),
                None => power::poweroff(acpi),
            },
        },
    };
    let net = match (&functions, params.net) {
        (Some(functions), true) => {
            let options = Options {
                queue_pairs: Some(1),
                rx_buffer: rx::DEFAULT_RX_BUFFER,
            };
            // SAFETY: `run` is entered once, on the BSP, and never returns; nothing else uses
            // NET_DEVICES.
            let devices = unsafe { NET_DEVICES.get_mut() };
            virtio_net::probe_all(functions, &options, devices);
            match devices.list[0].as_mut() {
                Some(dev) => Some(NetLoad::new(dev)),
                None => {
                    console::error("mig: mig-net=1 but no usable virtio-net device").end();
                    power::poweroff(acpi)
                }
            }
        }
        _ => None,
    };
    let mut loads = Loads { blk, net };
    let rewritten = params.dirty_words.unwrap_or(params::PAGE_WORDS) as usize;
    let Some(set) = WorkingSet::new(params.dirty_mib, seed, rewritten) else {
        console::error("mig: dirty-mib=")
            .dec(params.dirty_mib)
            .s(" does not fit in the free RAM left (")
            .dec(memory::dma_remaining() >> 20)
            .s(" MiB)")
            .end();
        power::poweroff(acpi)
    };
    let mut fill = || {
        for page in 0..set.count {
            set.fill(page, 0);
        }
        0
    };
    if let Err(fault) = user::call(&mut fill) {
        fault.report("mig", "the first fill");
        power::poweroff(acpi)
    }
    ready(&params, &set, &loads);
    let mut outcome = Err(());
    let mut work = || {
        outcome = dirty(&set, &params, &mut loads);
        0
    };
    if let Err(fault) = user::call(&mut work) {
        fault.report("mig", "the dirtying loop");
    } else if let Ok(rounds) = outcome {
        console::line("GUEST MIG done rounds=").dec(rounds).end();
    }
    power::poweroff(acpi)
}

/// `GUEST MIG ready dirty-mib=N pages=P gpa=0x..-0x.. dirty-pages-per-ms=N|unlimited[
/// dirty-words=W] seed=0x.. blk=0|1 net=0|1[ blk_sectors=S][ mac=M]`.
fn ready(params: &Params, set: &WorkingSet, loads: &Loads) {
    let line = console::line("GUEST MIG ready dirty-mib=")
        .dec(params.dirty_mib)
        .s(" pages=")
        .dec(set.count)
        .s(" gpa=")
        .hex(set.base)
        .s("-")
        .hex(set.base + set.count * PAGE_BYTES)
        .s(" dirty-pages-per-ms=");
    let line = match params.pages_per_ms {
        Some(rate) => line.dec(rate),
        None => line.s("unlimited"),
    };
    let line = match params.dirty_words {
        Some(words) => line.s(" dirty-words=").dec(words),
        None => line,
    }
    .s(" seed=")
    .hex(set.seed())
    .flag(" blk=", loads.blk.is_some())
    .flag(" net=", loads.net.is_some());
    let line = match &loads.blk {
        Some(blk) => line.s(" blk_sectors=").dec(blk.region_sectors()),
        None => line,
    };
    match &loads.net {
        Some(net) => netproto::print_mac(line.s(" mac="), net.mac()),
        None => line,
    }
    .end();
}

/// The rounds (ring 3): Ok(rounds) after `mig-rounds`, Err after an error line.
fn dirty(set: &WorkingSet, params: &Params, loads: &mut Loads) -> Result<u64, ()> {
    let mut pacer = params.pages_per_ms.map(Pacer::new);
    let report = tsc::from_ms(params.report_ms);
    let mut last_report = cpu::rdtsc();
    let mut pages_since_report = 0;
    let mut round = 1;
    loop {
        for page in 0..set.count {
            if let Some(pacer) = pacer.as_mut() {
                pacer.wait(loads)?;
            }
            if let Err(mismatch) = set.advance(page, round) {
                report_mismatch(set, &mismatch, round);
                return Err(());
            }
            if page % POLL_PAGES == POLL_PAGES - 1 {
                loads.poll()?;
            }
        }
        pages_since_report += set.count;
        if params.selftest && round == SELFTEST_ROUND {
            let (page, word) = (set.count / 2, set.stale_word(SELFTEST_WORD));
            set.make_stale(page, word, round);
            console::line("GUEST MIG selftest page=")
                .dec(page)
                .s(" word=")
                .dec(word as u64)
                .s(" round=")
                .dec(round)
                .end();
        } else if params.selftest && round == SELFTEST_ROUND + 1 {
            console::error("mig selftest: the stale word was not detected").end();
            return Err(());
        }
        let now = cpu::rdtsc();
        let elapsed = now.wrapping_sub(last_report);
        if elapsed >= report {
            console::line("GUEST MIG round ")
                .dec(round)
                .s(" ok mib_s=")
                .tenths(tsc::mib_s_tenths(pages_since_report * PAGE_BYTES, elapsed))
                .end();
            last_report = now;
            pages_since_report = 0;
        }
        if params.rounds == Some(round) {
            return Ok(round);
        }
        round += 1;
    }
}

/// `GUEST ERROR mig mismatch page=P gpa=0x.. word=W expected=0x.. found=0x.. round=R
/// page_round=X bad_pages=N`: R is the round that last wrote the page, X what its word 0 says,
/// N how many pages of the whole set are not what they should be (counted now).
fn report_mismatch(set: &WorkingSet, mismatch: &pages::Mismatch, round: u64) {
    let written = round - 1;
    let bad_others = (0..set.count)
        .filter(|&page| page != mismatch.page)
        .filter(|&page| {
            let last = if page < mismatch.page { round } else { written };
            !set.holds(page, last)
        })
        .count() as u64;
    console::error("mig mismatch page=")
        .dec(mismatch.page)
        .s(" gpa=")
        .hex(set.base + mismatch.page * PAGE_BYTES)
        .s(" word=")
        .dec(mismatch.word as u64)
        .s(" expected=")
        .hex(mismatch.expected)
        .s(" found=")
        .hex(mismatch.found)
        .s(" round=")
        .dec(written)
        .s(" page_round=")
        .dec(mismatch.page_round)
        .s(" bad_pages=")
        .dec(bad_others + 1)
        .end();
}
