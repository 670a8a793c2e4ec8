//! What a management tool learns when it probes the emulator (libvirt 9.0's probe,
//! /work/notes/libvirt/probe-commands.txt; the domain start's QOM reads): the gateway's
//! answers beside live QEMU 7.2's (`-machine none`, as libvirt starts it to probe).
//! Each answer has QEMU's shape (the same keys and JSON types, recursively, element by
//! element); its content is ours (one machine, one CPU model, our devices and
//! properties), and where it differs from QEMU's the test says how. Errors are
//! compared exactly (class and words).

use std::process::Command;

use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{shape, Gateway, QmpClient, TIMEOUT};
use flotilla_tests::{bin, kvm_is_pvm, require_tool, run_to_end, test_guest, TempDir};
use ipc::CpuidLeaf;
use qmp_gateway::cpuid_features::{self, GuestCpuid};
use serde_json::{json, Map, Value};

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

/// The entries of a list of objects, by name (each must be there once).
fn by_name(list: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for e in list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
    {
        let name = e["name"].as_str().expect("a name").to_string();
        assert!(out.insert(name, e.clone()).is_none(), "twice in {list}");
    }
    out
}

#[test]
fn qom_types_and_properties_are_qemus() {
    let mut p = Peers::start();

    // Types: the memory backends exactly as QEMU's; every type of ours is one of QEMU's
    // with its parent, but for the CPU (QEMU's host model descends from max, which we do
    // not have) and the machine (QEMU's pc is pc-i440fx-7.2-machine).
    let args = json!({"implements": "memory-backend", "abstract": true});
    let (q, g) = p.both("qom-list-types", args);
    assert_eq!(by_name(&g), by_name(&q));
    let (q, g) = p.both("qom-list-types", json!({"abstract": true}));
    let theirs = by_name(&q);
    for (name, t) in by_name(&g) {
        if name == "host-x86_64-cpu" {
            assert_eq!(t["parent"], "x86_64-cpu");
            assert_eq!(theirs[&name]["parent"], "max-x86_64-cpu");
        } else if name == "pc-machine" {
            assert!(!theirs.contains_key(&name));
            assert_eq!(t["parent"], "machine");
        } else {
            assert_eq!(Some(&t), theirs.get(&name), "{name}");
        }
    }
    // Without abstract, and filtered by what they implement.
    let (q, g) = p.both("qom-list-types", json!({"implements": "virtio-pci"}));
    let theirs = by_name(&q);
    let ours = by_name(&g);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        ["virtio-balloon-pci", "virtio-blk-pci", "virtio-net-pci"]
    );
    ours.iter()
        .for_each(|(n, t)| assert_eq!(Some(t), theirs.get(n), "{n}"));
    let (q, g) = p.both("qom-list-types", json!({"implements": "no-such-type"}));
    assert_eq!((q, g), (json!([]), json!([])));

    // Devices: each property we take is QEMU's, with its type, description and default
    // (but virtio-blk's num-queues, whose QEMU default 65535 means "as many as vCPUs":
    // ours is one queue unless given).
    for (device, count) in [
        ("virtio-blk-pci", 7),
        ("virtio-net-pci", 6),
        ("pc-dimm", 5),
        ("host-x86_64-cpu", 6),
        ("virtio-balloon-pci", 0),
    ] {
        let (q, g) = p.both("device-list-properties", json!({"typename": device}));
        let theirs = by_name(&q);
        let ours = by_name(&g);
        assert_eq!(ours.len(), count, "{device}: {g}");
        for (name, prop) in ours {
            let mut q_prop = theirs[&name].clone();
            if (device, name.as_str()) == ("virtio-blk-pci", "num-queues") {
                q_prop.as_object_mut().unwrap().remove("default-value");
            }
            assert_eq!(prop, q_prop, "{device}.{name}");
        }
    }
    // Objects: each member object-add takes is a property of QEMU's type, of its type
    // (QEMU adds descriptions).
    for object in [
        "iothread",
        "memory-backend",
        "memory-backend-ram",
        "memory-backend-memfd",
        "memory-backend-file",
    ] {
        let (q, g) = p.both("qom-list-properties", json!({"typename": object}));
        let theirs = by_name(&q);
        for (name, prop) in by_name(&g) {
            let q_prop = without(&theirs[&name], &["description"]);
            assert_eq!(prop, q_prop, "{object}.{name}");
        }
    }

    // The machines' classes answer (libvirt 9.0's probe asks for none-machine's
    // properties whatever the machines are, and crashed when the class was not found);
    // what none takes is QEMU's. QEMU's "pc" is an alias of pc-i440fx-7.2, so it has no
    // pc-machine class to compare with.
    let (q, g) = p.both("qom-list-properties", json!({"typename": "none-machine"}));
    let theirs = by_name(&q);
    for (name, prop) in by_name(&g) {
        assert_eq!(
            prop,
            without(&theirs[&name], &["description"]),
            "none-machine.{name}"
        );
    }
    p.ours
        .ok("qom-list-properties", json!({"typename": "pc-machine"}));

    // QEMU's refusals: unknown types, abstract ones, objects that are no devices.
    for t in ["no-such-type", "virtio-pci", "memory-backend-ram", "device"] {
        p.same_error("device-list-properties", json!({"typename": t}));
    }
    p.same_error("qom-list-properties", json!({"typename": "no-such-type"}));
    p.same_error("qom-list-types", json!({"abstract": "yes"}));
}

