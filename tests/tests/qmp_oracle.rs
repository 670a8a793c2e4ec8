//! QEMU 7.2 as a live oracle for our QMP answers: the same exchanges go to QEMU
//! (microvm, the test guest, paused) and to the gateway (the test guest, paused), each
//! with one raw disk (id d0, node disk0) and one NIC (nic0 on a UDP socket netdev n0),
//! and their replies are compared: errors by class and description exactly, successes
//! by shape (keys and JSON types, recursively) or by value where both VMs are in the
//! same situation.
//!
//! The exchanges come from the command table where they can (every served command with
//! no arguments, a missing, an unexpected and a wrongly typed member for each command),
//! so a new command is covered when it is added; the rest are written out: absent
//! devices, lookup errors, fd passing with real fds, block commands on the two drives,
//! net commands, malformed input. Where we differ on purpose the difference is listed in
//! `DIFFERENCES` with the reason, and asserted to be still that difference.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsFd;

use flotilla_tests::blk::empty_image;
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{shape, Gateway, QmpClient};
use flotilla_tests::TempDir;
use qmp_gateway::migration::settings::{Capability, MigrationSettings, SUPPORTED_CAPABILITIES};
use qmp_gateway::qmp::commands::COMMANDS;
use qmp_gateway::qmp::handlers::hmp::HMP;
use qmp_gateway::qmp::qapi::{Member, Ty, TypeKind};
use qmp_gateway::qmp::types::TYPES;
use serde_json::{json, Map, Value};

const DISK_BYTES: u64 = 16 << 20;
const MAC: &str = "52:54:00:12:34:56";

/// How two successful replies are compared (errors are always compared exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Same value: both VMs are in the same situation.
    Value,
    /// Same keys and JSON types, recursively: the values depend on the VMM (thread ids,
    /// versions, timings).
    Shape,
    /// Same value once these members' values are replaced by their shapes (fd numbers).
    ValueBut(&'static [&'static str]),
    /// Same shape, and the same value at this JSON pointer into the reply.
    ShapeAndValueAt(&'static str),
    /// Same value once the names QEMU gives anonymous block nodes (`#block` and a
    /// number that counts every node it made) read `#blockN`.
    ValueButAnonymousNodes,
    /// Same value once the UDP ports after 127.0.0.1 read `N` (each VM binds its own).
    ValueButPorts,
}

/// One message sent to both, with an fd of its own for each where it passes one.
struct Exchange {
    label: String,
    bytes: Vec<u8>,
    with_fd: bool,
    compare: Compare,
}

/// A difference we keep on purpose: the exchanges it concerns (a label ending in `*`
/// names every exchange whose label starts with the rest), what differs, why, and a
/// check (on QEMU's replies, then ours) that it is still exactly that difference.
struct Difference {
    labels: &'static [&'static str],
    what: &'static str,
    why: &'static str,
    holds: fn(&[Value], &[Value]) -> bool,
}

impl Difference {
    fn concerns(&self, label: &str) -> bool {
        self.labels.iter().any(|l| match l.strip_suffix('*') {
            Some(prefix) => label.starts_with(prefix),
            None => label == *l,
        })
    }
}

/// Whether `replies` refuse turning on a migration capability we do not honour, in our
/// words (migration/settings.rs).
fn capability_refused(replies: &[Value]) -> bool {
    class(replies) == "GenericError"
        && desc(replies).starts_with("Migration capability '")
        && desc(replies).ends_with("' is not supported")
}

/// `replies`' query-migrate-parameters answer without the multifd compression levels,
/// and those levels.
fn without_multifd_levels(replies: &[Value]) -> (Value, Value) {
    let mut rest = ret(replies).clone();
    let levels = ["multifd-zlib-level", "multifd-zstd-level"]
        .map(|k| rest.as_object_mut().and_then(|o| o.remove(k)));
    (rest, json!(levels))
}

fn ret(replies: &[Value]) -> &Value {
    replies.first().map_or(&Value::Null, |r| &r["return"])
}

fn desc(replies: &[Value]) -> &str {
    replies
        .first()
        .and_then(|r| r["error"]["desc"].as_str())
        .unwrap_or_default()
}

fn class(replies: &[Value]) -> &str {
    replies
        .first()
        .and_then(|r| r["error"]["class"].as_str())
        .unwrap_or_default()
}

fn parse_errors(replies: &[Value]) -> bool {
    !replies.is_empty()
        && replies.iter().all(|r| {
            r["error"]["class"] == "GenericError"
                && r["error"]["desc"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("JSON parse error, "))
        })
}

