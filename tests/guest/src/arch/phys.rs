//! Access to physical memory through the boot identity map (the first 4 GiB). Everything the
//! VMM hands us by physical address (start_info, ACPI tables, MMIO registers) goes through the
//! range check here, so a bad address becomes an error line rather than a page fault.

/// The boot page tables identity-map [0, 4 GiB) (see boot.rs).
pub const MAPPED_END: u64 = 1 << 32;

/// Whether `[addr, addr + len)` is mapped and does not start at address 0 (a null pointer in
/// Rust's eyes; nothing the VMM legitimately points us at lives there).
pub fn range_ok(addr: u64, len: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|end| end <= MAPPED_END)
}

/// A read-only view of firmware memory (ACPI tables, start_info data) that is never written
/// while we look at it.
///
/// # Safety
/// `range_ok(addr, len)` must hold and the memory must not change while the slice is used.
pub unsafe fn slice(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: the range is identity mapped (range_ok) and the caller guarantees it is stable.
    unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len) }
}

/// Reads a plain (possibly unaligned) value from RAM.
///
/// # Safety
/// The range must satisfy `range_ok`.
pub unsafe fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: the caller guarantees `range_ok` (this function's contract): the range is
    // identity mapped; an unaligned read of a Copy value is fine for any bytes.
    unsafe { core::ptr::read_unaligned(addr as usize as *const T) }
}

/// Volatile MMIO read of a naturally aligned register.
///
/// # Safety
/// `addr` must be a mapped device register (or RAM) of this width.
pub unsafe fn mmio_read<T: Copy>(addr: u64) -> T {
    // SAFETY: the caller guarantees a mapped register or RAM of this width and alignment
    // (this function's contract).
    unsafe { core::ptr::read_volatile(addr as usize as *const T) }
}

/// Volatile MMIO write of a naturally aligned register.
///
/// # Safety
/// `addr` must be a mapped device register (or RAM we own) of this width.
pub unsafe fn mmio_write<T: Copy>(addr: u64, value: T) {
    // SAFETY: the caller guarantees a mapped register or RAM it owns, of this width and
    // alignment (this function's contract).
    unsafe { core::ptr::write_volatile(addr as usize as *mut T, value) }
}

/// `N` bytes at `offset`, or zeroes if the field does not fit: ACPI prescribes zero for fields
/// beyond a (shorter, older) table's length. One bounds check and one load per field.
fn field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = offset.checked_add(N).and_then(|end| bytes.get(offset..end)) {
        out.copy_from_slice(src);
    }
    out
}

pub fn le_u8(bytes: &[u8], offset: usize) -> u8 {
    bytes.get(offset).copied().unwrap_or(0)
}

pub fn le_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(field(bytes, offset))
}

pub fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(field(bytes, offset))
}

pub fn le_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(field(bytes, offset))
}
