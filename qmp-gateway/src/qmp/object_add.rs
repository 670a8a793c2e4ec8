//! object-add's arguments: QEMU 7.2's ObjectOptions (flat, as today's QEMU takes them,
//! or with the properties in "props", as the spec's older form has them), checked with
//! QEMU's messages and read into what the registry creates; and `--object`'s, QEMU's
//! -object, read into the same.

use serde_json::{Map, Value};

use super::args::Arguments;
use super::protocol::QmpError;
use super::qapi::{opt, req, Member, Ty};
use super::types::TYPES;
use crate::objects::iothread::IoThread;
use crate::objects::memory_backend::{BackendKind, MemoryBackendSpec};
use crate::objects::secret::{Secret, SecretProps};
use crate::objects::ObjectSpec;
use crate::{ids, keyval};

/// object-add's arguments: the object to create.
pub struct ObjectAdd(pub ObjectSpec);

impl Arguments for ObjectAdd {
    /// The base members, the spec's `props`, and every member of the branches Flotilla
    /// creates; `decode` checks them as QEMU's ObjectOptions union, by branch.
    const MEMBERS: &'static [Member] = &[
        req("qom-type", Ty::Named("ObjectType")),
        req("id", Ty::Str),
        opt("props", Ty::Any),
        opt("aio-max-batch", Ty::Any),
        opt("thread-pool-min", Ty::Any),
        opt("thread-pool-max", Ty::Any),
        opt("poll-max-ns", Ty::Any),
        opt("poll-grow", Ty::Any),
        opt("poll-shrink", Ty::Any),
        opt("dump", Ty::Any),
        opt("host-nodes", Ty::Any),
        opt("merge", Ty::Any),
        opt("policy", Ty::Any),
        opt("prealloc", Ty::Any),
        opt("prealloc-threads", Ty::Any),
        opt("prealloc-context", Ty::Any),
        opt("share", Ty::Any),
        opt("reserve", Ty::Any),
        opt("size", Ty::Any),
        opt("x-use-canonical-path-for-ramblock-id", Ty::Any),
        opt("hugetlb", Ty::Any),
        opt("hugetlbsize", Ty::Any),
        opt("seal", Ty::Any),
        opt("align", Ty::Any),
        opt("discard-data", Ty::Any),
        opt("mem-path", Ty::Any),
        opt("pmem", Ty::Any),
        opt("readonly", Ty::Any),
        opt("loaded", Ty::Any),
        opt("format", Ty::Any),
        opt("keyid", Ty::Any),
        opt("iv", Ty::Any),
        opt("data", Ty::Any),
        opt("file", Ty::Any),
    ];

    fn decode(args: Map<String, Value>) -> Result<Self, QmpError> {
        from_args(args).map(ObjectAdd)
    }

    #[cfg(test)]
    fn serde_fields() -> Option<&'static [&'static str]> {
        None
    }
}

/// From object-add's arguments.
pub fn from_args(mut args: Map<String, Value>) -> Result<ObjectSpec, QmpError> {
    // The spec's form: the properties in "props" (QEMU before 6.0). Merged into the
    // flat form, where a property given twice is an error.
    if let Some(props) = args.remove("props") {
        let Value::Object(props) = props else {
            return Err(QmpError::generic(
                "Invalid parameter type for 'props', expected: object",
            ));
        };
        for (k, v) in props {
            if k == "qom-type" || k == "id" || args.contains_key(&k) {
                return Err(QmpError::generic(format!(
                    "Parameter '{k}' is given twice (in props and outside)"
                )));
            }
            args.insert(k, v);
        }
    }
    TYPES.check_boxed("ObjectOptions", &args)?;
    let kind = args.get("qom-type").and_then(Value::as_str).unwrap_or("");
    let id = args.get("id").and_then(Value::as_str).unwrap_or("");
    if !ids::well_formed(id) {
        return Err(QmpError::generic("Parameter 'id' expects an identifier"));
    }
    match kind {
        "iothread" => iothread(id, &args).map(ObjectSpec::IoThread),
        "memory-backend-ram" => memory_backend(id, BackendKind::Ram, &args),
        "memory-backend-memfd" => memory_backend(id, BackendKind::Memfd, &args),
        "memory-backend-file" => {
            let mem_path = str_arg(&args, "mem-path").unwrap_or_default();
            memory_backend(id, BackendKind::File { mem_path }, &args)
        }
        "secret" => secret(id, &args),
        other => Err(QmpError::generic(format!(
            "Flotilla does not create objects of type '{other}' (it creates iothread, \
             memory-backend-ram, memory-backend-memfd, memory-backend-file and secret)"
        ))),
    }
}

/// A secret: its bytes loaded now (a file read by the gateway), as QEMU loads them.
fn secret(id: &str, args: &Map<String, Value>) -> Result<ObjectSpec, QmpError> {
    let s = |k| args.get(k).and_then(Value::as_str);
    let props = SecretProps {
        data: s("data"),
        file: s("file"),
        base64: s("format") == Some("base64"),
        keyid: s("keyid"),
    };
    Secret::load(id, props)
        .map(ObjectSpec::Secret)
        .map_err(QmpError::generic)
}

