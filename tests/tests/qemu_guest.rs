//! The same test guest boots unchanged under QEMU with KVM (Debian's
//! qemu-system-x86), so it cannot be leaning on quirks of vmm-core: microvm (qboot,
//! hardware-reduced ACPI) and q35 (SeaBIOS, full ACPI with a fixed power button).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::{expect_ready_then_poweroff, require_tool, test_guest, TempDir, Vm};

// q35's firmware runs emulated here (HOST.md: about 3 s to the first guest byte).
const BOOT: Duration = Duration::from_secs(60);

fn qemu(machine: &str, cpus: usize, memory_mib: u64, cmdline: &str, extra: &[&str]) -> Vm {
    let mut cmd = Command::new(require_tool("qemu-system-x86_64", "qemu-system-x86"));
    // QEMU 7.2 aborts on this host with plain `-cpu host` ("failed to set MSR 0x10a"):
    // kvm-pvm refuses IA32_ARCH_CAPABILITIES.
    cmd.args([
        "-M",
        machine,
        "-accel",
        "kvm",
        "-cpu",
        "host,-arch-capabilities",
    ])
    .args(["-smp", &cpus.to_string(), "-m", &memory_mib.to_string()])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(test_guest())
    .args(["-append", cmdline])
    .args(extra);
    Vm::spawn(cmd)
}

fn boots_and_powers_off(machine: &str, cpus: usize, memory_mib: u64) {
    let mut vm = qemu(machine, cpus, memory_mib, "scenario=poweroff", &[]);
    expect_ready_then_poweroff(&mut vm, cpus, memory_mib, BOOT);
}

#[test]
fn microvm_one_cpu() {
    boots_and_powers_off("microvm", 1, 128);
}

#[test]
fn microvm_two_cpus_512_mib() {
    boots_and_powers_off("microvm", 2, 512);
}

#[test]
fn q35_two_cpus() {
    boots_and_powers_off("q35", 2, 128);
}

#[test]
fn q35_reboot_resets() {
    // -no-reboot turns the guest's reset into a QEMU exit.
    let mut vm = qemu("q35", 1, 128, "scenario=reboot", &["-no-reboot"]);
    vm.expect_prefix("GUEST READY", BOOT);
    vm.expect_prefix("GUEST REBOOT", BOOT);
    let status = vm.wait(BOOT);
    assert!(status.success(), "{status}:\n{}", vm.transcript());
}

/// One QMP command on QEMU's own monitor (the reference server).
fn qmp(stream: &mut UnixStream, reader: &mut impl BufRead, command: &str) {
    writeln!(stream, "{{\"execute\": \"{command}\"}}").unwrap();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "QMP closed");
        if line.contains("\"return\"") {
            return;
        }
        assert!(!line.contains("\"error\""), "{command}: {line}");
    }
}

#[test]
fn q35_power_button_powers_off_the_idle_guest() {
    let dir = TempDir::new("qemu-qmp");
    let sock = dir.path().join("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", sock.display());
    let mut vm = qemu("q35", 2, 128, "", &["-qmp", &qmp_arg]);
    vm.expect_prefix("GUEST IDLE", BOOT);
    let deadline = Instant::now() + BOOT;
    let mut stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("QMP socket {}: {e}", sock.display()),
        }
    };
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    assert!(greeting.contains("\"QMP\""), "{greeting}");
    qmp(&mut stream, &mut reader, "qmp_capabilities");
    qmp(&mut stream, &mut reader, "system_powerdown");
    vm.expect_prefix("GUEST POWER BUTTON", BOOT);
    vm.expect_prefix("GUEST POWEROFF", BOOT);
    let status = vm.wait(BOOT);
    assert!(status.success(), "{status}:\n{}", vm.transcript());
}
