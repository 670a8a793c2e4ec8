//! The guest's keyboard and mouse from QMP and HMP: send-key, input-send-event,
//! query-mice, and HMP's sendkey, mouse_move, mouse_button and `info mice`, with QEMU
//! 7.2's answers for a pc machine's PS/2 keyboard and mouse. Keys are found in ipc's one
//! table of QEMU's key codes; the events go to vmm-core's i8042 as typed steps
//! (`VmmRequest::Input`), played there in order with send-key's hold times.

use ipc::input::{InputAxis, InputButton, InputEvent, InputStep, KeyCode, MAX_PENDING_STEPS};
use ipc::{ErrorClass, RunState, VmmRequest};
use std::sync::atomic::{AtomicI64, Ordering};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::qmp::args::{serde_arguments, Int};
use crate::qmp::context::Ctx;
use crate::qmp::handlers::hmp::reply::{error, try_help};
use crate::qmp::monitor_number::monitor_number;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};

/// send-key's default hold time (its documentation's; QEMU 7.2 itself waits between
/// each key event).
const DEFAULT_HOLD_MS: u32 = 100;

/// The one mouse, as QEMU 7.2's pc machine lists its PS/2 mouse (its input handlers are
/// numbered as registered, the mouse's is 2).
const MOUSE_INDEX: u32 = 2;
const MOUSE_NAME: &str = "QEMU PS/2 Mouse";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SendKey {
    /// KeyValue unions, checked against their schema before they get here.
    pub keys: Vec<Value>,
    pub hold_time: Option<Int>,
}

serde_arguments!(
    SendKey,
    [
        req("keys", Ty::Array(&Ty::Named("KeyValue"))),
        opt("hold-time", Ty::Int),
    ]
);

/// InputEvent: its kind, and data that depends on it.
#[derive(Debug, Deserialize)]
pub struct InputEventArg {
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
}

#[derive(Debug, Deserialize)]
pub struct InputSendEvent {
    pub device: Option<String>,
    pub head: Option<Int>,
    pub events: Vec<InputEventArg>,
}

serde_arguments!(
    InputSendEvent,
    [
        opt("device", Ty::Str),
        opt("head", Ty::Int),
        req("events", Ty::Array(&Ty::Named("InputEvent"))),
    ]
);

/// A KeyValue the schema let through: a QKeyCode's name or QEMU's key number.
fn key_value(v: &Value) -> KeyCode {
    match (&v["type"], &v["data"]) {
        (t, Value::String(name)) if t == "qcode" => {
            KeyCode::from_name(name).unwrap_or(KeyCode::UNMAPPED)
        }
        (_, n) => KeyCode::from_number(n.as_i64().unwrap_or(-1)),
    }
}

/// send-key's steps: each key down in order, then up in reverse, a hold time after each.
fn key_steps(keys: &[KeyCode], hold_ms: u32) -> Vec<InputStep> {
    let event = |key, down| InputStep::Event(InputEvent::Key { key, down });
    let wait = InputStep::Wait { ms: hold_ms };
    let downs = keys.iter().flat_map(|&k| [event(k, true), wait]);
    let ups = keys.iter().rev().flat_map(|&k| [event(k, false), wait]);
    downs.chain(ups).collect()
}

/// Hands steps to vmm-core; those past the bound of what may wait are dropped, as QEMU
/// drops input past its queue's limit.
fn play(c: &mut Ctx, mut steps: Vec<InputStep>) -> Result<(), QmpError> {
    steps.truncate(MAX_PENDING_STEPS);
    if steps.is_empty() {
        return Ok(());
    }
    c.vmm(VmmRequest::Input(steps)).map(|_| ())
}

/// The hold time QEMU takes: none or 0 is the default, other values as the C unsigned
/// int QEMU converts them to.
fn hold_ms(hold_time: Option<i64>) -> u32 {
    match hold_time {
        None | Some(0) => DEFAULT_HOLD_MS,
        Some(ms) => ms as u32,
    }
}

pub fn send_key(c: &mut Ctx, a: SendKey) -> QmpResult {
    let keys: Vec<KeyCode> = a.keys.iter().map(key_value).collect();
    // hold-time is an int64: the schema refused anything larger.
    let hold = hold_ms(a.hold_time.and_then(Int::as_i64));
    play(c, key_steps(&keys, hold))?;
    Ok(json!({}))
}