/// What QEMU's host model and our vCPUs may disagree on, each for a reason (seen on
/// this kvm-pvm host; the rest must be equal):
/// - tsc-deadline: QEMU adds it from KVM_CAP_TSC_DEADLINE_TIMER, outside KVM's supported
///   CPUID, which is what vmm-core gives;
/// - kvmclock-stable-bit: QEMU sets it itself;
/// - cmp-legacy, ht: vmm-core's topology is one package of --max-cpus cores
///   (cpuid.rs: set with more than one), QEMU's -smp 1,maxcpus=2 is two one-core
///   sockets (ht off) and its machine none keeps KVM's cmp-legacy;
/// - invtsc: QEMU's host model drops it as unmigratable (migratable=on); our vCPUs have
///   it (KVM gives it);
/// - topoext: QEMU 7.2 drops it for host; KVM gives it and so do we;
/// - model-id: QEMU reads the brand string from the host's CPUID instruction; ours is
///   leaves 0x8000_0002-4 of KVM's supported CPUID (empty under kvm-pvm).
const MAY_DIFFER: &[&str] = &[
    "tsc-deadline",
    "kvmclock-stable-bit",
    "cmp-legacy",
    "cmp_legacy",
    "ht",
    "invtsc",
    "topoext",
    "model-id",
];

/// `ours`' features equal `qemu`'s (both a props object or both qom-get answers by
/// name), but for MAY_DIFFER and the features `excused` names; identity members too.
/// Every member of ours is QEMU's.
fn same_features(
    ours: &Map<String, Value>,
    qemu: &Map<String, Value>,
    excused: impl Fn(&str) -> bool,
    what: &str,
) {
    let mut differ = Vec::new();
    for (name, value) in ours {
        let theirs = qemu
            .get(name)
            .unwrap_or_else(|| panic!("{what}: {name} is not QEMU's"));
        if value != theirs && !MAY_DIFFER.contains(&name.as_str()) && !excused(name) {
            differ.push(format!("{name}: ours {value}, QEMU's {theirs}"));
        }
    }
    assert!(differ.is_empty(), "{what}: {differ:#?}");
}

