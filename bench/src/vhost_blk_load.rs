//! A load generator that plays the guest for a vhost-user-blk backend: it shares its
//! own memfd as "guest memory", lays out one split virtqueue per queue in it, and keeps
//! a fixed number of requests in flight, so backends (block-daemon, qemu-storage-daemon)
//! can be compared under exactly the same driver. Prints one line of results: only
//! requests the backend completed with VIRTIO_BLK_S_OK count as I/Os; the others are
//! counted in `errors=` (and the exit status is 1). With `--backend-pid`, also the CPU time
//! (user + system, all threads) that process used during the measured interval.
//!
//! It drives the ring as a Linux guest does: EVENT_IDX when the backend offers it, a kick
//! only when the backend asked for one, an interrupt asked for only before it sleeps.
//! It sleeps on the call fd when it waits, unless `--spin-us` lets it watch the used ring
//! first (a vCPU that KVM's halt polling keeps awake).

use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio::blk;
use virtio::features::{EVENT_IDX, VERSION_1};
use vmm_sys_util::eventfd::EventFd;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const QUEUE_SIZE: u16 = 256;
const VRING_USED_F_NO_NOTIFY: u16 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Rw {
    Randread,
    Randwrite,
    Read,
    Write,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, value_enum)]
    rw: Rw,
    #[arg(long, default_value_t = 4096)]
    bs: usize,
    #[arg(long, default_value_t = 1)]
    qd: usize,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// The backend's process: its CPU time over the measured interval is reported.
    #[arg(long)]
    backend_pid: Option<u32>,
    /// Microseconds to watch the used ring before sleeping on the call fd.
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// Do not negotiate VIRTIO_F_EVENT_IDX even if the backend offers it.
    #[arg(long)]
    no_event_idx: bool,
}

/// User + system CPU seconds `pid` has used, all its threads (live and ended) together:
/// fields 14 and 15 of /proc/PID/stat, in clock ticks.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/PID/stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("/proc/PID/stat too short")?
            .parse::<u64>()
            .context("/proc/PID/stat: not a number")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok((tick(11)? + tick(12)?) as f64 / hz as f64)
}

/// Guest memory: a memfd mapped here and shared with the backend.
struct Memory {
    base: *mut u8,
    size: usize,
    fd: std::fs::File,
}

impl Memory {
    fn new(size: usize) -> anyhow::Result<Memory> {
        // SAFETY: plain syscalls; results checked.
        let fd = unsafe { libc::memfd_create(c"vhost-blk-load".as_ptr(), libc::MFD_CLOEXEC) };
        anyhow::ensure!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: fd is ours.
        let fd = unsafe { std::fs::File::from_raw_fd(fd) };
        fd.set_len(size as u64)?;
        // SAFETY: a fresh shared mapping of our own memfd.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        anyhow::ensure!(
            base != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Ok(Memory {
            base: base.cast(),
            size,
            fd,
        })
    }

    fn ptr<T>(&self, gpa: u64) -> *mut T {
        assert!((gpa as usize) < self.size);
        // SAFETY: inside the mapping (checked).
        unsafe { self.base.add(gpa as usize).cast() }
    }

    fn write<T: Copy>(&self, gpa: u64, v: T) {
        // SAFETY: inside our mapping; volatile because the backend reads it.
        unsafe { std::ptr::write_volatile(self.ptr(gpa), v) }
    }

    fn read<T: Copy>(&self, gpa: u64) -> T {
        // SAFETY: as above.
        unsafe { std::ptr::read_volatile(self.ptr(gpa)) }
    }
}

/// One split virtqueue laid out in `Memory` at `base`.
struct Queue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_seen: u16,
    /// VIRTIO_F_EVENT_IDX was negotiated: kicks and interrupts as the other side asks.
    event_idx: bool,
    /// `avail_idx` when the driver last decided whether to kick.
    kick_checked_at: u16,
}