/// One event the schema let through, as vmm-core's: None for an absolute move, which
/// has no device here.
fn event(e: &InputEventArg) -> Option<InputEvent> {
    let d = &e.data;
    let down = d["down"].as_bool().unwrap_or(false);
    match e.kind.as_str() {
        "key" => Some(InputEvent::Key {
            key: key_value(&d["key"]),
            down,
        }),
        "btn" => InputButton::from_name(d["button"].as_str().unwrap_or_default())
            .map(|button| InputEvent::Button { button, down }),
        "rel" => Some(InputEvent::Move {
            axis: if d["axis"] == "y" {
                InputAxis::Y
            } else {
                InputAxis::X
            },
            value: d["value"].as_i64().unwrap_or(0),
        }),
        _ => None,
    }
}

pub fn input_send_event(c: &mut Ctx, a: InputSendEvent) -> QmpResult {
    // The device names a graphic console, and this VM has none.
    if let Some(device) = &a.device {
        return Err(QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: format!("Device '{device}' not found"),
        });
    }
    // QEMU asks for a running (or suspended: we have no such state) VM before it looks
    // for a handler.
    if c.gw.run_state() != RunState::Running {
        return Err(QmpError::generic("VM not running"));
    }
    let mut steps = Vec::with_capacity(a.events.len() + 1);
    for e in &a.events {
        match event(e) {
            Some(ev) => steps.push(InputStep::Event(ev)),
            // No absolute pointer (a tablet): QEMU finds no handler, and sends nothing.
            None => {
                return Err(QmpError::generic(format!(
                    "Input handler not found for event type {}",
                    e.kind
                )))
            }
        }
    }
    steps.push(InputStep::Sync);
    play(c, steps)?;
    Ok(json!({}))
}

pub fn query_mice(_: &mut Ctx, _: crate::qmp::args::NoArgs) -> QmpResult {
    Ok(json!([{
        "name": MOUSE_NAME,
        "index": MOUSE_INDEX,
        "current": true,
        "absolute": false,
    }]))
}

/// HMP `info mice`, from query-mice's answer.
pub fn info_mice(mice: &Value, _: u32) -> String {
    mice.as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let mark = if m["current"] == true { '*' } else { ' ' };
            let absolute = if m["absolute"] == true {
                " (absolute)"
            } else {
                ""
            };
            let name = m["name"].as_str().unwrap_or_default();
            format!("{mark} Mouse #{}: {name}{absolute}\n", m["index"])
        })
        .collect()
}

/// An HMP integer argument (its expression parser's words for what is not one).
fn hmp_int(command: &str, text: &str) -> Result<i64, String> {
    monitor_number(command, text)
        .map(|n| n as i64)
        .map_err(|e| try_help(&e, command))
}

/// Runs an HMP input command on `arguments`: its text, or the error it prints.
fn hmp(
    c: &mut Ctx,
    arguments: &str,
    command: fn(&mut Ctx, &[&str]) -> Result<String, String>,
) -> String {
    let args: Vec<&str> = arguments.split_whitespace().collect();
    command(c, &args).unwrap_or_else(|e| e)
}

/// HMP `sendkey keys [hold-time]`: keys joined by '-', each a QKeyCode name, "<" (less),
/// or a 0x number; QEMU's words for what it does not take.
pub fn hmp_sendkey(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    hmp(c, arguments, sendkey_words)
}

/// HMP `mouse_move dx dy [dz]`.
pub fn hmp_mouse_move(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    hmp(c, arguments, mouse_move_words)
}

/// HMP `mouse_button state`.
pub fn hmp_mouse_button(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    hmp(c, arguments, mouse_button_words)
}

fn sendkey_words(c: &mut Ctx, args: &[&str]) -> Result<String, String> {
    let Some(spec) = args.first() else {
        return Err(try_help("sendkey: string expected", "sendkey"));
    };
    let hold = match args.get(1) {
        Some(text) => Some(hmp_int("sendkey", text)?),
        None => None,
    };
    let mut keys = Vec::new();
    for name in spec.split('-') {
        let key = match name {
            "<" => KeyCode::from_name("less"),
            n if n.starts_with("0x") => u32::from_str_radix(&n[2..], 16)
                .ok()
                .map(|v| KeyCode::from_number(i64::from(v))),
            n => KeyCode::from_name(n),
        };
        match key {
            Some(k) => keys.push(k),
            None => return Ok(format!("invalid parameter: {name}\n")),
        }
    }
    // QEMU's HMP hands the hold time to send-key as given (a negative one included).
    play(c, key_steps(&keys, hold_ms(hold))).map_err(|e| error(&e))?;
    Ok(String::new())
}