/// The test guest's `GUEST CPUID LEAVES 0x1.0=EAX:EBX:ECX:EDX ...` line (scenario
/// cpuid): the leaves QEMU's feature names cover, as the guest's CPUID instruction read
/// them.
fn guest_leaves(line: &str) -> GuestCpuid {
    let hex = |t: &str| {
        u32::from_str_radix(t.trim_start_matches("0x"), 16)
            .unwrap_or_else(|e| panic!("{t} in {line}: {e}"))
    };
    let leaves = line
        .strip_prefix("GUEST CPUID LEAVES")
        .unwrap_or_else(|| panic!("not the guest's leaves: {line}"))
        .split_whitespace()
        .map(|item| {
            let (at, regs) = item.split_once('=').expect("LEAF.SUB=REGS");
            let (leaf, sub) = at.split_once('.').expect("LEAF.SUB");
            let regs: Vec<u32> = regs.split(':').map(hex).collect();
            assert_eq!(regs.len(), 4, "{item}");
            CpuidLeaf {
                function: hex(leaf),
                index: sub.parse().expect("a subleaf"),
                eax: regs[0],
                ebx: regs[1],
                ecx: regs[2],
                edx: regs[3],
            }
        })
        .collect();
    GuestCpuid(leaves)
}

/// What the guest's CPUID has of feature `name` (any of QEMU's spellings), or None if
/// it is none of the table's.
fn seen(cpuid: &GuestCpuid, name: &str) -> Option<bool> {
    cpuid_features::find(name).map(|f| cpuid.has(f))
}

/// Every feature among `ours` (props or qom-get answers by name) is what the guest's
/// CPUID instruction reads, `cpuid`: the answers tell the truth.
fn as_the_guest_sees(ours: &Map<String, Value>, cpuid: &GuestCpuid, what: &str) {
    let differ: Vec<String> = (ours.iter())
        .filter_map(|(name, value)| {
            let has = seen(cpuid, name)?;
            (*value != json!(has)).then(|| format!("{name}: ours {value}, the guest's {has}"))
        })
        .collect();
    assert!(differ.is_empty(), "{what}: {differ:#?}");
}

/// The CPUID our guest reads on a VM with `extra` (scenario cpuid).
fn our_guest_reads(extra: &[&str]) -> GuestCpuid {
    let mut gateway = Gateway::start_with(1, "scenario=cpuid", extra);
    let boot = std::time::Duration::from_secs(60);
    guest_leaves(&gateway.vm.expect_prefix("GUEST CPUID LEAVES", boot))
}

/// On kvm-pvm, QEMU's expansion and qom-get say what KVM supports, and KVM puts the
/// host's instruction-set bits back (SSE3, AVX2...): where QEMU's answer is not what a
/// guest reads, ours, which is (`as_the_guest_sees`), may differ from it. Elsewhere
/// (VMX/SVM) nothing is excused.
fn qemu_untruthful<'a>(
    qemu: &'a Map<String, Value>,
    cpuid: &'a GuestCpuid,
) -> impl Fn(&str) -> bool + 'a {
    let pvm = kvm_is_pvm();
    move |name| pvm && seen(cpuid, name).is_some_and(|has| qemu.get(name) != Some(&json!(has)))
}

