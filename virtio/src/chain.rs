//! Descriptor chains, read from guest memory and checked. The guest wrote every byte of
//! the descriptor table: an index, an address, a length or an indirect table may be
//! anything, so a chain is read whole before any of it is used, and a chain that breaks a
//! rule is an error for the device to report or count, never a panic or a silent cut.
//!
//! virtio-queue takes heads from the available ring (`pop_chain`); the walk through the
//! table is ours, because virtio-queue's iterator ends a broken chain early without
//! saying so. The same walk serves heads a device has to read again on its own (requests
//! a previous backend had in flight, `read_chain`).

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Most descriptors one chain may have (an indirect table may be longer than the ring).
pub const MAX_CHAIN: usize = 1024;

const DESC_BYTES: u64 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A descriptor as the guest wrote it (the address is not yet known to be in memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (the guest's buffer for the device to fill).
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("chain {head}: index {index} is beyond its table of {size}")]
    OutOfTable { head: u16, index: u64, size: u64 },
    #[error("chain {head}: descriptor {index} at {addr:#x} is outside guest memory")]
    Unreadable { head: u16, index: u64, addr: u64 },
    #[error("chain {head}: more than {MAX_CHAIN} descriptors (a loop?)")]
    TooLong { head: u16 },
    #[error("chain {head}: more than 4 GiB of buffers")]
    TooManyBytes { head: u16 },
    #[error("chain {head}: an indirect descriptor that is not alone, nested, or of length {len}")]
    BadIndirect { head: u16, len: u32 },
}

/// The chain that starts at `head` in the descriptor table at `table` of a ring of `size`
/// entries, indirect table followed.
pub fn read_chain<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> Result<Vec<Desc>, ChainError> {
    let (mut table, mut count, mut index) = (table, u64::from(size), u64::from(head));
    let mut out = Vec::new();
    let mut indirect = false;
    let mut bytes = 0u64;
    loop {
        if index >= count {
            return Err(ChainError::OutOfTable {
                head,
                index,
                size: count,
            });
        }
        if out.len() >= MAX_CHAIN {
            return Err(ChainError::TooLong { head });
        }
        let at = table
            .0
            .checked_add(index * DESC_BYTES)
            .ok_or(ChainError::Unreadable {
                head,
                index,
                addr: table.0,
            })?;
        let mut raw = [0u8; DESC_BYTES as usize];
        mem.read_slice(&mut raw, GuestAddress(at))
            .map_err(|_| ChainError::Unreadable {
                head,
                index,
                addr: at,
            })?;
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = raw;
        let addr = u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]);
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let flags = u16::from_le_bytes([f0, f1]);
        let next = u16::from_le_bytes([n0, n1]);
        if flags & F_INDIRECT != 0 {
            // An indirect table stands alone in its chain, once (virtio 1.2, 2.7.5.3.1).
            if indirect || !out.is_empty() || len == 0 || u64::from(len) % DESC_BYTES != 0 {
                return Err(ChainError::BadIndirect { head, len });
            }
            indirect = true;
            (table, count, index) = (GuestAddress(addr), u64::from(len) / DESC_BYTES, 0);
            continue;
        }
        bytes += u64::from(len);
        if bytes > u64::from(u32::MAX) {
            return Err(ChainError::TooManyBytes { head });
        }
        out.push(Desc {
            addr,
            len,
            writable: flags & F_WRITE != 0,
        });
        if flags & F_NEXT == 0 {
            return Ok(out);
        }
        index = u64::from(next);
    }
}

/// Takes the next chain the driver made available: its head, and its descriptors or why
/// they cannot be used (the head is taken either way, so the device completes it). None
/// when the ring has nothing new, or its available index cannot be read.
pub fn pop_chain<M: GuestMemoryBackend>(
    queue: &mut Queue,
    mem: &M,
) -> Option<(u16, Result<Vec<Desc>, ChainError>)> {
    let head = queue.pop_descriptor_chain(mem)?.head_index();
    Some((
        head,
        read_chain(mem, GuestAddress(queue.desc_table()), queue.size(), head),
    ))
}

#[cfg(test)]
mod tests {

    use super::*;
    use vm_memory::GuestMemoryMmap;

