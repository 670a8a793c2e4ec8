//! Real Linux guests for the tests: Debian's kernel under QEMU TCG, with the base
//! initramfs (scripts/build-initramfs) plus an appended archive that holds the test's own
//! /test.sh (Linux unpacks concatenated cpio archives as one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{linux_bzimage, require_tool, script_output, Vm};

/// The base initramfs (busybox, virtio and ext4 modules, e2fsprogs).
pub fn base_initramfs() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    script_output(&BASE, "FLOTILLA_INITRAMFS", "build-initramfs")
}

/// One newc cpio entry.
fn newc_entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
    let fields = [
        1,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Writes base initramfs + a cpio holding `script` as /test.sh to `path`.
pub fn initrd_with_script(path: &Path, script: &str) {
    let mut bytes = std::fs::read(base_initramfs()).expect("base initramfs");
    let mut archive = Vec::new();
    newc_entry(&mut archive, "test.sh", 0o100755, script.as_bytes());
    newc_entry(&mut archive, "TRAILER!!!", 0, &[]);
    bytes.extend_from_slice(&archive);
    std::fs::write(path, bytes).expect("writing the initrd");
}

/// The host TSC in kHz, for the guest's tsc_early_khz (without it TCG boots sometimes
/// hang calibrating the TSC).
pub fn tsc_khz() -> u64 {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))
        .and_then(|v| {
            v.trim_start_matches([' ', '\t', ':'])
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|mhz| (mhz * 1000.0) as u64)
        .unwrap_or(2_000_000)
}

/// QEMU q35 under TCG booting Debian's kernel with `initrd`, guest RAM shared (memfd) so
/// vhost-user backends can map it. `devices`: extra QEMU arguments.
pub fn qemu_tcg_linux(initrd: &Path, memory_mib: u64, cpus: usize, devices: &[String]) -> Vm {
    let mut cmd = Command::new(require_tool("qemu-system-x86_64", "qemu-system-x86"));
    cmd.args(["-M", "q35", "-accel", "tcg", "-cpu", "max"])
        .args(["-m", &format!("{memory_mib}M"), "-smp", &cpus.to_string()])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
            "-numa",
            "node,memdev=mem",
        ])
        .args(devices)
        .arg("-kernel")
        .arg(linux_bzimage())
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            &format!("console=ttyS0 panic=-1 quiet tsc_early_khz={}", tsc_khz()),
        ])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-nodefaults",
            "-no-reboot",
        ]);
    Vm::spawn(cmd)
}

/// Linux (512 MiB, 2 vCPUs) running `script` with one vhost-user-blk disk of 2 queues on
/// `socket` (`reconnect`: QEMU 7.2 retries a lost connection every second); the initrd
/// is written into `dir`.
pub fn linux_on_vhost_user_blk(dir: &Path, script: &str, socket: &Path, reconnect: bool) -> Vm {
    let initrd = dir.join("initrd");
    initrd_with_script(&initrd, script);
    let retry = if reconnect { ",reconnect=1" } else { "" };
    qemu_tcg_linux(
        &initrd,
        512,
        2,
        &[
            "-chardev".into(),
            format!("socket,id=c,path={}{retry}", socket.display()),
            "-device".into(),
            "vhost-user-blk-pci,chardev=c,num-queues=2".into(),
        ],
    )
}

/// Shell lines for a guest script: on a filesystem just made on /dev/vda, a copy of
/// /tmp/data, read back after a remount (`SUM-FILE`), the filesystem checked
/// (`FSCK-CLEAN`), and the kernel's I/O errors counted (`IO-ERRORS`).
pub const FILL_AND_CHECK_FS: &str = r#"mount /dev/vda /mnt
cp /tmp/data /mnt/file
umount /mnt
mount /dev/vda /mnt
echo "SUM-FILE $(md5sum < /mnt/file)"
umount /mnt
e2fsck -fn /dev/vda > /tmp/fsck 2>&1 && echo FSCK-CLEAN
echo "IO-ERRORS $(dmesg | grep -ci 'i/o error' || true)"
"#;

/// The first word a guest script printed after `key` (a line that starts with it).
pub fn reported<'a>(transcript: &'a str, key: &str) -> &'a str {
    transcript
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key} line:\n{transcript}"))
}

/// What FILL_AND_CHECK_FS printed says the file read back as /tmp/data was written
/// (`SUM-WRITTEN`, printed by the script before), the filesystem was clean and the
/// kernel logged no I/O error.
pub fn expect_filesystem_checked(transcript: &str) {
    let written = reported(transcript, "SUM-WRITTEN ");
    assert_eq!(reported(transcript, "SUM-FILE "), written, "{transcript}");
    assert!(transcript.contains("FSCK-CLEAN"), "{transcript}");
    assert_eq!(reported(transcript, "IO-ERRORS "), "0", "{transcript}");
}

/// A guest script that makes ext4 on /dev/vda, writes `files` files of 256 KiB of random
/// data with a sync after each ("WROTE n"), checks their sums after a remount
/// ("SUMS-OK"), runs e2fsck on the unmounted disk ("FSCK-CLEAN") and counts the I/O
/// errors the kernel logged ("IO-ERRORS n").
pub fn ext4_writer_script(files: u32) -> String {
    format!(
        r#"#!/bin/sh
set -e
mkfs.ext4 -q -F -b 4096 /dev/vda 16384
mount /dev/vda /mnt
i=1
while [ $i -le {files} ]; do
  dd if=/dev/urandom of=/mnt/f$i bs=256k count=1 2>/dev/null
  sync
  echo "WROTE $i"
  i=$((i+1))
done
md5sum /mnt/f* > /tmp/sums
umount /mnt
mount /dev/vda /mnt
cd /mnt && md5sum -c /tmp/sums > /dev/null && echo SUMS-OK
cd /
umount /mnt
e2fsck -fn /dev/vda > /tmp/fsck 2>&1 && echo FSCK-CLEAN
echo "IO-ERRORS $(dmesg | grep -ci 'i/o error' || true)"
"#
    )
}

/// Waits for `ext4_writer_script`'s guest to end and checks what it said: rc 0, the
/// sums read back, fsck clean, no I/O error in the kernel's log, a clean exit.
pub fn expect_ext4_writer_clean(linux: &mut Vm, timeout: std::time::Duration) {
    let end = linux.expect_prefix("FLOTILLA-TEST-END", timeout);
    let transcript = linux.transcript();
    assert_eq!(end, "FLOTILLA-TEST-END rc=0", "{transcript}");
    assert!(transcript.contains("SUMS-OK"), "{transcript}");
    assert!(transcript.contains("FSCK-CLEAN"), "{transcript}");
    assert!(transcript.contains("IO-ERRORS 0"), "{transcript}");
    assert!(linux.wait(timeout).success());
}
