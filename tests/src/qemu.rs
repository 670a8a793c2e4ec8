//! QEMU 7.2 as the reference the tests compare Flotilla with: qemu-system-x86_64 running
//! the test guest on microvm (with the guest's PCI aids) and a QMP socket, or started
//! only to see whether it accepts its drives; and a small tmpfs that fills up, for the
//! disk-full tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::qmp::{wait_for_socket, QmpClient, TIMEOUT};
use crate::{require_tool, run_to_end, test_guest, TempDir, Vm};

/// The test guest's PCI aids on QEMU 7.2 microvm (tests/guest/README.md).
pub const MICROVM_PCI: &str = "pci_ecam=0xe0000000 pci_assign=0xc0000000";

/// qemu-system-x86_64 with QMP on a socket in a scratch directory.
pub struct Qemu {
    pub vm: Vm,
    pub qmp: PathBuf,
    _dir: TempDir,
}

fn base_command(accel: &str) -> Command {
    let mut cmd = Command::new(require_tool("qemu-system-x86_64", "qemu-system-x86"));
    cmd.args(["-M", "microvm,pcie=on", "-accel", accel]);
    if accel == "kvm" {
        // QEMU 7.2 aborts on kvm-pvm hosts with plain `-cpu host` (tests/guest/README.md).
        cmd.args(["-cpu", "host,-arch-capabilities"]);
    }
    cmd.args([
        "-m",
        "128",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ]);
    cmd
}

impl Qemu {
    /// The test guest with `cmdline` (the PCI aids are added), `extra` arguments (drives
    /// and devices), started paused (-S) so a client is there before the guest runs.
    pub fn guest(cmdline: &str, extra: &[&str]) -> Qemu {
        let dir = TempDir::new("qemu");
        let qmp = dir.path().join("qmp.sock");
        let mut cmd = base_command("kvm");
        cmd.args(["-serial", "stdio", "-S"])
            .arg("-kernel")
            .arg(test_guest())
            .args(["-append", &format!("{cmdline} {MICROVM_PCI}")])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(extra);
        let vm = Vm::spawn(cmd);
        wait_for_socket(&qmp, &vm);
        Qemu { vm, qmp, _dir: dir }
    }