/// Members -object reads as sizes, integers and booleans (QEMU's keyval input visitor
/// reads each by its QAPI type; the rest are strings).
const CLI_SIZES: &[&str] = &["size", "align", "hugetlbsize"];
const CLI_INTS: &[&str] = &[
    "prealloc-threads",
    "poll-max-ns",
    "poll-grow",
    "poll-shrink",
    "aio-max-batch",
    "thread-pool-min",
    "thread-pool-max",
];
const CLI_BOOLS: &[&str] = &[
    "share",
    "prealloc",
    "merge",
    "dump",
    "reserve",
    "hugetlb",
    "seal",
    "discard-data",
    "pmem",
    "readonly",
    "x-use-canonical-path-for-ramblock-id",
];

/// The command line's `--object TYPE,id=ID,KEY=VALUE...` (QEMU's -object): the values
/// read by their members' types, with QEMU's words, then checked as object-add's.
pub fn from_cli(text: &str) -> Result<ObjectSpec, String> {
    let mut args = Map::new();
    for (i, part) in keyval::split_options(text).into_iter().enumerate() {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None if i == 0 => ("qom-type".to_string(), part),
            None => return Err(format!("Expected '=' after parameter '{part}'")),
        };
        let bad = |what: &str| format!("Parameter '{key}' expects {what}");
        let value = if CLI_SIZES.contains(&key.as_str()) {
            let n = ipc::host::parse_size(&value, 1).map_err(|_| bad("a size"))?;
            Value::from(n)
        } else if CLI_INTS.contains(&key.as_str()) {
            Value::from(value.parse::<i64>().map_err(|_| bad("integer"))?)
        } else if CLI_BOOLS.contains(&key.as_str()) {
            Value::Bool(keyval::boolean(&value).ok_or_else(|| bad("'on' or 'off'"))?)
        } else {
            Value::String(value)
        };
        args.insert(key, value);
    }
    from_args(args).map_err(|e| e.desc)
}

fn str_arg(args: &Map<String, Value>, key: &str) -> Option<String> {
    args.get(key).and_then(Value::as_str).map(str::to_string)
}

