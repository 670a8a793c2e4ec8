//! The Linux boot path, which cannot run on this host's KVM: Debian's bzImage is loaded
//! into guest memory and everything the 64-bit boot protocol promises the kernel is
//! checked in that memory: setup header, boot_params, E820 map, command line, initrd,
//! RSDP pointer, page tables.

use linux_loader::bootparam::boot_params;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::boot::{BootEntry, BootImage, KernelFormat};
use vmm_core::cpu::layout::CpuLayout;
use vmm_core::layout::{
    CMDLINE, EBDA_START, HIGH_RAM_START, MMIO_GAP_END, MMIO_GAP_START, PCI_ECAM, PCI_ECAM_SIZE,
    PML4, ZERO_PAGE,
};
use vmm_core::memory::{GuestRam, MIB};

use flotilla_tests::{linux_bzimage, TempDir};

const CMDLINE_TEXT: &str = "console=ttyS0 root=/dev/vda rw panic=-1";
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

fn load(memory_mib: u64, initrd: &[u8]) -> (GuestRam, vmm_core::boot::LoadedKernel, Vec<u8>) {
    let dir = TempDir::new("linux-initrd");
    let initrd_path = dir.path().join("initrd");
    std::fs::write(&initrd_path, initrd).unwrap();
    let kernel = linux_bzimage();
    let image = BootImage::open(&kernel, Some(&initrd_path), CMDLINE_TEXT).unwrap();
    assert_eq!(image.format(), KernelFormat::BzImage);
    let ram = GuestRam::new(memory_mib).unwrap();
    let loaded = image.load(&ram, &CpuLayout::all(2)).unwrap();
    (ram, loaded, std::fs::read(kernel).unwrap())
}

fn params(ram: &GuestRam) -> boot_params {
    ram.memory().read_obj(GuestAddress(ZERO_PAGE)).unwrap()
}

#[test]
fn setup_header_and_entry() {
    let (ram, loaded, file) = load(512, b"initrd");
    let p = params(&ram);
    let hdr = p.hdr;
    assert_eq!({ hdr.header }, 0x5372_6448, "HdrS magic");
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert!({ hdr.version } >= 0x020c, "protocol {:#x}", { hdr.version });
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_ne!({ hdr.xloadflags } & 1, 0, "XLF_KERNEL_64");
    assert_eq!({ hdr.code32_start }, 0x100000);
    // The header in memory is the file's, apart from what a loader must fill in.
    let file_hdr: linux_loader::bootparam::setup_header =
        *vm_memory::ByteValued::from_slice(&file[0x1f1..0x1f1 + std::mem::size_of_val(&hdr)])
            .unwrap();
    assert_eq!({ hdr.setup_sects }, { file_hdr.setup_sects });
    assert_eq!({ hdr.init_size }, { file_hdr.init_size });
    assert_eq!({ hdr.pref_address }, { file_hdr.pref_address });
    assert_eq!(
        loaded.entry,
        BootEntry::Linux64 {
            entry: GuestAddress(0x100000 + 0x200),
            boot_params: GuestAddress(ZERO_PAGE),
        }
    );
    // The protected-mode kernel is the file after the setup sectors, at code32_start.
    let setup = (usize::from(hdr.setup_sects) + 1) * 512;
    let mut in_memory = vec![0u8; file.len() - setup];
    ram.memory()
        .read_slice(&mut in_memory, GuestAddress(0x100000))
        .unwrap();
    assert!(in_memory == file[setup..], "kernel image differs in memory");
}

#[test]
fn command_line() {
    let (ram, _, _) = load(256, b"x");
    let p = params(&ram);
    assert_eq!({ p.hdr.cmd_line_ptr } as u64, CMDLINE);
    let mut buf = vec![0u8; CMDLINE_TEXT.len() + 1];
    ram.memory()
        .read_slice(&mut buf, GuestAddress(CMDLINE))
        .unwrap();
    assert_eq!(&buf[..CMDLINE_TEXT.len()], CMDLINE_TEXT.as_bytes());
    assert_eq!(buf[CMDLINE_TEXT.len()], 0, "NUL-terminated");
    assert!(CMDLINE_TEXT.len() <= { p.hdr.cmdline_size } as usize);
}

