//! Moving frames between guest buffers and host memory. Everything here is guest input:
//! descriptor chains are checked (direction, lengths), every address goes through the
//! guest memory map (nothing outside it is ever touched), and a chain that cannot be used
//! is an error the caller counts, never a panic.

use virtio::{ChainError, Desc};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The virtio-net header of VERSION_1 devices (with num_buffers).
pub const HDR_LEN: usize = 12;
/// Where num_buffers sits in the header.
const NUM_BUFFERS_AT: usize = 10;
/// The largest frame: 64 KiB of payload (a TSO segment) plus Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65_562;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{0}")]
    Chain(#[from] ChainError),
    #[error("a transmit chain has a device-writable descriptor")]
    WritableInTx,
    #[error("a receive chain has a device-readable descriptor")]
    ReadableInRx,
    #[error("a transmit chain of {0} bytes has no room for a frame after the header")]
    TooShort(usize),
    #[error("a transmit chain of {0} bytes is longer than any frame")]
    TooLong(usize),
    #[error("descriptor {addr:#x}+{len:#x} lies outside guest memory")]
    Outside { addr: u64, len: u32 },
    #[error("a control chain is shorter than its command")]
    ShortCommand,
    #[error("a control chain has no byte for the acknowledgement")]
    NoAck,
}

/// The bytes of a transmit chain: the virtio-net header and the frame.
pub fn gather(mem: &GuestMemoryMmap, descs: &[Desc]) -> Result<Vec<u8>, Malformed> {
    if descs.iter().any(|d| d.writable) {
        return Err(Malformed::WritableInTx);
    }
    let total: usize = descs.iter().map(|d| d.len as usize).sum();
    if total <= HDR_LEN {
        return Err(Malformed::TooShort(total));
    }
    if total > HDR_LEN + MAX_FRAME {
        return Err(Malformed::TooLong(total));
    }
    read_all(mem, descs, total)
}

/// The bytes of `descs` (whose lengths add up to `total`), in order.
fn read_all(mem: &GuestMemoryMmap, descs: &[Desc], total: usize) -> Result<Vec<u8>, Malformed> {
    let mut out = vec![0u8; total];
    let mut at = 0;
    for d in descs {
        let n = d.len as usize;
        mem.read_slice(&mut out[at..at + n], GuestAddress(d.addr))
            .map_err(|_| Malformed::Outside {
                addr: d.addr,
                len: d.len,
            })?;
        at += n;
    }
    Ok(out)
}

/// Room for received data in a receive chain (all its descriptors must be writable).
pub fn room(descs: &[Desc]) -> Result<usize, Malformed> {
    if descs.iter().any(|d| !d.writable) {
        return Err(Malformed::ReadableInRx);
    }
    Ok(descs.iter().map(|d| d.len as usize).sum())
}

/// Writes the concatenation of `parts` into a receive chain from its start; returns how
/// many bytes went in.
pub fn scatter(mem: &GuestMemoryMmap, descs: &[Desc], parts: &[&[u8]]) -> Result<usize, Malformed> {
    let mut parts = parts.iter().copied().filter(|p| !p.is_empty());
    let mut part = parts.next().unwrap_or_default();
    let mut done = 0;
    for d in descs {
        if part.is_empty() {
            break;
        }
        if !d.writable {
            return Err(Malformed::ReadableInRx);
        }
        let mut addr = d.addr;
        let mut room = d.len as usize;
        while room > 0 && !part.is_empty() {
            let n = room.min(part.len());
            mem.write_slice(&part[..n], GuestAddress(addr))
                .map_err(|_| Malformed::Outside {
                    addr: d.addr,
                    len: d.len,
                })?;
            (addr, room, done) = (addr + n as u64, room - n, done + n);
            part = &part[n..];
            if part.is_empty() {
                part = parts.next().unwrap_or_default();
            }
        }
    }
    Ok(done)
}

/// A received frame's virtio-net header with `num_buffers` set (the frame itself stays
/// where it was read, and is written to the guest after this header).
pub fn header_with_buffers(frame: &[u8], num_buffers: u16) -> [u8; HDR_LEN] {
    let mut header = [0u8; HDR_LEN];
    let n = frame.len().min(HDR_LEN);
    header[..n].copy_from_slice(&frame[..n]);
    header[NUM_BUFFERS_AT..].copy_from_slice(&num_buffers.to_le_bytes());
    header
}

/// The self-announcement a NIC sends after a migration (QEMU's too): a broadcast RARP
/// "request reverse" frame from `mac` about `mac`, no IPv4 addresses, padded to the
/// shortest Ethernet frame (60 bytes without the FCS).
pub fn announcement(mac: [u8; 6]) -> [u8; 60] {
    const ETHERTYPE_RARP: u16 = 0x8035;
    const HTYPE_ETHERNET: u16 = 1;
    const PTYPE_IPV4: u16 = 0x0800;
    const OP_REQUEST_REVERSE: u16 = 3;
    let mut f = [0u8; 60];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    f[14..16].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
    f[16..18].copy_from_slice(&PTYPE_IPV4.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&OP_REQUEST_REVERSE.to_be_bytes());
    // Sender hardware address, sender IPv4 0.0.0.0, target hardware address, target
    // IPv4 0.0.0.0, then padding: zeroes already.
    f[22..28].copy_from_slice(&mac);
    f[32..38].copy_from_slice(&mac);
    f
}

