//! -version and -help. libvirt 9.0 reads the version over QMP (query-version), but tools
//! and people run `-version`: the first line keeps QEMU's shape ("QEMU emulator version
//! X.Y.Z (PACKAGE)") with the QEMU version whose QMP Flotilla speaks and the package that
//! query-version names, Flotilla's; the second line says so in words.

use crate::qmp::protocol::{PACKAGE, QEMU_VERSION};

pub fn version() -> String {
    let (major, minor, micro) = QEMU_VERSION;
    format!(
        "QEMU emulator version {major}.{minor}.{micro}{PACKAGE}\n\
         This is Flotilla, not QEMU: it reads QEMU's command line and speaks QEMU's QMP.\n"
    )
}

pub fn help(program: &str) -> String {
    format!(
        "{}usage: {program} [options]\n\n\
         The QEMU 7.2 options libvirt writes for a KVM x86_64 domain, translated to\n\
         qmp-gateway's (docs/libvirt.md lists what is accepted and refused):\n\
         -name -S -machine pc|none -accel kvm -enable-kvm -cpu host -m -smp -uuid\n\
         -object -overcommit -display none -nographic -no-user-config -nodefaults\n\
         -chardev -mon -qmp -add-fd -rtc -no-shutdown -boot -kernel -initrd -append\n\
         -blockdev -device -netdev -serial -audiodev none -sandbox -msg -pidfile\n\
         -daemonize -incoming -version -help\n",
        version()
    )
}