    const TABLE: u64 = 0x1000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap, table: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(table + 16 * i)).unwrap();
    }

    fn read(mem: &GuestMemoryMmap, head: u16) -> Result<Vec<Desc>, ChainError> {
        read_chain(mem, GuestAddress(TABLE), 16, head)
    }

    fn desc(addr: u64, len: u32, writable: bool) -> Desc {
        Desc {
            addr,
            len,
            writable,
        }
    }

    #[test]
    fn chains_are_read_from_the_table_and_from_indirect_tables() {
        let mem = memory();
        put(&mem, TABLE, 3, 0x4000, 16, F_NEXT, 7);
        put(&mem, TABLE, 7, 0x5000, 512, F_NEXT | F_WRITE, 2);
        put(&mem, TABLE, 2, 0x6000, 1, F_WRITE, 0);
        let chain = read(&mem, 3).unwrap();
        assert_eq!(
            chain,
            vec![
                desc(0x4000, 16, false),
                desc(0x5000, 512, true),
                desc(0x6000, 1, true)
            ]
        );
        put(&mem, TABLE, 5, 0x8000, 48, F_INDIRECT, 0);
        put(&mem, 0x8000, 0, 0x4000, 16, F_NEXT, 1);
        put(&mem, 0x8000, 1, 0x5000, 512, F_NEXT | F_WRITE, 2);
        put(&mem, 0x8000, 2, 0x6000, 1, F_WRITE, 0);
        assert_eq!(read(&mem, 5).unwrap(), chain);
    }

    #[test]
    fn broken_chains_are_errors_not_cut_short() {
        let mem = memory();
        // A loop: 1 -> 2 -> 1 ...
        put(&mem, TABLE, 1, 0x4000, 16, F_NEXT, 2);
        put(&mem, TABLE, 2, 0x4000, 16, F_NEXT, 1);
        assert_eq!(read(&mem, 1), Err(ChainError::TooLong { head: 1 }));
        // Next beyond the table, a head beyond it, a table outside memory.
        put(&mem, TABLE, 4, 0x4000, 16, F_NEXT, 40);
        assert!(matches!(read(&mem, 4), Err(ChainError::OutOfTable { .. })));
        assert!(matches!(read(&mem, 16), Err(ChainError::OutOfTable { .. })));
        put(&mem, TABLE, 6, 0xffff_0000, 32, F_INDIRECT, 0);
        assert!(matches!(read(&mem, 6), Err(ChainError::Unreadable { .. })));
        // An indirect table of odd length, one nested in another, one after a descriptor.
        put(&mem, TABLE, 8, 0x8000, 20, F_INDIRECT, 0);
        assert!(matches!(read(&mem, 8), Err(ChainError::BadIndirect { .. })));
        put(&mem, TABLE, 9, 0x9000, 16, F_INDIRECT, 0);
        put(&mem, 0x9000, 0, 0x8000, 16, F_INDIRECT, 0);
        assert!(matches!(read(&mem, 9), Err(ChainError::BadIndirect { .. })));
        put(&mem, TABLE, 10, 0x4000, 16, F_NEXT, 11);
        put(&mem, TABLE, 11, 0x8000, 16, F_INDIRECT, 0);
        assert!(matches!(
            read(&mem, 10),
            Err(ChainError::BadIndirect { .. })
        ));
        // More than 4 GiB in one chain.
        put(&mem, TABLE, 12, 0x4000, u32::MAX, F_NEXT, 13);
        put(&mem, TABLE, 13, 0x4000, 1, 0, 0);
        assert_eq!(read(&mem, 12), Err(ChainError::TooManyBytes { head: 12 }));
    }

    #[test]
    fn popped_heads_come_with_their_chains_or_their_errors() {
        let mem = memory();
        let (avail, used) = (0x2000, 0x3000);
        let mut q = Queue::new(16).unwrap();
        q.try_set_desc_table_address(GuestAddress(TABLE)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(avail)).unwrap();
        q.try_set_used_ring_address(GuestAddress(used)).unwrap();
        q.set_ready(true);
        put(&mem, TABLE, 0, 0x4000, 16, 0, 0);
        put(&mem, TABLE, 1, 0x4000, 16, F_NEXT, 99);
        mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(avail + 6)).unwrap();
        mem.write_obj(2u16, GuestAddress(avail + 2)).unwrap();
        let (head, chain) = pop_chain(&mut q, &mem).unwrap();
        assert_eq!((head, chain.unwrap()), (0, vec![desc(0x4000, 16, false)]));
        let (head, chain) = pop_chain(&mut q, &mem).unwrap();
        assert_eq!(head, 1);
        assert!(chain.is_err());
        assert!(pop_chain(&mut q, &mem).is_none());
    }
}
