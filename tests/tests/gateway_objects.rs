//! object-add, object-del and query-memdev through the gateway, against a live QEMU 7.2
//! (microvm, paused) given the same exchanges: the same answers and errors (class and
//! text) for iothreads and memory backends, the legacy `props` form, ids taken and
//! freed, and query-memdev's entries; the differences kept on purpose are asserted
//! where they arise (guest RAM's own entry, types Flotilla does not create). Iothreads
//! are listed by query-iothreads as QEMU lists them, each with a live thread of the
//! right process.

use flotilla_tests::procs::{block_daemon_io_thread, thread, ProcId};
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
    // HMP's info memdev: each object's block as QEMU's (by id: QEMU lists them in its
    // hash table's order), the machine's own RAM left out as above.
    let blocks = |c: &mut QmpClient, ram: &str| -> Vec<String> {
        let text = c.ok(
            "human-monitor-command",
            json!({"command-line": "info memdev"}),
        );
        let text = text.as_str().expect("HMP answers text");
        // An empty line after them all.
        let text = text.strip_suffix("\r\n").expect("an empty line at the end");
        let mut blocks: Vec<String> = (text.split("memory backend: "))
            .filter(|b| !b.is_empty() && !b.starts_with(&format!("{ram}\r\n")))
            .map(|b| format!("memory backend: {b}"))
            .collect();
        blocks.sort();
        blocks
    };
    let theirs = blocks(&mut qemu.client(), "microvm.ram");
    assert!(!theirs.is_empty());
    assert_eq!(blocks(&mut c, "flotilla.ram"), theirs, "info memdev");
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

/// Most iothreads the gateway keeps (qmp-gateway's block/iothreads.rs): each holds a
/// block daemon.
const MAX_IOTHREADS: usize = 32;

/// query-iothreads's entries sorted by id (QEMU lists them in its hash table's order),
/// each thread-id checked to be a live thread that `owns` says is the right process's,
/// then left out (the ids differ between any two runs).
fn iothreads(list: &Value, owns: impl Fn(i32) -> bool) -> Vec<Value> {
    let mut list = list
        .as_array()
        .expect("query-iothreads answers a list")
        .clone();
    list.sort_by_key(|t| t["id"].as_str().unwrap_or_default().to_string());
    for t in &mut list {
        let tid = t["thread-id"].as_i64().expect("a thread-id") as i32;
        assert!(
            owns(tid),
            "thread {tid} of {t} is not a live thread of the right process"
        );
        t["thread-id"] = json!("live");
    }
    list
}