#[test]
fn cpu_model_expansion_is_qemus() {
    let mut p = Peers::start();
    let guest = our_guest_reads(&[]);
    let props = |v: &Value| v["model"]["props"].as_object().expect("props").clone();
    for (kind, name) in [("static", "base"), ("full", "host")] {
        let args = json!({"type": kind, "model": {"name": "host"}});
        let (q, g) = p.both("query-cpu-model-expansion", args);
        assert_eq!(g["model"]["name"], name, "{g}");
        assert_eq!(q["model"]["name"], name);
        let ours = props(&g);
        for identity in ["vendor", "family", "model", "stepping", "model-id"] {
            assert!(ours.contains_key(identity), "{kind}: {identity}");
        }
        assert!(ours.contains_key("sse4.2") && ours.contains_key("lm"));
        // Static: one spelling each; full: every one QEMU lists.
        assert_eq!(ours.contains_key("sse4_2"), kind == "full");
        // QEMU's static model has no level (min-level is its own, a model's floor).
        let theirs = without(&q["model"]["props"], &["min-level", "min-xlevel", "level"]);
        let ours = without(&g["model"]["props"], &["min-level", "min-xlevel", "level"]);
        let (ours, theirs) = (ours.as_object().unwrap(), theirs.as_object().unwrap());
        as_the_guest_sees(ours, &guest, kind);
        same_features(ours, theirs, qemu_untruthful(theirs, &guest), kind);
    }
    // libvirt's probe: migratable=false and hv-passthrough=true change nothing here.
    let plain = json!({"type": "full", "model": {"name": "host"}});
    let libvirts = json!({"type": "full", "model": {"name": "host",
        "props": {"migratable": false, "hv-passthrough": true}}});
    let g = p.ours.ok("query-cpu-model-expansion", libvirts);
    assert_eq!(g, p.ours.ok("query-cpu-model-expansion", plain));
    // A feature the vCPUs have (lahf-lm: every x86-64 CPU KVM runs on) turned off is
    // off in the answer, under each spelling.
    let spellings = |g: &Value| {
        [
            g["model"]["props"]["lahf-lm"].clone(),
            g["model"]["props"]["lahf_lm"].clone(),
        ]
    };
    assert_eq!(spellings(&g), [json!(true), json!(true)]);
    let args = json!({"type": "full", "model": {"name": "host", "props": {"lahf_lm": false}}});
    let g = p.ours.ok("query-cpu-model-expansion", args);
    assert_eq!(spellings(&g), [json!(false), json!(false)]);
    // What a VM with it off reads.
    let without_lahf = our_guest_reads(&["--cpu", "host,lahf-lm=off"]);
    as_the_guest_sees(&props(&g), &without_lahf, "lahf_lm off");
    // A feature KVM keeps whatever the VMM sets (kvm-pvm: the host's instruction-set
    // bits, avx2 among them) cannot be off: refused, as a VM with it off is refused.
    // On VMX/SVM it is off like any other.
    let args = json!({"type": "static", "model": {"name": "host", "props": {"avx2": false}}});
    if kvm_is_pvm() {
        assert_eq!(
            p.ours.err("query-cpu-model-expansion", args),
            (
                "GenericError".into(),
                "Property 'host-x86_64-cpu.avx2' cannot be turned off on this host: its KVM \
                 keeps the feature (the guest would have it)"
                    .into()
            )
        );
    } else {
        let g = p.ours.ok("query-cpu-model-expansion", args);
        assert_eq!(g["model"]["props"]["avx2"], false, "{g}");
    }

    // QEMU's refusals, in its words.
    let model = |props: Value| json!({"type": "static", "model": {"name": "host", "props": props}});
    for args in [
        json!({"type": "static", "model": {"name": "no-such-model"}}),
        model(json!({"no-such-prop": true})),
        model(json!({"sse": "yes"})),
        json!({"type": "bogus", "model": {"name": "host"}}),
        json!({"type": "static"}),
        json!({"model": {"name": "host"}}),
        json!({"type": "static", "model": {"props": {}}}),
    ] {
        p.same_error("query-cpu-model-expansion", args);
    }
}

/// `list` (qom-list's answer) as a name -> type map.
fn property_types(list: &Value) -> Map<String, Value> {
    by_name(list)
        .into_iter()
        .map(|(name, p)| (name, p["type"].clone()))
        .collect()
}