/// C's strtol in base 0 as QEMU's HMP uses it for mouse_move: the number at the start
/// of `text` (0x hex, 0 octal, an optional sign), 0 when there is none.
fn strtol(text: &str) -> i64 {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (radix, digits) = match rest.strip_prefix("0x").or(rest.strip_prefix("0X")) {
        Some(hex) => (16, hex),
        None if rest.starts_with('0') => (8, rest),
        None => (10, rest),
    };
    let digits: String = digits.chars().take_while(|c| c.is_digit(radix)).collect();
    let n = i64::from_str_radix(&digits, radix).unwrap_or(0);
    if negative {
        -n
    } else {
        n
    }
}

/// HMP `mouse_move dx dy [dz]`: a relative move, and a wheel notch up (dz > 0) or down.
fn mouse_move_words(c: &mut Ctx, args: &[&str]) -> Result<String, String> {
    if args.len() < 2 {
        return Err(try_help("mouse_move: string expected", "mouse_move"));
    }
    let moved = |axis, text| {
        InputStep::Event(InputEvent::Move {
            axis,
            value: strtol(text),
        })
    };
    let mut steps = vec![moved(InputAxis::X, args[0]), moved(InputAxis::Y, args[1])];
    let dz = args.get(2).map_or(0, |t| strtol(t));
    if dz != 0 {
        let button = if dz > 0 {
            InputButton::WheelUp
        } else {
            InputButton::WheelDown
        };
        let notch = |down| InputStep::Event(InputEvent::Button { button, down });
        steps.extend([notch(true), InputStep::Sync, notch(false)]);
    }
    steps.push(InputStep::Sync);
    play(c, steps).map_err(|e| error(&e))?;
    Ok(String::new())
}

/// The buttons HMP's mouse_button last set (QEMU keeps them the same way, one VM a
/// process): only changed buttons are sent (none: a sync without events, which sends no
/// packet).
static HMP_BUTTONS: AtomicI64 = AtomicI64::new(0);

/// HMP `mouse_button state`: the buttons held, as bits (1 left, 2 right, 4 middle).
fn mouse_button_words(c: &mut Ctx, args: &[&str]) -> Result<String, String> {
    let Some(text) = args.first() else {
        return Err(try_help("mouse_button: integer expected", "mouse_button"));
    };
    let state = hmp_int("mouse_button", text)?;
    let before = HMP_BUTTONS.swap(state, Ordering::SeqCst);
    let buttons = [
        (1, InputButton::Left),
        (2, InputButton::Right),
        (4, InputButton::Middle),
    ];
    let mut steps: Vec<InputStep> = (buttons.iter())
        .filter(|&&(bit, _)| (before ^ state) & bit != 0)
        .map(|&(bit, button)| {
            InputStep::Event(InputEvent::Button {
                button,
                down: state & bit != 0,
            })
        })
        .collect();
    steps.push(InputStep::Sync);
    play(c, steps).map_err(|e| error(&e))?;
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_key_presses_in_order_and_releases_in_reverse() {
        let a = KeyCode::from_name("a").unwrap();
        let b = KeyCode::from_name("b").unwrap();
        let steps = key_steps(&[a, b], 7);
        let ev = |key, down| InputStep::Event(InputEvent::Key { key, down });
        let w = InputStep::Wait { ms: 7 };
        assert_eq!(
            steps,
            [
                ev(a, true),
                w,
                ev(b, true),
                w,
                ev(b, false),
                w,
                ev(a, false),
                w
            ]
        );
        assert_eq!(hold_ms(None), 100);
        assert_eq!(hold_ms(Some(0)), 100);
        assert_eq!(hold_ms(Some(-1)), u32::MAX);
        assert_eq!(key_value(&json!({"type": "number", "data": 0x1e})), a);
        assert_eq!(key_value(&json!({"type": "qcode", "data": "b"})), b);
        assert_eq!(
            [
                strtol("12"),
                strtol("-0x10"),
                strtol("010"),
                strtol("x"),
                strtol("7z")
            ],
            [12, -16, 8, 0, 7]
        );
    }

    #[test]
    fn info_mice_reads_as_qemus() {
        assert_eq!(
            info_mice(
                &json!([{"name": MOUSE_NAME, "index": 2, "current": true, "absolute": false}]),
                0
            ),
            "* Mouse #2: QEMU PS/2 Mouse\n"
        );
    }
}