/// A control command: (class, command, data) from the readable part, and where the
/// acknowledgement byte goes (the last writable byte).
pub fn control(mem: &GuestMemoryMmap, descs: &[Desc]) -> Result<(u8, u8, Vec<u8>, u64), Malformed> {
    let first_writable = descs.iter().position(|d| d.writable).unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(first_writable);
    if writable.iter().any(|d| !d.writable) {
        return Err(Malformed::ReadableInRx);
    }
    let ack = writable
        .iter()
        .rev()
        .find(|d| d.len > 0)
        .map(|d| d.addr + u64::from(d.len) - 1)
        .ok_or(Malformed::NoAck)?;
    let total: usize = readable.iter().map(|d| d.len as usize).sum();
    if total < 2 {
        return Err(Malformed::ShortCommand);
    }
    if total > 4 + 2 * (4 + 6 * 1024) {
        return Err(Malformed::TooLong(total));
    }
    let bytes = read_all(mem, readable, total)?;
    Ok((bytes[0], bytes[1], bytes[2..].to_vec(), ack))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 0x10000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), SIZE as usize)]).unwrap()
    }

    #[test]
    fn round_trip() {
        let mem = memory();
        let frame: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        let mut with_hdr = vec![0u8; HDR_LEN];
        with_hdr.extend_from_slice(&frame);
        let rx = [
            Desc {
                addr: 0x1000,
                len: 100,
                writable: true,
            },
            Desc {
                addr: 0x2000,
                len: 500,
                writable: true,
            },
        ];
        assert_eq!(room(&rx), Ok(600));
        assert_eq!(scatter(&mem, &rx, &[&with_hdr]), Ok(212));
        let tx = [
            Desc {
                addr: 0x1000,
                len: 100,
                writable: false,
            },
            Desc {
                addr: 0x2000,
                len: 112,
                writable: false,
            },
        ];
        assert_eq!(gather(&mem, &tx), Ok(with_hdr.clone()));
        // In parts, as a received frame is written (its header apart), across descriptors
        // that split both parts: the same bytes.
        let rx = [0x3000, 0x3100, 0x3200].map(|addr| Desc {
            addr,
            len: 7,
            writable: true,
        });
        let tail = Desc {
            addr: 0x4000,
            len: 300,
            writable: true,
        };
        let rx = [&rx[..], &[tail]].concat();
        let parts = [&with_hdr[..HDR_LEN], &with_hdr[HDR_LEN..]];
        assert_eq!(scatter(&mem, &rx, &parts), Ok(212));
        let tx: Vec<Desc> = rx
            .iter()
            .map(|d| Desc {
                len: if d.len == 300 { 191 } else { d.len },
                writable: false,
                ..*d
            })
            .collect();
        assert_eq!(gather(&mem, &tx), Ok(with_hdr.clone()));
        let header = header_with_buffers(&with_hdr, 0x0302);
        assert_eq!(&header[..10], &with_hdr[..10]);
        assert_eq!(&header[10..], &[2, 3]);
    }

    #[test]
    fn bad_chains_are_errors() {
        let mem = memory();
        let r = |addr, len| Desc {
            addr,
            len,
            writable: false,
        };
        let w = |addr, len| Desc {
            addr,
            len,
            writable: true,
        };
        assert_eq!(gather(&mem, &[w(0, 100)]), Err(Malformed::WritableInTx));
        assert_eq!(gather(&mem, &[r(0, 12)]), Err(Malformed::TooShort(12)));
        assert!(matches!(
            gather(&mem, &[r(0, 70_000)]),
            Err(Malformed::TooLong(_))
        ));
        assert!(matches!(
            gather(&mem, &[r(SIZE - 10, 100)]),
            Err(Malformed::Outside { .. })
        ));
        assert_eq!(room(&[r(0, 10)]), Err(Malformed::ReadableInRx));
        assert!(matches!(
            scatter(&mem, &[w(SIZE - 4, 100)], &[&[1; 50]]),
            Err(Malformed::Outside { .. })
        ));
        assert_eq!(control(&mem, &[r(0, 2)]), Err(Malformed::NoAck));
        assert_eq!(
            control(&mem, &[r(0, 1), w(0x100, 1)]),
            Err(Malformed::ShortCommand)
        );
        assert_eq!(
            control(&mem, &[r(0, 2), w(0x100, 1), r(0x200, 4)]),
            Err(Malformed::ReadableInRx)
        );
    }

    /// Random chains over a small memory: never a panic, never a touch outside it
    /// (vm-memory refuses those; a write outside would fault the test process).
    #[test]
    fn fuzz_random_chains() {
        let mem = memory();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let n = (next() % 6) as usize;
            let descs: Vec<Desc> = (0..n)
                .map(|_| {
                    let v = next();
                    let addr = match v % 4 {
                        0 => v >> 16,
                        1 => SIZE - (v >> 40) % 64,
                        _ => (v >> 8) % SIZE,
                    };
                    Desc {
                        addr,
                        len: match (v >> 3) % 4 {
                            0 => (v >> 20) as u32,
                            _ => ((v >> 24) % 2048) as u32,
                        },
                        writable: v & 0x100 != 0,
                    }
                })
                .collect();
            let _ = gather(&mem, &descs);
            let _ = room(&descs);
            let _ = scatter(&mem, &descs, &[&[0xa5; 14], &[0x5a; 1600]]);
            let _ = control(&mem, &descs);
        }
    }
}