const DIFFERENCES: &[Difference] = &[
    Difference {
        labels: &["query-machines", "query-cpu-definitions"],
        what: "one machine type (pc) and one CPU model (host), QEMU 7.2 its dozens (some \
               with an alias or alias-of, so its list has shapes ours has not)",
        why: "we list what we are; tests/tests/gateway_probe.rs compares our one entry with \
              QEMU's entry of the same kind (its pc, its host) by shape and value",
        holds: |q, g| {
            ret(g).as_array().is_some_and(|a| a.len() == 1)
                && ret(q).as_array().is_some_and(|a| a.len() > 1)
                && ret(q).as_array().is_some_and(|a| {
                    a.iter()
                        .any(|e| e["name"] == ret(g)[0]["name"] || e["alias"] == ret(g)[0]["name"])
                })
        },
    },
    Difference {
        labels: &["HMP help", "HMP help info"],
        what: "HMP's help lists the commands we serve, QEMU's all of its own",
        why: "the commands the gateway does not serve answer \"unknown command\"; each line \
              we print is one of QEMU's (`help NAME` of each is compared whole)",
        holds: |q, g| {
            let lines = |r: &[Value]| -> Vec<String> {
                let text = ret(r).as_str().unwrap_or_default();
                text.split("\r\n").map(String::from).collect()
            };
            let theirs = lines(q);
            let ours = lines(g);
            ours.len() > 3 && ours.len() < theirs.len() && ours.iter().all(|l| theirs.contains(l))
        },
    },
    Difference {
        labels: &["query-command-line-options"],
        what: "we list our command line's key=value options, QEMU its own (more of them, with \
               help texts and defaults)",
        why: "the answer describes the command line of the program answering: ours is a \
              subset of QEMU 7.2's, each key typed as QEMU types it, but for the keys \
              OURS_ONLY_KEYS lists with why",
        holds: |q, g| {
            let problems = command_line_problems(ret(q), ret(g));
            for p in &problems {
                eprintln!("query-command-line-options: {p}");
            }
            problems.is_empty()
        },
    },
    Difference {
        labels: &["query-hotpluggable-cpus", "query-hotpluggable-cpus {}"],
        what: "QEMU's microvm (the oracle's machine) has no CPU hotplug: \"The feature \
               'query-hotpluggable-cpus' is not enabled\"; we list the possible vCPUs",
        why: "vmm-core's machine has QEMU pc's ACPI CPU hotplug, and QEMU 7.2 pc lists them \
              even when none can be added (tests/tests/gateway_cpu_hotplug.rs compares the \
              list with a live QEMU pc)",
        holds: |q, g| {
            desc(q) == "The feature 'query-hotpluggable-cpus' is not enabled"
                && ret(g)
                    .as_array()
                    .is_some_and(|cpus| cpus.len() == 1 && cpus[0]["type"] == "host-x86_64-cpu")
        },
    },
    Difference {
        labels: &["query-mice", "query-mice {}"],
        what: "QEMU's microvm (the oracle's machine) has no i8042: no mouse; we list the PS/2 \
               mouse",
        why: "vmm-core's machine has a pc's i8042 with its PS/2 keyboard and mouse, which QEMU \
              7.2 pc lists so (tests/tests/gateway_input.rs compares with a live QEMU pc)",
        holds: |q, g| {
            *ret(q) == json!([])
                && *ret(g)
                    == json!([{"name": "QEMU PS/2 Mouse", "index": 2, "current": true, "absolute": false}])
        },
    },
    Difference {
        labels: &[
            "running: input-send-event key",
            "running: input-send-event btn",
            "running: input-send-event rel",
            "running: input-send-event number",
        ],
        what: "QEMU's microvm has no keyboard or mouse: \"Input handler not found for event type \
               ...\"; we send the event to the PS/2 keyboard or mouse",
        why: "vmm-core's machine has a pc's i8042 (tests/tests/gateway_input.rs shows the \
              guest reading what QEMU 7.2 pc's guest reads; abs finds no handler on both)",
        holds: |q, g| {
            desc(q).starts_with("Input handler not found for event type ") && *ret(g) == json!({})
        },
    },
    Difference {
        labels: &["query-tpm-models", "query-tpm-types"],
        what: "QEMU lists the TPM models and backends compiled into it; we list none",
        why: "we have no TPM: listing QEMU's would offer devices nobody can create here",
        holds: |q, g| ret(q).as_array().is_some_and(|m| !m.is_empty()) && *ret(g) == json!([]),
    },
    Difference {
        labels: &[
            "query-events*",
            "query-cpus",
            "query-cpus with*",
            "cpu with*",
            "cpu without*",
            "cpu-add*",
            "x-blockdev-del*",
            "x-blockdev-remove-medium*",
            "x-blockdev-insert-medium*",
            "block_passwd*",
            "change *",
        ],
        what: "QEMU 7.2 answers CommandNotFound; we serve the command",
        why: "the spec we implement (qmp-commands.txt) has these commands and their old \
              names; QEMU removed them after it (DEVELOPERS.md: accept both names)",
        holds: |q, g| class(q) == "CommandNotFound" && class(g) != "CommandNotFound",
    },
    Difference {
        labels: &[
            "blockdev-remove-medium with an unexpected member",
            "blockdev-remove-medium with a wrongly typed device",
            "blockdev-remove-medium {\"device\":\"d0\"}",
            "blockdev-insert-medium without node-name",
            "blockdev-insert-medium with an unexpected member",
            "blockdev-insert-medium with a wrongly typed device",
            "blockdev-insert-medium with a wrongly typed node-name",
        ],
        what: "QEMU 7.2 requires 'id' (its 'device' is gone); we take 'device' or 'id'",
        why: "the spec's blockdev-remove-medium/-insert-medium take the deprecated 'device' \
              with 'id' optional",
        holds: |q, g| desc(q) == "Parameter 'id' is missing" && desc(g) != desc(q),
    },
    Difference {
        labels: &[
            "malformed: bad keyword",
            "malformed: trailing comma",
            "malformed: stray bracket",
            "malformed: bad escape",
            "malformed: invalid UTF-8",
            "malformed: control character in a string",
        ],
        what: "both answer GenericError \"JSON parse error, ...\"; the rest of the text (and \
               how many errors one bad input gives) is each parser's own",
        why: "our stream parser is serde_json's (with the position); QEMU's lexer reports \
              per token. Clients match the class and the prefix, not the parser's words",
        holds: |q, g| parse_errors(q) && parse_errors(g) && q != g,
    },
    Difference {
        labels: &["query-qmp-schema"],
        what: "QEMU's schema names its types by number (\"arg-type\": \"0\") and lists all its \
               commands; ours names them (q_obj_...) and lists ours",
        why: "both are valid SchemaInfo lists; names of non-builtin types are not ABI \
              (QEMU's docs say so)",
        holds: |q, g| {
            let numbered = |r: &[Value]| {
                ret(r).as_array().is_some_and(|a| {
                    a.iter().any(|e| {
                        e["meta-type"] == "command"
                            && e["arg-type"]
                                .as_str()
                                .is_some_and(|t| t.parse::<u32>().is_ok())
                    })
                })
            };
            numbered(q) && !numbered(g) && ret(g).as_array().is_some_and(|a| !a.is_empty())
        },
    },
    Difference {
        labels: &["query-pci"],
        what: "QEMU's virtio functions are transitional: an INTx pin (so an \"irq\") and a \
               legacy I/O BAR; ours have neither. Everything else has the same shape \
               (gateway_pci.rs compares the values)",
        why: "vmm-core's virtio-pci transport is virtio 1.x only and interrupts by MSI-X, with \
              no INTx line wired: a pin or an I/O BAR would promise the guest what is not there",
        holds: |q, g| {
            let legacy = |d: &Value| {
                d.get("irq").is_some()
                    || (d["regions"].as_array().into_iter().flatten()).any(|r| r["type"] == "io")
            };
            let devices =
                |r: &[Value]| ret(r)[0]["devices"].as_array().cloned().unwrap_or_default();
            let without_legacy = |r: &[Value]| {
                let mut devices = devices(r);
                for d in &mut devices {
                    if let Some(o) = d.as_object_mut() {
                        o.remove("irq");
                    }
                    if let Some(regions) = d["regions"].as_array_mut() {
                        regions.retain(|r| r["type"] != "io");
                    }
                }
                shape(&Value::Array(devices))
            };
            devices(q).iter().any(legacy)
                && !devices(g).iter().any(legacy)
                && without_legacy(q) == without_legacy(g)
        },
    },
    Difference {
        labels: &["query-rx-filter {\"name\":\"nic0\"}"],
        what: "broadcast-allowed: QEMU says false before the guest's driver set its rx mode, \
               we say true; every other member is the same",
        why: "QEMU 7.2 reports its 'nobcast' flag under that name (inverted): broadcast is \
              allowed on a fresh virtio-net device, which is what we report",
        holds: |q, g| {
            let without = |r: &[Value]| {
                let mut v = ret(r).clone();
                v[0].as_object_mut().map(|o| o.remove("broadcast-allowed"));
                v
            };
            ret(q)[0]["broadcast-allowed"] == false
                && ret(g)[0]["broadcast-allowed"] == true
                && without(q) == without(g)
        },
    },
    Difference {
        labels: &["running: query-fdsets"],
        what: "QEMU still lists fd set 5, removed before the VM first ran; we do not",
        why: "the same QEMU 7.2 behaviour: fds removed while the VM had not run stay in \
              their set (and open) until a later cleanup; ours were closed on removal",
        holds: |q, g| {
            let mut rest = ret(q).clone();
            let had_five = rest.as_array_mut().is_some_and(|sets| {
                let before = sets.len();
                sets.retain(|s| s["fdset-id"] != 5);
                sets.len() + 1 == before
            });
            had_five && masked(&rest, &["fd"]) == masked(ret(g), &["fd"])
        },
    },
    Difference {
        labels: &[
            "migrate-set-cache-size*",
            "query-migrate-cache-size*",
            "migrate_set_speed*",
            "migrate_set_downtime*",
        ],
        what: "QEMU 7.2 answers CommandNotFound; we serve the spec's migration settings \
               commands that set one parameter each",
        why: "the spec has them (QEMU removed them in 6.0): they set xbzrle-cache-size, \
              max-bandwidth and downtime-limit (given in seconds) as QEMU 2.11-5.2 did \
              (tests/tests/gateway_migration_settings.rs checks what they set)",
        holds: |q, g| class(q) == "CommandNotFound" && class(g) != "CommandNotFound",
    },
    Difference {
        labels: &["migration: capability refused: *"],
        what: "turning on a migration capability our migration does not honour (all but \
               xbzrle, auto-converge, zero-blocks, compress, events, postcopy-ram, block, \
               return-path, pause-before-switchover and late-block-activate): QEMU 7.2 \
               takes it \
               (zero-copy-send and postcopy-preempt it refuses for reasons of its own); we \
               refuse it, \"Migration capability '...' is not supported\"",
        why: "a capability taken and then ignored would migrate otherwise than asked; \
              SUPPORTED_CAPABILITIES (migration/settings.rs) lists the ones we honour, and \
              each is compared with QEMU as it joins the list (turned on, then \
              query-migrate-capabilities); tests/tests/migration_convergence.rs migrates \
              with xbzrle and auto-converge on both, tests/tests/migration_block.rs with \
              zero-blocks and block, tests/tests/migration_compress.rs with compress",
        holds: |q, g| (*ret(q) == json!({}) || class(q) == "GenericError") && capability_refused(g),
    },
    Difference {
        labels: &[
            "migration: multifd-zlib-level 10",
            "migration: multifd-zstd-level 21",
        ],
        what: "a multifd compression level out of its range: QEMU 7.2 answers {}, we refuse \
               it in the words of QEMU's check",
        why: "QEMU 7.2 checks the levels but never takes them in (its migrate_params_test_apply \
              and migrate_params_apply leave them out; fixed in QEMU 9.0): they stay 1 \
              whatever is set. We check them and keep them",
        holds: |q, g| {
            *ret(q) == json!({})
                && desc(g).starts_with("Parameter 'multifd_z")
                && desc(g).contains("_level' expects a value between 0 and ")
        },
    },
    Difference {
        labels: &["migration: query-migrate-parameters after multifd levels 9 and 20"],
        what: "QEMU 7.2 shows multifd-zlib-level and multifd-zstd-level 1 after they were set \
               to 9 and 20; we show 9 and 20. Every other parameter is the same",
        why: "QEMU 7.2 drops the levels it is given (fixed in QEMU 9.0); we keep them",
        holds: |q, g| {
            let ((q_rest, q_levels), (g_rest, g_levels)) =
                (without_multifd_levels(q), without_multifd_levels(g));
            q_rest == g_rest && q_levels == json!([1, 1]) && g_levels == json!([9, 20])
        },
    },
    Difference {
        labels: &["remove-fd {\"fdset-id\":5} #2"],
        what: "removing an fd set twice while the VM has not run: QEMU answers {} again, we \
               answer that the set is not found",
        why: "QEMU 7.2 closes removed fds only while the VM runs (monitor_fdset_cleanup checks \
              runstate_is_running), so the set outlives its removal; we close them at once",
        holds: |q, g| {
            *ret(q) == json!({}) && desc(g) == "File descriptor named 'fdset-id:5' not found"
        },
    },
];

/// Keys our command line takes that QEMU 7.2's query-command-line-options does not list
/// under the same option: (option, key, why).
const OURS_ONLY_KEYS: &[(&str, &str, &str)] = &[
    ("drive", "addr", "our --drive is QEMU's -drive and its virtio-blk -device in one: addr= is the device's PCI slot"),
    ("drive", "serial", "a virtio-blk -device property in QEMU; our --drive is the device too"),
    ("drive", "queues", "virtio-blk's num-queues, a -device property in QEMU"),
    ("drive", "num-queues", "virtio-blk's num-queues, a -device property in QEMU"),
    ("drive", "readonly", "the old spelling of read-only, still taken"),
    ("drive", "cache", "QEMU takes the cache= shorthand on -drive but does not list it"),
    ("drive", "l2-cache-size", "a qcow2 option: QEMU hands it to the format driver unlisted"),
    ("drive", "refcount-cache-size", "a qcow2 option: QEMU hands it to the format driver unlisted"),
    ("drive", "cache-size", "a qcow2 option: QEMU hands it to the format driver unlisted"),
    ("drive", "lazy-refcounts", "a qcow2 option: QEMU hands it to the format driver unlisted"),
    ("drive", "backing", "the format driver's backing reference, handed on unlisted by QEMU"),
    ("drive", "locking", "the file driver's locking, handed on unlisted by QEMU"),
    ("drive", "file.locking", "the file driver's locking, handed on unlisted by QEMU"),
    ("chardev", "input-path", "a file chardev's input file (ChardevFile's `in`), which QEMU 7.2 takes only over QMP"),
];

/// How our query-command-line-options answer `g` strays from QEMU's `q`: an option QEMU
/// lacks, a key QEMU lacks (unless in OURS_ONLY_KEYS) or types otherwise, a listed
/// exception QEMU has after all.
fn command_line_problems(q: &Value, g: &Value) -> Vec<String> {
    let options = |v: &Value| -> Vec<(String, Vec<(String, String)>)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                let params = o["parameters"].as_array().into_iter().flatten();
                let params = params
                    .map(|p| {
                        let text = |k: &str| p[k].as_str().unwrap_or("").to_string();
                        (text("name"), text("type"))
                    })
                    .collect();
                (o["option"].as_str().unwrap_or("").to_string(), params)
            })
            .collect()
    };
    let (q, g) = (options(q), options(g));
    let mut problems = Vec::new();
    if g.is_empty() {
        problems.push("we list no options".to_string());
    }
    for (option, params) in &g {
        let Some((_, theirs)) = q.iter().find(|(o, _)| o == option) else {
            problems.push(format!("QEMU has no option {option}"));
            continue;
        };
        for (name, ty) in params {
            let key = name.as_str();
            let ours_only = OURS_ONLY_KEYS
                .iter()
                .any(|(o, k, _)| o == option && *k == key);
            match (theirs.iter().find(|(n, _)| n == name), ours_only) {
                (Some((_, t)), false) if t != ty => {
                    problems.push(format!("{option} {key}: ours is {ty}, QEMU's {t}"))
                }
                (Some(_), true) => {
                    problems.push(format!("{option} {key} is listed ours only, QEMU has it"))
                }
                (None, false) => problems.push(format!("{option} {key}: QEMU lacks it")),
                _ => {}
            }
        }
    }
    for (option, key, _) in OURS_ONLY_KEYS {
        let listed = g
            .iter()
            .any(|(o, ps)| o == option && ps.iter().any(|(n, _)| n == key));
        if !listed {
            problems.push(format!("{option} {key} is in OURS_ONLY_KEYS but not ours"));
        }
    }
    problems
}

