//! virtio-blk requests, parsed from a descriptor chain the guest built. Everything here is
//! guest input: framing (the header may span descriptors), lengths, sectors and addresses
//! are all checked, every address is translated through the guest memory map (nothing
//! outside it is ever touched), and a request that cannot be served becomes a status
//! (IOERR or UNSUPP) for the guest, or, when it has no status byte at all, a rejection
//! the caller logs. Nothing panics on any input (see the fuzz test below).

use std::time::Instant;

use virtio::blk::{
    S_IOERR, S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES,
    WRITE_ZEROES_FLAG_UNMAP,
};
use virtio::Desc;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub const SECTOR_SIZE: u64 = 512;
pub const SECTOR_SHIFT: u32 = 9;

/// A piece of a request's data, as a host address inside the guest RAM mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub ptr: *mut u8,
    pub len: usize,
}

/// A range of sectors named by DISCARD or WRITE_ZEROES.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorRange {
    pub sector: u64,
    pub sectors: u32,
    pub unmap: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Flush,
    GetId,
    Discard(Vec<SectorRange>),
    WriteZeroes(Vec<SectorRange>),
}

#[derive(Debug)]
pub struct Request {
    pub kind: Kind,
    pub sector: u64,
    /// For reads and GET_ID, where data goes; for writes, where it comes from.
    pub data: Vec<Segment>,
    pub data_len: usize,
    pub status: *mut u8,
    /// When it was taken off the ring (its latency counts from here; one clock reading
    /// serves every request of a pass).
    pub arrived: Instant,
}

// SAFETY: the pointers address the guest RAM mapping, which is shared memory that stays
// mapped while the request is in flight (the caller holds the memory map).
unsafe impl Send for Request {}

impl Request {
    /// Bytes of the image the request covers: its data for reads and writes, its ranges
    /// for discard and write-zeroes.
    pub fn image_bytes(&self) -> u64 {
        match &self.kind {
            Kind::Read | Kind::Write => self.data_len as u64,
            Kind::Discard(r) | Kind::WriteZeroes(r) => {
                r.iter().map(|r| u64::from(r.sectors) << SECTOR_SHIFT).sum()
            }
            Kind::Flush | Kind::GetId => 0,
        }
    }

    /// The byte after the last one the request writes (for write thresholds); None if
    /// it writes nothing (discards free space rather than allocate it).
    pub fn write_end(&self) -> Option<u64> {
        match &self.kind {
            Kind::Write => Some((self.sector << SECTOR_SHIFT) + self.data_len as u64),
            Kind::WriteZeroes(r) => r
                .iter()
                .map(|r| (r.sector << SECTOR_SHIFT) + (u64::from(r.sectors) << SECTOR_SHIFT))
                .max(),
            _ => None,
        }
    }

    /// Where in the image the request starts, in bytes.
    pub fn offset(&self) -> u64 {
        self.sector << SECTOR_SHIFT
    }

    /// True when every data byte is zero (detect-zeroes).
    pub fn data_is_zero(&self) -> bool {
        self.data.iter().all(|s| {
            // SAFETY: the segment lies inside the guest memory mapping (parse checked
            // it); the guest may change it concurrently, which only makes the answer
            // stale, as it would be for any device reading guest memory.
            let bytes = unsafe { std::slice::from_raw_parts(s.ptr, s.len) };
            bytes.iter().all(|b| *b == 0)
        })
    }
}

/// A request that cannot be served.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The guest gets this status.
    Status {
        status: *mut u8,
        code: u8,
        reason: String,
        /// The request's type, when the header was readable (for statistics).
        request_type: Option<u32>,
    },
    /// Not even a status byte to report through: the chain is completed with length 0.
    NoStatus(String),
}

// SAFETY: as for Request.
unsafe impl Send for Rejected {}

/// What the device offers, against which requests are checked.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub capacity_sectors: u64,
    pub read_only: bool,
    /// Most data segments one request may have (bounds the iovec array).
    pub max_segments: usize,
    /// Most bytes one request may move.
    pub max_bytes: usize,
    pub max_discard_segments: u32,
    pub max_write_zeroes_segments: u32,
    /// Most sectors one DISCARD / WRITE_ZEROES range may name.
    pub max_range_sectors: u32,
    pub discard: bool,
    pub write_zeroes: bool,
}

