//! The test guest on vmm-core: it boots with the configured vCPUs and memory, powers
//! off, reboots, idles until told to stop, and runs ring-3 code.

use std::process::Command;
use std::time::Duration;

use flotilla_tests::{bin, expect_ready_then_poweroff, kvm_is_pvm, test_guest, TempDir, Vm};
use nix::sys::signal::Signal;

const BOOT: Duration = Duration::from_secs(30);

fn vmm(cpus: usize, memory_mib: u64, cmdline: &str) -> Vm {
    let mut cmd = Command::new(bin("vmm-core"));
    cmd.arg("--kernel")
        .arg(test_guest())
        .args(["--cpus", &cpus.to_string()])
        .args(["--memory", &memory_mib.to_string()])
        .args(["--cmdline", cmdline]);
    Vm::spawn(cmd)
}

fn boots_and_powers_off(cpus: usize, memory_mib: u64) {
    let mut vm = vmm(cpus, memory_mib, "scenario=poweroff");
    expect_ready_then_poweroff(&mut vm, cpus, memory_mib, BOOT);
}

#[test]
fn one_cpu_128_mib() {
    boots_and_powers_off(1, 128);
}

#[test]
fn two_cpus_128_mib() {
    boots_and_powers_off(2, 128);
}

#[test]
fn one_cpu_512_mib() {
    boots_and_powers_off(1, 512);
}

#[test]
fn two_cpus_512_mib() {
    boots_and_powers_off(2, 512);
}

#[test]
fn memory_above_the_mmio_gap_is_reported() {
    // 3.5 GiB: 3 GiB below the gap, 512 MiB above 4 GiB. Pages are only touched when the
    // guest writes them, so this costs little host memory.
    boots_and_powers_off(1, 3584);
}

#[test]
fn reboot_resets_and_boots_again() {
    let mut vm = vmm(2, 128, "scenario=reboot");
    assert_eq!(
        vm.expect_prefix("GUEST READY", BOOT),
        "GUEST READY cpus=2 mem_mib=128"
    );
    vm.expect_prefix("GUEST REBOOT", BOOT);
    vm.expect_line("the reset log line", BOOT, |l| l.contains("guest reset"));
    // A full reset: both vCPUs come back, the second boot sees the same machine.
    assert_eq!(
        vm.expect_prefix("GUEST READY", BOOT),
        "GUEST READY cpus=2 mem_mib=128"
    );
    vm.expect_prefix("GUEST REBOOT", BOOT);
    vm.signal(Signal::SIGTERM);
    let status = vm.wait(BOOT);
    assert!(status.success(), "{status}:\n{}", vm.transcript());
}

/// State (field 3) and CPU time (utime + stime, fields 14 and 15, in ticks) of thread
/// `tid` of `pid`.
fn thread_state(pid: i32, tid: &str) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((state, utime + stime))
}

/// The vCPU threads of `pid` (named `vcpuN`): (tid, state, CPU time), by tid.
fn vcpu_threads(pid: i32) -> Vec<(String, char, u64)> {
    let mut found: Vec<(String, char, u64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(Result::ok).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let tid = e.file_name().to_string_lossy().into_owned();
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let (state, cpu) = thread_state(pid, &tid)?;
            comm.starts_with("vcpu").then_some((tid, state, cpu))
        })
        .collect();
    found.sort();
    found
}

/// Polls until `count` vCPU threads of `pid` sleep (state S) and used no CPU time over
/// the last 100 ms; panics with what they did at the deadline.
fn expect_vcpus_asleep(pid: i32, count: usize) {
    let deadline = std::time::Instant::now() + BOOT;
    let mut before = vcpu_threads(pid);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = vcpu_threads(pid);
        let asleep = now.len() == count
            && now.iter().all(|(_, state, _)| *state == 'S')
            && now
                .iter()
                .map(|(t, _, c)| (t, c))
                .eq(before.iter().map(|(t, _, c)| (t, c)));
        if asleep {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "vCPU threads (tid, state, CPU ticks) not halted: before {before:?}, now {now:?}"
        );
        before = now;
    }
}