#[test]
fn e820_map() {
    for memory_mib in [256u64, 4096] {
        let (ram, _, _) = load(memory_mib, b"x");
        let p = params(&ram);
        let n = usize::from(p.e820_entries);
        let map: Vec<(u64, u64, u32)> = p.e820_table[..n]
            .iter()
            .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
            .collect();
        assert_eq!(map[0], (0, EBDA_START, E820_RAM));
        assert_eq!(
            map[1],
            (EBDA_START, HIGH_RAM_START - EBDA_START, E820_RESERVED)
        );
        let low_end = (memory_mib * MIB).min(MMIO_GAP_START);
        assert_eq!(map[2], (HIGH_RAM_START, low_end - HIGH_RAM_START, E820_RAM));
        // The PCI ECAM window, reserved as PC firmware reserves it (MCFG points there).
        assert_eq!(map[3], (PCI_ECAM, PCI_ECAM_SIZE, E820_RESERVED));
        if memory_mib * MIB > MMIO_GAP_START {
            assert_eq!(
                map[4],
                (MMIO_GAP_END, memory_mib * MIB - MMIO_GAP_START, E820_RAM)
            );
            assert_eq!(n, 5);
        } else {
            assert_eq!(n, 4);
        }
        // Sorted, non-overlapping, no RAM in the MMIO gap.
        for w in map.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0);
        }
        assert!(map
            .iter()
            .filter(|e| e.2 == E820_RAM)
            .all(|e| e.0 + e.1 <= MMIO_GAP_START || e.0 >= MMIO_GAP_END));
    }
}

#[test]
fn initrd_placement() {
    let initrd: Vec<u8> = (0..3 * MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    let (ram, loaded, _) = load(256, &initrd);
    let p = params(&ram);
    let (addr, size) = ({ p.hdr.ramdisk_image } as u64, { p.hdr.ramdisk_size }
        as u64);
    assert_eq!(Some((GuestAddress(addr), size)), loaded.initrd);
    assert_eq!(size, initrd.len() as u64);
    assert_eq!(addr % 4096, 0);
    assert!(
        addr >= loaded.kernel_end,
        "initrd overlaps where the kernel decompresses"
    );
    assert!(addr + size - 1 <= { p.hdr.initrd_addr_max } as u64);
    assert!(addr + size <= 256 * MIB);
    let mut copy = vec![0u8; initrd.len()];
    ram.memory()
        .read_slice(&mut copy, GuestAddress(addr))
        .unwrap();
    assert!(copy == initrd);
}

#[test]
fn rsdp_and_page_tables() {
    let (ram, loaded, _) = load(256, b"x");
    let p = params(&ram);
    assert_eq!({ p.acpi_rsdp_addr }, loaded.rsdp.0);
    let mut sig = [0u8; 8];
    ram.memory().read_slice(&mut sig, loaded.rsdp).unwrap();
    assert_eq!(&sig, b"RSD PTR ");
    // Identity map: walk the tables for a few addresses the kernel touches.
    for va in [0u64, 0x100000, ZERO_PAGE, CMDLINE, 0xbfe0_0000, 0xfee0_0000] {
        let pml4e: u64 = ram
            .memory()
            .read_obj(GuestAddress(PML4 + ((va >> 39) & 511) * 8))
            .unwrap();
        assert_eq!(pml4e & 1, 1);
        let pdpte: u64 = ram
            .memory()
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 511) * 8))
            .unwrap();
        assert_eq!(pdpte & 1, 1);
        let pde: u64 = ram
            .memory()
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 511) * 8))
            .unwrap();
        assert_eq!(pde & 0x81, 0x81, "present 2 MiB page for {va:#x}");
        assert_eq!(pde & !0x1f_ffff & ((1 << 52) - 1), va & !0x1f_ffff);
    }
}