/// Appends the host segments of one descriptor's guest range to `out` (several if it
/// crosses regions).
fn translate(mem: &GuestMemoryMmap, d: &Desc, out: &mut Vec<Segment>) -> Result<(), String> {
    if d.len == 0 {
        return Ok(());
    }
    // The common case, a range inside one region: one region lookup and one bounds check
    // (the general walk below builds a slice per region and costed ~10% of a request
    // that needs no disk I/O).
    if let Some((region, start)) = mem.to_region_addr(GuestAddress(d.addr)) {
        let fits = start
            .raw_value()
            .checked_add(u64::from(d.len))
            .is_some_and(|end| end <= region.len());
        if fits {
            if let Ok(ptr) = region.get_host_address(start) {
                out.push(Segment {
                    ptr,
                    len: d.len as usize,
                });
                return Ok(());
            }
        }
    }
    for s in mem.get_slices(GuestAddress(d.addr), d.len as usize) {
        let s = s.map_err(|e| {
            format!(
                "descriptor {:#x}+{:#x} outside guest memory: {e}",
                d.addr, d.len
            )
        })?;
        if !s.is_empty() {
            out.push(Segment {
                ptr: s.ptr_guard_mut().as_ptr(),
                len: s.len(),
            });
        }
    }
    Ok(())
}

