//! libvirt 9.0 (Debian 12's) driving flotilla-qemu through its embedded QEMU driver
//! (`virsh -c 'qemu:///embed?root=DIR'`: no libvirtd, no systemd), as issue 18 asks:
//! `virsh domcapabilities` probes the binary (twice: `-machine none,accel=kvm:tcg`, then
//! `accel=tcg`, each daemonized with a pid file) and describes what Flotilla has; a domain
//! (direct kernel boot of the test guest, a qcow2 disk, a tap NIC, the serial console in a
//! file) goes through the lifecycle libvirt drives, on flotilla-qemu and on QEMU 7.2 with
//! the same XML and the same virsh commands, and what virsh shows of each is compared.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::blk::qemu_img_ok;
use flotilla_tests::libvirt::{
    embed_root, processes_naming, wait_for_line, Leftovers, Libvirtd, Virsh,
};
use flotilla_tests::{bin, kvm_is_pvm, path_arg, require_tool, run_to_end, test_guest, TempDir};

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn virsh_domcapabilities_describes_flotilla() {
    let virsh = require_tool("virsh", "libvirt-clients (with libvirt-daemon-driver-qemu)");
    let dir = TempDir::new("libvirt-caps");
    let _leftovers = Leftovers(dir.path().display().to_string());
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
        // No display: no graphics type (no query-vnc).
        "<graphics supported='yes'><enum name='type'/></graphics>".into(),
    ] {
        assert!(caps.contains(&want), "no {want} in:\n{out}");
    }
    // libvirt ends its probe's emulator (by the pid file's pid): nothing is left of it.
    let left = processes_naming(&dir.path().display().to_string());
    assert!(left.is_empty(), "probe processes left: {left:?}");
}

/// How long one virsh command or one step of the guest may take.
const STEP: Duration = Duration::from_secs(30);
/// How long the guest may take to boot: QEMU 7.2 takes 10 s and more on a loaded host
/// (its firmware boots the guest's ELF).
const BOOT: Duration = Duration::from_secs(90);

/// A domain of the test guest, booted directly: 128 MiB, one vCPU (the host's: the <cpu>
/// element `cpu_for` gives for the emulator), the pc machine, destroyed when the guest
/// powers off. The tests' domains differ in the guest's command line, ACPI and the
/// devices.
struct DomainXml<'a> {
    name: &'a str,
    emulator: &'a Path,
    /// The guest's kernel command line (its scenario); none: the guest idles.
    cmdline: Option<&'a str>,
    /// `<acpi/>` among the features; without it libvirt writes -no-acpi.
    acpi: bool,
    /// The device elements besides the emulator, no USB controller and no balloon.
    devices: Vec<String>,
}

impl DomainXml<'_> {
    fn render(&self) -> String {
        let cmdline = (self.cmdline)
            .map(|c| format!("\n    <cmdline>{c}</cmdline>"))
            .unwrap_or_default();
        let features = if self.acpi {
            "<features><acpi/></features>"
        } else {
            ""
        };
        format!(
            "<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{guest}</kernel>{cmdline}
  </os>
  {features}
  {cpu}
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{emulator}</emulator>
    {devices}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
",
            name = self.name,
            guest = test_guest().display(),
            cpu = cpu_for(self.emulator),
            emulator = self.emulator.display(),
            devices = self.devices.join("\n    "),
        )
    }
}

/// The test guest's pci-hotplug scenario: every virtio disk checked with I/O, hot-added
/// ones too, and a power-off on the ACPI power button.
const HOTPLUG: &str = "scenario=pci-hotplug boot-blk=1 pci_assign=0xc0000000,0x10000000";

/// A disk element: the qcow2 image `file` as `dev` on `bus`.
fn qcow2_disk(file: &Path, bus: &str, dev: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='{dev}' bus='{bus}'/></disk>",
        file.display()
    )
}

/// The console in the file `dir`/serial.log.
fn serial_file(dir: &Path) -> String {
    format!(
        "<serial type='file'><source path='{}/serial.log'/></serial>",
        dir.display()
    )
}

/// The link named `name`, if there is one.
fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Deletes a tap libvirt made when a test stops half-way.
struct TapLeftover(String);

impl Drop for TapLeftover {
    fn drop(&mut self) {
        if link_exists(&self.0) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).output();
        }
    }
}