/// A command as a message with an id.
fn message(command: &str, arguments: Value, id: &str) -> Vec<u8> {
    let mut msg = json!({"execute": command, "id": id});
    if arguments.as_object().is_some_and(|a| !a.is_empty()) {
        msg["arguments"] = arguments;
    }
    msg.to_string().into_bytes()
}

/// A valid value of `ty` (the first value of an enum, every member of an object).
fn sample(ty: Ty) -> Value {
    match ty {
        Ty::Str => json!("x"),
        Ty::Int | Ty::Uint | Ty::U8 | Ty::U32 => json!(1),
        Ty::Bool => json!(true),
        Ty::Number => json!(1.5),
        Ty::Any | Ty::Null => Value::Null,
        Ty::Array(elem) => json!([sample(*elem)]),
        Ty::Named(name) => match TYPES.get(name).map(|t| t.kind) {
            Some(TypeKind::Enum(values)) => json!(values[0]),
            Some(TypeKind::Object(members)) => Value::Object(required(members)),
            Some(TypeKind::Union(_)) => samples(ty).swap_remove(0).1,
            Some(TypeKind::Alternate(types)) => sample(types[0]),
            None => panic!("unknown type {name}"),
        },
    }
}

/// Valid values of `ty`, labelled: one per branch of each union in it (the first value
/// of every enum, only the required members of objects).
fn samples(ty: Ty) -> Vec<(String, Value)> {
    let one = |v: Value| vec![(String::new(), v)];
    let Ty::Named(name) = ty else {
        return one(sample(ty));
    };
    match TYPES.get(name).map(|t| t.kind) {
        Some(TypeKind::Object(members)) => object_samples(members, Map::new()),
        Some(TypeKind::Union(u)) => u
            .variants
            .iter()
            .flat_map(|(case, branch)| {
                let mut base = required(u.base);
                base.insert(u.tag.into(), json!(case));
                let members = match TYPES.get(branch).map(|t| t.kind) {
                    Some(TypeKind::Object(members)) => members,
                    _ => panic!("branch {branch} of {name} is not an object"),
                };
                object_samples(members, base)
                    .into_iter()
                    .map(move |(label, v)| (format!("{case}{label}"), v))
            })
            .collect(),
        _ => one(sample(ty)),
    }
}

/// `base` with the required `members` added, one value per branch of each member that
/// is a union (the others keep their first sample meanwhile).
fn object_samples(members: &[Member], base: Map<String, Value>) -> Vec<(String, Value)> {
    let mut first = base;
    first.extend(required(members));
    let mut out = vec![(String::new(), Value::Object(first.clone()))];
    for m in members.iter().filter(|m| !m.optional) {
        for (label, v) in samples(m.ty).into_iter().skip(1) {
            let mut other = first.clone();
            other.insert(m.name.into(), v);
            out.push((format!(" {}:{label}", m.name), Value::Object(other)));
        }
    }
    out
}

/// Values of `ty` with one thing wrong each, labelled with what: the wrong JSON type,
/// an unknown enum value, and inside objects and unions (for each of their samples)
/// each required member missing, an unexpected member, and each member broken so.
fn broken(ty: Ty) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = wrong(ty)
        .map(|v| ("wrongly typed".to_string(), v))
        .into_iter()
        .collect();
    let Ty::Named(name) = ty else {
        if let Ty::Array(elem) = ty {
            let good = sample(*elem);
            for (label, bad) in broken(*elem) {
                out.push((format!("[1] {label}"), json!([good.clone(), bad])));
            }
        }
        return out;
    };
    let members: Vec<Member> = match TYPES.get(name).map(|t| t.kind) {
        Some(TypeKind::Enum(_)) => {
            out.push(("unknown value".into(), json!("no-such-value")));
            return out;
        }
        Some(TypeKind::Object(members)) => members.to_vec(),
        Some(TypeKind::Union(u)) => u.base.to_vec(),
        Some(TypeKind::Alternate(_)) => return out,
        None => panic!("unknown type {name}"),
    };
    // One sample per branch of this union (the first of an object): the branches of
    // unions inside it are reached when its members are broken.
    for (case, good) in samples(ty).into_iter().filter(|(l, _)| !l.contains(' ')) {
        let Value::Object(good) = good else { continue };
        let mut with = |label: String, v: Map<String, Value>| {
            out.push((format!("{case}{label}"), Value::Object(v)))
        };
        // The union's branch members are in the sample: break them too.
        let mut in_sample = members.clone();
        in_sample.extend(branch_members(ty, &good));
        for m in in_sample.iter().filter(|m| !m.optional) {
            let mut v = good.clone();
            v.remove(m.name);
            with(format!(" without {}", m.name), v);
        }
        let mut extra = good.clone();
        extra.insert("no-such-member".into(), json!(1));
        with(" with an unexpected member".into(), extra);
        for m in &in_sample {
            for (label, bad) in broken(m.ty) {
                let mut v = good.clone();
                v.insert(m.name.into(), bad);
                with(format!(" {}: {label}", m.name), v);
            }
        }
    }
    out
}

/// The members the branch `value`'s tag picks add, if `ty` is a union.
fn branch_members(ty: Ty, value: &Map<String, Value>) -> Vec<Member> {
    let Ty::Named(name) = ty else { return vec![] };
    let Some(TypeKind::Union(u)) = TYPES.get(name).map(|t| t.kind) else {
        return vec![];
    };
    let case = value.get(u.tag).and_then(Value::as_str);
    match u.variants.iter().find(|(c, _)| Some(*c) == case) {
        Some((_, branch)) => match TYPES.get(branch).map(|t| t.kind) {
            Some(TypeKind::Object(members)) => members.to_vec(),
            _ => panic!("branch {branch} of {name} is not an object"),
        },
        None => vec![],
    }
}

fn required(members: &[Member]) -> Map<String, Value> {
    members
        .iter()
        .filter(|m| !m.optional)
        .map(|m| (m.name.to_string(), sample(m.ty)))
        .collect()
}

/// A value of the wrong JSON type for `ty` (None: any value is right).
fn wrong(ty: Ty) -> Option<Value> {
    match ty {
        Ty::Any => None,
        Ty::Str => Some(json!(1)),
        Ty::Int | Ty::Uint | Ty::U8 | Ty::U32 | Ty::Bool | Ty::Number | Ty::Null | Ty::Array(_) => {
            Some(json!("x"))
        }
        Ty::Named(name) => match TYPES.get(name).map(|t| t.kind) {
            Some(TypeKind::Enum(_)) => Some(json!(1)),
            Some(TypeKind::Alternate(types)) => {
                assert!(!types.contains(&Ty::Bool), "{name} takes a boolean");
                Some(json!(true))
            }
            _ => Some(json!("x")),
        },
    }
}

/// Our own commands, which QEMU does not have.
fn ours_only(name: &str) -> bool {
    name.starts_with("__io.flotilla_")
}

/// Dirty bitmaps on d0 (node disk0): QEMU's checks in QEMU's order, what query-block and
/// query-named-block-nodes list, transactions that fail and that do not.
fn bitmap_exchanges(add: &mut impl FnMut(&str, Value, Compare, bool)) {
    use Compare::Value as Same;
    let bitmap = |node: &str, name: &str| json!({"node": node, "name": name});
    let action = |kind: &str, data: Value| json!({"type": kind, "data": data});
    {
        let mut both = |command: &str, arguments: Value| add(command, arguments, Same, false);
        both("block-dirty-bitmap-add", bitmap("d0", "b0"));
        both("block-dirty-bitmap-add", bitmap("disk0", "b0"));
        both("block-dirty-bitmap-add", bitmap("d0", ""));
        both("block-dirty-bitmap-add", bitmap("nope", "x"));
        both("block-dirty-bitmap-add", bitmap("nope", ""));
        both("block-dirty-bitmap-add", bitmap("d0", &"n".repeat(1024)));
        both("block-dirty-bitmap-add", bitmap("d0", &"n".repeat(1023)));
        both("block-dirty-bitmap-remove", bitmap("d0", &"n".repeat(1023)));
        for granularity in [
            json!(256),
            json!(1000),
            json!(0),
            json!(1u64 << 32),
            json!(-1),
            json!("x"),
        ] {
            both(
                "block-dirty-bitmap-add",
                json!({"node": "d0", "name": "g", "granularity": granularity}),
            );
        }
        both(
            "block-dirty-bitmap-add",
            json!({"node": "nope", "name": "g", "granularity": 256}),
        );
        both(
            "block-dirty-bitmap-add",
            json!({"node": "disk0", "name": "coarse", "granularity": 1u64 << 31}),
        );
        both(
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "p", "persistent": true}),
        );
        both(
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "off", "disabled": true, "granularity": 512}),
        );
        for command in ["block-dirty-bitmap-remove", "block-dirty-bitmap-clear"] {
            both(command, bitmap("d0", "nob"));
            both(command, bitmap("nope", "b0"));
        }
        both("block-dirty-bitmap-clear", bitmap("disk0", "b0"));
        // The failing clear undoes the add before it.
        both(
            "transaction",
            json!({"actions": [
                action("block-dirty-bitmap-add", bitmap("d0", "t1")),
                action("block-dirty-bitmap-clear", bitmap("d0", "nob")),
            ]}),
        );
        both("block-dirty-bitmap-remove", bitmap("d0", "t1"));
        both(
            "transaction",
            json!({"actions": [
                action("block-dirty-bitmap-add", bitmap("d0", "t2")),
                action("block-dirty-bitmap-clear", bitmap("d0", "b0")),
            ]}),
        );
        both(
            "transaction",
            json!({"actions": [
                action("block-dirty-bitmap-add", json!({"node": "d0", "name": "t3", "granularity": 3})),
            ]}),
        );
    }
    add(
        "query-block",
        json!({}),
        Compare::ShapeAndValueAt("/return/0/inserted/dirty-bitmaps"),
        false,
    );
    add(
        "query-named-block-nodes",
        json!({}),
        Compare::ShapeAndValueAt("/return/0/dirty-bitmaps"),
        false,
    );
    let mut both = |command: &str, arguments: Value| add(command, arguments, Same, false);
    for name in ["t2", "coarse", "off", "b0"] {
        both("block-dirty-bitmap-remove", bitmap("disk0", name));
    }
    both("block-dirty-bitmap-remove", bitmap("disk0", "b0"));
}

