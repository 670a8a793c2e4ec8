//! The input scenario, run the same way on QEMU 7.2 (`-M pc`, its i8042 and PS/2 keyboard
//! and mouse) and on Flotilla: the test guest's `input` scenario (tests/guest/README.md)
//! sets the controller up as Linux does and prints what it reads; send-key,
//! input-send-event and HMP's sendkey, mouse_move and mouse_button drive it, and the
//! bytes the guest prints, with the interrupt that announced each, are checked against
//! what QEMU 7.2's guest prints (the same assertions pass on both VMMs). Bad input gets
//! QEMU 7.2's errors and sends nothing.

use std::time::Duration;

use serde_json::{json, Value};

use crate::qmp::QmpClient;
use crate::Vm;

pub const CMDLINE: &str = "scenario=input";

/// The guest's set-up answers, as QEMU 7.2's devices give them.
const INIT: &[&str] = &[
    "selftest 55",
    "kbd-test 00",
    "aux-loop a5",
    "aux-test 00",
    "kbd-reset fa aa",
    "kbd-id fa ab 41",
    "kbd-leds fa fa",
    "kbd-set fa fa 41",
    "kbd-rate fa fa",
    "kbd-enable fa",
    "aux-reset fa aa 00",
    "aux-knock fa fa fa fa fa fa",
    "aux-id fa 03",
    "aux-res fa fa",
    "aux-status fa 00 03 50",
    "aux-enable fa",
];

/// SeaBIOS runs first on QEMU's pc, emulated on kvm-pvm hosts.
const BOOT: Duration = Duration::from_secs(60);
const BYTE: Duration = Duration::from_secs(10);

fn key(name: &str) -> Value {
    json!({"type": "qcode", "data": name})
}

fn number(n: i64) -> Value {
    json!({"type": "number", "data": n})
}

fn key_event(k: Value, down: bool) -> Value {
    json!({"type": "key", "data": {"key": k, "down": down}})
}

fn btn(button: &str, down: bool) -> Value {
    json!({"type": "btn", "data": {"button": button, "down": down}})
}

fn rel(axis: &str, value: i64) -> Value {
    json!({"type": "rel", "data": {"axis": axis, "value": value}})
}

struct Run<'a> {
    vm: &'a mut Vm,
    qmp: &'a mut QmpClient,
}

impl Run<'_> {
    /// The next `n` bytes the guest read, as "kbd 1e" / "aux 08"; each must have come
    /// with its port's interrupt (IRQ 1 for the keyboard, 12 for the mouse).
    fn bytes(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let line = self.vm.expect_line("a byte the guest read", BYTE, |l| {
                    l.starts_with("GUEST I8042 kbd ") || l.starts_with("GUEST I8042 aux ")
                });
                let words: Vec<&str> = line.split_whitespace().collect();
                let irq = if words[2] == "kbd" { "irq=1" } else { "irq=12" };
                assert_eq!(words.get(4), Some(&irq), "{line}: not its port's interrupt");
                format!("{} {}", words[2], words[3])
            })
            .collect()
    }

    /// Expects exactly these bytes next (`expected`: "kbd 1e aux 08 ..." pairs).
    fn expect(&mut self, what: &str, expected: &str) {
        let want: Vec<String> = expected
            .split_whitespace()
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|pair| pair.join(" "))
            .collect();
        let got = self.bytes(want.len());
        assert_eq!(got, want, "{what}:\n{}", self.vm.transcript());
    }

    fn ok(&mut self, command: &str, arguments: Value) {
        let r = self.qmp.execute(command, arguments.clone());
        assert_eq!(r["return"], json!({}), "{command} {arguments}: {r}");
    }

    fn send_key(&mut self, keys: &[Value], hold: i64) {
        self.ok("send-key", json!({"keys": keys, "hold-time": hold}));
    }

    fn events(&mut self, events: &[Value]) {
        self.ok("input-send-event", json!({"events": events}));
    }

    fn hmp(&mut self, line: &str) -> String {
        let r = self
            .qmp
            .execute("human-monitor-command", json!({"command-line": line}));
        r["return"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}: {r}"))
            .to_string()
    }

    fn error(&mut self, command: &str, arguments: Value, class: &str, desc: &str) {
        let r = self.qmp.execute(command, arguments.clone());
        assert_eq!(
            (r["error"]["class"].as_str(), r["error"]["desc"].as_str()),
            (Some(class), Some(desc)),
            "{command} {arguments}: {r}"
        );
    }
}