/// Polls `virsh list --all --name` until domain `name` is gone.
fn until_gone(virsh: &mut Virsh, name: &str) {
    let deadline = Instant::now() + STEP;
    loop {
        let listed = virsh.ok("list --all --name", STEP);
        if !listed.iter().any(|l| l == name) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} still listed: {listed:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `domblkinfo`'s capacity in bytes.
fn capacity(virsh: &mut Virsh, name: &str, disk: &str) -> u64 {
    let out = virsh.ok(&format!("domblkinfo {name} {disk}"), STEP);
    let line = out.iter().find_map(|l| l.strip_prefix("Capacity:"));
    line.and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no capacity in {out:?}"))
}

/// Drives one domain on `emulator` through the lifecycle, checking each step; what virsh
/// showed, with the run's own paths and names taken out, for the comparison of the two
/// emulators.
fn lifecycle(emulator: &Path, tag: &str) -> Vec<String> {
    let dir = TempDir::new(&format!("libvirt-{tag}"));
    let _leftovers = Leftovers(dir.path().display().to_string());
    let root = dir.path();
    let name = format!("dom-{tag}");
    let tap = format!("lvt{}{tag}", std::process::id() % 100_000);
    let _tap = TapLeftover(tap.clone());
    let tap2 = format!("{tap}n");
    let _tap2 = TapLeftover(tap2.clone());
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        path_arg(&root.join("disk.qcow2")),
        "64M",
    ]);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        path_arg(&root.join("disk2.qcow2")),
        "32M",
    ]);
    let xml = root.join("dom.xml");
    // The pci-hotplug guest on a qcow2 disk, a tap libvirt makes, the console in a file.
    let domain = DomainXml {
        name: &name,
        emulator,
        cmdline: Some(HOTPLUG),
        acpi: true,
        devices: vec![
            qcow2_disk(&root.join("disk.qcow2"), "virtio", "vda"),
            format!(
                "<interface type='ethernet'><mac address='52:54:00:12:34:56'/>\
                 <target dev='{tap}' managed='yes'/><model type='virtio'/></interface>"
            ),
            serial_file(root),
        ],
    };
    std::fs::write(&xml, domain.render()).expect("dom.xml");
    let serial = root.join("serial.log");
    let mut seen = Vec::new();
    let mut note = |what: &str, out: Vec<String>| {
        let text = out.join("\n").replace(&root.display().to_string(), "DIR");
        seen.push(format!(
            "{what}: {}",
            (text.replace(&name, "NAME").replace(&tap2, "TAP2")).replace(&tap, "TAP")
        ));
    };
    let mut virsh = Virsh::start(root);
    virsh.ok(&format!("create {}", xml.display()), STEP);
    let (_, mut at) = wait_for_line(&serial, 0, "GUEST HOTPLUG READY", BOOT);
    note(
        "state",
        virsh.ok(&format!("domstate {name} --reason"), STEP),
    );

    // Paused and running again.
    virsh.ok(&format!("suspend {name}"), STEP);
    note(
        "suspended",
        virsh.ok(&format!("domstate {name} --reason"), STEP),
    );
    virsh.ok(&format!("resume {name}"), STEP);
    note(
        "resumed",
        virsh.ok(&format!("domstate {name} --reason"), STEP),
    );

    // The guest's I/O at boot (it wrote, read back and flushed its disk) is counted.
    let stats = virsh.ok(&format!("domblkstat {name} vda"), STEP);
    for counter in ["rd_req", "wr_req", "flush_operations"] {
        let n: u64 = (stats.iter())
            .find_map(|l| l.strip_prefix(&format!("vda {counter} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {counter} in {stats:?}"));
        assert!(n > 0, "{counter} is 0 after the guest's I/O: {stats:?}");
    }
    note("disks", virsh.ok(&format!("domblklist {name}"), STEP));
    note("nics", virsh.ok(&format!("domiflist {name}"), STEP));
    assert!(link_exists(&tap), "libvirt's tap {tap} is not there");

    // A second disk: hot-added, used by the guest, grown, removed.
    let disk2 = root.join("disk2.qcow2");
    virsh.ok(
        &format!(
            "attach-disk {name} {} vdb --driver qemu --subdriver qcow2 --targetbus virtio",
            disk2.display()
        ),
        STEP,
    );
    let (line, next) = wait_for_line(&serial, at, "GUEST HOTPLUG BLK OK slot=", STEP);
    at = next;
    assert!(line.contains(" capacity=65536 "), "{line}");
    note("attached", virsh.ok(&format!("domblklist {name}"), STEP));
    assert_eq!(capacity(&mut virsh, &name, "vdb"), 32 << 20);
    virsh.ok(&format!("blockresize {name} vdb 48M"), STEP);
    assert_eq!(capacity(&mut virsh, &name, "vdb"), 48 << 20);
    virsh.ok(&format!("detach-disk {name} vdb"), STEP);
    let (_, next) = wait_for_line(&serial, at, "GUEST HOTPLUG REMOVED slot=", STEP);
    at = next;
    note("detached", virsh.ok(&format!("domblklist {name}"), STEP));

    // A second NIC: hot-added (libvirt makes its tap), seen by the guest, removed.
    let nic = root.join("nic.xml");
    std::fs::write(
        &nic,
        format!(
            "<interface type='ethernet'><mac address='52:54:00:12:34:58'/>\
             <target dev='{tap2}' managed='yes'/><model type='virtio'/></interface>"
        ),
    )
    .expect("nic.xml");
    virsh.ok(&format!("attach-device {name} {}", nic.display()), STEP);
    let (line, next) = wait_for_line(&serial, at, "GUEST HOTPLUG NET OK slot=", STEP);
    at = next;
    assert!(line.ends_with(" mac=52:54:00:12:34:58"), "{line}");
    assert!(link_exists(&tap2), "libvirt's tap {tap2} is not there");
    note("nic attached", virsh.ok(&format!("domiflist {name}"), STEP));
    virsh.ok(&format!("detach-device {name} {}", nic.display()), STEP);
    let (_, next) = wait_for_line(&serial, at, "GUEST HOTPLUG REMOVED slot=", STEP);
    at = next;
    note("nic detached", virsh.ok(&format!("domiflist {name}"), STEP));

    // The monitor, through libvirt.
    let answer = virsh.ok(
        &format!("qemu-monitor-command {name} '{{\"execute\":\"query-status\"}}'"),
        STEP,
    );
    let answer: serde_json::Value =
        serde_json::from_str(&answer.join("")).unwrap_or_else(|e| panic!("{answer:?}: {e}"));
    note("query-status", vec![answer["return"].to_string()]);

    // ACPI shutdown: the guest powers off, libvirt ends the domain (on_poweroff destroy).
    virsh.ok(&format!("shutdown {name} --mode acpi"), STEP);
    let (_, next) = wait_for_line(&serial, at, "GUEST POWEROFF", STEP);
    at = next;
    until_gone(&mut virsh, &name);

    // Again, then destroyed.
    virsh.ok(&format!("create {}", xml.display()), STEP);
    wait_for_line(&serial, at, "GUEST HOTPLUG READY", BOOT);
    virsh.ok(&format!("destroy {name}"), STEP);
    until_gone(&mut virsh, &name);
    drop(virsh);

    // Nothing left: no process of the domain, no tap.
    no_process_left(&root.display().to_string());
    assert!(!link_exists(&tap), "the tap {tap} outlived its domain");
    assert!(!link_exists(&tap2), "the tap {tap2} outlived its NIC");
    seen
}

