//! HMP `info registers`, `info mem` and `info tlb` against QEMU 7.2 running the same test guest (pc, KVM): both
//! halted in the idle scenario, the text is the same but for the general registers'
//! values (what the guest's code left in them depends on the platform it probed), and
//! the monitor's refusals are QEMU's; the page tables (the same guest maps the same)
//! list alike.

use std::time::Duration;

use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use serde_json::json;

fn hmp(c: &mut QmpClient, line: &str) -> String {
    let answer = c.ok("human-monitor-command", json!({ "command-line": line }));
    answer.as_str().expect("HMP text").to_string()
}

/// The general registers' values hidden (the four lines RAX.. R15, or EAX.. ESP).
fn without_general_values(text: &str) -> String {
    text.lines()
        .map(|l| {
            let general = ["RAX=", "RSI=", "R8 =", "R12=", "EAX=", "ESI="]
                .iter()
                .any(|p| l.starts_with(p));
            // info tlb's accessed and dirty bits say which pages the guest touched,
            // and it reads its platform's tables (ACPI, boot information) elsewhere.
            if l.len() == 44 && l.as_bytes()[16] == b':' {
                let mut flags: Vec<char> = l.chars().collect();
                flags[38] = '.';
                flags[39] = '.';
                return flags.into_iter().collect();
            }
            match general {
                true => l
                    .split(' ')
                    .map(|r| r.split('=').next().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(" "),
                false => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `line`'s text once no vCPU in it runs (tried for a second).
fn halted(c: &mut QmpClient, line: &str) -> String {
    let mut text = String::new();
    for _ in 0..50 {
        text = hmp(c, line);
        if !text.contains("HLT=0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    text
}

#[test]
fn info_registers_is_qemus() {
    let mut qemu = Qemu::pc_guest("", &[]);
    let mut q = qemu.client();
    q.ok("cont", json!({}));
    let mut gw = Gateway::start_with(1, "", &[]);
    let mut g = gw.client();
    gw.vm.expect_prefix("GUEST IDLE", Duration::from_secs(20));
    qemu.vm
        .expect_prefix("GUEST IDLE", Duration::from_secs(120));
    // Halted in the idle loop (between the interrupts that wake it).
    let (ours, theirs) = (
        halted(&mut g, "info registers"),
        halted(&mut q, "info registers"),
    );
    assert!(ours.contains("CS64") && ours.contains("HLT=1"), "{ours}");
    assert_eq!(
        without_general_values(&ours),
        without_general_values(&theirs)
    );
    for line in [
        "info registers -a",
        "info registers 0",
        "info registers 1",
        "info registers x",
        "info registers 99999999999",
        "info registers -1",
        "info registers 0 1",
        "info mem",
        "info tlb",
        "info mem x",
    ] {
        let (ours, theirs) = (halted(&mut g, line), halted(&mut q, line));
        assert_eq!(
            without_general_values(&ours),
            without_general_values(&theirs),
            "{line}"
        );
    }
}