/// Runs the scenario on a VM that was started paused with `CMDLINE` (the caller sent
/// `cont`).
pub fn scenario(vm: &mut Vm, qmp: &mut QmpClient) {
    for step in INIT {
        let line = vm.expect_prefix("GUEST I8042 INIT ", BOOT);
        assert_eq!(
            line,
            format!("GUEST I8042 INIT {step}"),
            "{}",
            vm.transcript()
        );
    }
    vm.expect_prefix("GUEST I8042 READY", BYTE);
    let mut r = Run { vm, qmp };

    assert_eq!(
        r.qmp.execute("query-mice", json!({}))["return"],
        json!([{"name": "QEMU PS/2 Mouse", "index": 2, "current": true, "absolute": false}])
    );
    assert_eq!(r.hmp("info mice"), "* Mouse #2: QEMU PS/2 Mouse\r\n");

    // Keys, translated to set 1 (the guest set the command byte's translation).
    r.send_key(&[key("a")], 1);
    r.expect("send-key a", "kbd 1e kbd 9e");
    // Down in order, up in reverse; QEMU's key numbers (0x1e: a).
    r.send_key(&[key("shift"), number(0x1e)], 1);
    r.expect("send-key shift-a", "kbd 2a kbd 1e kbd 9e kbd aa");
    // QEMU keeps a number's low 32 bits, and one past its table is no key at all.
    r.send_key(&[number((1 << 32) + 0x1e)], 1);
    r.expect("a number past 32 bits", "kbd 1e kbd 9e");
    r.send_key(&[number(99999), number(-1), key("b")], 1);
    r.expect("numbers that are no key, then b", "kbd 30 kbd b0");
    r.send_key(&[key("kp_enter")], 1);
    r.expect("an 0xe0 key", "kbd e0 kbd 1c kbd e0 kbd 9c");
    // QEMU 7.2 has no limit on the keys of one send-key.
    let many: Vec<Value> = "qwertyuiopasdfghj"
        .chars()
        .map(|c| key(&c.to_string()))
        .collect();
    r.send_key(&many, 1);
    r.expect(
        "17 keys",
        "kbd 10 kbd 11 kbd 12 kbd 13 kbd 14 kbd 15 kbd 16 kbd 17 kbd 18 kbd 19 \
         kbd 1e kbd 1f kbd 20 kbd 21 kbd 22 kbd 23 kbd 24 \
         kbd a4 kbd a3 kbd a2 kbd a1 kbd a0 kbd 9f kbd 9e kbd 99 kbd 98 kbd 97 \
         kbd 96 kbd 95 kbd 94 kbd 93 kbd 92 kbd 91 kbd 90",
    );
    r.events(&[
        key_event(key("ctrl_r"), true),
        key_event(key("ctrl_r"), false),
    ]);
    r.expect("input-send-event keys", "kbd e0 kbd 1d kbd e0 kbd 9d");
    assert_eq!(r.hmp("sendkey 0x10-< 1"), "");
    r.expect("HMP sendkey", "kbd 10 kbd 56 kbd d6 kbd 90");

    // The mouse: an IntelliMouse after the guest's knock, so 4-byte packets; y grows
    // downwards for QMP, upwards for PS/2.
    r.events(&[btn("left", true), rel("x", 10), rel("y", -5)]);
    r.expect("a move with the left button", "aux 09 aux 0a aux 05 aux 00");
    r.events(&[rel("x", 200), rel("y", 300)]);
    r.expect(
        "a big move, in packets of 127 at most",
        "aux 29 aux 7f aux 81 aux 00 aux 29 aux 49 aux 81 aux 00 aux 29 aux 00 aux d2 aux 00",
    );
    r.events(&[btn("wheel-down", true), btn("wheel-down", false)]);
    r.expect("a wheel notch", "aux 09 aux 00 aux 00 aux 01");
    r.events(&[btn("left", false)]);
    r.expect("the left button up", "aux 08 aux 00 aux 00 aux 00");
    assert_eq!(r.hmp("mouse_move 5 5"), "");
    r.expect("HMP mouse_move", "aux 28 aux 05 aux fb aux 00");
    assert_eq!(r.hmp("mouse_button 1"), "");
    r.expect("HMP mouse_button 1", "aux 09 aux 00 aux 00 aux 00");
    // The same state again sends nothing; then the button goes up.
    assert_eq!(r.hmp("mouse_button 1"), "");
    assert_eq!(r.hmp("mouse_button 0"), "");
    r.expect("HMP mouse_button 0", "aux 08 aux 00 aux 00 aux 00");

    // Bad input: QEMU's errors, and nothing reaches the guest (the next bytes are the
    // next good command's).
    let g = "GenericError";
    let keys = |k: Value| json!({"keys": [k]});
    r.error(
        "send-key",
        keys(key("nosuch")),
        g,
        "Parameter 'data' does not accept value 'nosuch'",
    );
    r.error(
        "send-key",
        keys(json!({"type": "bogus", "data": 1})),
        g,
        "Parameter 'type' does not accept value 'bogus'",
    );
    r.error(
        "send-key",
        keys(json!({"type": "number", "data": 18446744073709551615u64})),
        g,
        "Invalid parameter type for 'keys[0].data', expected: integer",
    );
    r.error(
        "send-key",
        json!({"keys": [key("a")], "hold-time": "x"}),
        g,
        "Invalid parameter type for 'hold-time', expected: integer",
    );
    r.error("send-key", json!({}), g, "Parameter 'keys' is missing");
    let ev = |e: Value| json!({"events": [e]});
    r.error(
        "input-send-event",
        json!({"events": [rel("x", 1), {"type": "abs", "data": {"axis": "x", "value": 10}}]}),
        g,
        "Input handler not found for event type abs",
    );
    r.error(
        "input-send-event",
        ev(json!({"type": "wheel", "data": {"axis": "x", "value": 1}})),
        g,
        "Parameter 'type' does not accept value 'wheel'",
    );
    r.error(
        "input-send-event",
        ev(rel("z", 1)),
        g,
        "Parameter 'axis' does not accept value 'z'",
    );
    r.error(
        "input-send-event",
        ev(btn("nope", true)),
        g,
        "Parameter 'button' does not accept value 'nope'",
    );
    r.error(
        "input-send-event",
        ev(json!({"type": "key", "data": {"key": key("a")}})),
        g,
        "Parameter 'events[0].data.down' is missing",
    );
    r.error(
        "input-send-event",
        json!({"device": "nodev", "events": [rel("x", 1)]}),
        "DeviceNotFound",
        "Device 'nodev' not found",
    );
    assert_eq!(
        r.hmp("sendkey ctrl-nosuch"),
        "invalid parameter: nosuch\r\n"
    );
    assert_eq!(r.hmp("sendkey 0x1ez"), "invalid parameter: 0x1ez\r\n");
    assert_eq!(
        r.hmp("sendkey"),
        "sendkey: string expected\r\nTry \"help sendkey\" for more information\r\n"
    );
    assert_eq!(
        r.hmp("sendkey a x"),
        "invalid char 'x' in expression\r\nTry \"help sendkey\" for more information\r\n"
    );
    assert_eq!(
        r.hmp("mouse_move 10"),
        "mouse_move: string expected\r\nTry \"help mouse_move\" for more information\r\n"
    );
    assert_eq!(
        r.hmp("mouse_button x"),
        "invalid char 'x' in expression\r\nTry \"help mouse_button\" for more information\r\n"
    );
    r.send_key(&[key("c")], 1);
    r.expect("c after the bad input", "kbd 2e kbd ae");

    // Paused: input-send-event is refused, and send-key's keys are dropped. QEMU's
    // send-key ends with a wait of hold-time in its input queue, timed on the guest's
    // clock: a key sent while that wait is still queued (the VM stopped within it) is
    // queued behind it and reaches the guest at cont; so the VM stops once it is over.
    std::thread::sleep(Duration::from_millis(100));
    r.ok("stop", json!({}));
    r.error("input-send-event", ev(rel("x", 1)), g, "VM not running");
    r.send_key(&[key("d")], 1);
    std::thread::sleep(Duration::from_millis(200));
    r.ok("cont", json!({}));
    r.send_key(&[key("e")], 1);
    r.expect(
        "a key sent while paused, then one sent running",
        "kbd 12 kbd 92",
    );

    // Escape (translated 0x01) has the guest turn translation off: raw set 2 from then.
    r.events(&[key_event(key("esc"), true)]);
    r.expect("escape", "kbd 01");
    r.vm.expect_prefix("GUEST I8042 XLATE off", BYTE);
    r.send_key(&[key("a")], 1);
    r.expect("set 2's a", "kbd 1c kbd f0 kbd 1c");
    r.send_key(&[key("kp_enter")], 1);
    r.expect("set 2's keypad enter", "kbd e0 kbd 5a kbd e0 kbd f0 kbd 5a");
    r.send_key(&[key("pause")], 1);
    r.expect(
        "pause: all at once when it goes down",
        "kbd e1 kbd 14 kbd 77 kbd e1 kbd f0 kbd 14 kbd f0 kbd 77",
    );
}