/// Block jobs on d0 (node disk0), each VM writing its own targets (`@PEER@`): first the
/// arguments QEMU refuses, in its order, with no job running; then a mirror (ready at
/// once on the empty disk, and it stays so) that the other commands meet: a second
/// job, pause, resume, speed, cancel while paused; then it is cancelled.
fn job_exchanges(add: &mut impl FnMut(&str, Value, Compare, bool), spare: &str) {
    let dir = std::path::Path::new(spare)
        .parent()
        .expect("the spare image has a directory")
        .display()
        .to_string();
    let target = |name: &str| format!("{dir}/@PEER@-{name}.raw");
    let mut both = |command: &str, arguments: Value| add(command, arguments, Compare::Value, false);
    let with = |mut args: Value, extra: Value| {
        args.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        args
    };
    let mirror = json!({"device": "d0", "target": target("m"), "format": "raw", "sync": "full"});
    for extra in [
        json!({"job-id": "m1", "granularity": 1000}),
        json!({"job-id": "m2", "granularity": 256}),
        json!({"job-id": "m3", "granularity": 1u64 << 27}),
        json!({"job-id": "m4", "speed": -1}),
        json!({"job-id": "m5", "buf-size": -1}),
        json!({"job-id": "m6", "sync": "incremental"}),
        json!({"job-id": "m7", "format": "nofmt"}),
        json!({"job-id": "1bad"}),
        json!({"job-id": "m8", "mode": "existing", "target": format!("{dir}/@PEER@-absent.raw")}),
        // A raw target over the source (sync none) cannot name it.
        json!({"job-id": "m10", "sync": "none"}),
        json!({"job-id": "m11", "replaces": "disk0"}),
        json!({"job-id": "m12", "replaces": "nope", "node-name": "n12"}),
        json!({"job-id": "m13", "replaces": "d0", "node-name": "n13"}),
    ] {
        both("drive-mirror", with(mirror.clone(), extra));
    }
    // A node the mirror of d0 cannot replace.
    both(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "rp", "read-only": true,
               "file": {"driver": "file", "filename": spare}}),
    );
    both(
        "drive-mirror",
        with(
            mirror.clone(),
            json!({"job-id": "m14", "replaces": "rp", "node-name": "n14"}),
        ),
    );
    both("blockdev-del", json!({"node-name": "rp"}));
    both(
        "drive-mirror",
        json!({"device": "nope", "target": target("m"), "sync": "full"}),
    );
    both(
        "blockdev-mirror",
        json!({"device": "d0", "job-id": "m9", "target": "disk0", "sync": "full"}),
    );
    both(
        "blockdev-mirror",
        json!({"device": "d0", "job-id": "m9", "target": "nope", "sync": "full"}),
    );
    let backup = json!({"device": "d0", "target": target("b"), "format": "raw"});
    both(
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "jb"}),
    );
    for extra in [
        json!({"job-id": "b1", "sync": "incremental"}),
        json!({"job-id": "b2", "sync": "incremental", "bitmap": "nob"}),
        json!({"job-id": "b3", "sync": "full", "bitmap": "jb"}),
        json!({"job-id": "b4", "sync": "full", "speed": -1}),
        json!({"job-id": "1bad", "sync": "full"}),
        json!({"job-id": "b5", "sync": "none"}),
        json!({"job-id": "b6", "sync": "full", "compress": true}),
    ] {
        both("drive-backup", with(backup.clone(), extra));
    }
    both(
        "drive-backup",
        json!({"device": "nope", "target": target("b"), "sync": "full"}),
    );
    both(
        "block-dirty-bitmap-remove",
        json!({"node": "d0", "name": "jb"}),
    );
    for command in [
        "block-job-complete",
        "block-job-pause",
        "block-job-resume",
        "block-job-cancel",
    ] {
        both(command, json!({"device": "nope"}));
    }
    both("block-job-set-speed", json!({"device": "nope", "speed": 1}));

    // block-stream and block-commit on a disk without backing file: their checks in
    // QEMU's order.
    for args in [
        json!({"device": "nope"}),
        json!({"device": "d0", "base": "/nonexistent.qcow2", "base-node": "disk0"}),
        json!({"device": "d0", "base-node": "nope"}),
        json!({"device": "d0", "base-node": "disk0"}),
        json!({"device": "d0", "base": "/nonexistent.qcow2"}),
        json!({"device": "d0", "backing-file": "/x.qcow2"}),
        json!({"device": "d0", "job-id": "1bad", "base-node": "nope"}),
    ] {
        both("block-stream", args);
    }
    for args in [
        json!({"device": "nope"}),
        json!({"device": "d0"}),
        json!({"device": "disk0", "job-id": "c1"}),
        json!({"device": "d0", "top": "/nonexistent.qcow2"}),
        json!({"device": "d0", "base": "/nonexistent.qcow2"}),
        json!({"device": "d0", "top-node": "nope"}),
        json!({"device": "d0", "base-node": "nope"}),
        json!({"device": "d0", "top": "/a.qcow2", "top-node": "disk0"}),
        json!({"device": "d0", "base": "/a.qcow2", "base-node": "disk0"}),
        json!({"device": "d0", "base-node": "disk0"}),
        json!({"device": "d0", "backing-file": "/x.qcow2"}),
        json!({"device": "d0", "speed": -5}),
    ] {
        both("block-commit", args);
    }
    // d0's root is the node a mirror replaces anyway.
    both(
        "drive-mirror",
        with(
            mirror.clone(),
            json!({"job-id": "j1", "replaces": "disk0", "node-name": "j1t"}),
        ),
    );
    both(
        "drive-mirror",
        with(mirror.clone(), json!({"job-id": "j2"})),
    );
    both(
        "drive-backup",
        with(backup.clone(), json!({"job-id": "j2", "sync": "full"})),
    );
    both(
        "drive-backup",
        json!({"device": "disk0", "job-id": "j2", "target": target("j2"), "format": "raw", "sync": "full"}),
    );
    both("drive-mirror", with(mirror, json!({"job-id": "j1"})));
    both("block-job-pause", json!({"device": "j1"}));
    // What a job's disk refuses meanwhile.
    both("block_resize", json!({"device": "d0", "size": 64 << 20}));
    both(
        "block_resize",
        json!({"node-name": "disk0", "size": 64 << 20}),
    );
    both(
        "blockdev-snapshot-internal-sync",
        json!({"device": "d0", "name": "s"}),
    );
    both(
        "blockdev-snapshot-sync",
        json!({"device": "d0", "snapshot-file": target("over"), "format": "qcow2"}),
    );
    // ... and what its target refuses.
    both(
        "block_resize",
        json!({"node-name": "j1t", "size": 64 << 20}),
    );
    both(
        "blockdev-snapshot-sync",
        json!({"node-name": "j1t", "snapshot-file": target("over2"), "format": "qcow2"}),
    );
    both(
        "blockdev-snapshot-internal-sync",
        json!({"device": "j1t", "name": "s"}),
    );
    both("blockdev-del", json!({"node-name": "j1t"}));
    both("block-job-pause", json!({"device": "j1"}));
    both("block-job-cancel", json!({"device": "j1"}));
    both("block-job-set-speed", json!({"device": "j1", "speed": -1}));
    both("block-job-set-speed", json!({"device": "j1", "speed": 2}));
    both("block-job-resume", json!({"device": "j1"}));
    both("block-job-resume", json!({"device": "j1"}));
    both("block-job-cancel", json!({"device": "j1", "force": true}));
}

/// Commands that change the VM's state (run, stop, reset, quit, signal the guest):
/// checked with bad arguments only, or in the written-out exchanges.
const STATEFUL: &[&str] = &[
    "qmp_capabilities",
    "stop",
    "cont",
    "system_reset",
    "system_powerdown",
    "system_wakeup",
    "quit",
    "inject-nmi",
];