/// Copies up to `out.len()` bytes from the start of `segs`; returns how many.
fn gather(segs: &[Segment], skip: usize, out: &mut [u8]) -> usize {
    let mut skip = skip;
    let mut done = 0;
    for s in segs {
        if done == out.len() {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = (s.len - skip).min(out.len() - done);
        // SAFETY: the segment lies inside the guest memory mapping (translated above),
        // `n` stays within it, and `out` is a plain local buffer.
        unsafe { std::ptr::copy_nonoverlapping(s.ptr.add(skip), out[done..].as_mut_ptr(), n) };
        done += n;
        skip = 0;
    }
    done
}

/// The segments after the first `skip` bytes of `segs`.
fn tail(segs: &[Segment], skip: usize) -> Vec<Segment> {
    let mut skip = skip;
    let mut out = Vec::new();
    for s in segs {
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        out.push(Segment {
            // SAFETY: skip < s.len: the pointer stays inside the segment.
            ptr: unsafe { s.ptr.add(skip) },
            len: s.len - skip,
        });
        skip = 0;
    }
    out
}

fn total(segs: &[Segment]) -> usize {
    segs.iter().map(|s| s.len).sum()
}

/// The request `descs` describe, taken off the ring at `arrived`.
pub fn parse(
    mem: &GuestMemoryMmap,
    descs: &[Desc],
    limits: &Limits,
    arrived: Instant,
) -> Result<Request, Rejected> {
    // Readable descriptors come first, then writable ones (virtio 1.x, 2.7.4.2).
    let first_writable = descs.iter().position(|d| d.writable).unwrap_or(descs.len());
    let mut readable: Vec<Segment> = Vec::new();
    let mut writable: Vec<Segment> = Vec::new();
    for (i, d) in descs.iter().enumerate() {
        if d.writable != (i >= first_writable) {
            return Err(Rejected::NoStatus(
                "a readable descriptor follows a writable one".into(),
            ));
        }
        let list = if d.writable {
            &mut writable
        } else {
            &mut readable
        };
        translate(mem, d, list).map_err(Rejected::NoStatus)?;
        if readable.len() + writable.len() > limits.max_segments + 2 {
            return Err(Rejected::NoStatus(format!(
                "more than {} segments",
                limits.max_segments
            )));
        }
    }
    // The status byte is the last writable byte.
    let Some(last) = writable.last_mut() else {
        return Err(Rejected::NoStatus("no writable byte for the status".into()));
    };
    // SAFETY: last.len >= 1 (empty slices were skipped).
    let status = unsafe { last.ptr.add(last.len - 1) };
    last.len -= 1;
    if last.len == 0 {
        writable.pop();
    }
    let fail = |code: u8, reason: String| Rejected::Status {
        status,
        code,
        reason,
        request_type: None,
    };

    let mut header = [0u8; 16];
    if gather(&readable, 0, &mut header) < header.len() {
        return Err(fail(S_IOERR, "request header shorter than 16 bytes".into()));
    }
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let fail = |code: u8, reason: String| Rejected::Status {
        status,
        code,
        reason,
        request_type: Some(kind),
    };
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);
    let payload = tail(&readable, header.len());

    let in_bounds = |sector: u64, bytes: u64| -> bool {
        bytes.is_multiple_of(SECTOR_SIZE)
            && sector
                .checked_add(bytes >> SECTOR_SHIFT)
                .is_some_and(|end| end <= limits.capacity_sectors)
    };
    let check_data = |data: &[Segment], what: &str| -> Result<usize, Rejected> {
        let len = total(data);
        if len > limits.max_bytes {
            return Err(fail(
                S_IOERR,
                format!("{what} of {len} bytes exceeds {}", limits.max_bytes),
            ));
        }
        if !in_bounds(sector, len as u64) {
            return Err(fail(
                S_IOERR,
                format!(
                    "{what} of {len} bytes at sector {sector} is unaligned or past the end ({} sectors)",
                    limits.capacity_sectors
                ),
            ));
        }
        Ok(len)
    };
    let ranges = |max: u32, what: &str, allow_unmap: bool| -> Result<Vec<SectorRange>, Rejected> {
        let len = total(&payload);
        if len == 0 || !len.is_multiple_of(16) || (len / 16) as u64 > u64::from(max) {
            return Err(fail(
                S_IOERR,
                format!("{what} payload of {len} bytes (at most {max} segments)"),
            ));
        }
        let mut out = Vec::with_capacity(len / 16);
        for i in 0..len / 16 {
            let mut seg = [0u8; 16];
            gather(&payload, i * 16, &mut seg);
            let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
            let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
            let unmap = flags & WRITE_ZEROES_FLAG_UNMAP != 0;
            if flags & !WRITE_ZEROES_FLAG_UNMAP != 0 || (unmap && !allow_unmap) {
                return Err(fail(S_UNSUPP, format!("{what} flags {flags:#x}")));
            }
            if sectors > limits.max_range_sectors
                || !in_bounds(sector, u64::from(sectors) << SECTOR_SHIFT)
            {
                return Err(fail(
                    S_IOERR,
                    format!("{what} of {sectors} sectors at {sector} is out of range"),
                ));
            }
            out.push(SectorRange {
                sector,
                sectors,
                unmap,
            });
        }
        Ok(out)
    };

    let (kind, data) = match kind {
        T_IN => (Kind::Read, writable),
        T_OUT if limits.read_only => {
            return Err(fail(S_IOERR, "write to a read-only device".into()))
        }
        T_OUT => (Kind::Write, payload),
        T_FLUSH => (Kind::Flush, Vec::new()),
        T_GET_ID => (Kind::GetId, writable),
        T_DISCARD if limits.discard && !limits.read_only => (
            Kind::Discard(ranges(limits.max_discard_segments, "DISCARD", false)?),
            Vec::new(),
        ),
        T_WRITE_ZEROES if limits.write_zeroes && !limits.read_only => (
            Kind::WriteZeroes(ranges(
                limits.max_write_zeroes_segments,
                "WRITE_ZEROES",
                true,
            )?),
            Vec::new(),
        ),
        other => return Err(fail(S_UNSUPP, format!("request type {other}"))),
    };
    let data_len = match kind {
        Kind::Read => check_data(&data, "read")?,
        Kind::Write => check_data(&data, "write")?,
        _ => total(&data),
    };
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
        arrived,
    })
}