fn bool_arg(args: &Map<String, Value>, key: &str, default: bool) -> bool {
    args.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn iothread(id: &str, args: &Map<String, Value>) -> Result<IoThread, QmpError> {
    let mut t = IoThread::new(id);
    // QEMU's iothread_set_param: each is an int64 that must not be negative.
    for (key, field) in [
        ("poll-max-ns", &mut t.poll_max_ns),
        ("poll-grow", &mut t.poll_grow),
        ("poll-shrink", &mut t.poll_shrink),
        ("aio-max-batch", &mut t.aio_max_batch),
    ] {
        if let Some(v) = args.get(key).and_then(Value::as_i64) {
            if v < 0 {
                return Err(QmpError::generic(format!(
                    "{key} value must be in range [0, {}]",
                    i64::MAX
                )));
            }
            *field = v;
        }
    }
    for (key, field) in [
        ("thread-pool-min", &mut t.thread_pool_min),
        ("thread-pool-max", &mut t.thread_pool_max),
    ] {
        if let Some(v) = args.get(key).and_then(Value::as_i64) {
            *field = v;
        }
    }
    Ok(t)
}

fn memory_backend(
    id: &str,
    kind: BackendKind,
    args: &Map<String, Value>,
) -> Result<ObjectSpec, QmpError> {
    let qom_type = kind.qom_type();
    // Checked as a uint64 already.
    let size = args.get("size").and_then(Value::as_u64).unwrap_or(0);
    if size == 0 {
        return Err(QmpError::generic(format!(
            "property 'size' of {qom_type} doesn't take value '0'"
        )));
    }
    // NUMA placement would be applied where the memory is mapped (vmm-core), which
    // has no NUMA topology to place it by: refused rather than ignored.
    let policy = args
        .get("policy")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let nodes = args
        .get("host-nodes")
        .and_then(Value::as_array)
        .is_some_and(|n| !n.is_empty());
    if policy != "default" || nodes {
        return Err(QmpError::generic(
            "Flotilla does not apply NUMA policies to memory backends: \
             give neither policy nor host-nodes",
        ));
    }
    if bool_arg(args, "hugetlb", false) {
        return Err(QmpError::generic(
            "Flotilla does not create hugetlb memfds: give hugetlb=false",
        ));
    }
    if bool_arg(args, "readonly", false) || bool_arg(args, "pmem", false) {
        return Err(QmpError::generic(
            "Flotilla does not map read-only or persistent memory backends",
        ));
    }
    let mut spec = MemoryBackendSpec::new(id, kind, size);
    spec.share = args.get("share").and_then(Value::as_bool);
    spec.prealloc = bool_arg(args, "prealloc", false);
    spec.merge = bool_arg(args, "merge", true);
    spec.dump = bool_arg(args, "dump", true);
    spec.reserve = bool_arg(args, "reserve", true);
    Ok(ObjectSpec::MemoryBackend(spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ObjectSpec, String> {
        let Value::Object(m) = v else { unreachable!() };
        from_args(m).map_err(|e| e.desc)
    }

    #[test]
    fn qemus_messages_for_what_is_missing_or_wrong() {
        for (args, want) in [
            (json!({"id": "z"}), "Parameter 'qom-type' is missing"),
            (json!({"qom-type": "iothread"}), "Parameter 'id' is missing"),
            (
                json!({"qom-type": "nosuch", "id": "x"}),
                "Parameter 'qom-type' does not accept value 'nosuch'",
            ),
            (
                json!({"qom-type": "iothread", "id": "bad id"}),
                "Parameter 'id' expects an identifier",
            ),
            (
                json!({"qom-type": "iothread", "id": "i", "bogus": 1}),
                "Parameter 'bogus' is unexpected",
            ),
            (
                json!({"qom-type": "iothread", "id": "i", "poll-max-ns": "x"}),
                "Invalid parameter type for 'poll-max-ns', expected: integer",
            ),
            (
                json!({"qom-type": "iothread", "id": "i", "poll-max-ns": -1}),
                "poll-max-ns value must be in range [0, 9223372036854775807]",
            ),
            (
                json!({"qom-type": "memory-backend-ram", "id": "m"}),
                "Parameter 'size' is missing",
            ),
            (
                json!({"qom-type": "memory-backend-ram", "id": "m", "size": "1M"}),
                "Parameter 'size' expects uint64",
            ),
            (
                json!({"qom-type": "memory-backend-ram", "id": "m", "size": 0}),
                "property 'size' of memory-backend-ram doesn't take value '0'",
            ),
            (
                json!({"qom-type": "memory-backend-file", "id": "m", "size": 4096}),
                "Parameter 'mem-path' is missing",
            ),
        ] {
            assert_eq!(parse(args.clone()).unwrap_err(), want, "{args}");
        }
    }

    #[test]
    fn types_qemu_has_and_we_do_not_are_refused_by_name() {
        let e = parse(json!({"qom-type": "rng-random", "id": "s"})).unwrap_err();
        assert!(
            e.starts_with("Flotilla does not create objects of type 'rng-random'"),
            "{e}"
        );
    }

    #[test]
    fn the_flat_and_the_props_forms_are_the_same() {
        let flat = parse(json!({"qom-type": "iothread", "id": "io0", "poll-max-ns": 100}));
        let props =
            parse(json!({"qom-type": "iothread", "id": "io0", "props": {"poll-max-ns": 100}}));
        assert_eq!(flat, props);
        let Ok(ObjectSpec::IoThread(t)) = flat else {
            panic!("{flat:?}")
        };
        assert_eq!((t.poll_max_ns, t.poll_grow), (100, 0));
        let twice = parse(json!({"qom-type": "iothread", "id": "io0", "poll-grow": 1,
            "props": {"poll-grow": 2}}));
        assert!(twice.is_err());
    }

    #[test]
    fn the_command_line_reads_values_by_their_types() {
        let Ok(ObjectSpec::MemoryBackend(m)) =
            from_cli("memory-backend-file,id=m1,size=128M,mem-path=/tmp/a,,b,share=on")
        else {
            panic!()
        };
        assert_eq!(m.id, "m1");
        assert_eq!(m.size, 128 << 20);
        assert_eq!(m.share, Some(true));
        assert_eq!(
            m.kind,
            BackendKind::File {
                mem_path: "/tmp/a,b".into()
            }
        );
        let Ok(ObjectSpec::IoThread(t)) = from_cli("iothread,id=io1,poll-max-ns=7") else {
            panic!()
        };
        assert_eq!(t.poll_max_ns, 7);
        for (text, want) in [
            (
                "memory-backend-ram,id=m,size=12Q",
                "Parameter 'size' expects a size",
            ),
            (
                "memory-backend-ram,id=m,size=1M,share=maybe",
                "Parameter 'share' expects 'on' or 'off'",
            ),
            (
                "iothread,id=i,poll-grow=x",
                "Parameter 'poll-grow' expects integer",
            ),
            (
                "memory-backend-ram,id=m,1M",
                "Expected '=' after parameter '1M'",
            ),
            ("memory-backend-ram,size=1M", "Parameter 'id' is missing"),
            (
                "memory-backend-ram,id=m,size=0",
                "property 'size' of memory-backend-ram doesn't take value '0'",
            ),
            (
                "memory-backend-ram,id=m,size=1M,foo=1",
                "Parameter 'foo' is unexpected",
            ),
        ] {
            assert_eq!(from_cli(text).unwrap_err(), want, "{text}");
        }
    }

    #[test]
    fn memory_backend_defaults_are_qemus() {
        let Ok(ObjectSpec::MemoryBackend(m)) =
            parse(json!({"qom-type": "memory-backend-memfd", "id": "m", "size": 4096}))
        else {
            panic!()
        };
        assert_eq!(m.kind, BackendKind::Memfd);
        assert_eq!(
            (m.size, m.share, m.prealloc, m.merge, m.dump),
            (4096, None, false, true, true)
        );
    }
}
