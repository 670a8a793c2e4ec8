//! What a management tool learns when it probes the emulator (libvirt 9.0's probe,
//! /work/notes/libvirt/probe-commands.txt; the domain start's QOM reads): the gateway's
//! answers beside live QEMU 7.2's (`-machine none`, as libvirt starts it to probe).
//! Each answer has QEMU's shape (the same keys and JSON types, recursively, element by
//! element); its content is ours (one machine, one CPU model, our devices and
//! properties), and where it differs from QEMU's the test says how. Errors are
//! compared exactly (class and words).

use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use serde_json::{json, Map, Value};

/// The JSON types of `v`, recursively (objects keep their keys).
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(n) if n.is_f64() => json!("number"),
        Value::Number(_) => json!("int"),
        Value::String(_) => json!("string"),
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}

/// The element of `list` whose `key` is `value`.
fn named<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no {key} {value} in {list}"))
}

/// `v` without the members `keys`.
fn without(v: &Value, keys: &[&str]) -> Value {
    let mut o: Map<String, Value> = v.as_object().expect("an object").clone();
    keys.iter().for_each(|k| drop(o.remove(*k)));
    Value::Object(o)
}

struct Peers {
    _qemu: Qemu,
    _gateway: Gateway,
    qemu: QmpClient,
    ours: QmpClient,
}

impl Peers {
    fn start() -> Peers {
        let qemu = Qemu::machine_none();
        let gateway = Gateway::start_with(1, "", &["-S"]);
        Peers {
            qemu: qemu.client(),
            ours: gateway.client(),
            _qemu: qemu,
            _gateway: gateway,
        }
    }

    /// Both answers to a command that must succeed (QEMU's, ours).
    fn both(&mut self, command: &str, arguments: Value) -> (Value, Value) {
        (
            self.qemu.ok(command, arguments.clone()),
            self.ours.ok(command, arguments),
        )
    }

    /// Asserts both refuse `command` with the same class and words.
    fn same_error(&mut self, command: &str, arguments: Value) {
        let q = self.qemu.err(command, arguments.clone());
        let g = self.ours.err(command, arguments.clone());
        assert_eq!(g, q, "{command} {arguments}: ours, then QEMU's");
    }
}

#[test]
fn probe_answers_have_qemus_shape_and_errors() {
    let mut p = Peers::start();

    let (q, g) = p.both("query-target", json!({}));
    assert_eq!(g, q, "query-target");

    // One machine type, "pc", the default. QEMU's default is pc-i440fx-7.2 with alias
    // "pc"; ours is no alias of QEMU's (handlers/machine_types.rs says why).
    let (q, g) = p.both("query-machines", json!({}));
    let q_pc = named(&q, "alias", "pc");
    assert_eq!(g.as_array().map(Vec::len), Some(1), "one machine: {g}");
    assert_eq!(
        shape(&g[0]),
        shape(&without(q_pc, &["alias"])),
        "{g}\n{q_pc}"
    );
    assert_eq!(g[0]["name"], "pc");
    assert_eq!(g[0]["is-default"], true);
    assert_eq!(g[0]["hotpluggable-cpus"], true);
    assert_eq!(
        g[0]["cpu-max"], q_pc["cpu-max"],
        "255 either way: xAPIC ids"
    );
    assert_eq!(g[0]["default-cpu-type"], "host-x86_64-cpu");
    assert_eq!(g[0]["default-ram-id"], "flotilla.ram");

    // One CPU model, host; QEMU lists 130 more.
    let (q, g) = p.both("query-cpu-definitions", json!({}));
    assert_eq!(g.as_array().map(Vec::len), Some(1), "one model: {g}");
    assert_eq!(g[0], *named(&q, "name", "host"));

    // No SEV, no SGX: QEMU's words where KVM has neither.
    p.same_error("query-sev-capabilities", json!({}));
    p.same_error("query-sgx-capabilities", json!({}));
    for c in ["query-target", "query-machines", "query-cpu-definitions"] {
        p.same_error(c, json!({"no-such-member": 1}));
    }
}
