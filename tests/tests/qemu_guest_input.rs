//! The input scenario on QEMU 7.2's pc (its i8042 with a PS/2 keyboard and mouse), the
//! reference for Flotilla's (gateway_input.rs runs the same one): the same commands make
//! the test guest print the same bytes, so the guest's driver does not lean on anything
//! only vmm-core does. What QEMU 7.2 does, as seen here (tests/src/input.rs checks it):
//! - send-key takes any number of keys (17 here), each down in order then up in reverse;
//!   a key number is QEMU's (set 1 with 0x80 for the 0xe0 prefix), its low 32 bits
//!   taken, and one past QEMU's table is no key at all (nothing sent, no error).
//! - input-send-event without a running VM is "VM not running"; an abs event finds no
//!   handler (no tablet) and nothing of the call is sent; `device` names a console.
//! - the mouse's packets are 4 bytes once the guest knocked 200, 100, 80; moves of more
//!   than 127 go in several packets; y is negated; a wheel-down notch is +1.
//! - HMP mouse_button sends nothing when the state does not change.

use flotilla_tests::input::{self, CMDLINE};
use flotilla_tests::qemu::Qemu;
use serde_json::json;

#[test]
fn qemu_input_reaches_the_guests_i8042_driver() {
    let mut qemu = Qemu::pc_guest(CMDLINE, &[]);
    let mut qmp = qemu.client();
    qmp.ok("cont", json!({}));
    input::scenario(&mut qemu.vm, &mut qmp);
}