/// HMP lines through human-monitor-command whose text must be QEMU's: `help` of every
/// command we serve (its words, arguments and help as QEMU's table has them), the disk's
/// `info block` and `info blockstats` (the image paths read alike: `start`), and the
/// usage and lookup errors.
fn hmp_lines() -> Vec<Exchange> {
    // `help` and `help info` list only what we serve: DIFFERENCES.
    let mut lines: Vec<String> = ["help".to_string(), "help info".to_string()]
        .into_iter()
        .chain(
            HMP.iter()
                .filter(|h| h.name != "info")
                .map(|h| format!("help {}", h.name.split('|').next().unwrap_or_default())),
        )
        .collect();
    lines.extend(
        [
            "help s",
            "help info nope",
            "info block",
            "info block d0",
            "info block -n",
            "info block -n disk0",
            "info block disk0",
            "info block -v -n",
            "info block -v d0",
            "info block nope",
            "info block -x",
            "info block d0 extra",
            "info blockstats",
            "info blockstats extra",
            "info block-jobs",
            "info status extra",
            "info migrate_capabilities extra",
            "stop extra",
            "s extra",
            "nmi extra",
            "device_del",
            "device_del nope",
            "device_del nope extra",
            "netdev_del",
            "netdev_del nope",
            "block_resize",
            "block_resize nope 10",
            "block_resize d0 x",
            "block_resize d0 1.5x",
            "block_resize d0 32 more",
            "block_job_cancel nope",
            "block_job_cancel -f nope",
            "block_job_cancel -x nope",
            "block_job_complete nope",
            "block_job_pause nope",
            "block_job_resume nope",
            "block_job_set_speed nope 1",
            "block_job_set_speed nope -1",
            "set_link nope on",
            "set_link nic0 maybe",
            "eject nope",
            "eject -f nope",
            "chardev-remove nope",
            "object_del nope",
            "object_del \"no pe\"",
            "screendump",
            "screendump /nonexistent/x.ppm",
            "screendump /nonexistent/x.ppm -f png",
            "screendump /nonexistent/x.ppm -f bmp",
            "screendump /nonexistent/x.ppm nope 0x100000000",
            "system_wakeup",
            "migrate_cancel",
            "migrate",
            "migrate -d",
            "migrate -x tcp:127.0.0.1:1",
            "migrate_set_capability",
            "migrate_set_capability nope on",
            "migrate_set_capability events maybe",
            "migrate_set_capability events on",
            "migrate_set_capability events off",
            "migrate_set_parameter",
            "migrate_set_parameter nope 1",
            "migrate_set_parameter compress-level",
            "migrate_set_parameter compress-level 300",
            "migrate_set_parameter compress-level x",
            "migrate_set_parameter compress-level 10",
            "migrate_set_parameter compress-level 0x9",
            "migrate_set_parameter compress-wait-thread maybe",
            "migrate_set_parameter compress-wait-thread no",
            "migrate_set_parameter max-bandwidth 1G",
            "migrate_set_parameter max-bandwidth x",
            "migrate_set_parameter max-bandwidth 64",
            "migrate_set_parameter xbzrle-cache-size 1M",
            "migrate_set_parameter xbzrle-cache-size 1x",
            "migrate_set_parameter xbzrle-cache-size 1000",
            "migrate_set_parameter downtime-limit -1",
            "migrate_set_parameter downtime-limit 500",
            "migrate_set_parameter x-checkpoint-delay 0x100000000",
            "migrate_set_parameter announce-rounds 10",
            "migrate_set_parameter multifd-compression nope",
            "migrate_set_parameter multifd-compression none",
            "migrate_set_parameter tls-hostname h",
            "migrate_set_parameter tls-hostname \"\"",
            "migrate_set_parameter block-bitmap-mapping x",
            "info migrate_parameters",
            "object_add",
            "object_add nope,id=x",
            "object_add memory-backend-ram,size=1M",
            "object_add memory-backend-ram,id=hm0,size=1M,bogus=1",
            "object_add memory-backend-ram,id=hm0,size=1M",
            "object_add memory-backend-ram,id=hm0,size=1M",
            "object_add qom-type=memory-backend-memfd,id=hm1,size=2M,share=on",
            "object_del hm0",
            "object_del hm1",
            "device_add",
            "device_add nope",
            "device_add nope,id=x",
            "netdev_add",
            "netdev_add socket",
            "netdev_add nope,id=x",
            // nic0's netdev n0 was netdev_del'd by now: QEMU still lists it under nic0.
            "info network",
            "info network extra",
            // human-monitor-command's monitor has named fds of its own, none at first,
            // and takes no fd sent with the message; qf is the QMP client's (getfd).
            "getfd",
            "getfd f1",
            "FD getfd f1",
            "FD getfd",
            "closefd",
            "closefd nope",
            r#"FD QMP {"execute": "getfd", "arguments": {"fdname": "qf"}}"#,
            "closefd qf",
            r#"QMP {"execute": "closefd", "arguments": {"fdname": "qf"}}"#,
            "ringbuf_write",
            "ringbuf_write nope x",
            "ringbuf_read",
            "ringbuf_read nope 3",
            r#"QMP {"execute": "chardev-add", "arguments": {"id": "hrb", "backend": {"type": "ringbuf", "data": {"size": 16}}}}"#,
            "ringbuf_write hrb",
            "ringbuf_write hrb hello",
            "ringbuf_write hrb hello extra",
            "ringbuf_write hrb \"a\\\\b c\"",
            "ringbuf_read hrb",
            "ringbuf_read hrb x",
            "ringbuf_read hrb -1",
            "ringbuf_read hrb 0",
            "ringbuf_read hrb 3",
            "ringbuf_read hrb 100",
            r#"QMP {"execute": "ringbuf-write", "arguments": {"device": "hrb", "data": "\u0001\\x\ty\u007f\n"}}"#,
            "ringbuf_read hrb 100",
            r#"QMP {"execute": "chardev-remove", "arguments": {"id": "hrb"}}"#,
        ]
        .map(String::from),
    );
    lines
        .into_iter()
        .map(|line| {
            // "FD " lines pass an fd with the message; "QMP " lines are a QMP message
            // that sets the scene.
            let (with_fd, line) = match line.strip_prefix("FD ") {
                Some(line) => (true, line.to_string()),
                None => (false, line),
            };
            if let Some(qmp) = line.strip_prefix("QMP ") {
                return Exchange {
                    label: format!("HMP's scene: {qmp}"),
                    bytes: qmp.as_bytes().to_vec(),
                    with_fd,
                    compare: Compare::Value,
                };
            }
            let label = format!("HMP {line}{}", if with_fd { " with an fd" } else { "" });
            Exchange {
                bytes: message(
                    "human-monitor-command",
                    json!({ "command-line": line }),
                    &label,
                ),
                label,
                with_fd,
                compare: if line.starts_with("info network") {
                    Compare::ValueButPorts
                } else if line.contains("-n") {
                    Compare::ValueButAnonymousNodes
                } else {
                    Compare::Value
                },
            }
        })
        .collect()
}

/// Exchanges derived from the command table.
fn from_the_table() -> Vec<Exchange> {
    let mut out = Vec::new();
    let mut push = |label: String, bytes: Vec<u8>, compare| {
        out.push(Exchange {
            label,
            bytes,
            with_fd: false,
            compare,
        })
    };
    for c in COMMANDS.iter().filter(|c| !ours_only(c.name)) {
        let members = c.args();
        // Read by hand as a QAPI union (netdev_add, blockdev-add): written out below.
        let union = members.iter().any(|m| m.ty == Ty::Any);
        let valid = required(members);
        if members.iter().all(|m| m.optional)
            && !STATEFUL.contains(&c.name)
            && c.name.starts_with("query-")
        {
            push(
                c.name.to_string(),
                message(c.name, json!({}), c.name),
                Compare::Shape,
            );
        }
        if union {
            continue;
        }
        if let Some(first) = members.iter().find(|m| !m.optional) {
            let label = format!("{} without {}", c.name, first.name);
            push(
                label.clone(),
                message(c.name, json!({}), &label),
                Compare::Value,
            );
        }
        let mut extra = valid.clone();
        extra.insert("no-such-member".into(), json!(1));
        let label = format!("{} with an unexpected member", c.name);
        push(
            label.clone(),
            message(c.name, Value::Object(extra), &label),
            Compare::Value,
        );
        for m in members {
            let Some(bad) = wrong(m.ty) else { continue };
            let mut args = valid.clone();
            args.insert(m.name.into(), bad);
            let label = format!("{} with a wrongly typed {}", c.name, m.name);
            push(
                label.clone(),
                message(c.name, Value::Object(args), &label),
                Compare::Value,
            );
            if let Ty::Named(name) = m.ty {
                if let Some(TypeKind::Enum(_)) = TYPES.get(name).map(|t| t.kind) {
                    let mut args = valid.clone();
                    args.insert(m.name.into(), json!("no-such-value"));
                    let label = format!("{} with an unknown {}", c.name, m.name);
                    push(
                        label.clone(),
                        message(c.name, Value::Object(args), &label),
                        Compare::Value,
                    );
                }
            }
        }
    }
    out
}

/// Exchanges written out: situations both VMs can be put in.
/// The commands docs/qmp-coverage.md marks "not on x86": QEMU builds them only for
/// other targets, so its x86 build answers CommandNotFound, as the gateway does.
fn not_on_x86() -> Vec<String> {
    let doc = std::fs::read_to_string(flotilla_tests::repo_root().join("docs/qmp-coverage.md"))
        .expect("docs/qmp-coverage.md");
    let names: Vec<String> = (doc.lines())
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() > 3 && cells[2] == "not on x86").then(|| cells[1].to_string())
        })
        .collect();
    assert!(
        names.len() >= 2,
        "the coverage doc marks {names:?} \"not on x86\": expected dump-skeys and query-gic-capabilities"
    );
    names
}

