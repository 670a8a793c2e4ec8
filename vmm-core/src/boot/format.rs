//! Telling kernel formats apart (ELF or bzImage, by their magic numbers) and checking that
//! an ELF file holds everything its headers describe.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

fn read_le(bytes: &[u8], offset: usize, len: usize) -> Option<u64> {
    let field = bytes.get(offset..offset + len)?;
    Some(field.iter().rev().fold(0, |v, b| (v << 8) | u64::from(*b)))
}

/// Checks that the file holds everything its ELF header points at (program headers,
/// every segment's bytes, section headers): a cut-off file is an error even when the
/// part the loader needs happens to be intact.
pub fn check_elf_extent(elf: &[u8]) -> Result<(), String> {
    const EHDR_SIZE: usize = 64;
    const PHDR_SIZE: u64 = 56;
    let len = elf.len() as u64;
    let truncated = |needed: u64| format!("file is {len} bytes, but its headers describe {needed}");
    if elf.len() < EHDR_SIZE {
        return Err(truncated(EHDR_SIZE as u64));
    }
    if elf[4] != 2 {
        return Err("not a 64-bit ELF file".into());
    }
    let field = |offset, len| read_le(elf, offset, len).unwrap_or(0);
    let (phoff, phentsize, phnum) = (field(0x20, 8), field(0x36, 2), field(0x38, 2));
    let (shoff, shentsize, shnum) = (field(0x28, 8), field(0x3a, 2), field(0x3c, 2));
    if phentsize != PHDR_SIZE {
        return Err(format!(
            "program header size {phentsize}, expected {PHDR_SIZE}"
        ));
    }
    let table_end = |off: u64, entsize: u64, num: u64| {
        entsize
            .checked_mul(num)
            .and_then(|size| off.checked_add(size))
            .ok_or_else(|| "header table offset overflows".to_string())
    };
    let mut needed = table_end(phoff, phentsize, phnum)?;
    if shoff != 0 {
        needed = needed.max(table_end(shoff, shentsize, shnum)?);
    }
    if needed > len {
        return Err(truncated(needed));
    }
    for i in 0..phnum {
        let ph = (phoff + i * PHDR_SIZE) as usize;
        let (offset, filesz) = (field(ph + 0x08, 8), field(ph + 0x20, 8));
        let end = offset
            .checked_add(filesz)
            .ok_or_else(|| format!("segment {i} overflows"))?;
        if end > len {
            return Err(truncated(end));
        }
    }
    Ok(())
}

/// Tells an ELF from a bzImage by their magic numbers.
pub fn detect_format(image: &[u8]) -> Option<KernelFormat> {
    if image.starts_with(b"\x7fELF") {
        Some(KernelFormat::Elf)
    } else if image.get(0x202..0x206) == Some(b"HdrS") {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header and a section header table.
    fn elf(segment_end: u64, shoff: u64) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        e[0x3c..0x3e].copy_from_slice(&2u16.to_le_bytes());
        e[64 + 0x08..64 + 0x10].copy_from_slice(&120u64.to_le_bytes());
        e[64 + 0x20..64 + 0x28].copy_from_slice(&(segment_end - 120).to_le_bytes());
        e.resize(400, 0);
        e
    }

    #[test]
    fn elf_extent_catches_truncation_anywhere() {
        assert_eq!(check_elf_extent(&elf(200, 200)), Ok(()));
        assert!(
            check_elf_extent(&elf(500, 200)).is_err(),
            "segment past the end"
        );
        assert!(
            check_elf_extent(&elf(200, 300)).is_err(),
            "section headers past the end"
        );
        assert!(
            check_elf_extent(&elf(200, u64::MAX - 10)).is_err(),
            "overflow"
        );
        assert!(
            check_elf_extent(&elf(200, 200)[..63]).is_err(),
            "short header"
        );
        let mut e32 = elf(200, 200);
        e32[4] = 1;
        assert!(check_elf_extent(&e32).is_err());
    }

    #[test]
    fn detects_formats() {
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"#!/bin/sh\n"), None);
        assert_eq!(detect_format(b""), None);
    }
}