#[test]
fn a_domain_runs_its_lifecycle_as_on_qemu() {
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86");
    let on_qemu = lifecycle(&qemu, "q");
    let on_flotilla = lifecycle(&bin("flotilla-qemu"), "f");
    assert_eq!(
        on_flotilla, on_qemu,
        "virsh shows Flotilla's domain otherwise"
    );
}

/// A small domain for a refusal: the test guest idling, with ACPI or not, `disk` as its
/// one disk element.
fn refused_domain_xml(name: &str, emulator: &Path, acpi: bool, disk: &str) -> String {
    let devices = vec![disk.to_string()];
    let domain = DomainXml {
        name,
        emulator,
        cmdline: None,
        acpi,
        devices,
    };
    domain.render()
}

/// The words libvirt 9.0 puts before the emulator's last log line when the emulator ended
/// during the start: which one depends on whether the process was already reaped when
/// libvirt looked (QEMU's refusals show either, by the same race).
const ENDED: [&str; 2] = [
    "error: internal error: qemu unexpectedly closed the monitor: ",
    "error: internal error: process exited while connecting to monitor: ",
];

/// What the emulator said when `virsh create` of a domain on it was refused, as virsh
/// showed it: libvirt's words around it are checked, the domain is checked gone with
/// nothing of it left, and the driver answering on.
fn refused(
    virsh: &mut Virsh,
    root: &Path,
    name: &str,
    emulator: &Path,
    (acpi, disk): (bool, &str),
) -> String {
    let xml = root.join(format!("{name}.xml"));
    let text = refused_domain_xml(name, emulator, acpi, disk);
    std::fs::write(&xml, text).expect("domain xml");
    let out = virsh.run(&format!("create {}", xml.display()), STEP);
    let [first, second] = &out[..] else {
        panic!("{name}: not two error lines: {out:?}");
    };
    assert_eq!(
        first,
        &format!("error: Failed to create domain from {}", xml.display())
    );
    let said = (ENDED.iter())
        .find_map(|prefix| second.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("{name}: libvirt did not show the emulator's words: {out:?}"));
    // The driver is alive and has no such domain; the emulator is gone.
    let listed = virsh.ok("list --all --name", STEP);
    assert!(
        !listed.iter().any(|l| l == name),
        "{name} listed: {listed:?}"
    );
    no_process_left(&xml.display().to_string());
    said.to_string()
}