#[test]
fn default_scenario_idles_until_stopped() {
    let mut vm = vmm(2, 128, "");
    vm.expect_prefix("GUEST READY", BOOT);
    vm.expect_prefix("GUEST IDLE", BOOT);
    // Idle means halted vCPUs: every vCPU thread comes to sleep in the kernel and uses no
    // CPU time, and the VM is still there.
    expect_vcpus_asleep(vm.pid(), 2);
    assert!(!vm.exited(), "{}", vm.transcript());
    vm.signal(Signal::SIGTERM);
    let status = vm.wait(BOOT);
    assert!(status.success(), "{status}:\n{}", vm.transcript());
    assert!(
        vm.transcript().contains("terminating on signal 15"),
        "{}",
        vm.transcript()
    );
    assert!(!vm.transcript().contains("GUEST POWEROFF"));
}

#[test]
fn ring3_code_runs_and_returns() {
    let mut vm = vmm(1, 128, "scenario=ring3");
    let line = vm.expect_prefix("GUEST RING3", BOOT);
    assert!(
        line.starts_with("GUEST RING3 OK iterations=100000000 "),
        "{line}"
    );
    let status = vm.wait(BOOT);
    assert!(status.success(), "{status}:\n{}", vm.transcript());
}

#[test]
fn triple_fault_is_a_clear_error() {
    let mut vm = vmm(1, 128, "scenario=triple-fault");
    vm.expect_prefix("GUEST READY", BOOT);
    let status = vm.wait(BOOT);
    assert!(
        !status.success(),
        "a triple fault must fail the VM:\n{}",
        vm.transcript()
    );
    let transcript = vm.transcript();
    let errors: Vec<&str> = transcript.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{transcript}");
    assert!(
        errors[0].contains("vCPU 0") && errors[0].contains("triple fault"),
        "{transcript}"
    );
}

#[test]
fn internal_error_is_a_clear_error() {
    // kvm-pvm emulates guest ring 0 and its emulator lacks cmpxchg16b: KVM stops the vCPU
    // with KVM_EXIT_INTERNAL_ERROR. Under VMX/SVM the instruction simply runs.
    let mut vm = vmm(1, 128, "scenario=cmpxchg16b");
    vm.expect_prefix("GUEST READY", BOOT);
    let status = vm.wait(BOOT);
    let transcript = vm.transcript();
    if kvm_is_pvm() {
        assert!(!status.success(), "{transcript}");
        let errors: Vec<&str> = transcript.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{transcript}");
        assert!(
            errors[0].contains("vCPU 0: KVM_EXIT_INTERNAL_ERROR"),
            "{transcript}"
        );
    } else {
        assert!(status.success(), "{transcript}");
        assert!(transcript.contains("GUEST CMPXCHG16B OK"), "{transcript}");
    }
}

#[test]
fn serial_on_a_unix_socket() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new("serial-unix");
    let sock = dir.path().join("console.sock");
    let mut cmd = Command::new(bin("vmm-core"));
    cmd.arg("--kernel")
        .arg(test_guest())
        .args(["--memory", "128", "--cmdline", "scenario=reboot"])
        .arg("--serial")
        .arg(format!("unix:{}", sock.display()));
    let mut vm = Vm::spawn(cmd);
    let deadline = std::time::Instant::now() + BOOT;
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{}: {e}\n{}", sock.display(), vm.transcript()),
        }
    };
    stream.set_read_timeout(Some(BOOT)).unwrap();
    // Output is dropped while no client is connected; the guest reboots over and over, so
    // a whole boot reaches us after we connect.
    let ready = BufReader::new(stream)
        .lines()
        .map(|l| l.expect("console socket read"))
        .find(|l| l.starts_with("GUEST READY"))
        .expect("console socket closed before a READY line");
    assert_eq!(ready.trim_end(), "GUEST READY cpus=1 mem_mib=128");
    vm.signal(Signal::SIGTERM);
    let status = vm.wait(BOOT);
    assert!(status.success(), "{}", vm.transcript());
    assert!(!sock.exists(), "vmm-core left its console socket behind");
}