/// What libvirt reads at a domain's start (/work/notes/libvirt/domain.log): qom-list of
/// the vCPU, qom-get of its properties, qom-list of /machine/peripheral; here on QEMU
/// 7.2 -M pc (KVM, -cpu host,migratable=on,arch-capabilities=off, libvirt's line for
/// host-passthrough with the feature disabled, which QEMU on kvm-pvm needs, and
/// kvm-steal-time off too) and the gateway with the same vCPUs, CPU model and devices:
/// one vCPU at launch, one added with device_add (id cpu1), a balloon with an id. Then
/// both guests run and say what their CPU has (scenario cpuid). Ours lists fewer
/// properties than QEMU's (cpu_models.rs says which); each one has QEMU's type and
/// value, but MAY_DIFFER's and level/xlevel (QEMU raises them for leaves it adds
/// itself).
///
/// On kvm-pvm (this project's test hosts) KVM keeps the host's arch-capabilities bit
/// whatever the VMM sets: QEMU's guest has the feature and its MSR although QEMU's
/// qom-get says false; ours refuses the line, naming the bits, and runs here with
/// arch-capabilities left on (qom-get true, the guest's line then equal to QEMU's). On
/// VMX/SVM both run the same line and neither guest has the feature (rdmsr 0x10a: #GP).
#[test]
fn qom_tree_of_vcpus_and_peripherals_is_qemus() {
    let pvm = kvm_is_pvm();
    let balloon = "virtio-balloon-pci,id=balloon0";
    let cpu = "host,migratable=on,arch-capabilities=off,kvm-steal-time=off";
    let guest = "scenario=cpuid";
    let qemu = Qemu::pc_guest(
        guest,
        &["-smp", "1,maxcpus=2", "-device", balloon, "-cpu", cpu],
    );
    let ours_cpu = if pvm {
        let dir = TempDir::new("gateway");
        let mut cmd = Command::new(bin("qmp-gateway"));
        cmd.arg("--kernel").arg(test_guest());
        cmd.args([
            "--memory", "128", "--cpus", "1", "-S", "--cpu", cpu, "--qmp",
        ])
        .arg(dir.path().join("qmp.sock"));
        let (status, _, err) = run_to_end(cmd, TIMEOUT);
        assert!(!status.success(), "{err}");
        let refusal = "vCPU 0: --cpu turned off CPUID.07H:EDX bits 0x20000000, but this \
                       host's KVM keeps them set (the guest would have the feature): leave it \
                       on here";
        assert!(err.contains(refusal), "{err}");
        "host,migratable=on,kvm-steal-time=off"
    } else {
        cpu
    };
    let gateway = Gateway::start_with(
        1,
        guest,
        &[
            "-S",
            "--max-cpus",
            "2",
            "--device",
            balloon,
            "--cpu",
            ours_cpu,
        ],
    );
    let mut p = Peers {
        qemu: qemu.client(),
        ours: gateway.client(),
        _qemu: qemu,
        _gateway: gateway,
    };
    let cpu1 = json!({"driver": "host-x86_64-cpu", "id": "cpu1",
        "socket-id": 0, "core-id": 1, "thread-id": 0});
    p.both("device_add", cpu1);

    for path in ["/machine/peripheral", "/machine/peripheral-anon"] {
        let (q, g) = p.both("qom-list", json!({"path": path}));
        assert_eq!(property_types(&g), property_types(&q), "{path}");
        let (q, g) = p.both("qom-get", json!({"path": path, "property": "type"}));
        assert_eq!(g, q);
    }
    let (q, _) = p.both("qom-list", json!({"path": "/machine/peripheral"}));
    assert_eq!(property_types(&q).len(), 3, "type, balloon0, cpu1: {q}");

    // Each vCPU's qom-get answers, ours and QEMU's, checked once the guests said what
    // their CPUs have.
    let mut answers = Vec::new();
    for (path, hotplugged) in [
        ("/machine/unattached/device[0]", false),
        ("/machine/peripheral/cpu1", true),
    ] {
        let (q, g) = p.both("qom-list", json!({"path": path}));
        let theirs = property_types(&q);
        let ours = property_types(&g);
        for (name, ty) in &ours {
            assert_eq!(Some(ty), theirs.get(name), "{path}: {name}'s type");
        }
        assert!(ours.len() > 200, "{path}: {} properties", ours.len());
        let mut ours_values = Map::new();
        let mut their_values = Map::new();
        for name in ours.keys() {
            let args = json!({"path": path, "property": name});
            let (q, g) = p.both("qom-get", args);
            ours_values.insert(name.clone(), g);
            their_values.insert(name.clone(), q);
        }
        assert_eq!(ours_values["hotplugged"], hotplugged, "{path}");
        // Turned off, on the vCPUs there at launch and added later (KVM gives it here);
        // on kvm-pvm left on in ours (QEMU says false, its guest has it).
        assert_eq!(ours_values["arch-capabilities"], pvm, "{path}");
        assert_eq!(ours_values["apic-id"], u32::from(hotplugged), "{path}");
        for leaves in ["level", "xlevel"] {
            ours_values.remove(leaves);
        }
        answers.push((path, ours_values, their_values));
    }

    // QEMU's refusals: unknown paths and properties, on a vCPU, a container, a device.
    let cpu0 = "/machine/unattached/device[0]";
    for path in ["/no/such", "no-such", "", "/machine/peripheral/no-such"] {
        p.same_error("qom-list", json!({"path": path}));
        p.same_error("qom-get", json!({"path": path, "property": "type"}));
    }
    for path in [cpu0, "/machine/peripheral", "/machine/peripheral/balloon0"] {
        p.same_error("qom-get", json!({"path": path, "property": "no-such"}));
    }
    p.same_error("qom-get", json!({"path": cpu0}));
    p.same_error("qom-list", json!({"path": cpu0, "extra": 1}));

    // The guests' own view: the features turned off are not in their CPUID, the MSR of
    // arch-capabilities faults (#GP), a feature left alone is there; as in QEMU's guest.
    // On kvm-pvm QEMU's guest has arch-capabilities and its MSR despite its line, and
    // ours (left on) too.
    p.both("cont", json!({}));
    let boot = std::time::Duration::from_secs(60);
    let ours = p._gateway.vm.expect_prefix("GUEST CPUID", boot);
    let theirs = p._qemu.vm.expect_prefix("GUEST CPUID", boot);
    assert_eq!(ours, theirs, "ours, then QEMU's");
    let arch_capabilities = match pvm {
        true => "arch-capabilities=1 msr-0x10a=read",
        false => "arch-capabilities=0 msr-0x10a=gp",
    };
    assert_eq!(
        ours,
        format!("GUEST CPUID {arch_capabilities} kvm-steal-time=0 lahf-lm=1")
    );
    // Every feature qom-get names is what our guest's CPUID reads. Each equals QEMU's
    // answer, but on kvm-pvm where QEMU's is not what its own guest reads (the host bits
    // KVM keeps: SSE3, AVX2...) or the two guests read different CPUs (KVM puts leaf
    // 7.1's bits back for ours, whose leaf has bits QEMU 7.2 does not know, and not for
    // QEMU's, which gives it empty).
    let ours = guest_leaves(&p._gateway.vm.expect_prefix("GUEST CPUID LEAVES", boot));
    let theirs = guest_leaves(&p._qemu.vm.expect_prefix("GUEST CPUID LEAVES", boot));
    for (path, ours_values, their_values) in &answers {
        as_the_guest_sees(ours_values, &ours, path);
        let excused = |name: &str| {
            pvm && seen(&theirs, name).is_some_and(|has| {
                their_values.get(name) != Some(&json!(has)) || seen(&ours, name) != Some(has)
            })
        };
        same_features(ours_values, their_values, excused, path);
    }
}

