//! The translation of whole command lines (libvirt 9.0's, captured against QEMU 7.2) and
//! each refusal's words.

use super::*;

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

fn run(line: &str) -> Result<Vec<String>, String> {
    match translate(&words(line), "qemu-system-x86_64") {
        Ok(Outcome::Run(a)) => Ok(a),
        Ok(Outcome::Print(p)) => Err(format!("printed {p}")),
        Err(e) => Err(e.to_string()),
    }
}

/// libvirt 9.0's argv for a small KVM domain, as it wrote it for QEMU 7.2 (issue 18's
/// capture), with the machine Flotilla's query-machines offers (`pc`: libvirt writes the
/// name it was given); its CPU feature turned off as QEMU on kvm-pvm needs it.
const LIBVIRT_DOMAIN: &str = r#"-name guest=flot1,debug-threads=on -S -object {"qom-type":"secret","id":"masterKey0","format":"raw","file":"/run/lv/master-key.aes"} -machine pc,usb=off,dump-guest-core=off,memory-backend=pc.ram -accel kvm -cpu host,migratable=on,arch-capabilities=off -m 128 -object {"qom-type":"memory-backend-ram","id":"pc.ram","size":134217728} -overcommit mem-lock=off -smp 1,sockets=1,cores=1,threads=1 -uuid afffbc2f-7592-4c2d-9207-cf3c91d6eabd -display none -no-user-config -nodefaults -chardev socket,id=charmonitor,fd=7,server=on,wait=off -mon chardev=charmonitor,id=monitor,mode=control -rtc base=utc -no-shutdown -boot strict=on -kernel /g/guest -blockdev {"driver":"file","filename":"/lv/disk.qcow2","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"} -blockdev {"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage","backing":null} -device {"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x3","drive":"libvirt-1-format","id":"virtio-disk0","bootindex":1} -netdev {"type":"tap","fd":"11","id":"hostnet0"} -device {"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:cc:d4:2c","bus":"pci.0","addr":"0x2"} -add-fd set=0,fd=6,opaque=serial0-source -chardev file,id=charserial0,path=/dev/fdset/0,append=on -device {"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0} -audiodev {"id":"audio1","driver":"none"} -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -msg timestamp=on"#;

#[test]
fn libvirts_domain_line_becomes_the_gateways() {
    let got = run(LIBVIRT_DOMAIN).unwrap();
    let want = [
        "--name",
        "flot1",
        "-S",
        "--cpu",
        "host,migratable=on,arch-capabilities=off",
        "--cpus",
        "1",
        "--uuid",
        "afffbc2f-7592-4c2d-9207-cf3c91d6eabd",
        "--chardev",
        "socket,id=charmonitor,fd=7,server=on,wait=off",
        "--mon",
        "chardev=charmonitor,id=monitor,mode=control",
        "--no-shutdown",
        "--kernel",
        "/g/guest",
        "--blockdev",
        r#"{"driver":"file","filename":"/lv/disk.qcow2","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}"#,
        "--blockdev",
        r#"{"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage","backing":null}"#,
        "--device",
        r#"{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x3","drive":"libvirt-1-format","id":"virtio-disk0","bootindex":1}"#,
        "--netdev",
        "tap,fd=11,id=hostnet0",
        "--device",
        r#"{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:cc:d4:2c","bus":"pci.0","addr":"0x2"}"#,
        "--add-fd",
        "set=0,fd=6,opaque=serial0-source",
        "--chardev",
        "file,id=charserial0,path=/dev/fdset/0,append=on",
        "--memory",
        "128",
        "--object",
        "secret,file=/run/lv/master-key.aes,format=raw,id=masterKey0",
        "--serial",
        "chardev:charserial0",
    ];
    assert_eq!(got, want);
}

#[test]
fn libvirts_second_probe_line_takes_tcg_with_the_none_machine() {
    let tail = ["--machine", "none", "--accel", "tcg"];
    for line in [
        "-machine none,accel=tcg",
        "-accel tcg -machine none",
        "-machine none,accel=tcg:kvm",
    ] {
        assert_eq!(run(line).unwrap(), tail, "{line}");
    }
    // kvm first: KVM, the default, so no --accel.
    assert_eq!(
        run("-machine none,accel=kvm:tcg").unwrap(),
        ["--machine", "none"]
    );
    assert_eq!(
        run("-machine none,accel=foo:tcg").unwrap(),
        tail,
        "QEMU skips the ones it lacks"
    );
}

#[test]
fn libvirts_probe_line_becomes_the_gateways() {
    let got = run("-S -no-user-config -nodefaults -nographic -machine none,accel=kvm:tcg -qmp unix:/lv/qmp.monitor,server=on,wait=off -pidfile /lv/qmp.pid -daemonize").unwrap();
    let want = [
        "-S",
        "--qmp",
        "/lv/qmp.monitor",
        "--pidfile",
        "/lv/qmp.pid",
        "--daemonize",
        "--machine",
        "none",
    ];
    assert_eq!(got, want);
}