fn written_out(spare: &str) -> Vec<Exchange> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashMap::new();
    let mut add = |command: &str, arguments: Value, compare: Compare, with_fd: bool| {
        // The label (and id) names the ports' placeholders, not the ports.
        let mut label = format!("{command} {arguments}").replace('@', "");
        let n = seen.entry(label.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            label = format!("{label} #{n}");
        }
        out.push(Exchange {
            bytes: message(command, arguments, &label),
            label,
            with_fd,
            compare,
        });
    };
    use Compare::{Shape, Value as Same};
    for name in not_on_x86() {
        add(&name, json!({}), Same, false);
    }
    // query-command-line-options: where both take the same keys the answers are equal.
    for option in [
        "memory",
        "trace",
        "device",
        "netdev",
        "object",
        "no-such-option",
    ] {
        add(
            "query-command-line-options",
            json!({ "option": option }),
            Same,
            false,
        );
    }
    // Absent devices.
    add("query-spice", json!({}), Same, false);
    add(
        "screendump",
        json!({"filename": "/nonexistent/x.ppm"}),
        Same,
        false,
    );
    for protocol in ["vnc", "spice"] {
        add(
            "set_password",
            json!({"protocol": protocol, "password": "x"}),
            Same,
            false,
        );
        add(
            "expire_password",
            json!({"protocol": protocol, "time": "now"}),
            Same,
            false,
        );
    }
    add(
        "client_migrate_info",
        json!({"protocol": "spice", "hostname": "h"}),
        Same,
        false,
    );
    add("balloon", json!({"value": 1 << 20}), Same, false);
    add("query-balloon", json!({}), Same, false);
    for rocker in [
        "query-rocker",
        "query-rocker-ports",
        "query-rocker-of-dpa-flows",
        "query-rocker-of-dpa-groups",
    ] {
        add(rocker, json!({"name": "sw1"}), Same, false);
    }
    add(
        "input-send-event",
        json!({"events": [{"type": "key", "data": {"down": true, "key": {"type": "qcode", "data": "a"}}}]}),
        Same,
        false,
    );
    add(
        "input-send-event",
        json!({"events": [{"type": "btn", "data": {"down": true, "button": "left"}}]}),
        Same,
        false,
    );
    add("input-send-event", json!({"events": []}), Same, false);
    // Each kind of event (and of key), valid, then with one thing wrong in it: QEMU
    // checks every event's data against its kind's members before it looks for a
    // handler, wherever the event is in the list.
    let events = COMMANDS
        .iter()
        .find(|c| c.name == "input-send-event")
        .and_then(|c| c.args().iter().find(|m| m.name == "events"))
        .expect("input-send-event takes events")
        .ty;
    let Ty::Array(event) = events else {
        panic!("input-send-event's events are not a list")
    };
    for (_, good) in samples(*event) {
        add("input-send-event", json!({"events": [good]}), Same, false);
    }
    for (_, bad) in broken(events) {
        add("input-send-event", json!({"events": bad}), Same, false);
    }
    for (_, bad) in broken(*event) {
        add("input-send-event", json!({"events": [bad]}), Same, false);
    }
    // Values QEMU 7.2 does not have yet (8.0's multi-touch).
    add(
        "input-send-event",
        json!({"events": [{"type": "mtt", "data": {}}]}),
        Same,
        false,
    );
    add(
        "input-send-event",
        json!({"events": [{"type": "btn", "data": {"down": true, "button": "touch"}}]}),
        Same,
        false,
    );
    add("rtc-reset-reinjection", json!({}), Same, false);
    add(
        "xen-set-global-dirty-log",
        json!({"enable": true}),
        Same,
        false,
    );
    for command in [
        "query-tpm",
        "query-mice",
        "query-memory-devices",
        "query-iothreads",
        "query-acpi-ospm-status",
        "query-hotpluggable-cpus",
        "query-status",
        "query-name",
        "query-kvm",
        "query-fdsets",
    ] {
        add(command, json!({}), Same, false);
    }
    // Lookup errors.
    add(
        "block_resize",
        json!({"device": "nope", "size": 4096}),
        Same,
        false,
    );
    add(
        "block_resize",
        json!({"node-name": "nope", "size": 4096}),
        Same,
        false,
    );
    add("block_resize", json!({"size": 4096}), Same, false);
    add(
        "block_set_io_throttle",
        json!({"device": "nope", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}),
        Same,
        false,
    );
    add(
        "block-set-write-threshold",
        json!({"node-name": "nope", "write-threshold": 1}),
        Same,
        false,
    );
    add("blockdev-del", json!({"node-name": "nope"}), Same, false);
    add("eject", json!({"device": "nope"}), Same, false);
    add("blockdev-open-tray", json!({"id": "nope"}), Same, false);
    add("blockdev-close-tray", json!({"id": "nope"}), Same, false);
    add("blockdev-remove-medium", json!({"id": "nope"}), Same, false);
    add("set_link", json!({"name": "nope", "up": true}), Same, false);
    add("query-rx-filter", json!({"name": "nope"}), Same, false);
    add("query-rx-filter", json!({"name": "n0"}), Same, false);
    add("netdev_del", json!({"id": "nope"}), Same, false);
    add("closefd", json!({"fdname": "nope"}), Same, false);
    add("remove-fd", json!({"fdset-id": 7}), Same, false);
    add("remove-fd", json!({"fdset-id": 7, "fd": 3}), Same, false);
    // Block commands on the equivalent drives.
    for command in ["query-block", "query-named-block-nodes", "query-blockstats"] {
        add(command, json!({}), Shape, false);
    }
    add("eject", json!({"device": "d0"}), Same, false);
    add("blockdev-open-tray", json!({"device": "d0"}), Same, false);
    add("blockdev-close-tray", json!({"device": "d0"}), Same, false);
    add(
        "blockdev-remove-medium",
        json!({"device": "d0"}),
        Same,
        false,
    );
    add(
        "blockdev-change-medium",
        json!({"device": "d0", "filename": spare, "format": "raw"}),
        Same,
        false,
    );
    add("blockdev-del", json!({"node-name": "disk0"}), Same, false);
    add(
        "block_resize",
        json!({"device": "d0", "size": DISK_BYTES * 2}),
        Same,
        false,
    );
    add(
        "block_resize",
        json!({"node-name": "disk0", "size": 1000}),
        Same,
        false,
    );
    add(
        "block-set-write-threshold",
        json!({"node-name": "disk0", "write-threshold": 1 << 20}),
        Same,
        false,
    );
    add(
        "block_set_io_throttle",
        json!({"device": "d0", "bps": 1 << 20, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}),
        Same,
        false,
    );
    add(
        "block_set_io_throttle",
        json!({"device": "d0", "bps": 1, "bps_rd": 1, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}),
        Same,
        false,
    );
    bitmap_exchanges(&mut add);
    job_exchanges(&mut add, spare);
    add("query-block", json!({}), Shape, false);
    add("query-blockstats", json!({}), Shape, false);
    // Net commands.
    add("query-rx-filter", json!({"name": "nic0"}), Same, false);
    add(
        "set_link",
        json!({"name": "nic0", "up": false}),
        Same,
        false,
    );
    add("set_link", json!({"name": "n0", "up": true}), Same, false);
    add("set_link", json!({"name": "nic0", "up": true}), Same, false);
    // Each VM's own ports (see `exchange`).
    let (udp, local) = ("@UDP@", "@LOCAL@");
    add(
        "netdev_add",
        json!({"type": "socket", "id": "n1", "udp": udp, "localaddr": local}),
        Same,
        false,
    );
    add(
        "netdev_add",
        json!({"type": "socket", "id": "n1", "udp": udp, "localaddr": local}),
        Same,
        false,
    );
    add(
        "netdev_add",
        json!({"type": "nope", "id": "n2"}),
        Same,
        false,
    );
    add("netdev_add", json!({"id": "n2"}), Same, false);
    add("netdev_add", json!({"type": "socket"}), Same, false);
    add("netdev_del", json!({"id": "n1"}), Same, false);
    add("netdev_del", json!({"id": "n1"}), Same, false);
    add("netdev_del", json!({"id": "n0"}), Same, false);
    // Fd passing, with a real fd over SCM_RIGHTS where the command takes one.
    add("getfd", json!({"fdname": "f1"}), Same, false);
    add("getfd", json!({"fdname": "f1"}), Same, true);
    add("getfd", json!({"fdname": "f1"}), Same, true);
    add("getfd", json!({"fdname": "3"}), Same, true);
    add("closefd", json!({"fdname": "f1"}), Same, false);
    add("closefd", json!({"fdname": "f1"}), Same, false);
    // Wrong JSON types the derived exchanges do not use: an object for a string, a
    // fraction for an integer.
    add("getfd", json!({"fdname": {"x": 1}}), Same, false);
    add("remove-fd", json!({"fdset-id": 1.5}), Same, false);
    add("add-fd", json!({}), Same, false);
    let fd_numbers = Compare::ValueBut(&["fd"]);
    add(
        "add-fd",
        json!({"fdset-id": 5, "opaque": "o"}),
        fd_numbers,
        true,
    );
    add("add-fd", json!({"fdset-id": 5}), fd_numbers, true);
    add("add-fd", json!({}), fd_numbers, true);
    add("add-fd", json!({"fdset-id": -1}), Same, true);
    add("query-fdsets", json!({}), fd_numbers, false);
    add("remove-fd", json!({"fdset-id": 5, "fd": 999}), Same, false);
    add("remove-fd", json!({"fdset-id": 5}), Same, false);
    add("remove-fd", json!({"fdset-id": 5}), Same, false);
    // The monitor itself.
    add("qmp_capabilities", json!({}), Same, false);
    // Arguments are checked first; an enum in a list is named 'null' by QEMU 7.2.
    add("qmp_capabilities", json!({"enable": ["nope"]}), Same, false);
    add(
        "qmp_capabilities",
        json!({"enable": ["oob", 1]}),
        Same,
        false,
    );
    add(
        "human-monitor-command",
        json!({"command-line": "info status"}),
        Same,
        false,
    );
    add(
        "human-monitor-command",
        json!({"command-line": "no-such-command"}),
        Same,
        false,
    );
    add(
        "human-monitor-command",
        json!({"command-line": "info no-such-thing"}),
        Same,
        false,
    );
    add("no-such-command", json!({}), Same, false);
    // Not inject-nmi: an NMI before the guest set up its handlers ends it, on QEMU by a
    // reset and here in internal-error, so the two would no longer be in the same state
    // (gateway_absent_devices checks that the NMI reaches every vCPU).
    add("system_wakeup", json!({}), Same, false);
    out
}

