//! send-key, input-send-event, query-mice and HMP's sendkey, mouse_move, mouse_button and
//! info mice reach the test guest's i8042 driver through vmm-core's keyboard controller:
//! the guest prints the bytes QEMU 7.2's guest prints for the same commands
//! (tests/tests/qemu_guest_input.rs runs the same scenario on QEMU's pc), and bad input
//! gets QEMU's errors (tests/src/input.rs).

use flotilla_tests::input::{self, CMDLINE};
use flotilla_tests::qmp::Gateway;
use serde_json::json;

#[test]
fn input_reaches_the_guests_i8042_driver() {
    let mut gw = Gateway::start_with(1, CMDLINE, &["-S"]);
    let mut qmp = gw.client();
    qmp.ok("cont", json!({}));
    input::scenario(&mut gw.vm, &mut qmp);
}