/// What flotilla-qemu refuses reaches virsh in its own words, as libvirt shows QEMU's: the
/// emulator's last log line after "qemu unexpectedly closed the monitor" or "process
/// exited while connecting to monitor" (libvirt reads the log when the monitor connection
/// it made ends). Flotilla refuses within milliseconds,
/// before libvirt connects: a refused start keeps the monitor's listening socket until
/// libvirt's connection is pending (chardev/linger.rs); without it virsh only said "failed
/// to connect to monitor socket: Connection refused". Refused by the command line's
/// translation (an IDE disk: no such device; a domain without ACPI) and by the gateway at its start (a qcow2
/// disk whose image is not qcow2, which QEMU 7.2 refuses too, in the same words).
#[test]
fn refusals_reach_virsh_readably() {
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86");
    let dir = TempDir::new("libvirt-refused");
    let _leftovers = Leftovers(dir.path().display().to_string());
    let root = dir.path();
    let flotilla = bin("flotilla-qemu");
    std::fs::write(root.join("raw.img"), vec![0u8; 1 << 20]).expect("raw.img");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        path_arg(&root.join("disk.qcow2")),
        "64M",
    ]);
    let disk = |file: &str, bus: &str, dev: &str| qcow2_disk(&root.join(file), bus, dev);
    let mut virsh = Virsh::start(root);

    let acpi = true;
    let ide = disk("disk.qcow2", "ide", "hda");
    let ide = refused(&mut virsh, root, "ide", &flotilla, (acpi, &ide));
    assert_eq!(
        ide,
        "flotilla-qemu: -device ide-hd,bus=ide.0,unit=0,drive=libvirt-1-format,id=ide0-0-0,\
         bootindex=1: 'ide-hd' is not a valid device model name"
    );

    // libvirt writes -no-acpi for a domain without <acpi/>, which QEMU takes.
    let vda = disk("disk.qcow2", "virtio", "vda");
    let no_acpi = refused(&mut virsh, root, "noacpi", &flotilla, (false, &vda));
    assert_eq!(
        no_acpi,
        "flotilla-qemu: -no-acpi: Flotilla's PC always has ACPI (its power button, PCI and \
         vCPU hotplug): add <acpi/> to the domain's <features>"
    );

    // VNC: refused by libvirt itself, before any emulator runs (flotilla-qemu has no
    // query-vnc, as a QEMU built without VNC: docs/qmp-coverage.md "not built").
    let xml = root.join("vnc.xml");
    let vnc = format!("{vda}<graphics type='vnc'/><video><model type='none'/></video>");
    std::fs::write(&xml, refused_domain_xml("vnc", &flotilla, acpi, &vnc)).expect("vnc.xml");
    let out = virsh.run(&format!("create {}", xml.display()), STEP);
    assert_eq!(
        out,
        [
            format!("error: Failed to create domain from {}", xml.display()),
            "error: unsupported configuration: vnc graphics are not supported with this QEMU"
                .to_string(),
        ]
    );

    // Refused at the gateway's start, as QEMU refuses it.
    let bad = disk("raw.img", "virtio", "vda");
    let ours = refused(&mut virsh, root, "notqcow2", &flotilla, (acpi, &bad));
    let theirs = refused(&mut virsh, root, "notqcow2", &qemu, (acpi, &bad));
    let node = r#"{"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage","backing":null}"#;
    assert_eq!(
        ours,
        format!("qmp-gateway: error: --blockdev {node}: Image is not in qcow2 format")
    );
    assert!(
        theirs.ends_with(&format!(
            "qemu-system-x86_64: -blockdev {node}: Image is not in qcow2 format"
        )),
        "{theirs}"
    );
    drop(virsh);
    no_process_left(&root.display().to_string());
}

/// Waits for the guest's next `GUEST MIG blk N ok` line after byte `at` whose N is above
/// `verified` (its disk I/O goes on, every chunk read back intact); fails on a `GUEST
/// ERROR` line. Returns (N, where to look next).
fn guest_io_goes_on(serial: &Path, at: usize, verified: u64) -> (u64, usize) {
    let deadline = Instant::now() + STEP;
    let mut at = at;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (line, next) = wait_for_line(serial, at, "GUEST ", left);
        at = next;
        assert!(!line.starts_with("GUEST ERROR"), "the guest: {line}");
        let n = (line.strip_prefix("GUEST MIG blk "))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n.filter(|&n| n > verified) {
            return (n, at);
        }
    }
}