/// The migration settings (labelled "migration: ..."), each change followed by what it
/// left: every capability turned on (refused where we do not honour it, see
/// DIFFERENCES) and off, broken capability lists; each integer parameter at the edges of
/// its range (then back to its default); the checks that see the whole set; the TLS
/// names, the booleans, multifd's compression, block-bitmap-mapping; HMP's view.
fn migration_settings() -> Vec<Exchange> {
    let mut out = Vec::new();
    let mut add = |label: String, command: &str, arguments: Value| {
        out.push(Exchange {
            bytes: message(command, arguments, &label),
            label: format!("migration: {label}"),
            with_fd: false,
            compare: Compare::Value,
        })
    };
    let set_caps = "migrate-set-capabilities";
    let set = "migrate-set-parameters";
    let query_caps = |add: &mut dyn FnMut(String, &str, Value), after: &str| {
        add(
            format!("query-migrate-capabilities {after}"),
            "query-migrate-capabilities",
            json!({}),
        )
    };
    let query = |add: &mut dyn FnMut(String, &str, Value), after: &str| {
        add(
            format!("query-migrate-parameters {after}"),
            "query-migrate-parameters",
            json!({}),
        )
    };
    let hmp = |add: &mut dyn FnMut(String, &str, Value), what: &str, after: &str| {
        add(
            format!("info {what} {after}"),
            "human-monitor-command",
            json!({"command-line": format!("info {what}")}),
        )
    };
    query_caps(&mut add, "at first");
    hmp(&mut add, "migrate_capabilities", "at first");
    for c in Capability::ALL {
        let name = c.name();
        let caps = |state: bool| json!({"capabilities": [{"capability": name, "state": state}]});
        // Where we refuse it QEMU has it on until the next exchange turns it off.
        if SUPPORTED_CAPABILITIES.contains(c) {
            add(format!("capability on: {name}"), set_caps, caps(true));
            query_caps(&mut add, &format!("after {name} on"));
        } else {
            add(format!("capability refused: {name}"), set_caps, caps(true));
        }
        add(format!("capability off: {name}"), set_caps, caps(false));
    }
    let events = |state: bool| json!({"capability": "events", "state": state});
    add(
        "events on".into(),
        set_caps,
        json!({"capabilities": [events(true)]}),
    );
    hmp(&mut add, "migrate_capabilities", "with events");
    // The last word on a capability wins.
    add(
        "events on and off".into(),
        set_caps,
        json!({"capabilities": [events(true), events(false)]}),
    );
    query_caps(&mut add, "after events on and off");
    add("no change".into(), set_caps, json!({"capabilities": []}));
    let capabilities = Ty::Array(&Ty::Named("MigrationCapabilityStatus"));
    for (label, bad) in broken(capabilities) {
        add(
            format!("capabilities {label}"),
            set_caps,
            json!({"capabilities": bad}),
        );
    }

    query(&mut add, "at first");
    hmp(&mut add, "migrate_parameters", "at first");
    let defaults = serde_json::to_value(MigrationSettings::default().parameters())
        .expect("the parameters are JSON");
    let set_members = COMMANDS
        .iter()
        .find(|c| c.name == set)
        .expect("migrate-set-parameters is served")
        .args();
    let edges = [
        json!(-1),
        json!(0),
        json!(1),
        json!(9),
        json!(10),
        json!(20),
        json!(21),
        json!(99),
        json!(100),
        json!(101),
        json!(255),
        json!(256),
        json!(1000),
        json!(1001),
        json!(4095),
        json!(4096),
        json!(10000),
        json!(10001),
        json!(100000),
        json!(100001),
        json!(2000000),
        json!(2000001),
        json!(u64::from(u32::MAX)),
        json!(1u64 << 32),
        json!(1u64 << 63),
        json!(u64::MAX),
        json!(1.5),
    ];
    let integers = set_members
        .iter()
        .filter(|m| matches!(m.ty, Ty::Uint | Ty::U8 | Ty::U32))
        // Their difference is listed; they are set below.
        .filter(|m| !m.name.starts_with("multifd-z"));
    for m in integers {
        for v in &edges {
            add(format!("{} {v}", m.name), set, json!({m.name: v}));
        }
        query(&mut add, &format!("after {}", m.name));
        add(
            format!("{} back", m.name),
            set,
            json!({m.name: defaults[m.name]}),
        );
    }
    // The checks see the whole set as it would be, in QEMU's order; the first fails it.
    add(
        "three, two of them out of range".into(),
        set,
        json!({"compress-threads": 0, "compress-level": 10, "downtime-limit": 5}),
    );
    for pair in [
        json!({"cpu-throttle-initial": 50}),
        json!({"max-cpu-throttle": 40}),
        json!({"max-cpu-throttle": 40, "cpu-throttle-initial": 30}),
        json!({"cpu-throttle-initial": 50}),
    ] {
        add(format!("throttles {pair}"), set, pair);
    }
    query(&mut add, "after the throttles");
    add(
        "throttles back".into(),
        set,
        json!({"cpu-throttle-initial": 20, "max-cpu-throttle": 99}),
    );
    add(
        "named".into(),
        set,
        json!({"tls-creds": "tc", "tls-hostname": "h", "tls-authz": "az",
               "compress-wait-thread": false, "cpu-throttle-tailslow": true,
               "block-incremental": true, "multifd-compression": "zstd"}),
    );
    query(&mut add, "after named");
    hmp(&mut add, "migrate_parameters", "after named");
    for wrong in [json!([]), json!({}), json!(1.5)] {
        add(
            format!("tls-creds {wrong}"),
            set,
            json!({"tls-creds": wrong}),
        );
    }
    add(
        "named back".into(),
        set,
        json!({"tls-creds": null, "tls-hostname": "", "tls-authz": null,
               "compress-wait-thread": true, "cpu-throttle-tailslow": false,
               "block-incremental": false, "multifd-compression": "none"}),
    );
    query(&mut add, "after named back");
    add(
        "multifd levels 9 and 20".into(),
        set,
        json!({"multifd-zlib-level": 9, "multifd-zstd-level": 20}),
    );
    query(&mut add, "after multifd levels 9 and 20");
    add(
        "multifd-zlib-level 10".into(),
        set,
        json!({"multifd-zlib-level": 10}),
    );
    add(
        "multifd-zstd-level 21".into(),
        set,
        json!({"multifd-zstd-level": 21}),
    );
    add(
        "multifd levels back".into(),
        set,
        json!({"multifd-zlib-level": 1, "multifd-zstd-level": 1}),
    );
    for level in [json!(256), json!(-1), json!("x")] {
        add(
            format!("multifd-zlib-level {level}"),
            set,
            json!({"multifd-zlib-level": level}),
        );
    }
    query(&mut add, "after multifd levels back");
    let node = |name: &str, alias: &str, bitmaps: &[(&str, &str)]| {
        let bitmaps: Vec<Value> = bitmaps
            .iter()
            .map(|(n, a)| json!({"name": n, "alias": a}))
            .collect();
        json!({"node-name": name, "alias": alias, "bitmaps": bitmaps})
    };
    let long = |c: &str, n: usize| c.repeat(n);
    for (label, mapping) in [
        (
            "valid",
            json!([node("n", "a", &[("b", "c")]), node("m", "a.b-c_d", &[])]),
        ),
        (
            "empty names",
            json!([node("", "a", &[("", ""), ("b", "1 2")])]),
        ),
        (
            "longest",
            json!([node(
                &long("n", 31),
                &long("a", 255),
                &[(&long("b", 1023), &long("c", 255))]
            )]),
        ),
        ("alias 1a", json!([node("n", "1a", &[])])),
        ("alias empty", json!([node("n", "", &[])])),
        ("alias a b", json!([node("n", "a b", &[])])),
        ("alias too long", json!([node("n", &long("a", 256), &[])])),
        (
            "node name too long",
            json!([node(&long("n", 32), "a", &[])]),
        ),
        (
            "node name and alias bad",
            json!([node(&long("n", 40), "1", &[])]),
        ),
        (
            "bitmap name too long",
            json!([node("n", "a", &[(&long("b", 1024), "c")])]),
        ),
        (
            "bitmap alias too long",
            json!([node("n", "a", &[("b", &long("c", 256))])]),
        ),
        (
            "node twice",
            json!([
                node("n", "a", &[("b", "c"), ("e", "c")]),
                node("n", "x", &[])
            ]),
        ),
        (
            "bitmap twice",
            json!([
                node("n", "a", &[]),
                node("m", "a", &[("b", "c"), ("b", "d")])
            ]),
        ),
        (
            "alias twice",
            json!([
                node("n", "a", &[]),
                node("m", "a", &[("b", "c"), ("e", "c")])
            ]),
        ),
        (
            "bitmap alias twice",
            json!([node("n", "a", &[("b", "c"), ("e", "c")])]),
        ),
        (
            "transform",
            json!([{"node-name": "n", "alias": "a", "bitmaps": [
                {"name": "b", "alias": "c", "transform": {"persistent": true}},
                {"name": "d", "alias": "e", "transform": {}}]}]),
        ),
    ] {
        add(
            format!("block-bitmap-mapping {label}"),
            set,
            json!({"block-bitmap-mapping": mapping}),
        );
        query(&mut add, &format!("after block-bitmap-mapping {label}"));
    }
    hmp(
        &mut add,
        "migrate_parameters",
        "with a block-bitmap-mapping",
    );
    for (label, bad) in broken(Ty::Array(&Ty::Named("BitmapMigrationNodeAlias"))) {
        add(
            format!("block-bitmap-mapping {label}"),
            set,
            json!({"block-bitmap-mapping": bad}),
        );
    }
    add(
        "block-bitmap-mapping none".into(),
        set,
        json!({"block-bitmap-mapping": []}),
    );
    query(&mut add, "at last");
    hmp(&mut add, "migrate_parameters", "at last");
    out
}

/// Exchanges once both VMs run (after `cont`): what depends on the run state.
fn while_running() -> Vec<Exchange> {
    let mut out = Vec::new();
    let mut add = |label: &str, command: &str, arguments: Value, compare, with_fd| {
        let label = format!("running: {label}");
        out.push(Exchange {
            bytes: message(command, arguments, &label),
            label,
            with_fd,
            compare,
        });
    };
    use Compare::Value as Same;
    add("query-status", "query-status", json!({}), Same, false);
    add(
        "input-send-event key",
        "input-send-event",
        json!({"events": [{"type": "key", "data": {"down": true, "key": {"type": "qcode", "data": "a"}}}]}),
        Same,
        false,
    );
    for (label, event) in [
        (
            "btn",
            json!({"type": "btn", "data": {"down": false, "button": "wheel-right"}}),
        ),
        (
            "rel",
            json!({"type": "rel", "data": {"axis": "y", "value": -3}}),
        ),
        (
            "abs",
            json!({"type": "abs", "data": {"axis": "x", "value": 20000}}),
        ),
        (
            "number",
            json!({"type": "key", "data": {"down": true, "key": {"type": "number", "data": 30}}}),
        ),
    ] {
        add(
            &format!("input-send-event {label}"),
            "input-send-event",
            json!({"events": [event]}),
            Same,
            false,
        );
    }
    add(
        "input-send-event bad data",
        "input-send-event",
        json!({"events": [{"type": "rel", "data": {"axis": "z", "value": 1}}]}),
        Same,
        false,
    );
    add(
        "input-send-event none",
        "input-send-event",
        json!({"events": []}),
        Same,
        false,
    );
    let fd_numbers = Compare::ValueBut(&["fd"]);
    add("add-fd", "add-fd", json!({"fdset-id": 9}), fd_numbers, true);
    add(
        "remove-fd",
        "remove-fd",
        json!({"fdset-id": 9}),
        Same,
        false,
    );
    add(
        "remove-fd again",
        "remove-fd",
        json!({"fdset-id": 9}),
        Same,
        false,
    );
    add("query-fdsets", "query-fdsets", json!({}), fd_numbers, false);
    add("cont again", "cont", json!({}), Same, false);
    add("stop", "stop", json!({}), Same, false);
    add(
        "query-status stopped",
        "query-status",
        json!({}),
        Same,
        false,
    );
    add(
        "input-send-event paused",
        "input-send-event",
        json!({"events": []}),
        Same,
        false,
    );
    out
}

