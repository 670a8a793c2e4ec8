//! object-add, object-del and query-memdev through the gateway, against a live QEMU 7.2
//! (microvm, paused) given the same exchanges: the same answers and errors (class and
//! text) for iothreads and memory backends, the legacy `props` form, ids taken and
//! freed, and query-memdev's entries; the differences kept on purpose are asserted
//! where they arise (guest RAM's own entry, types Flotilla does not create).

use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{error_of, Gateway, QmpClient};
use flotilla_tests::TempDir;
use serde_json::{json, Value};

/// The exchanges both get, in order: (command, arguments).
fn exchanges(dir: &TempDir) -> Vec<(&'static str, Value)> {
    let file = dir.path().join("mem-file");
    let missing = dir.path().join("no/such/dir/mem");
    vec![
        ("object-add", json!({"qom-type": "iothread", "id": "io0"})),
        ("object-add", json!({"qom-type": "iothread", "id": "io0"})),
        (
            "object-add",
            json!({"qom-type": "iothread", "id": "io1", "poll-max-ns": -1}),
        ),
        (
            "object-add",
            json!({"qom-type": "iothread", "id": "io1", "poll-max-ns": "x"}),
        ),
        (
            "object-add",
            json!({"qom-type": "iothread", "id": "io1", "bogus": 1}),
        ),
        (
            "object-add",
            json!({"qom-type": "iothread", "id": "bad id"}),
        ),
        ("object-add", json!({"qom-type": "nosuch", "id": "x"})),
        ("object-add", json!({"qom-type": "iothread"})),
        ("object-add", json!({"id": "z"})),
        (
            "object-add",
            json!({"qom-type": "memory-backend-ram", "id": "m0", "size": 0}),
        ),
        (
            "object-add",
            json!({"qom-type": "memory-backend-ram", "id": "m0", "size": "1M"}),
        ),
        (
            "object-add",
            json!({"qom-type": "memory-backend-ram", "id": "m0"}),
        ),
        (
            "object-add",
            json!({"qom-type": "memory-backend-ram", "id": "m0", "size": 1 << 20}),
        ),
        (
            "object-add",
            json!({"qom-type": "memory-backend-memfd", "id": "m1", "size": 2 << 20,
                   "share": false}),
        ),
        (
            "object-add",
            json!({"qom-type": "memory-backend-memfd", "id": "m2", "size": 1 << 20,
                   "prealloc": true, "merge": false, "dump": false}),
        ),
        (
            "object-add",
            json!({"qom-type": "memory-backend-file", "id": "m3", "size": 1 << 20}),
        ),
        (
            "object-add",
            json!({"qom-type": "memory-backend-file", "id": "m3", "size": 1 << 20,
                   "mem-path": missing.to_string_lossy()}),
        ),
        (
            "object-add",
            json!({"qom-type": "memory-backend-file", "id": "m3", "size": 1 << 20,
                   "mem-path": file.to_string_lossy(), "share": true}),
        ),
        (
            "object-add",
            json!({"qom-type": "memory-backend-ram", "id": "io0", "size": 1 << 20}),
        ),
        ("object-del", json!({"id": "nosuch"})),
        ("object-del", json!({})),
        ("object-del", json!({"id": "m0"})),
        ("object-del", json!({"id": "m0"})),
        (
            "object-add",
            json!({"qom-type": "memory-backend-ram", "id": "m0", "size": 4096}),
        ),
        ("query-memdev", json!({})),
    ]
}

/// query-memdev's objects sorted by id (QEMU lists them in its hash table's order), and
/// the machine's own RAM, which differs on purpose: QEMU's "microvm.ram" is private
/// anonymous memory; ours, "flotilla.ram", is the memfd shared with the daemons, never
/// made mergeable.
fn objects_and_machine_ram(v: &Value, ram_id: &str) -> (Vec<Value>, Value) {
    let list = v.as_array().expect("query-memdev answers a list");
    let (ram, mut rest): (Vec<Value>, Vec<Value>) =
        list.iter().cloned().partition(|m| m["id"] == ram_id);
    rest.sort_by_key(|m| m["id"].as_str().unwrap_or_default().to_string());
    let [ram] = <[Value; 1]>::try_from(ram).expect("guest RAM is listed once");
    (rest, ram)
}

fn run(c: &mut QmpClient, dir: &TempDir) -> Vec<Value> {
    exchanges(dir)
        .into_iter()
        .map(|(cmd, args)| c.execute(cmd, args))
        .collect()
}

#[test]
fn objects_are_created_refused_and_listed_as_qemu_does() {
    let qdir = TempDir::new("objects-qemu");
    let qemu = Qemu::guest("", &[]);
    let theirs = run(&mut qemu.client(), &qdir);
    let gdir = TempDir::new("objects-gw");
    let gw = Gateway::start(&["-S"]);
    let mut c = gw.client();
    let ours = run(&mut c, &gdir);
    let steps = exchanges(&gdir);
    for ((i, (q, g)), (cmd, args)) in theirs.iter().zip(&ours).enumerate().zip(&steps) {
        if *cmd == "query-memdev" {
            let (q_objects, q_ram) = objects_and_machine_ram(&q["return"], "microvm.ram");
            let (g_objects, g_ram) = objects_and_machine_ram(&g["return"], "flotilla.ram");
            assert_eq!(g_objects, q_objects, "query-memdev's objects");
            assert_eq!(q_ram["size"], 128 << 20);
            assert_eq!(
                g_ram,
                json!({"id": "flotilla.ram", "size": 128 << 20, "merge": false,
                       "dump": true, "prealloc": false, "share": true, "reserve": true,
                       "host-nodes": [], "policy": "default"})
            );
            continue;
        }
        // Each side's files are in its own scratch directory.
        let q = q
            .to_string()
            .replace(&*qdir.path().to_string_lossy(), "DIR");
        let g = g
            .to_string()
            .replace(&*gdir.path().to_string_lossy(), "DIR");
        assert_eq!(g, q, "step {i}: {cmd} {args}");
    }
    // The file backend made its file at the size asked for.
    assert_eq!(
        std::fs::metadata(gdir.path().join("mem-file"))
            .unwrap()
            .len(),
        1 << 20
    );
}

#[test]
fn the_specs_props_form_and_types_flotilla_does_not_create() {
    let gw = Gateway::start(&["-S"]);
    let mut c = gw.client();
    // The spec's form (QEMU before 6.0): the properties in "props".
    c.ok(
        "object-add",
        json!({"qom-type": "memory-backend-memfd", "id": "p0",
               "props": {"size": 1 << 20, "share": false}}),
    );
    let list = c.ok("query-memdev", json!({}));
    assert_eq!(list[0]["id"], "p0");
    assert_eq!(
        (&list[0]["size"], &list[0]["share"]),
        (&json!(1 << 20), &json!(false))
    );
    // A type QEMU 7.2 knows and Flotilla does not create: refused by name (QEMU would
    // create it), not "does not accept value". (Its own properties would be answered
    // as unexpected first: the command's members are those of the types we create.)
    let (class, desc) =
        error_of(&c.execute("object-add", json!({"qom-type": "rng-random", "id": "r0"})));
    assert_eq!(class, "GenericError");
    assert!(
        desc.starts_with("Flotilla does not create objects of type 'rng-random'"),
        "{desc}"
    );
    // NUMA placement is refused rather than ignored.
    let (_, desc) = error_of(&c.execute(
        "object-add",
        json!({"qom-type": "memory-backend-ram", "id": "n0", "size": 4096,
               "policy": "bind", "host-nodes": [0]}),
    ));
    assert!(desc.contains("NUMA"), "{desc}");
}