impl Queue {
    fn new(base: u64, size: u16) -> Queue {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4096);
        Queue {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
            event_idx: false,
            kick_checked_at: 0,
        }
    }

    fn set_desc(&self, m: &Memory, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * u64::from(i);
        m.write(d, addr);
        m.write(d + 8, len);
        m.write(d + 12, flags);
        m.write(d + 14, next);
    }

    fn push(&mut self, m: &Memory, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        m.write(slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::Release);
        m.write(self.avail + 2, self.avail_idx);
    }

    /// Whether the requests made available since the last check need a kick: as a Linux
    /// guest decides, from `avail_event` with EVENT_IDX, else from the used ring's
    /// NO_NOTIFY flag (a backend that is watching its ring asks for no kick).
    fn needs_kick(&mut self, m: &Memory) -> bool {
        // The avail index is published before the backend's wish is read.
        fence(Ordering::SeqCst);
        let old = self.kick_checked_at;
        let new = self.avail_idx;
        self.kick_checked_at = new;
        if self.event_idx {
            let event: u16 = m.read(self.used + 4 + 8 * u64::from(self.size));
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            m.read::<u16>(self.used) & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    /// Before sleeping: with EVENT_IDX, asks for an interrupt at the next used entry (a
    /// busy driver leaves `used_event` behind, so the backend does not call it) and says
    /// whether one came in meanwhile, so the driver must not sleep.
    fn arm_interrupt(&mut self, m: &Memory) -> bool {
        if !self.event_idx {
            return false;
        }
        m.write(self.avail + 4 + 2 * u64::from(self.size), self.used_seen);
        fence(Ordering::SeqCst);
        m.read::<u16>(self.used + 2) != self.used_seen
    }

    /// Heads of newly used chains.
    fn pop_used(&mut self, m: &Memory, out: &mut Vec<u16>) {
        let idx: u16 = m.read(self.used + 2);
        fence(Ordering::Acquire);
        while self.used_seen != idx {
            let elem = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            out.push(m.read::<u32>(elem) as u16);
            self.used_seen = self.used_seen.wrapping_add(1);
        }
    }
}

/// Connects to the backend's socket. A backend that has bound it but not yet listened
/// refuses the connection for a moment: tried again for up to 2 s.
fn connect(path: &std::path::Path) -> anyhow::Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match UnixStream::connect(path) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return r.with_context(|| format!("{}", path.display())),
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.qd >= 1 && args.qd <= usize::from(QUEUE_SIZE) / 3,
        "--qd 1..={}",
        QUEUE_SIZE / 3
    );
    anyhow::ensure!(
        args.bs.is_multiple_of(512) && args.bs > 0,
        "--bs must be a multiple of 512"
    );
    let buffers = args.qd * args.bs;
    let mem_size = (1 << 20) + buffers.next_multiple_of(4096) + (1 << 20);
    let mem = Memory::new(mem_size)?;
    let stream = connect(&args.socket)?;
    let mut fe = Frontend::from_stream(stream, 1);
    fe.set_owner()?;
    let features = fe.get_features()?;
    anyhow::ensure!(
        features & VERSION_1 != 0,
        "backend lacks VIRTIO_F_VERSION_1"
    );
    let mut proto = VhostUserProtocolFeatures::empty();
    if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        proto = fe.get_protocol_features()?
            & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK);
        fe.set_protocol_features(proto)?;
    }
    let capacity = if proto.contains(VhostUserProtocolFeatures::CONFIG) {
        let (_, cfg) = fe.get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0; 8])?;
        u64::from_le_bytes(cfg[..8].try_into()?)
    } else {
        bail!("backend does not report its capacity (no CONFIG protocol feature)");
    };
    let blocks = capacity * 512 / args.bs as u64;
    anyhow::ensure!(blocks > 0, "disk smaller than one block");
    let event_idx = !args.no_event_idx && features & EVENT_IDX != 0;
    let wanted = VERSION_1 | if event_idx { EVENT_IDX } else { 0 };
    fe.set_features(wanted | (features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()))?;
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: mem_size as u64,
        userspace_addr: mem.base as u64,
        mmap_offset: 0,
        mmap_handle: mem.fd.as_raw_fd(),
    }])?;
    let mut q = Queue::new(0, QUEUE_SIZE);
    q.event_idx = event_idx;
    let kick = EventFd::new(libc::EFD_NONBLOCK)?;
    let call = EventFd::new(libc::EFD_NONBLOCK)?;
    fe.set_vring_num(0, QUEUE_SIZE)?;
    fe.set_vring_addr(
        0,
        &VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: mem.base as u64 + q.desc,
            used_ring_addr: mem.base as u64 + q.used,
            avail_ring_addr: mem.base as u64 + q.avail,
            log_addr: None,
        },
    )?;
    fe.set_vring_base(0, 0)?;
    fe.set_vring_call(0, &call)?;
    fe.set_vring_kick(0, &kick)?;
    if !proto.is_empty() {
        fe.set_vring_enable(0, true)?;
    }
    // Request slot i: descriptors 3i (header), 3i+1 (data), 3i+2 (status).
    let headers = 0x10_0000u64;
    let statuses = headers + 16 * args.qd as u64;
    let data = (statuses + args.qd as u64).next_multiple_of(4096);
    let write = matches!(args.rw, Rw::Randwrite | Rw::Write);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_seq = 0u64;
    let mut pick = |rng: &mut u64| -> u64 {
        match args.rw {
            Rw::Randread | Rw::Randwrite => {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                *rng % blocks
            }
            Rw::Read | Rw::Write => {
                let b = next_seq % blocks;
                next_seq += 1;
                b
            }
        }
    };
    let issue = |q: &mut Queue, slot: u16, block: u64| {
        let h = headers + 16 * u64::from(slot);
        mem.write(h, if write { blk::T_OUT } else { blk::T_IN });
        mem.write(h + 4, 0u32);
        mem.write(h + 8, block * (args.bs as u64 / 512));
        let d0 = 3 * slot;
        q.set_desc(&mem, d0, h, 16, DESC_F_NEXT, d0 + 1);
        let data_flags = DESC_F_NEXT | if write { 0 } else { DESC_F_WRITE };
        q.set_desc(
            &mem,
            d0 + 1,
            data + u64::from(slot) * args.bs as u64,
            args.bs as u32,
            data_flags,
            d0 + 2,
        );
        q.set_desc(&mem, d0 + 2, statuses + u64::from(slot), 1, DESC_F_WRITE, 0);
        mem.write(statuses + u64::from(slot), 0xffu8);
        q.push(&mem, d0);
    };
    for slot in 0..args.qd as u16 {
        let b = pick(&mut rng);
        issue(&mut q, slot, b);
    }
    let cpu_before = args.backend_pid.map(cpu_seconds).transpose()?;
    q.kick_checked_at = q.avail_idx;
    kick.write(1)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut done = 0u64;
    let mut errors = 0u64;
    let mut heads = Vec::new();
    while Instant::now() < deadline {
        heads.clear();
        q.pop_used(&mem, &mut heads);
        if heads.is_empty() && args.spin_us > 0 {
            let until = Instant::now() + Duration::from_micros(args.spin_us);
            while heads.is_empty() && Instant::now() < until {
                std::hint::spin_loop();
                q.pop_used(&mem, &mut heads);
            }
        }
        if heads.is_empty() {
            if q.arm_interrupt(&mem) {
                continue;
            }
            let mut pfd = libc::pollfd {
                fd: call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid fd, 100 ms at most.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            let _ = call.read();
            continue;
        }
        for &head in &heads {
            let slot = head / 3;
            if mem.read::<u8>(statuses + u64::from(slot)) == blk::S_OK {
                done += 1;
            } else {
                errors += 1;
            }
            let b = pick(&mut rng);
            issue(&mut q, slot, b);
        }
        if q.needs_kick(&mem) {
            kick.write(1)?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = match (args.backend_pid, cpu_before) {
        (Some(pid), Some(before)) => format!(" backend_cpu_s={:.3}", cpu_seconds(pid)? - before),
        _ => String::new(),
    };
    let iops = done as f64 / secs;
    println!(
        "rw={:?} bs={} qd={} iops={:.0} mib_s={:.1} ios={done} errors={errors} seconds={secs:.3}{cpu}",
        args.rw,
        args.bs,
        args.qd,
        iops,
        iops * args.bs as f64 / (1 << 20) as f64
    );
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("vhost-blk-load: error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u16 = 8;

    fn ring(event_idx: bool) -> (Memory, Queue) {
        let mem = Memory::new(3 * 4096).unwrap();
        let mut q = Queue::new(0, SIZE);
        q.event_idx = event_idx;
        (mem, q)
    }

    fn publish(q: &mut Queue, mem: &Memory, n: u16) {
        for head in 0..n {
            q.push(mem, head);
        }
    }

    #[test]
    fn with_event_idx_the_driver_kicks_only_when_the_backend_asked_for_these_requests() {
        let (mem, mut q) = ring(true);
        let avail_event = q.used + 4 + 8 * u64::from(SIZE);
        // The backend waits for request 0 (avail_event 0): the first batch kicks.
        publish(&mut q, &mem, 2);
        assert!(
            q.needs_kick(&mem),
            "a backend waiting at avail index 0 was not kicked"
        );
        // It is busy and still says 0: requests 2 and 3 need no kick.
        publish(&mut q, &mem, 2);
        assert!(!q.needs_kick(&mem), "a busy backend was kicked");
        // It went to sleep asking for a kick at index 4: request 4 kicks.
        mem.write(avail_event, 4u16);
        publish(&mut q, &mem, 1);
        assert!(
            q.needs_kick(&mem),
            "a backend asleep at avail index 4 was not kicked"
        );
    }

    #[test]
    fn without_event_idx_the_driver_kicks_unless_the_used_ring_says_no_notify() {
        let (mem, mut q) = ring(false);
        publish(&mut q, &mem, 1);
        assert!(q.needs_kick(&mem));
        mem.write(q.used, VRING_USED_F_NO_NOTIFY);
        publish(&mut q, &mem, 1);
        assert!(!q.needs_kick(&mem), "NO_NOTIFY was not honoured");
    }

    #[test]
    fn arming_asks_for_the_next_used_entry_and_sees_one_that_came_meanwhile() {
        let (mem, mut q) = ring(true);
        let used_event = q.avail + 4 + 2 * u64::from(SIZE);
        q.used_seen = 5;
        mem.write(q.used + 2, 5u16);
        assert!(
            !q.arm_interrupt(&mem),
            "nothing new, yet the driver would not sleep"
        );
        assert_eq!(mem.read::<u16>(used_event), 5);
        mem.write(q.used + 2, 6u16);
        assert!(
            q.arm_interrupt(&mem),
            "a completion that came in would be slept through"
        );
        // Without EVENT_IDX the backend interrupts every time: nothing to arm.
        let (mem, mut q) = ring(false);
        mem.write(q.used + 2, 1u16);
        assert!(!q.arm_interrupt(&mem));
        assert_eq!(mem.read::<u16>(q.avail + 4 + 2 * u64::from(SIZE)), 0);
    }
}