#[test]
fn the_small_forms_translate() {
    // -m's own size without a backend; -smp with maxcpus; QEMU's default serial.
    assert_eq!(
        run("-m size=256M,slots=2,maxmem=1G -smp 2,maxcpus=4 -nographic").unwrap(),
        [
            "--cpus",
            "2",
            "--max-cpus",
            "4",
            "--memory",
            "size=256M,slots=2,maxmem=1G",
            "--serial",
            "stdout"
        ]
    );
    // The backend's size when -m is not given; keyval objects as they are; -qmp tcp.
    assert_eq!(
        run("-machine pc,memory-backend=r -object memory-backend-memfd,id=r,size=64M -object iothread,id=io0 -qmp tcp:127.0.0.1:4444,server,nowait -append a=b -initrd /i -incoming defer -enable-kvm -M pc,accel=kvm").unwrap(),
        ["--qmp-tcp", "127.0.0.1:4444", "--cmdline", "a=b", "--initrd", "/i", "--incoming", "defer", "--memory", "67108864B", "--object", "iothread,id=io0", "--serial", "none"]
    );
    // A JSON value with a comma is doubled for the key=value form.
    assert_eq!(
        run(r#"-object {"qom-type":"secret","id":"s","data":"a,b"}"#).unwrap(),
        ["--object", "secret,data=a,,b,id=s", "--serial", "none"]
    );
    assert_eq!(run("-serial stdio").unwrap(), ["--serial", "stdout"]);
    assert_eq!(
        run("-device isa-serial,chardev=c0 -device virtio-balloon-pci,id=b").unwrap(),
        [
            "--device",
            "virtio-balloon-pci,id=b",
            "--serial",
            "chardev:c0"
        ]
    );
}

#[test]
fn version_and_help_are_qemu_shaped_and_say_flotilla() {
    let printed = |line: &str| match translate(&words(line), "flotilla-qemu") {
        Ok(Outcome::Print(p)) => p,
        other => panic!("{other:?}"),
    };
    let v = printed("-version");
    let first = v.lines().next().unwrap();
    assert!(
        first.starts_with("QEMU emulator version 7.2.0 (flotilla "),
        "{v}"
    );
    assert!(v.contains("Flotilla, not QEMU"), "{v}");
    assert_eq!(printed("-S --version"), v);
    let h = printed("-help");
    assert!(
        h.starts_with(&v) && h.contains("usage: flotilla-qemu [options]"),
        "{h}"
    );
}

/// Each refusal: QEMU 7.2's text where QEMU refuses the same (tests/tests/flotilla_qemu.rs
/// runs QEMU on these lines and wants the same text), Flotilla's own otherwise.
pub const REFUSED_AS_QEMU: &[(&str, &str)] = &[
    ("-foo", "-foo: invalid option"),
    ("-m", "-m: requires an argument"),
    (
        "-machine foo",
        "unsupported machine type\nUse -machine help to list supported machines",
    ),
    ("-accel foo", "-accel foo: invalid accelerator foo"),
    ("-machine none,accel=foo", "invalid accelerator foo"),
    ("-cpu foo", "unable to find CPU model 'foo'"),
    (
        "-cpu host,foo=off",
        "can't apply global host-x86_64-cpu.foo=off: Property 'host-x86_64-cpu.foo' not found",
    ),
    ("-cpu host,+foo", "Property 'host-x86_64-cpu.foo' not found"),
    (
        "-cpu host,arch-capabilities=bogus",
        "can't apply global host-x86_64-cpu.arch-capabilities=bogus: Parameter \
         'arch-capabilities' expects 'on' or 'off'",
    ),
    (
        "-device foo",
        "-device foo: 'foo' is not a valid device model name",
    ),
    (
        "-name guest=x,foo=1",
        "-name guest=x,foo=1: Invalid parameter 'foo'",
    ),
    ("-smp 1,foo=2", "Parameter 'smp.foo' is unexpected"),
    (
        "-uuid zzz",
        "-uuid zzz: failed to parse UUID string: wrong format",
    ),
    (
        "-add-fd set=0",
        "-add-fd set=0: fd option is required and must be non-negative",
    ),
    (
        "-add-fd fd=3",
        "-add-fd fd=3: set option is required and must be non-negative",
    ),
    (
        "-boot strict=maybe",
        "Parameter 'boot.strict' expects 'on' or 'off'",
    ),
    (
        "-msg timestamp=maybe",
        "-msg timestamp=maybe: Parameter 'timestamp' expects 'on' or 'off'",
    ),
    (
        "-overcommit mem-lock=maybe",
        "-overcommit mem-lock=maybe: Parameter 'mem-lock' expects 'on' or 'off'",
    ),
    (
        "-sandbox foo",
        "-sandbox foo: Parameter 'enable' expects 'on' or 'off'",
    ),
    (
        "-machine pc,bogus=1",
        "Property 'pc-machine.bogus' not found",
    ),
    (
        "-object memory-backend-ram,id=r,size=64M -machine pc,memory-backend=r -m 128",
        "Machine memory size does not match the size of the memory backend",
    ),
];

#[test]
fn refusals_use_qemus_words() {
    for (line, want) in REFUSED_AS_QEMU {
        assert_eq!(run(line), Err(want.to_string()), "{line}");
    }
}

#[test]
fn what_flotilla_cannot_honour_is_refused_saying_why() {
    for (line, want) in [
        ("-accel tcg", "Flotilla runs guests on KVM only: the tcg accelerator is taken with -machine none (no guest code runs)"),
        ("-machine pc,accel=tcg:kvm", "Flotilla runs guests on KVM only: the tcg accelerator is taken with -machine none (no guest code runs)"),
        ("-machine pc-i440fx-7.2", "unsupported machine type\nUse -machine help to list supported machines"),
        ("-machine pc,usb=on", "-machine pc,usb=on: Flotilla's PC has no USB controller"),
        ("-cpu host,level=22", "can't apply global host-x86_64-cpu.level=22: Property 'host-x86_64-cpu.level' not found"),
        ("-smp 4,sockets=2,cores=2", "-smp 4,sockets=2,cores=2: Flotilla's vCPUs are one socket of cores with one thread each: give sockets=1,cores=MAXCPUS,threads=1 or leave the topology out"),
        ("-machine pc,memory-backend=r", "Memory backend 'r' not found"),
        ("-machine pc,memory-backend=r -object memory-backend-file,id=r,size=1G,mem-path=/x", "Flotilla's guest RAM is a memfd of its own: its backend 'r' can be memory-backend-ram or memory-backend-memfd, not memory-backend-file"),
        ("-machine pc,memory-backend=r -object memory-backend-ram,id=r,size=1G,share=on", "Flotilla's guest RAM is a memfd of its own: its backend 'r' takes only a size, not 'share'"),
        ("-display gtk", "-display gtk: Flotilla has no display: -display none only"),
        ("-rtc base=localtime", "-rtc base=localtime: Flotilla has no RTC: the guest's wall clock is kvmclock's, UTC (base=utc, clock=host, driftfix=none only)"),
        ("-boot order=c", "-boot order=c: Flotilla has no firmware and boots -kernel directly: -boot takes strict= and menu=off only"),
        ("-overcommit mem-lock=on", "-overcommit mem-lock=on: Flotilla does not support mem-lock=on"),
        ("-audiodev pa,id=a", "-audiodev pa,id=a: Flotilla has no sound devices: -audiodev none only"),
        ("-qmp unix:/q,server=on", "-qmp unix:/q,server=on: Flotilla's QMP listeners are servers that do not wait for a client: give server=on,wait=off"),
        ("-qmp stdio", "-qmp stdio: Flotilla's QMP listeners are servers that do not wait for a client: give server=on,wait=off"),
        ("-device isa-serial,chardev=a -device isa-serial,chardev=b", "-device isa-serial,chardev=b: Flotilla's PC has one UART, COM1, and it is taken"),
        ("-device isa-serial,chardev=a,index=1", "-device isa-serial,chardev=a,index=1: Flotilla's PC has one UART, COM1: isa-serial index=0 only"),
        ("-device isa-serial", "-device isa-serial: Flotilla's isa-serial needs chardev= (a UART without a backend)"),
        ("-no-acpi", "-no-acpi: Flotilla's PC always has ACPI (its power button, PCI and vCPU hotplug): add <acpi/> to the domain's <features>"),
        ("-serial vc", "-serial vc: Flotilla's -serial is none, stdio, chardev:ID or file:PATH"),
        ("disk.img", "disk.img: Flotilla takes disks as -blockdev with -device only, not as a disk image argument"),
        (r#"-object {"qom-type":"iothread"}"#, r#"-object {"qom-type":"iothread"}: Parameter 'id' is missing"#),
        (r#"-netdev {"type":"tap","id":"n","x":{"a":1}}"#, r#"-netdev {"type":"tap","id":"n","x":{"a":1}}: a value the key=value form cannot carry: {"a":1}"#),
        ("-device {", "-device {: EOF while parsing an object at line 1 column 1"),
    ] {
        assert_eq!(run(line), Err(want.to_string()), "{line}");
    }
}