/// Malformed input, sent as bytes.
fn malformed() -> Vec<Exchange> {
    let inputs: &[(&str, &[u8])] = &[
        ("bad keyword", b"{\"execute\": tru}"),
        ("trailing comma", b"{\"execute\": \"x\",}"),
        ("stray bracket", b"]"),
        ("bad escape", b"\"\\uZZZZ\""),
        ("array", b"[1,2,3]"),
        ("null", b"null "),
        ("number", b"42 "),
        ("string", b"\"query-status\""),
        ("invalid UTF-8", b"\xff\xfe "),
        ("no execute", b"{\"id\": 1}"),
        ("execute not a string", b"{\"execute\": 1, \"id\": 2}"),
        (
            "arguments not an object",
            b"{\"execute\": \"query-status\", \"arguments\": [], \"id\": 3}",
        ),
        (
            "unknown top-level member",
            b"{\"execute\": \"query-status\", \"foo\": 1, \"id\": 4}",
        ),
        (
            "exec-oob without the capability",
            b"{\"exec-oob\": \"query-status\", \"id\": 5}",
        ),
        (
            "execute and exec-oob",
            b"{\"execute\": \"query-status\", \"exec-oob\": \"query-status\"}",
        ),
        (
            "object id",
            b"{\"execute\": \"query-name\", \"id\": {\"a\": [1, null]}}",
        ),
        (
            "control character in a string",
            b"{\"execute\": \"query-\x01name\"}",
        ),
    ];
    inputs
        .iter()
        .map(|(label, bytes)| Exchange {
            label: format!("malformed: {label}"),
            bytes: bytes.to_vec(),
            with_fd: false,
            compare: Compare::Value,
        })
        .collect()
}

/// Sends `e` and returns every reply up to the one to a query that follows it: what
/// one input produced (none, one or several errors, or the reply).
/// `ports`: this VM's UDP ports for a netdev_add's @UDP@ and @LOCAL@ (each VM binds
/// its own).
fn exchange(c: &mut QmpClient, e: &Exchange, fd: &File, ports: u16, peer: &str) -> Vec<Value> {
    let text = String::from_utf8_lossy(&e.bytes);
    let bytes = if text.contains("@UDP@") || text.contains("@PEER@") {
        text.replace("@UDP@", &format!("127.0.0.1:{ports}"))
            .replace("@LOCAL@", &format!("127.0.0.1:{}", ports + 1))
            .replace("@PEER@", peer)
            .into_bytes()
    } else {
        e.bytes.clone()
    };
    if e.with_fd {
        c.send_with_fds(&bytes, &[fd.as_fd()]);
    } else {
        c.send_raw(&bytes);
    }
    c.send_raw(br#"{"execute": "query-status", "id": "sync"}"#);
    let mut replies = Vec::new();
    loop {
        let r = c.reply();
        if r["id"] == "sync" {
            return replies;
        }
        // A path of this VM's own reads as the placeholder it was sent as.
        let own = format!("/{peer}-");
        let text = r.to_string();
        replies.push(match text.contains(&own) {
            true => serde_json::from_str(&text.replace(&own, "/@PEER@-")).expect("JSON"),
            false => r,
        });
    }
}

/// Replies as one line, cut short (a vlan-table alone is 4096 numbers).
fn brief(replies: &[Value]) -> String {
    let s = serde_json::to_string(replies).expect("JSON");
    match s.char_indices().nth(600) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s,
    }
}

/// `v` with the values of members named `keys` replaced by their shapes.
fn masked(v: &Value, keys: &[&str]) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(|i| masked(i, keys)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let v = if keys.contains(&k.as_str()) {
                        shape(v)
                    } else {
                        masked(v, keys)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        v => v.clone(),
    }
}

fn same_answer(compare: Compare, q: &[Value], g: &[Value]) -> bool {
    if q.len() != g.len() {
        return false;
    }
    q.iter().zip(g).all(|(q, g)| match compare {
        Compare::Value => q == g,
        Compare::Shape if q.get("return").is_some() && g.get("return").is_some() => {
            shape(q) == shape(g)
        }
        Compare::Shape => q == g,
        Compare::ValueBut(keys) => masked(q, keys) == masked(g, keys),
        Compare::ShapeAndValueAt(at) => shape(q) == shape(g) && q.pointer(at) == g.pointer(at),
        Compare::ValueButAnonymousNodes => anonymous_nodes(q) == anonymous_nodes(g),
        Compare::ValueButPorts => ports_masked(q) == ports_masked(g),
    })
}

/// `v` as text with the digits after each `127.0.0.1:` read `N`.
fn ports_masked(v: &Value) -> String {
    digits_after(v, "127.0.0.1:")
}

/// `v` as text with each `#block` and its digits read `#blockN`.
fn anonymous_nodes(v: &Value) -> String {
    digits_after(v, "#block")
}

/// `v` as text with the digits after each `mark` read `N`.
fn digits_after(v: &Value, mark: &str) -> String {
    let text = v.to_string();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(mark) {
        out.push_str(&rest[..at + mark.len()]);
        rest = rest[at + mark.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('N');
    }
    out + rest
}

struct Peers {
    dir: TempDir,
    _qemu: Qemu,
    _gateway: Gateway,
    qemu: QmpClient,
    ours: QmpClient,
}

/// Two free UDP ports, one after the other (a socket netdev's peer and its own), not
/// handed out before in this test.
fn udp_pair() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        let fresh = port < u16::MAX - 1
            && !given.iter().any(|g| port.abs_diff(*g) < 2)
            && std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_ok();
        if fresh {
            given.push(port);
            return port;
        }
    }
}

fn start() -> Peers {
    let dir = TempDir::new("oracle");
    // Named so that each VM's path reads the same in replies (`exchange`'s @PEER@).
    let q_image = dir.path().join("qemu-disk.img");
    let g_image = dir.path().join("ours-disk.img");
    empty_image(&q_image, DISK_BYTES);
    empty_image(&g_image, DISK_BYTES);
    let netdev = |port: u16| {
        format!(
            "socket,id=n0,udp=127.0.0.1:{port},localaddr=127.0.0.1:{}",
            port + 1
        )
    };
    let nic = format!("virtio-net-pci,netdev=n0,id=nic0,mac={MAC}");
    let qemu = Qemu::guest(
        "",
        &[
            "-drive",
            &format!(
                "file={},format=raw,if=none,id=d0,node-name=disk0",
                q_image.display()
            ),
            "-device",
            "virtio-blk-pci,drive=d0",
            "-netdev",
            &netdev(udp_pair()),
            "-device",
            &nic,
        ],
    );
    let gateway = Gateway::start_with(
        1,
        "",
        &[
            "-S",
            "--drive",
            &format!(
                "file={},format=raw,id=d0,node-name=disk0",
                g_image.display()
            ),
            "--netdev",
            &netdev(udp_pair()),
            "--device",
            &nic,
        ],
    );
    let q = qemu.client();
    let g = gateway.client();
    Peers {
        dir,
        _qemu: qemu,
        _gateway: gateway,
        qemu: q,
        ours: g,
    }
}

#[test]
fn answers_match_qemu() {
    let mut p = start();
    let fd_file = |_: ()| File::open("/dev/null").unwrap();
    let spare = p.dir.path().join("spare.img");
    empty_image(&spare, DISK_BYTES);
    let mut exchanges = malformed();
    exchanges.extend(from_the_table());
    exchanges.extend(written_out(&spare.display().to_string()));
    exchanges.extend(migration_settings());
    exchanges.extend(hmp_lines());
    let (q_ports, g_ports) = (udp_pair(), udp_pair());
    let mut mismatches = Vec::new();
    let mut seen_differences = BTreeSet::new();
    let running = while_running();
    let cont = Exchange {
        label: "cont".into(),
        bytes: message("cont", json!({}), "cont"),
        with_fd: false,
        compare: Compare::Value,
    };
    for e in exchanges
        .iter()
        .chain(std::iter::once(&cont))
        .chain(running.iter())
    {
        let q = exchange(&mut p.qemu, e, &fd_file(()), q_ports, "qemu");
        let g = exchange(&mut p.ours, e, &fd_file(()), g_ports, "ours");
        if std::env::var_os("FLOTILLA_ORACLE_TRACE").is_some() {
            eprintln!("{}\n  QEMU: {}\n  ours: {}", e.label, brief(&q), brief(&g));
        }
        if let Some(d) = DIFFERENCES.iter().find(|d| d.concerns(&e.label)) {
            seen_differences.insert(d.what);
            if !(d.holds)(&q, &g) {
                mismatches.push(format!(
                    "listed difference no longer holds: {} ({}; {})\n  QEMU: {q:?}\n  ours: {g:?}",
                    e.label, d.what, d.why
                ));
            }
            continue;
        }
        if !same_answer(e.compare, &q, &g) {
            mismatches.push(format!(
                "{} ({:?}): sent {}\n  QEMU: {}\n  ours: {}",
                e.label,
                e.compare,
                String::from_utf8_lossy(&e.bytes),
                brief(&q),
                brief(&g)
            ));
        }
    }
    for c in [&mut p.qemu, &mut p.ours] {
        assert_eq!(c.event("RESUME")["event"], "RESUME");
        assert_eq!(c.event("STOP")["event"], "STOP");
    }
    for d in DIFFERENCES {
        assert!(
            seen_differences.contains(d.what),
            "listed difference {:?} was not exercised",
            d.labels
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} exchanges answered unlike QEMU 7.2:\n{}",
        mismatches.len(),
        exchanges.len() + 1 + running.len(),
        mismatches.join("\n")
    );
}