/// Drives one domain on `emulator` through libvirt's block operations while its guest
/// does disk I/O: two external disk-only snapshots, a pull of the middle image into the
/// top, an active commit pivoted to the base, a copy pivoted to; `domblklist` after each.
/// What virsh showed (paths as DIR), for the comparison of the two emulators.
fn block_jobs(emulator: &Path, tag: &str) -> Vec<String> {
    let dir = TempDir::new(&format!("libvirt-jobs-{tag}"));
    let _leftovers = Leftovers(dir.path().display().to_string());
    let root = dir.path();
    let name = format!("jobs-{tag}");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        path_arg(&root.join("disk.qcow2")),
        "64M",
    ]);
    let xml = root.join("dom.xml");
    // The test guest's migrate-dirty scenario with block I/O (`mig-blk=1`: it writes,
    // reads back and checks 1 MiB of its disk over and over, each pass checking what the
    // last one wrote), on a qcow2 disk, the console in a file.
    let domain = DomainXml {
        name: &name,
        emulator,
        cmdline: Some("scenario=migrate-dirty dirty-mib=4 mig-blk=1 mig-report-ms=3600000"),
        acpi: true,
        devices: vec![
            qcow2_disk(&root.join("disk.qcow2"), "virtio", "vda"),
            serial_file(root),
        ],
    };
    std::fs::write(&xml, domain.render()).expect("dom.xml");
    let serial = root.join("serial.log");
    let mut seen = Vec::new();
    let mut virsh = Virsh::start(root);
    let mut step = |virsh: &mut Virsh, what: &str, command: &str| {
        let out = virsh.ok(&command.replace("NAME", &name), STEP);
        let list = virsh.ok(&format!("domblklist {name}"), STEP);
        let text = [out, list].concat().join("\n");
        seen.push(format!(
            "{what}: {}",
            text.replace(&root.display().to_string(), "DIR")
                .replace(&name, "NAME")
        ));
    };
    virsh.ok(&format!("create {}", xml.display()), STEP);
    let (_, at) = wait_for_line(&serial, 0, "GUEST MIG ready", BOOT);
    let (mut verified, mut at) = guest_io_goes_on(&serial, at, 0);
    let dir_arg = root.display().to_string();
    for (what, command) in [
        (
            "snapshot s1",
            format!(
                "snapshot-create-as NAME s1 --disk-only --atomic --no-metadata \
                 --diskspec vda,file={dir_arg}/s1.qcow2"
            ),
        ),
        (
            "snapshot s2",
            format!(
                "snapshot-create-as NAME s2 --disk-only --atomic --no-metadata \
                 --diskspec vda,file={dir_arg}/s2.qcow2"
            ),
        ),
        (
            "blockpull",
            format!("blockpull NAME vda --base {dir_arg}/disk.qcow2 --wait"),
        ),
        (
            "blockcommit",
            "blockcommit NAME vda --active --pivot --wait".to_string(),
        ),
        (
            "blockcopy",
            format!("blockcopy NAME vda {dir_arg}/copy.qcow2 --wait --pivot --transient-job"),
        ),
    ] {
        step(&mut virsh, what, &command);
        // The guest's I/O goes on, on the chain the step left, and reads back what it
        // wrote before.
        (verified, at) = guest_io_goes_on(&serial, at, verified);
    }
    virsh.ok(&format!("destroy {name}"), STEP);
    until_gone(&mut virsh, &name);
    drop(virsh);
    // Nothing holds the images any more.
    no_process_left(&root.display().to_string());
    // The copy is whole: no backing file, clean.
    let copy = root.join("copy.qcow2");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", path_arg(&copy)])
        .output()
        .expect("qemu-img info");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("qemu-img info");
    assert_eq!(info["backing-filename"], serde_json::Value::Null, "{info}");
    qemu_img_ok(&["check", "-q", path_arg(&copy)]);
    seen
}

/// libvirt's block operations (issue 18): `snapshot-create-as --disk-only` (libvirt
/// creates the overlay through blockdev-create's jobs, then a transaction of
/// blockdev-snapshot), `blockpull` (block-stream), `blockcommit --active --pivot`
/// (block-commit, job-complete) and `blockcopy --pivot` (blockdev-create, blockdev-mirror,
/// job-complete), each job driven by JOB_STATUS_CHANGE events and ended by job-dismiss,
/// run on flotilla-qemu as on QEMU 7.2 while the guest's disk I/O goes on and checks
/// itself; virsh shows the same of both.
#[test]
fn block_jobs_run_as_on_qemu() {
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86");
    let on_qemu = block_jobs(&qemu, "q");
    let on_flotilla = block_jobs(&bin("flotilla-qemu"), "f");
    assert_eq!(
        on_flotilla, on_qemu,
        "virsh shows Flotilla's block jobs otherwise"
    );
}