    /// The test guest with `cmdline` (as given: no PCI aids) on QEMU's `-M pc` (i440FX and
    /// PIIX4, whose ACPI PCI hotplug covers bus 0: microvm and q35's root bus have none),
    /// `extra` arguments, started paused (-S). SeaBIOS runs first, emulated on kvm-pvm hosts:
    /// the guest's first line takes a few seconds.
    pub fn pc_guest(cmdline: &str, extra: &[&str]) -> Qemu {
        let dir = TempDir::new("qemu-pc");
        let qmp = dir.path().join("qmp.sock");
        let mut cmd = Command::new(require_tool("qemu-system-x86_64", "qemu-system-x86"));
        // -cpu: see base_command.
        cmd.args(["-M", "pc", "-accel", "kvm"])
            .args(["-cpu", "host,-arch-capabilities", "-m", "128", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-S", "-append", cmdline])
            .arg("-kernel")
            .arg(test_guest())
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(extra);
        let vm = Vm::spawn(cmd);
        wait_for_socket(&qmp, &vm);
        Qemu { vm, qmp, _dir: dir }
    }

    /// QEMU as libvirt probes it: `-machine none` (no guest, no devices), KVM, a QMP
    /// socket; what it answers is what a management tool learns of the emulator.
    pub fn machine_none() -> Qemu {
        Qemu::machine_none_on("kvm")
    }

    /// `machine_none` on accelerator `accel` (libvirt probes again with tcg).
    pub fn machine_none_on(accel: &str) -> Qemu {
        let dir = TempDir::new("qemu-none");
        let qmp = dir.path().join("qmp.sock");
        let mut cmd = Command::new(require_tool("qemu-system-x86_64", "qemu-system-x86"));
        cmd.args([
            "-machine",
            "none",
            "-accel",
            accel,
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-S", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        let vm = Vm::spawn(cmd);
        wait_for_socket(&qmp, &vm);
        Qemu { vm, qmp, _dir: dir }
    }

    /// QEMU with no guest to run (-S), to see whether it takes `extra` (drives): Ok
    /// with it running, or Err with what it printed when it refused.
    pub fn try_start(extra: &[&str]) -> Result<Qemu, String> {
        let dir = TempDir::new("qemu");
        let qmp = dir.path().join("qmp.sock");
        let mut cmd = base_command("tcg");
        cmd.arg("-S")
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(extra);
        let mut vm = Vm::spawn(cmd);
        let deadline = Instant::now() + TIMEOUT;
        // The monitor's socket exists before the devices take their drives.
        loop {
            if vm.exited() {
                vm.wait(TIMEOUT);
                return Err(vm.transcript());
            }
            assert!(
                Instant::now() < deadline,
                "QEMU neither started nor failed:\n{}",
                vm.transcript()
            );
            if answers(&qmp) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Qemu { vm, qmp, _dir: dir })
    }

    pub fn client(&self) -> QmpClient {
        QmpClient::negotiated(&self.qmp)
    }
}

/// Whether QEMU's monitor at `path` answers a command (false: no socket yet, or QEMU
/// closed the connection). The greeting alone proves nothing: QEMU's monitor greets
/// from its own thread before the devices are set up, and runs commands only from the
/// main loop, once they are.
fn answers(path: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(path) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return false,
    });
    let mut line = String::new();
    if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        return false;
    }
    if stream
        .write_all(b"{\"execute\": \"qmp_capabilities\"}")
        .is_err()
    {
        return false;
    }
    line.clear();
    matches!(reader.read_line(&mut line), Ok(n) if n > 0) && line.contains("return")
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- QEMU output ---\n{}", self.vm.transcript());
        }
        self.vm.terminate(Duration::from_secs(5));
    }
}

/// QEMU's message for a command line it refuses (its stderr, without the
/// "qemu-system-x86_64: -drive ...: " prefix).
pub fn qemu_refusal(extra: &[&str]) -> String {
    let first = refusal_line(extra);
    first
        .rsplit_once(": ")
        .map_or(first.as_str(), |(_, message)| message)
        .to_string()
}

/// The first line QEMU writes when it refuses `extra`.
fn refusal_line(extra: &[&str]) -> String {
    let mut cmd = base_command("tcg");
    cmd.arg("-S").args(extra);
    let (status, _, err) = run_to_end(cmd, TIMEOUT);
    assert!(!status.success(), "QEMU accepted {extra:?}");
    err.lines().next().unwrap_or_default().to_string()
}

/// QEMU's whole message for a command line it refuses: its first stderr line after
/// the "qemu-system-x86_64: -drive VALUE: " prefix (nested "Could not open backing
/// file: " parts kept).
pub fn qemu_whole_refusal(extra: &[&str]) -> String {
    let first = refusal_line(extra);
    extra
        .iter()
        .find_map(|a| first.split_once(&format!("{a}: ")).map(|(_, m)| m))
        .unwrap_or(first.as_str())
        .to_string()
}

/// A tmpfs of a fixed size mounted on a scratch directory (root only): a filesystem
/// that fills up. Unmounted and removed when dropped.
pub struct SmallFs {
    dir: TempDir,
}

impl SmallFs {
    pub fn mount(tag: &str, bytes: u64) -> SmallFs {
        let dir = TempDir::new(tag);
        let status = Command::new(require_tool("mount", "mount"))
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("flotilla-test")
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a {bytes}-byte tmpfs on {} failed ({status}): this test needs root",
            dir.path().display()
        );
        SmallFs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows (or shrinks, down to what is used) the filesystem.
    pub fn resize(&self, bytes: u64) {
        let status = Command::new(require_tool("mount", "mount"))
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(self.dir.path())
            .status()
            .expect("running mount");
        assert!(status.success(), "remounting with size={bytes}: {status}");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path())
            .status();
    }
}
