//! The ACPI power button on vmm-core: the idle test guest enables the fixed power-button
//! event, and a press (what QMP system_powerdown will do) makes it power off through S5.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmm_core::boot::BootImage;
use vmm_core::devices::serial::Console;
use vmm_core::{build_vm, VmConfig, VmExit};

use flotilla_tests::{test_guest, TempDir};

fn wait_for(path: &std::path::Path, text: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let console = std::fs::read_to_string(path).unwrap_or_default();
        if console.contains(text) {
            return console;
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} on the console within {timeout:?}:\n{console}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn power_button_powers_off_the_idle_guest() {
    let dir = TempDir::new("power-button");
    let console = dir.path().join("console.log");
    let boot = BootImage::open(&test_guest(), None, "").expect("boot image");
    let output = Console::file(std::fs::File::create(&console).unwrap());
    let config = VmConfig {
        memory_mib: 128,
        cpus: 2,
        max_cpus: 2,
        added_cpus: Vec::new(),
        start_paused: false,
        incoming: false,
        ram: None,
        memory_hotplug: None,
        cpu: Default::default(),
    };
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
    let vm = build_vm(kvm, &config, boot, output, Vec::new(), Vec::new()).expect("VM");
    let button = vm.power_button();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(vm.run(None));
    });
    wait_for(&console, "GUEST IDLE", Duration::from_secs(30));
    assert!(
        rx.try_recv().is_err(),
        "VM ended before the button was pressed"
    );
    button.press();
    let exit = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("VM still running 30 s after the power button");
    assert_eq!(exit.expect("VM run"), VmExit::PowerOff);
    let text = wait_for(&console, "GUEST POWEROFF", Duration::from_secs(1));
    assert!(text.contains("GUEST POWER BUTTON"), "{text}");
}