/// query-iothreads against QEMU 7.2: iothreads made at launch (QEMU's -object) and by
/// object-add are listed from their creation on, with the properties
/// and fields QEMU gives, and the thread-id of a live thread: QEMU's own there, the I/O
/// thread of a block daemon the gateway started here (which serves the disks that will
/// be placed on the iothread). object-del takes the iothread and its thread away. Each
/// iothread holds a daemon: past MAX_IOTHREADS, object-add is refused until one goes.
#[test]
fn iothreads_are_listed_with_a_live_thread_from_their_creation() {
    const BOOT0: &str = "iothread,id=boot0,poll-max-ns=0,aio-max-batch=8";
    let qemu = Qemu::guest("", &["-object", BOOT0]);
    let gw = Gateway::start(&["-S", "--object", BOOT0]);
    let (mut q, mut c) = (qemu.client(), gw.client());
    let (qemu_pid, gateway_pid) = (qemu.vm.pid(), gw.vm.pid());
    let in_qemu = |tid: i32| thread(tid).is_some_and(|(pid, _)| pid == qemu_pid);
    let in_a_daemon = |tid: i32| block_daemon_io_thread(gateway_pid, tid).is_some();
    let both = |q: &mut QmpClient, c: &mut QmpClient, cmd: &str, args: Value| {
        let (theirs, ours) = (q.execute(cmd, args.clone()), c.execute(cmd, args.clone()));
        assert_eq!(ours, theirs, "{cmd} {args}");
    };
    let listed = |q: &mut QmpClient, c: &mut QmpClient| {
        let theirs = iothreads(&q.ok("query-iothreads", json!({})), in_qemu);
        let ours_raw = c.ok("query-iothreads", json!({}));
        let ours = iothreads(&ours_raw, in_a_daemon);
        assert_eq!(ours, theirs, "query-iothreads");
        ours_raw
    };
    let boot = json!({"id": "boot0", "thread-id": "live", "poll-max-ns": 0, "poll-grow": 0,
                      "poll-shrink": 0, "aio-max-batch": 8});
    let at_launch = iothreads(&listed(&mut q, &mut c), in_a_daemon);
    assert_eq!(at_launch, std::slice::from_ref(&boot));
    // HMP's info iothreads: QEMU's text but for the thread's id.
    let info = |c: &mut QmpClient| {
        let text = c.ok(
            "human-monitor-command",
            json!({"command-line": "info iothreads"}),
        );
        let text = text.as_str().expect("HMP answers text");
        let lines: Vec<&str> = text
            .split_inclusive("\r\n")
            .map(|l| match l.starts_with("  thread_id=") {
                true => "  thread_id=N\r\n",
                false => l,
            })
            .collect();
        lines.concat()
    };
    assert_eq!(info(&mut c), info(&mut q), "info iothreads");
    both(
        &mut q,
        &mut c,
        "object-add",
        json!({"qom-type": "iothread", "id": "io1", "poll-grow": 3, "poll-shrink": 4}),
    );
    let io1 = json!({"id": "io1", "thread-id": "live", "poll-max-ns": 32768,
                     "poll-grow": 3, "poll-shrink": 4, "aio-max-batch": 0});
    let ours = listed(&mut q, &mut c);
    assert_eq!(iothreads(&ours, in_a_daemon), [boot.clone(), io1]);
    // Each its own thread, in a daemon of its own.
    let tids: Vec<i32> = (ours.as_array().unwrap().iter())
        .map(|t| t["thread-id"].as_i64().unwrap() as i32)
        .collect();
    let daemons: Vec<i32> = (tids.iter())
        .filter_map(|&t| block_daemon_io_thread(gateway_pid, t))
        .collect();
    assert!(tids[0] != tids[1] && daemons.len() == 2 && daemons[0] != daemons[1]);
    let io1_daemon = ProcId::of(daemons[(ours[0]["id"] != "io1") as usize]);
    both(&mut q, &mut c, "object-del", json!({"id": "io1"}));
    assert_eq!(iothreads(&listed(&mut q, &mut c), in_a_daemon), [boot]);
    assert!(
        !io1_daemon.exists(),
        "io1's daemon outlived it: {io1_daemon}"
    );

    // The bound (QEMU has none: this is ours alone).
    for i in 1..MAX_IOTHREADS {
        c.ok(
            "object-add",
            json!({"qom-type": "iothread", "id": format!("t{i}")}),
        );
    }
    let (class, desc) = error_of(&c.execute(
        "object-add",
        json!({"qom-type": "iothread", "id": "one-more"}),
    ));
    assert_eq!(
        (class.as_str(), desc.as_str()),
        (
            "GenericError",
            "too many iothreads (32): delete some with object-del first"
        )
    );
    let all = c.ok("query-iothreads", json!({}));
    assert_eq!(iothreads(&all, in_a_daemon).len(), MAX_IOTHREADS);
    c.ok("object-del", json!({"id": "t1"}));
    c.ok(
        "object-add",
        json!({"qom-type": "iothread", "id": "one-more"}),
    );
}

/// An iothread whose daemon cannot be started is not made (the start's error, with
/// the binary's name, is object-add's).
#[test]
fn an_iothread_without_a_daemon_is_refused() {
    let gw = Gateway::start(&["-S", "--block-daemon", "/nonexistent/block-daemon"]);
    let mut c = gw.client();
    let (class, desc) =
        error_of(&c.execute("object-add", json!({"qom-type": "iothread", "id": "io0"})));
    assert_eq!(class, "GenericError");
    assert!(
        desc.starts_with("starting the block daemon of iothread 'io0': "),
        "{desc}"
    );
    assert_eq!(c.ok("query-iothreads", json!({})), json!([]));
    // Not made: the id is free.
    let (_, desc) = error_of(&c.execute("object-del", json!({"id": "io0"})));
    assert_eq!(desc, "object 'io0' not found");
}
