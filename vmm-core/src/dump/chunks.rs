//! Guest memory as a dump reads it: the physical ranges a chunk at a time into one
//! buffer (the ELF and the kdump writers hold no more than that of it).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory of the physical `ranges`, read into `buf` a chunk at a time and given
/// to `each`.
pub(super) fn each_chunk(
    mem: &GuestMemoryMmap,
    ranges: &[(u64, u64)],
    buf: &mut [u8],
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    for &(start, len) in ranges {
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u64);
            let chunk = &mut buf[..n as usize];
            // Blocks are RAM; one the guest ejected meanwhile reads as zeroes.
            if mem.read_slice(chunk, GuestAddress(start + at)).is_err() {
                chunk.fill(0);
            }
            each(chunk)?;
            at += n;
        }
    }
    Ok(())
}