/// Reads the console `pty` (the terminal's other end) until `text` came, for `timeout`;
/// what was read, `text` included.
fn read_console_until(pty: &mut std::fs::File, text: &str, timeout: Duration) -> String {
    use std::io::Read;
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(text) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {text:?} on the console within {timeout:?}; read:\n{}",
            String::from_utf8_lossy(&seen)
        );
        let mut poll = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(pty),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if nix::poll::poll(&mut poll, ms).expect("poll") == 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        let n = pty.read(&mut buf).expect("reading the console");
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The console on a pty (libvirt's default `<serial type='pty'/>`, `virsh ttyconsole`) and
/// `virsh reboot` on one emulator: the guest's lines read from the terminal, through a
/// reboot (libvirt presses the ACPI power button, the guest powers off, libvirt resets the
/// VM and lets it run again: QEMU's -no-shutdown and system_reset); what virsh showed.
fn console_and_reboot(emulator: &Path, tag: &str) -> Vec<String> {
    let dir = TempDir::new(&format!("libvirt-console-{tag}"));
    let _leftovers = Leftovers(dir.path().display().to_string());
    let root = dir.path();
    let name = format!("con-{tag}");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        path_arg(&root.join("disk.qcow2")),
        "64M",
    ]);
    let xml = root.join("dom.xml");
    // The pci-hotplug guest on a qcow2 disk, its console on a pty.
    let domain = DomainXml {
        name: &name,
        emulator,
        cmdline: Some(HOTPLUG),
        acpi: true,
        devices: vec![
            qcow2_disk(&root.join("disk.qcow2"), "virtio", "vda"),
            "<serial type='pty'/>".into(),
            "<console type='pty'/>".into(),
        ],
    };
    std::fs::write(&xml, domain.render()).expect("dom.xml");
    let mut seen = Vec::new();
    let mut virsh = Virsh::start(root);
    virsh.ok(&format!("create {}", xml.display()), STEP);
    let tty = virsh.ok(&format!("ttyconsole {name}"), STEP);
    let [path] = &tty[..] else {
        panic!("ttyconsole: {tty:?}")
    };
    assert!(path.starts_with("/dev/pts/"), "{path}");
    seen.push("ttyconsole: a /dev/pts/ path".to_string());
    let mut pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .unwrap_or_else(|e| panic!("opening the console {path}: {e}"));
    // Raw: no echo of the guest's output back into its UART, no line editing.
    let mut mode = nix::sys::termios::tcgetattr(&pty).expect("tcgetattr");
    nix::sys::termios::cfmakeraw(&mut mode);
    nix::sys::termios::tcsetattr(&pty, nix::sys::termios::SetArg::TCSANOW, &mode)
        .expect("tcsetattr");
    read_console_until(&mut pty, "GUEST HOTPLUG READY", BOOT);
    virsh.ok(&format!("reboot {name}"), STEP);
    let after = read_console_until(&mut pty, "GUEST POWEROFF", STEP);
    assert!(!after.contains("GUEST HOTPLUG READY"), "{after}");
    // The guest's first line after the reset, then its whole boot.
    read_console_until(&mut pty, "GUEST HOTPLUG READY", BOOT);
    seen.push(format!(
        "after reboot: {}",
        virsh
            .ok(&format!("domstate {name} --reason"), STEP)
            .join(" ")
    ));
    virsh.ok(&format!("destroy {name}"), STEP);
    until_gone(&mut virsh, &name);
    drop(virsh);
    no_process_left(&root.display().to_string());
    seen
}

#[test]
fn console_and_reboot_as_on_qemu() {
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86");
    let on_qemu = console_and_reboot(&qemu, "q");
    let on_flotilla = console_and_reboot(&bin("flotilla-qemu"), "f");
    assert_eq!(on_flotilla, on_qemu, "ours, then QEMU's");
}

/// The vCPU each emulator's domain gets here. QEMU 7.2 cannot set arch-capabilities' MSR
/// on kvm-pvm: its domains disable the feature. That KVM keeps the feature whatever the
/// VMM sets, and Flotilla refuses a feature off that the guest would still have
/// (gateway_probe's qom test): there, its domain leaves it on. On VMX/SVM both run the
/// same domain.
fn cpu_for(emulator: &Path) -> &'static str {
    match emulator.ends_with("flotilla-qemu") && kvm_is_pvm() {
        true => "<cpu mode='host-passthrough'/>",
        false => {
            "<cpu mode='host-passthrough'>\
             <feature policy='disable' name='arch-capabilities'/></cpu>"
        }
    }
}

/// The guest goes on: a disk attached through `virsh` (on the domain's libvirt now) is
/// found and used by it (a line after byte `at` of its console), then detached.
fn guest_alive(virsh: &mut Virsh, name: &str, root: &Path, serial: &Path, at: usize) -> usize {
    let disk2 = root.join("disk2.qcow2");
    virsh.ok(
        &format!(
            "attach-disk {name} {} vdb --driver qemu --subdriver qcow2 --targetbus virtio",
            disk2.display()
        ),
        STEP,
    );
    let (line, at) = wait_for_line(serial, at, "GUEST HOTPLUG BLK OK slot=", STEP);
    assert!(line.contains(" capacity=65536 "), "{line}");
    virsh.ok(&format!("detach-disk {name} vdb"), STEP);
    let (_, at) = wait_for_line(serial, at, "GUEST HOTPLUG REMOVED slot=", STEP);
    at
}

/// A root for a domain that moves: its disks, its domain XML; the domain's name.
fn moving_root(root: &Path, emulator: &Path, tag: &str) -> String {
    for (image, size) in [("disk.qcow2", "64M"), ("disk2.qcow2", "32M")] {
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            path_arg(&root.join(image)),
            size,
        ]);
    }
    let name = format!("mv-{tag}");
    // The lifecycle's guest (pci-hotplug: its disk checked with I/O at boot, a hot-added
    // one too, the ACPI power button) on its qcow2 disk, a NIC on a tap libvirt makes,
    // the console in a file. The tap is named by libvirt (vnetN), which leaves the name
    // out of what it sends the destination: a tap of one name cannot be on both sides
    // of a migration on one host.
    let domain = DomainXml {
        name: &name,
        emulator,
        cmdline: Some(HOTPLUG),
        acpi: true,
        devices: vec![
            qcow2_disk(&root.join("disk.qcow2"), "virtio", "vda"),
            "<interface type='ethernet'><mac address='52:54:00:12:34:57'/>\
             <model type='virtio'/></interface>"
                .to_string(),
            serial_file(root),
        ],
    };
    std::fs::write(root.join("dom.xml"), domain.render()).expect("dom.xml");
    name
}