/// The gateway's `--machine none` (no VM, as libvirt probes an emulator), with `extra`.
fn gateway_none(extra: &[&str]) -> Gateway {
    let dir = TempDir::new("gateway-none");
    let qmp = dir.path().join("qmp.sock");
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.args(["--machine", "none", "-S", "--qmp"])
        .arg(&qmp)
        .args(extra);
    Gateway::spawn(cmd, dir, qmp)
}

fn expansion(kind: &str) -> Value {
    json!({"type": kind, "model": {"name": "host"}})
}

/// libvirt's probe (`-machine none`) asks the host model's expansions to learn what a
/// VM's vCPUs will be: the none machine answers exactly what a VM's vCPU gets (both
/// expansions equal to a VM's, with the default CPU model and with a feature turned
/// off), in QEMU -machine none's names and shapes with its features but for MAY_DIFFER.
#[test]
fn machine_none_expands_what_a_vms_vcpu_gets() {
    let mut p = Peers::start();
    let guest = our_guest_reads(&[]);
    let none_gateway = gateway_none(&[]);
    let mut none = none_gateway.client();
    for (kind, name) in [("static", "base"), ("full", "host")] {
        let (q, vm) = p.both("query-cpu-model-expansion", expansion(kind));
        let g = none.ok("query-cpu-model-expansion", expansion(kind));
        assert_eq!(g, vm, "{kind}: the none machine's, then a VM's");
        assert_eq!(
            (&g["model"]["name"], &q["model"]["name"]),
            (&json!(name), &json!(name))
        );
        let theirs = without(&q["model"]["props"], &["min-level", "min-xlevel", "level"]);
        let ours = without(&g["model"]["props"], &["min-level", "min-xlevel", "level"]);
        let (ours, theirs) = (ours.as_object().unwrap(), theirs.as_object().unwrap());
        as_the_guest_sees(ours, &guest, kind);
        same_features(ours, theirs, qemu_untruthful(theirs, &guest), kind);
    }

    // A feature the host has, turned off: off for the none machine as for a VM (one
    // KVM lets the VMM clear on VMX/SVM and kvm-pvm alike).
    let cpu = ["--cpu", "host,lahf-lm=off"];
    let vm_gateway = Gateway::start_with(1, "", &[&["-S"][..], &cpu].concat());
    let none_gateway = gateway_none(&cpu);
    let (mut vm, mut none) = (vm_gateway.client(), none_gateway.client());
    for kind in ["static", "full"] {
        let g = none.ok("query-cpu-model-expansion", expansion(kind));
        assert_eq!(g["model"]["props"]["lahf-lm"], false, "{kind}");
        assert_eq!(
            g,
            vm.ok("query-cpu-model-expansion", expansion(kind)),
            "{kind}"
        );
    }
}