/// Writes a status byte the parser found.
///
/// # Safety
/// `status` must come from `parse` on memory that is still mapped.
pub unsafe fn write_status(status: *mut u8, code: u8) {
    // SAFETY: per the contract, a byte inside the guest RAM mapping.
    unsafe { std::ptr::write_volatile(status, code) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    const MEM: u64 = 0x10000;

    /// The parser, taking requests now.
    fn parse(m: &GuestMemoryMmap, descs: &[Desc], limits: &Limits) -> Result<Request, Rejected> {
        super::parse(m, descs, limits, Instant::now())
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            capacity_sectors: 100,
            read_only: false,
            max_segments: 16,
            max_bytes: 1 << 20,
            max_discard_segments: 4,
            max_write_zeroes_segments: 4,
            max_range_sectors: 64,
            discard: true,
            write_zeroes: true,
        }
    }

    fn header(m: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        m.write_obj(kind, GuestAddress(at)).unwrap();
        m.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        m.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    fn d(addr: u64, len: u32, writable: bool) -> Desc {
        Desc {
            addr,
            len,
            writable,
        }
    }

    #[test]
    fn read_with_split_header_and_data() {
        let m = mem();
        header(&m, 0x100, T_IN, 7);
        // Header split 10 + 6 across two descriptors; data in two pieces; status alone.
        let descs = [
            d(0x100, 10, false),
            d(0x10a, 6, false),
            d(0x1000, 512, true),
            d(0x2000, 512, true),
            d(0x3000, 1, true),
        ];
        let r = parse(&m, &descs, &limits()).unwrap();
        assert_eq!(
            (r.kind, r.sector, r.data_len, r.data.len()),
            (Kind::Read, 7, 1024, 2)
        );
        let base = m.get_host_address(GuestAddress(0)).unwrap();
        assert_eq!(r.status as usize - base as usize, 0x3000);
    }

    #[test]
    fn status_may_share_the_last_data_descriptor() {
        let m = mem();
        header(&m, 0x100, T_IN, 0);
        let r = parse(&m, &[d(0x100, 16, false), d(0x1000, 513, true)], &limits()).unwrap();
        assert_eq!(r.data_len, 512);
    }

    #[test]
    fn out_of_range_and_unaligned_requests_get_ioerr() {
        let m = mem();
        header(&m, 0x100, T_IN, 99);
        let e = parse(
            &m,
            &[
                d(0x100, 16, false),
                d(0x1000, 1024, true),
                d(0x2000, 1, true),
            ],
            &limits(),
        );
        assert!(matches!(e, Err(Rejected::Status { code: S_IOERR, .. })));
        header(&m, 0x100, T_IN, u64::MAX);
        let e = parse(
            &m,
            &[
                d(0x100, 16, false),
                d(0x1000, 512, true),
                d(0x2000, 1, true),
            ],
            &limits(),
        );
        assert!(matches!(e, Err(Rejected::Status { code: S_IOERR, .. })));
        header(&m, 0x100, T_IN, 0);
        let e = parse(
            &m,
            &[
                d(0x100, 16, false),
                d(0x1000, 100, true),
                d(0x2000, 1, true),
            ],
            &limits(),
        );
        assert!(matches!(e, Err(Rejected::Status { code: S_IOERR, .. })));
    }

    #[test]
    fn writes_to_read_only_and_unknown_types() {
        let m = mem();
        header(&m, 0x100, T_OUT, 0);
        let ro = Limits {
            read_only: true,
            ..limits()
        };
        let e = parse(
            &m,
            &[
                d(0x100, 16, false),
                d(0x1000, 512, false),
                d(0x2000, 1, true),
            ],
            &ro,
        );
        assert!(matches!(e, Err(Rejected::Status { code: S_IOERR, .. })));
        header(&m, 0x100, 77, 0);
        let e = parse(&m, &[d(0x100, 16, false), d(0x2000, 1, true)], &limits());
        assert!(matches!(e, Err(Rejected::Status { code: S_UNSUPP, .. })));
    }

    /// A range inside one region is one segment (to its very last byte); one that runs
    /// into the next region is one segment per region, each at that region's own host
    /// address; one that runs into a hole, past the last region, or starts in a hole is
    /// refused.
    #[test]
    fn descriptors_translate_per_region_and_never_past_guest_memory() {
        // Two adjacent regions, a hole, a third region.
        let m = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
            (GuestAddress(0x30000), 0x10000),
        ])
        .unwrap();
        let host = |a: u64| m.get_host_address(GuestAddress(a)).unwrap();
        header(&m, 0x100, T_IN, 0);
        let read_into = |addr: u64| {
            parse(
                &m,
                &[d(0x100, 16, false), d(addr, 512, true), d(0x2000, 1, true)],
                &limits(),
            )
        };
        let seg = |at: u64, len: usize| Segment { ptr: host(at), len };
        assert_eq!(read_into(0x10000 - 512).unwrap().data, [seg(0xfe00, 512)]);
        assert_eq!(
            read_into(0x10000 - 256).unwrap().data,
            [seg(0xff00, 256), seg(0x10000, 256)]
        );
        for outside in [0x20000 - 256, 0x40000 - 511, 0x28000] {
            assert!(
                matches!(read_into(outside), Err(Rejected::NoStatus(_))),
                "{outside:#x}"
            );
        }
    }

    #[test]
    fn chains_without_status_or_outside_memory() {
        let m = mem();
        header(&m, 0x100, T_IN, 0);
        assert!(matches!(
            parse(&m, &[d(0x100, 16, false)], &limits()),
            Err(Rejected::NoStatus(_))
        ));
        assert!(matches!(
            parse(&m, &[d(0x100, 16, false), d(MEM - 4, 512, true)], &limits()),
            Err(Rejected::NoStatus(_))
        ));
        assert!(matches!(
            parse(
                &m,
                &[
                    d(0x100, 16, false),
                    d(0x1000, 1, true),
                    d(0x2000, 16, false)
                ],
                &limits()
            ),
            Err(Rejected::NoStatus(_))
        ));
    }

    #[test]
    fn discard_and_write_zeroes_payloads() {
        let m = mem();
        header(&m, 0x100, T_DISCARD, 0);
        m.write_obj(10u64, GuestAddress(0x110)).unwrap();
        m.write_obj(8u32, GuestAddress(0x118)).unwrap();
        m.write_obj(0u32, GuestAddress(0x11c)).unwrap();
        let r = parse(&m, &[d(0x100, 32, false), d(0x2000, 1, true)], &limits()).unwrap();
        assert_eq!(
            r.kind,
            Kind::Discard(vec![SectorRange {
                sector: 10,
                sectors: 8,
                unmap: false
            }])
        );
        // DISCARD may not carry the unmap flag; WRITE_ZEROES may.
        m.write_obj(WRITE_ZEROES_FLAG_UNMAP, GuestAddress(0x11c))
            .unwrap();
        assert!(matches!(
            parse(&m, &[d(0x100, 32, false), d(0x2000, 1, true)], &limits()),
            Err(Rejected::Status { code: S_UNSUPP, .. })
        ));
        header(&m, 0x100, T_WRITE_ZEROES, 0);
        let r = parse(&m, &[d(0x100, 32, false), d(0x2000, 1, true)], &limits()).unwrap();
        assert_eq!(
            r.kind,
            Kind::WriteZeroes(vec![SectorRange {
                sector: 10,
                sectors: 8,
                unmap: true
            }])
        );
        // Past the end.
        m.write_obj(95u64, GuestAddress(0x110)).unwrap();
        assert!(matches!(
            parse(&m, &[d(0x100, 32, false), d(0x2000, 1, true)], &limits()),
            Err(Rejected::Status { code: S_IOERR, .. })
        ));
    }

    /// Random descriptor chains over a small guest memory with a guard region behind it:
    /// the parser never panics, and every pointer it hands out lies inside guest memory.
    #[test]
    fn fuzz_random_chains() {
        let m = mem();
        let base = m.get_host_address(GuestAddress(0)).unwrap() as usize;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200_000 {
            let n = (rand() % 6) as usize;
            let descs: Vec<Desc> = (0..n)
                .map(|_| {
                    let addr = match rand() % 4 {
                        0 => rand(),
                        1 => MEM - (rand() % 64),
                        _ => rand() % MEM,
                    };
                    let len = match rand() % 4 {
                        0 => rand() as u32,
                        1 => 1,
                        _ => (rand() % 4096) as u32,
                    };
                    Desc {
                        addr,
                        len,
                        writable: rand() % 2 == 0,
                    }
                })
                .collect();
            // Random request header contents.
            for off in (0..64u64).step_by(8) {
                m.write_obj(rand(), GuestAddress(0x100 + off)).unwrap();
            }
            let inside = |p: *mut u8, len: usize| {
                let p = p as usize;
                p >= base && p + len <= base + MEM as usize
            };
            match parse(&m, &descs, &limits()) {
                Ok(r) => {
                    assert!(inside(r.status, 1));
                    assert!(r.data.iter().all(|s| inside(s.ptr, s.len)));
                }
                Err(Rejected::Status { status, .. }) => assert!(inside(status, 1)),
                Err(Rejected::NoStatus(_)) => {}
            }
        }
    }
}
