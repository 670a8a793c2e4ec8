//! Bad command lines and bad files: each is a non-zero exit with one line on stderr
//! that names the problem.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::{bin, linux_bzimage, run_to_end, test_guest, TempDir};

fn rejects(args: &[&std::ffi::OsStr], expected: &str) {
    let mut cmd = Command::new(bin("vmm-core"));
    cmd.args(args).args(["--serial", "none"]);
    let (status, _out, err) = run_to_end(cmd, Duration::from_secs(30));
    assert!(
        !status.success(),
        "expected failure for {args:?}, got {status}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one error line for {args:?}, got:\n{err}"
    );
    assert!(
        lines[0].starts_with("vmm-core: error: ") && lines[0].contains(expected),
        "error for {args:?} should mention {expected:?}: {}",
        lines[0]
    );
}

fn kernel_args<'a>(kernel: &'a Path, extra: &[&'a str]) -> Vec<&'a std::ffi::OsStr> {
    let mut v: Vec<&std::ffi::OsStr> = vec!["--kernel".as_ref(), kernel.as_os_str()];
    v.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    v
}

#[test]
fn missing_kernel_file() {
    rejects(
        &kernel_args(Path::new("/nonexistent/kernel"), &[]),
        "kernel /nonexistent/kernel: No such file or directory",
    );
}

#[test]
fn truncated_elf() {
    let dir = TempDir::new("trunc-elf");
    let guest = std::fs::read(test_guest()).unwrap();
    // Inside the ELF header, the program headers, the loaded segments, and the last byte
    // of the section header table.
    for len in [16, 100, 5000, guest.len() / 2, guest.len() - 1] {
        let path = dir.path().join(format!("guest-{len}"));
        std::fs::write(&path, &guest[..len]).unwrap();
        rejects(&kernel_args(&path, &[]), "invalid or truncated ELF");
    }
}

#[test]
fn neither_elf_nor_bzimage() {
    let dir = TempDir::new("not-kernel");
    let path = dir.path().join("script");
    std::fs::write(&path, "#!/bin/sh\necho not a kernel\n").unwrap();
    rejects(
        &kernel_args(&path, &[]),
        "neither an ELF file nor a Linux bzImage",
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    rejects(
        &kernel_args(&empty, &[]),
        "neither an ELF file nor a Linux bzImage",
    );
}

#[test]
fn truncated_bzimage() {
    let dir = TempDir::new("trunc-bz");
    let image = std::fs::read(linux_bzimage()).unwrap();
    let path = dir.path().join("vmlinuz");
    // Past the "HdrS" magic, but inside the setup header / setup code.
    for len in [0x210, 0x1000] {
        std::fs::write(&path, &image[..len]).unwrap();
        rejects(&kernel_args(&path, &[]), "invalid or truncated bzImage");
    }
}

#[test]
fn memory_zero() {
    let guest = test_guest();
    rejects(&kernel_args(&guest, &["--memory", "0"]), "--memory 0");
}

#[test]
fn cpus_zero() {
    let guest = test_guest();
    rejects(&kernel_args(&guest, &["--cpus", "0"]), "--cpus 0");
}

#[test]
fn more_cpus_than_kvm_allows() {
    let guest = test_guest();
    rejects(
        &kernel_args(&guest, &["--cpus", "100000"]),
        "KVM on this host allows at most",
    );
}

#[test]
fn initrd_that_does_not_fit() {
    let dir = TempDir::new("big-initrd");
    let initrd = dir.path().join("initrd");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let guest = test_guest();
    let mut args = kernel_args(&guest, &["--memory", "32", "--initrd"]);
    args.push(initrd.as_os_str());
    rejects(&args, "does not fit in guest memory");
}

#[test]
fn linux_in_too_little_memory() {
    let kernel = linux_bzimage();
    rejects(
        &kernel_args(&kernel, &["--memory", "8"]),
        "needs guest memory up to",
    );
}