/// Held by a test whose domain has a tap libvirt names (vnetN) while it runs: two
/// libvirts naming at once could pick one name, and a test would then take (or delete)
/// the other's tap.
static AUTO_NAMED_TAPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The tap of the domain's one NIC (`domiflist`), deleted should the test stop half-way.
fn the_tap(virsh: &mut Virsh, name: &str) -> TapLeftover {
    let out = virsh.ok(&format!("domiflist {name}"), STEP);
    // Lines of `TAP ethernet - virtio MAC` (virsh's header is not among them).
    let taps: Vec<&str> = (out.iter())
        .filter(|l| l.split_whitespace().nth(1) == Some("ethernet"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let [tap] = taps[..] else {
        panic!("not one interface: {out:?}");
    };
    assert!(link_exists(tap), "{tap} is not there: {out:?}");
    TapLeftover(tap.to_string())
}

/// The frames the VM sent out of its tap (domifstat counts as the domain sees it: its
/// tx is the tap's rx; the host's own frames to the VM, IPv6's as the tap comes up, are
/// its rx).
fn frames_out(virsh: &mut Virsh, name: &str, tap: &str) -> u64 {
    let out = virsh.ok(&format!("domifstat {name} {tap}"), STEP);
    (out.iter())
        .find_map(|l| l.strip_prefix(&format!("{tap} tx_packets ")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tx_packets in {out:?}"))
}

/// After a migration or a restore the NIC announces the VM from its new tap (RARP
/// frames, QEMU's self-announce, which the destination sends once the VM runs): the
/// backend there carries frames. Waits for the first (a step at most).
fn announced(virsh: &mut Virsh, name: &str, tap: &str) {
    let deadline = Instant::now() + STEP;
    while frames_out(virsh, name, tap) == 0 {
        assert!(
            Instant::now() < deadline,
            "{name}: nothing came out of {tap}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (a step at most) until no process names `needle`.
fn no_process_left(needle: &str) {
    let deadline = Instant::now() + STEP;
    while !processes_naming(needle).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = processes_naming(needle);
    assert!(left.is_empty(), "processes left: {left:?}");
}

/// Waits until no process names `needle` and no socket is left under `dir`.
fn nothing_left(needle: &str, dir: &Path) {
    no_process_left(needle);
    let out = Command::new("find")
        .arg(dir)
        .args(["-type", "s"])
        .output()
        .expect("find");
    let sockets = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(sockets.trim().is_empty(), "sockets left: {sockets}");
}

/// `virsh save` and `virsh restore` of a running domain on `emulator`: the saved domain
/// is gone, the restored one runs and its guest goes on (a disk attached and used).
/// libvirt saves with `migrate fd:migrate` (a getfd of the file) and restores by starting
/// the emulator with `-incoming defer` and the file as an inherited fd, then
/// `migrate-incoming fd:N` (a number: QEMU's monitor_fd_param takes it as a descriptor).
/// What virsh showed, for the comparison.
fn save_restore(emulator: &Path, tag: &str) -> Vec<String> {
    // Dropped last: after the taps are gone.
    let _taps = AUTO_NAMED_TAPS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new(&format!("libvirt-save-{tag}"));
    let _leftovers = Leftovers(dir.path().display().to_string());
    let root = dir.path();
    let name = moving_root(root, emulator, tag);
    let (xml, serial, saved) = (
        root.join("dom.xml"),
        root.join("serial.log"),
        root.join("saved.img"),
    );
    let mut seen = Vec::new();
    let mut note = |what: &str, out: Vec<String>| {
        let text = out.join("\n").replace(&root.display().to_string(), "DIR");
        seen.push(format!("{what}: {}", text.replace(&name, "NAME")));
    };
    let mut virsh = Virsh::start(root);
    virsh.ok(&format!("create {}", xml.display()), STEP);
    let (_, at) = wait_for_line(&serial, 0, "GUEST HOTPLUG READY", BOOT);
    let before = the_tap(&mut virsh, &name);
    note(
        "save",
        virsh.ok(&format!("save {name} {}", saved.display()), STEP),
    );
    note("saved", virsh.ok("list --all --name", STEP));
    note(
        "restore",
        virsh.ok(&format!("restore {}", saved.display()), STEP),
    );
    let state = virsh.ok(&format!("domstate {name} --reason"), STEP);
    assert_eq!(state, ["running (restored)"]);
    note("restored", state);
    let after = the_tap(&mut virsh, &name);
    announced(&mut virsh, &name, &after.0);
    guest_alive(&mut virsh, &name, root, &serial, at);
    note(
        "after",
        virsh.ok(&format!("domstate {name} --reason"), STEP),
    );
    virsh.ok(&format!("destroy {name}"), STEP);
    until_gone(&mut virsh, &name);
    drop(virsh);
    nothing_left(&root.display().to_string(), root);
    for tap in [before, after] {
        assert!(!link_exists(&tap.0), "{} left", tap.0);
    }
    seen
}

#[test]
fn save_and_restore_as_on_qemu() {
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86");
    let on_qemu = save_restore(&qemu, "q");
    let on_flotilla = save_restore(&bin("flotilla-qemu"), "f");
    assert_eq!(
        on_flotilla, on_qemu,
        "virsh shows Flotilla's save/restore otherwise"
    );
}

/// `virsh migrate --live` of a running domain on `emulator` from the embedded driver
/// (source) to a libvirtd run by hand in a mount namespace of its own (destination,
/// `Libvirtd`), over tcp on loopback (`--migrateuri tcp://127.0.0.1`: libvirt would use
/// the host's name otherwise; `--unsafe`: the disk is on both sides' local file system,
/// the same file). libvirt turns on return-path and pause-before-switchover on the
/// source (migrate-continue after pre-switchover), return-path and late-block-activate on
/// the destination (started with -S and `-incoming defer`, then `migrate-incoming
/// tcp:[::]:PORT`, `cont` once the source completed). The guest goes on at the
/// destination (a disk attached there and used). What virsh showed, for the comparison.
fn live_migration(emulator: &Path, tag: &str, p2p: bool) -> Vec<String> {
    // Dropped last: after the taps are gone.
    let _taps = AUTO_NAMED_TAPS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new(&format!("libvirt-mig-{tag}"));
    let root = dir.path().join("src");
    let dest = dir.path().join("dst");
    std::fs::create_dir_all(&root).expect("src");
    std::fs::create_dir_all(&dest).expect("dst");
    let root = root.as_path();
    // Both sides' emulators name the source root (the disk, the console): ended by pid
    // should the test stop half-way. Dropped last: after the libvirtd.
    let _leftovers = Leftovers(dir.path().display().to_string());
    let name = moving_root(root, emulator, tag);
    let (xml, serial) = (root.join("dom.xml"), root.join("serial.log"));
    let mut seen = Vec::new();
    let mut note = |what: &str, out: Vec<String>| {
        let text = out
            .join("\n")
            .replace(&dir.path().display().to_string(), "DIR");
        seen.push(format!("{what}: {}", text.replace(&name, "NAME")));
    };
    let libvirtd = Libvirtd::start(&dest);
    let mut source = Virsh::start(root);
    source.ok(&format!("create {}", xml.display()), STEP);
    let (_, at) = wait_for_line(&serial, 0, "GUEST HOTPLUG READY", BOOT);
    let there = the_tap(&mut source, &name);
    let p2p = if p2p { " --p2p" } else { "" };
    note(
        "migrate",
        source.ok(
            &format!(
                "migrate --live --unsafe{p2p} {name} {} --migrateuri tcp://127.0.0.1",
                libvirtd.uri
            ),
            STEP,
        ),
    );
    let left = source.ok("list --all --name", STEP);
    assert!(left.is_empty(), "still on the source: {left:?}");
    note("source", left);
    let mut destination = Virsh::connect(&libvirtd.uri, &dest.join("virsh.log"));
    let state = destination.ok(&format!("domstate {name} --reason"), STEP);
    assert_eq!(state, ["running (migrated)"]);
    note("destination", state);
    // The source's tap is gone with the source's VM; the destination's carries frames.
    assert!(!link_exists(&there.0), "{} left at the source", there.0);
    let here = the_tap(&mut destination, &name);
    announced(&mut destination, &name, &here.0);
    guest_alive(&mut destination, &name, root, &serial, at);
    note(
        "after",
        destination.ok(&format!("domstate {name} --reason"), STEP),
    );
    destination.ok(&format!("destroy {name}"), STEP);
    until_gone(&mut destination, &name);
    drop(destination);
    drop(source);
    let pid = libvirtd.pid();
    drop(libvirtd);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "libvirtd {pid} did not end"
    );
    nothing_left(&dir.path().display().to_string(), dir.path());
    assert!(!link_exists(&here.0), "{} left", here.0);
    seen
}

#[test]
fn live_migration_between_two_libvirts_as_on_qemu() {
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86");
    for p2p in [false, true] {
        let tag = if p2p { "p" } else { "d" };
        let on_qemu = live_migration(&qemu, &format!("q{tag}"), p2p);
        let on_flotilla = live_migration(&bin("flotilla-qemu"), &format!("f{tag}"), p2p);
        assert_eq!(
            on_flotilla, on_qemu,
            "virsh shows Flotilla's migration otherwise (p2p: {p2p})"
        );
    }
}
