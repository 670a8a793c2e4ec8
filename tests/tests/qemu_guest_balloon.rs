//! The balloon scenario on QEMU 7.2, the reference for Flotilla's (gateway_balloon.rs runs
//! the same one): QEMU's virtio-balloon-pci under the test guest's `balloon` scenario.
//!
//! What QEMU 7.2 does, as seen here (and checked by the shared scenario, tests/src/balloon.rs):
//! - `balloon` takes a value in bytes; the target is (RAM - min(value, RAM)) / 4096 pages,
//!   rounded down; a value of 0 or below is refused (GenericError "Parameter 'target'
//!   expects a size"), one above RAM counts as RAM. The reply is `{}` at once; the guest
//!   moves later.
//! - `query-balloon` answers `{"actual": RAM - actual pages * 4096}` (all of RAM before the
//!   driver wrote `actual`).
//! - BALLOON_CHANGE (`{"actual": bytes}`) follows each change of the `actual` the driver
//!   writes, rate-limited to one a second: the guest's 32 writes of an 8192-page inflate
//!   come as two events, the first at once, the second (the last value) a second later.
//! - HMP `balloon N` takes MiB (no suffix: `balloon 64M` is "balloon: extraneous characters
//!   at the end of line"; `balloon -1` "enter a positive value"; both followed by `Try "help
//!   balloon" for more information`), `balloon 0` prints "Error: Parameter 'target' expects
//!   a size"; `info balloon` prints "balloon: actual=M" in MiB, rounded down.
//! - Without the device every one of them is DeviceNotActive "No balloon device has been
//!   activated" (HMP: "Error: " and that text), before the value is looked at.
//! - QEMU's virtio-balloon-pci has no MSI-X table (the guest polls num_pages), offers
//!   STATS_VQ and PAGE_POISON (declined by the guest), and drops the ballooned pages: each
//!   one given back reads as zeroes. Its two bad PFNs (not RAM) are ignored.
//! - A reset keeps num_pages and actual (a new driver starts from them: its first write of
//!   actual is a BALLOON_CHANGE from the old value).

use flotilla_tests::balloon::{self, CMDLINE};
use flotilla_tests::qemu::Qemu;
use serde_json::json;

#[test]
fn qemu_balloon_inflates_and_deflates() {
    let mut qemu = Qemu::guest(CMDLINE, &["-device", "virtio-balloon-pci,id=balloon0"]);
    let mut qmp = qemu.client();
    qmp.ok("cont", json!({}));
    balloon::scenario(&mut qemu.vm, &mut qmp, |_| {});
}

#[test]
fn qemu_without_balloon() {
    let qemu = Qemu::try_start(&[]).expect("QEMU starts");
    balloon::without_balloon(&mut qemu.client());
}