/// libvirt's second probe, `-machine none,accel=tcg`: QEMU 7.2 lists the host model as
/// needing KVM; it expands it to its emulated CPU, which Flotilla has not, so ours is
/// refused in QEMU's words for a host vCPU under TCG.
#[test]
fn machine_none_under_tcg_has_no_host_model() {
    let qemu = Qemu::machine_none_on("tcg");
    let gateway = gateway_none(&["--accel", "tcg"]);
    let (mut q, mut g) = (qemu.client(), gateway.client());
    let ours = g.ok("query-cpu-definitions", json!({}));
    assert_eq!(ours.as_array().map(Vec::len), Some(1), "{ours}");
    let theirs = q.ok("query-cpu-definitions", json!({}));
    assert_eq!(ours[0], *named(&theirs, "name", "host"));
    assert_eq!(ours[0]["unavailable-features"], json!(["kvm"]));
    // QEMU's words when a host vCPU is made under TCG.
    let mut cmd = Command::new(require_tool("qemu-system-x86_64", "qemu-system-x86"));
    cmd.args([
        "-machine",
        "pc,accel=tcg",
        "-cpu",
        "host",
        "-S",
        "-nodefaults",
    ])
    .args(["-display", "none"]);
    let (_, _, err) = run_to_end(cmd, std::time::Duration::from_secs(30));
    let words = err
        .trim()
        .trim_start_matches("qemu-system-x86_64: ")
        .to_string();
    assert_eq!(words, "CPU model 'host' requires KVM or HVF");
    for kind in ["static", "full"] {
        assert_eq!(
            g.err("query-cpu-model-expansion", expansion(kind)),
            ("GenericError".into(), words.clone())
        );
    }
}
