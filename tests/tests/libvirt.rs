//! libvirt 9.0 (Debian 12's) driving flotilla-qemu through its embedded QEMU driver
//! (`virsh -c 'qemu:///embed?root=DIR'`: no libvirtd, no systemd), as issue 18 asks:
//! `virsh domcapabilities` probes the binary (twice: `-machine none,accel=kvm:tcg`, then
//! `accel=tcg`, each daemonized with a pid file) and describes what Flotilla has.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::{bin, require_tool, run_to_end, TempDir};

const TIMEOUT: Duration = Duration::from_secs(120);

/// The embedded driver's root: the qemu.conf ../shared/HOST.md gives (root runs the
/// emulator, no cgroups, namespaces or security driver, logs to files).
fn embed_root(dir: &Path) -> String {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).expect("etc");
    std::fs::write(
        etc.join("qemu.conf"),
        "user = \"root\"\ngroup = \"root\"\ncgroup_controllers = [ ]\nnamespaces = [ ]\n\
         security_driver = \"none\"\nremember_owner = 0\nstdio_handler = \"file\"\n",
    )
    .expect("qemu.conf");
    format!("qemu:///embed?root={}", dir.display())
}

/// The processes whose command line names `needle` (what a probe under `dir` started).
fn processes_naming(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Ends (SIGKILL, by pid) what a probe under the directory left running when the test
/// fails: a libvirt that crashed mid-probe does not end its emulator.
struct ProbeLeftovers(String);

impl Drop for ProbeLeftovers {
    fn drop(&mut self) {
        for pid in processes_naming(&self.0) {
            // Our own probe's emulator (its command line names our temporary directory).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn virsh_domcapabilities_describes_flotilla() {
    let virsh = require_tool("virsh", "libvirt-clients (with libvirt-daemon-driver-qemu)");
    let dir = TempDir::new("libvirt-caps");
    let _leftovers = ProbeLeftovers(dir.path().display().to_string());
    let uri = embed_root(dir.path());
    let emulator = bin("flotilla-qemu");
    let mut cmd = Command::new(virsh);
    cmd.args(["-c", &uri, "domcapabilities", "--emulatorbin"])
        .arg(&emulator)
        .args(["--virttype", "kvm"]);
    let (status, out, err) = run_to_end(cmd, TIMEOUT);
    assert!(
        status.success(),
        "virsh domcapabilities failed (libvirt 9.0 crashed on a probe answer once):\n{out}\n{err}"
    );
    let caps: String = out.lines().map(str::trim).collect();
    for want in [
        format!("<path>{}</path>", emulator.display()),
        "<domain>kvm</domain>".into(),
        // Our one machine, under the name libvirt lays out as a pc (pci.0).
        "<machine>pc</machine>".into(),
        "<arch>x86_64</arch>".into(),
        "<vcpu max='255'/>".into(),
        // The vCPUs are the host's: no named models, no host-model yet (see
        // docs/libvirt.md).
        "<mode name='host-passthrough' supported='yes'>".into(),
        "<mode name='custom' supported='no'/>".into(),
        "<sev supported='no'/>".into(),
        "<sgx supported='no'/>".into(),
        "<tpm supported='no'/>".into(),
    ] {
        assert!(caps.contains(&want), "no {want} in:\n{out}");
    }
    // libvirt ends its probe's emulator (by the pid file's pid): nothing is left of it.
    let left = processes_naming(&dir.path().display().to_string());
    assert!(left.is_empty(), "probe processes left: {left:?}");
}
