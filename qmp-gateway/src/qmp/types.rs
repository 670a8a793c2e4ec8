//! The named QAPI types the commands' arguments and returns use (and the enums the
//! events' data uses), as query-qmp-schema lists them and the argument checker reads
//! them.

use super::qapi::{opt, req, Member, Ty, TypeDef, TypeKind, Types, Union};
use crate::migration::Capability;

/// QEMU 7.2's MemoryBackendProperties, in its order, then a backend type's own members
/// (the memfd and file backends start with the same members).
macro_rules! memory_backend_members {
    ($($own:expr),* $(,)?) => {
        &[
            opt("dump", Ty::Bool),
            opt("host-nodes", Ty::Array(&Ty::Int)),
            opt("merge", Ty::Bool),
            opt("policy", Ty::Named("HostMemPolicy")),
            opt("prealloc", Ty::Bool),
            opt("prealloc-threads", Ty::Int),
            opt("prealloc-context", Ty::Str),
            opt("share", Ty::Bool),
            opt("reserve", Ty::Bool),
            req("size", Ty::Uint),
            opt("x-use-canonical-path-for-ramblock-id", Ty::Bool),
            $($own),*
        ]
    };
}

/// Named types, in the order query-qmp-schema lists them (the events' own argument
/// types follow them, from events.rs).
pub const TYPES: Types = Types(&[
    TypeDef {
        name: "q_empty",
        kind: TypeKind::Object(&[]),
    },
    TypeDef {
        name: "RxState",
        kind: TypeKind::Enum(&["normal", "none", "all"]),
    },
    TypeDef {
        name: "RxFilterInfo",
        kind: TypeKind::Object(&[
            req("name", Ty::Str),
            req("promiscuous", Ty::Bool),
            req("multicast", Ty::Named("RxState")),
            req("unicast", Ty::Named("RxState")),
            req("vlan", Ty::Named("RxState")),
            req("broadcast-allowed", Ty::Bool),
            req("multicast-overflow", Ty::Bool),
            req("unicast-overflow", Ty::Bool),
            req("main-mac", Ty::Str),
            req("vlan-table", Ty::Array(&Ty::Int)),
            req("unicast-table", Ty::Array(&Ty::Str)),
            req("multicast-table", Ty::Array(&Ty::Str)),
        ]),
    },
    TypeDef {
        name: "ChardevInfo",
        kind: TypeKind::Object(&[
            req("label", Ty::Str),
            req("filename", Ty::Str),
            req("frontend-open", Ty::Bool),
        ]),
    },
    TypeDef {
        name: "ChardevBackendInfo",
        kind: TypeKind::Object(&[req("name", Ty::Str)]),
    },
    TypeDef {
        name: "ChardevReturn",
        kind: TypeKind::Object(&[opt("pty", Ty::Str)]),
    },
    TypeDef {
        name: "DataFormat",
        kind: TypeKind::Enum(&["utf8", "base64"]),
    },
    // chardev-add's backends: QEMU 7.2's ChardevBackend, with the kinds and members the
    // gateway serves (chardev/spec.rs).
    TypeDef {
        name: "ChardevBackend",
        kind: TypeKind::Union(Union {
            base: &[req("type", Ty::Named("ChardevBackendKind"))],
            tag: "type",
            variants: &[
                ("file", "ChardevFileWrapper"),
                ("pipe", "ChardevHostdevWrapper"),
                ("socket", "ChardevSocketWrapper"),
                ("udp", "ChardevUdpWrapper"),
                ("pty", "ChardevCommonWrapper"),
                ("null", "ChardevCommonWrapper"),
                ("stdio", "ChardevCommonWrapper"),
                ("ringbuf", "ChardevRingbufWrapper"),
                ("memory", "ChardevRingbufWrapper"),
            ],
        }),
    },
    TypeDef {
        name: "ChardevBackendKind",
        kind: TypeKind::Enum(crate::chardev::spec::KINDS),
    },
    TypeDef {
        name: "ChardevFileWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("ChardevFile"))]),
    },
    TypeDef {
        name: "ChardevHostdevWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("ChardevHostdev"))]),
    },
    TypeDef {
        name: "ChardevSocketWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("ChardevSocket"))]),
    },
    TypeDef {
        name: "ChardevUdpWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("ChardevUdp"))]),
    },
    TypeDef {
        name: "ChardevCommonWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("ChardevCommon"))]),
    },
    TypeDef {
        name: "ChardevRingbufWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("ChardevRingbuf"))]),
    },
    TypeDef {
        name: "ChardevCommon",
        kind: TypeKind::Object(&[opt("logfile", Ty::Str), opt("logappend", Ty::Bool)]),
    },
    TypeDef {
        name: "ChardevFile",
        kind: TypeKind::Object(&[
            opt("logfile", Ty::Str),
            opt("logappend", Ty::Bool),
            opt("in", Ty::Str),
            req("out", Ty::Str),
            opt("append", Ty::Bool),
        ]),
    },
    TypeDef {
        name: "ChardevHostdev",
        kind: TypeKind::Object(&[
            opt("logfile", Ty::Str),
            opt("logappend", Ty::Bool),
            req("device", Ty::Str),
        ]),
    },
    TypeDef {
        name: "ChardevSocket",
        kind: TypeKind::Object(&[
            opt("logfile", Ty::Str),
            opt("logappend", Ty::Bool),
            req("addr", Ty::Named("SocketAddressLegacy")),
            opt("tls-creds", Ty::Str),
            opt("server", Ty::Bool),
            opt("wait", Ty::Bool),
            opt("nodelay", Ty::Bool),
            opt("telnet", Ty::Bool),
            opt("tn3270", Ty::Bool),
            opt("websocket", Ty::Bool),
            opt("reconnect", Ty::Int),
        ]),
    },
    TypeDef {
        name: "ChardevUdp",
        kind: TypeKind::Object(&[
            opt("logfile", Ty::Str),
            opt("logappend", Ty::Bool),
            req("remote", Ty::Named("SocketAddressLegacy")),
            opt("local", Ty::Named("SocketAddressLegacy")),
        ]),
    },
    TypeDef {
        name: "ChardevRingbuf",
        kind: TypeKind::Object(&[
            opt("logfile", Ty::Str),
            opt("logappend", Ty::Bool),
            opt("size", Ty::Int),
        ]),
    },
    TypeDef {
        name: "SocketAddressLegacy",
        kind: TypeKind::Union(Union {
            base: &[req("type", Ty::Named("SocketAddressLegacyKind"))],
            tag: "type",
            variants: &[
                ("inet", "InetSocketAddressWrapper"),
                ("unix", "UnixSocketAddressWrapper"),
            ],
        }),
    },
    TypeDef {
        name: "SocketAddressLegacyKind",
        kind: TypeKind::Enum(&["inet", "unix"]),
    },
    TypeDef {
        name: "InetSocketAddressWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("InetSocketAddress"))]),
    },
    TypeDef {
        name: "UnixSocketAddressWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("UnixSocketAddress"))]),
    },
    TypeDef {
        name: "InetSocketAddress",
        kind: TypeKind::Object(&[req("host", Ty::Str), req("port", Ty::Str)]),
    },
    TypeDef {
        name: "UnixSocketAddress",
        kind: TypeKind::Object(&[req("path", Ty::Str), opt("abstract", Ty::Bool)]),
    },
    TypeDef {
        name: "QMPCapability",
        kind: TypeKind::Enum(&["oob"]),
    },
    TypeDef {
        name: "VersionTriple",
        kind: TypeKind::Object(&[
            req("major", Ty::Int),
            req("minor", Ty::Int),
            req("micro", Ty::Int),
        ]),
    },
    TypeDef {
        name: "VersionInfo",
        kind: TypeKind::Object(&[
            req("qemu", Ty::Named("VersionTriple")),
            req("package", Ty::Str),
        ]),
    },
    TypeDef {
        name: "CommandInfo",
        kind: TypeKind::Object(&[req("name", Ty::Str)]),
    },
    TypeDef {
        name: "EventInfo",
        kind: TypeKind::Object(&[req("name", Ty::Str)]),
    },
    TypeDef {
        name: "RunState",
        kind: TypeKind::Enum(&[
            "prelaunch",
            "running",
            "paused",
            "internal-error",
            "io-error",
            "shutdown",
        ]),
    },
    TypeDef {
        name: "StatusInfo",
        kind: TypeKind::Object(&[
            req("running", Ty::Bool),
            req("singlestep", Ty::Bool),
            req("status", Ty::Named("RunState")),
        ]),
    },
    TypeDef {
        name: "KvmInfo",
        kind: TypeKind::Object(&[req("enabled", Ty::Bool), req("present", Ty::Bool)]),
    },
    // What a management tool probes (handlers/machine_types.rs, cpu_models.rs, qom.rs):
    // QEMU 7.2's types.
    TypeDef {
        name: "SysEmuTarget",
        kind: TypeKind::Enum(&[
            "aarch64",
            "alpha",
            "arm",
            "avr",
            "cris",
            "hppa",
            "i386",
            "loongarch64",
            "m68k",
            "microblaze",
            "microblazeel",
            "mips",
            "mips64",
            "mips64el",
            "mipsel",
            "nios2",
            "or1k",
            "ppc",
            "ppc64",
            "riscv32",
            "riscv64",
            "rx",
            "s390x",
            "sh4",
            "sh4eb",
            "sparc",
            "sparc64",
            "tricore",
            "x86_64",
            "xtensa",
            "xtensaeb",
        ]),
    },
    TypeDef {
        name: "TargetInfo",
        kind: TypeKind::Object(&[req("arch", Ty::Named("SysEmuTarget"))]),
    },
    TypeDef {
        name: "MachineInfo",
        kind: TypeKind::Object(&[
            req("name", Ty::Str),
            opt("alias", Ty::Str),
            opt("is-default", Ty::Bool),
            req("cpu-max", Ty::Int),
            req("hotpluggable-cpus", Ty::Bool),
            req("numa-mem-supported", Ty::Bool),
            req("deprecated", Ty::Bool),
            opt("default-cpu-type", Ty::Str),
            opt("default-ram-id", Ty::Str),
        ]),
    },
    TypeDef {
        name: "SevCapability",
        kind: TypeKind::Object(&[
            req("pdh", Ty::Str),
            req("cert-chain", Ty::Str),
            req("cpu0-id", Ty::Str),
            req("cbitpos", Ty::Int),
            req("reduced-phys-bits", Ty::Int),
        ]),
    },
    TypeDef {
        name: "SGXEPCSection",
        kind: TypeKind::Object(&[req("node", Ty::Int), req("size", Ty::Int)]),
    },
    TypeDef {
        name: "SGXInfo",
        kind: TypeKind::Object(&[
            req("sgx", Ty::Bool),
            req("sgx1", Ty::Bool),
            req("sgx2", Ty::Bool),
            req("flc", Ty::Bool),
            req("section-size", Ty::Int),
            req("sections", Ty::Array(&Ty::Named("SGXEPCSection"))),
        ]),
    },
    TypeDef {
        name: "CpuDefinitionInfo",
        kind: TypeKind::Object(&[
            req("name", Ty::Str),
            opt("migration-safe", Ty::Bool),
            req("static", Ty::Bool),
            opt("unavailable-features", Ty::Array(&Ty::Str)),
            req("typename", Ty::Str),
            opt("alias-of", Ty::Str),
            req("deprecated", Ty::Bool),
        ]),
    },
    TypeDef {
        name: "CpuModelInfo",
        kind: TypeKind::Object(&[req("name", Ty::Str), opt("props", Ty::Any)]),
    },
    TypeDef {
        name: "CpuModelExpansionType",
        kind: TypeKind::Enum(&["static", "full"]),
    },
    TypeDef {
        name: "CpuModelExpansionInfo",
        kind: TypeKind::Object(&[req("model", Ty::Named("CpuModelInfo"))]),
    },
    TypeDef {
        name: "ObjectTypeInfo",
        kind: TypeKind::Object(&[
            req("name", Ty::Str),
            opt("abstract", Ty::Bool),
            opt("parent", Ty::Str),
        ]),
    },
    TypeDef {
        name: "ObjectPropertyInfo",
        kind: TypeKind::Object(&[
            req("name", Ty::Str),
            req("type", Ty::Str),
            opt("description", Ty::Str),
            opt("default-value", Ty::Any),
        ]),
    },
    TypeDef {
        name: "TraceEventState",
        kind: TypeKind::Enum(&["unavailable", "disabled", "enabled"]),
    },
    TypeDef {
        name: "TraceEventInfo",
        kind: TypeKind::Object(&[
            req("name", Ty::Str),
            req("state", Ty::Named("TraceEventState")),
            req("vcpu", Ty::Bool),
        ]),
    },
    TypeDef {
        name: "CpuInfo",
        kind: TypeKind::Object(&[
            req("CPU", Ty::Int),
            req("current", Ty::Bool),
            req("halted", Ty::Bool),
            req("qom_path", Ty::Str),
            req("thread_id", Ty::Int),
            req("arch", Ty::Str),
            req("pc", Ty::Int),
        ]),
    },
    TypeDef {
        name: "CpuInstanceProperties",
        kind: TypeKind::Object(&[
            opt("socket-id", Ty::Int),
            opt("core-id", Ty::Int),
            opt("thread-id", Ty::Int),
        ]),
    },
    TypeDef {
        name: "HotpluggableCPU",
        kind: TypeKind::Object(&[
            req("type", Ty::Str),
            req("vcpus-count", Ty::Int),
            req("props", Ty::Named("CpuInstanceProperties")),
            opt("qom-path", Ty::Str),
        ]),
    },
    TypeDef {
        name: "CpuInfoFast",
        kind: TypeKind::Object(&[
            req("cpu-index", Ty::Int),
            req("qom-path", Ty::Str),
            req("thread-id", Ty::Int),
            opt("props", Ty::Named("CpuInstanceProperties")),
            req("target", Ty::Str),
        ]),
    },
    // query-pci, as QEMU 7.2's schema has it (PciBridgeInfo for completeness: bus 0
    // has no bridges).
    TypeDef {
        name: "PciInfo",
        kind: TypeKind::Object(&[
            req("bus", Ty::Int),
            req("devices", Ty::Array(&Ty::Named("PciDeviceInfo"))),
        ]),
    },
    TypeDef {
        name: "PciDeviceInfo",
        kind: TypeKind::Object(&[
            req("bus", Ty::Int),
            req("slot", Ty::Int),
            req("function", Ty::Int),
            req("class_info", Ty::Named("PciDeviceClass")),
            req("id", Ty::Named("PciDeviceId")),
            opt("irq", Ty::Int),
            req("irq_pin", Ty::Int),
            req("qdev_id", Ty::Str),
            opt("pci_bridge", Ty::Named("PciBridgeInfo")),
            req("regions", Ty::Array(&Ty::Named("PciMemoryRegion"))),
        ]),
    },
    TypeDef {
        name: "PciDeviceClass",
        kind: TypeKind::Object(&[opt("desc", Ty::Str), req("class", Ty::Int)]),
    },
    TypeDef {
        name: "PciDeviceId",
        kind: TypeKind::Object(&[
            req("device", Ty::Int),
            req("vendor", Ty::Int),
            opt("subsystem", Ty::Int),
            opt("subsystem-vendor", Ty::Int),
        ]),
    },
    TypeDef {
        name: "PciBridgeInfo",
        kind: TypeKind::Object(&[
            req("bus", Ty::Named("PciBusInfo")),
            opt("devices", Ty::Array(&Ty::Named("PciDeviceInfo"))),
        ]),
    },
    TypeDef {
        name: "PciBusInfo",
        kind: TypeKind::Object(&[
            req("number", Ty::Int),
            req("secondary", Ty::Int),
            req("subordinate", Ty::Int),
            req("io_range", Ty::Named("PciMemoryRange")),
            req("memory_range", Ty::Named("PciMemoryRange")),
            req("prefetchable_range", Ty::Named("PciMemoryRange")),
        ]),
    },
    TypeDef {
        name: "PciMemoryRange",
        kind: TypeKind::Object(&[req("base", Ty::Int), req("limit", Ty::Int)]),
    },
    TypeDef {
        name: "PciMemoryRegion",
        kind: TypeKind::Object(&[
            req("bar", Ty::Int),
            req("type", Ty::Str),
            req("address", Ty::Int),
            req("size", Ty::Int),
            opt("prefetch", Ty::Bool),
            opt("mem_type_64", Ty::Bool),
        ]),
    },
    TypeDef {
        name: "CommandLineParameterType",
        kind: TypeKind::Enum(&["string", "boolean", "number", "size"]),
    },
    TypeDef {
        name: "CommandLineParameterInfo",
        kind: TypeKind::Object(&[
            req("name", Ty::Str),
            req("type", Ty::Named("CommandLineParameterType")),
            opt("help", Ty::Str),
            opt("default", Ty::Str),
        ]),
    },
    TypeDef {
        name: "CommandLineOptionInfo",
        kind: TypeKind::Object(&[
            req("option", Ty::Str),
            req(
                "parameters",
                Ty::Array(&Ty::Named("CommandLineParameterInfo")),
            ),
        ]),
    },
    TypeDef {
        name: "NameInfo",
        kind: TypeKind::Object(&[opt("name", Ty::Str)]),
    },
    TypeDef {
        name: "UuidInfo",
        kind: TypeKind::Object(&[req("UUID", Ty::Str)]),
    },
    TypeDef {
        name: "AddfdInfo",
        kind: TypeKind::Object(&[req("fdset-id", Ty::Int), req("fd", Ty::Int)]),
    },
    TypeDef {
        name: "FdsetFdInfo",
        kind: TypeKind::Object(&[req("fd", Ty::Int), opt("opaque", Ty::Str)]),
    },
    TypeDef {
        name: "FdsetInfo",
        kind: TypeKind::Object(&[
            req("fdset-id", Ty::Int),
            req("fds", Ty::Array(&Ty::Named("FdsetFdInfo"))),
        ]),
    },
    TypeDef {
        name: "DisplayProtocol",
        kind: TypeKind::Enum(&["vnc", "spice"]),
    },
    TypeDef {
        name: "SpiceInfo",
        kind: TypeKind::Object(&[
            req("enabled", Ty::Bool),
            req("migrated", Ty::Bool),
            req("mouse-mode", Ty::Str),
        ]),
    },
    TypeDef {
        name: "BalloonInfo",
        kind: TypeKind::Object(&[req("actual", Ty::Int)]),
    },
    TypeDef {
        name: "DumpGuestMemoryFormat",
        kind: TypeKind::Enum(&["elf", "kdump-zlib", "kdump-lzo", "kdump-snappy", "win-dmp"]),
    },
    TypeDef {
        name: "DumpStatus",
        kind: TypeKind::Enum(&["none", "active", "completed", "failed"]),
    },
    TypeDef {
        name: "DumpQueryResult",
        kind: TypeKind::Object(&[
            req("status", Ty::Named("DumpStatus")),
            req("completed", Ty::Int),
            req("total", Ty::Int),
        ]),
    },
    TypeDef {
        name: "DumpGuestMemoryCapability",
        kind: TypeKind::Object(&[req(
            "formats",
            Ty::Array(&Ty::Named("DumpGuestMemoryFormat")),
        )]),
    },
    TypeDef {
        name: "MouseInfo",
        kind: TypeKind::Object(&[
            req("name", Ty::Str),
            req("index", Ty::Int),
            req("current", Ty::Bool),
            req("absolute", Ty::Bool),
        ]),
    },
    // input-send-event's events: QEMU 7.2's (simple) unions and the types they carry,
    // under QEMU's names.
    TypeDef {
        name: "InputEvent",
        kind: TypeKind::Union(Union {
            base: &[req("type", Ty::Named("InputEventKind"))],
            tag: "type",
            variants: &[
                ("key", "InputKeyEventWrapper"),
                ("btn", "InputBtnEventWrapper"),
                ("rel", "InputMoveEventWrapper"),
                ("abs", "InputMoveEventWrapper"),
            ],
        }),
    },
    TypeDef {
        name: "InputEventKind",
        kind: TypeKind::Enum(&["key", "btn", "rel", "abs"]),
    },
    TypeDef {
        name: "InputKeyEventWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("InputKeyEvent"))]),
    },
    TypeDef {
        name: "InputBtnEventWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("InputBtnEvent"))]),
    },
    TypeDef {
        name: "InputMoveEventWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("InputMoveEvent"))]),
    },
    TypeDef {
        name: "InputKeyEvent",
        kind: TypeKind::Object(&[req("key", Ty::Named("KeyValue")), req("down", Ty::Bool)]),
    },
    TypeDef {
        name: "InputBtnEvent",
        kind: TypeKind::Object(&[
            req("button", Ty::Named("InputButton")),
            req("down", Ty::Bool),
        ]),
    },
    TypeDef {
        name: "InputMoveEvent",
        kind: TypeKind::Object(&[req("axis", Ty::Named("InputAxis")), req("value", Ty::Int)]),
    },
    TypeDef {
        name: "KeyValue",
        kind: TypeKind::Union(Union {
            base: &[req("type", Ty::Named("KeyValueKind"))],
            tag: "type",
            variants: &[("number", "IntWrapper"), ("qcode", "QKeyCodeWrapper")],
        }),
    },
    TypeDef {
        name: "KeyValueKind",
        kind: TypeKind::Enum(&["number", "qcode"]),
    },
    TypeDef {
        name: "IntWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Int)]),
    },
    TypeDef {
        name: "QKeyCodeWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("QKeyCode"))]),
    },
    TypeDef {
        // QEMU 7.2's key codes, in its order.
        name: "QKeyCode",
        kind: TypeKind::Enum(&[
            "unmapped",
            "shift",
            "shift_r",
            "alt",
            "alt_r",
            "ctrl",
            "ctrl_r",
            "menu",
            "esc",
            "1",
            "2",
            "3",
            "4",
            "5",
            "6",
            "7",
            "8",
            "9",
            "0",
            "minus",
            "equal",
            "backspace",
            "tab",
            "q",
            "w",
            "e",
            "r",
            "t",
            "y",
            "u",
            "i",
            "o",
            "p",
            "bracket_left",
            "bracket_right",
            "ret",
            "a",
            "s",
            "d",
            "f",
            "g",
            "h",
            "j",
            "k",
            "l",
            "semicolon",
            "apostrophe",
            "grave_accent",
            "backslash",
            "z",
            "x",
            "c",
            "v",
            "b",
            "n",
            "m",
            "comma",
            "dot",
            "slash",
            "asterisk",
            "spc",
            "caps_lock",
            "f1",
            "f2",
            "f3",
            "f4",
            "f5",
            "f6",
            "f7",
            "f8",
            "f9",
            "f10",
            "num_lock",
            "scroll_lock",
            "kp_divide",
            "kp_multiply",
            "kp_subtract",
            "kp_add",
            "kp_enter",
            "kp_decimal",
            "sysrq",
            "kp_0",
            "kp_1",
            "kp_2",
            "kp_3",
            "kp_4",
            "kp_5",
            "kp_6",
            "kp_7",
            "kp_8",
            "kp_9",
            "less",
            "f11",
            "f12",
            "print",
            "home",
            "pgup",
            "pgdn",
            "end",
            "left",
            "up",
            "down",
            "right",
            "insert",
            "delete",
            "stop",
            "again",
            "props",
            "undo",
            "front",
            "copy",
            "open",
            "paste",
            "find",
            "cut",
            "lf",
            "help",
            "meta_l",
            "meta_r",
            "compose",
            "pause",
            "ro",
            "hiragana",
            "henkan",
            "yen",
            "muhenkan",
            "katakanahiragana",
            "kp_comma",
            "kp_equals",
            "power",
            "sleep",
            "wake",
            "audionext",
            "audioprev",
            "audiostop",
            "audioplay",
            "audiomute",
            "volumeup",
            "volumedown",
            "mediaselect",
            "mail",
            "calculator",
            "computer",
            "ac_home",
            "ac_back",
            "ac_forward",
            "ac_refresh",
            "ac_bookmarks",
            "lang1",
            "lang2",
        ]),
    },
    TypeDef {
        name: "InputButton",
        kind: TypeKind::Enum(&[
            "left",
            "middle",
            "right",
            "wheel-up",
            "wheel-down",
            "side",
            "extra",
            "wheel-left",
            "wheel-right",
        ]),
    },
    TypeDef {
        name: "InputAxis",
        kind: TypeKind::Enum(&["x", "y"]),
    },
    TypeDef {
        name: "ShutdownCause",
        kind: TypeKind::Enum(&[
            "host-error",
            "host-qmp-quit",
            "host-qmp-system-reset",
            "host-signal",
            "guest-shutdown",
            "guest-reset",
        ]),
    },
    TypeDef {
        name: "BlockdevChangeReadOnlyMode",
        kind: TypeKind::Enum(&["retain", "read-only", "read-write"]),
    },
    TypeDef {
        name: "BlockdevCacheInfo",
        kind: TypeKind::Object(&[
            req("writeback", Ty::Bool),
            req("direct", Ty::Bool),
            req("no-flush", Ty::Bool),
        ]),
    },
    TypeDef {
        name: "ImageInfo",
        kind: TypeKind::Object(&[
            req("filename", Ty::Str),
            req("format", Ty::Str),
            opt("dirty-flag", Ty::Bool),
            opt("actual-size", Ty::Int),
            req("virtual-size", Ty::Int),
        ]),
    },
    TypeDef {
        name: "BlockDeviceInfo",
        kind: TypeKind::Object(&[
            req("file", Ty::Str),
            opt("node-name", Ty::Str),
            req("ro", Ty::Bool),
            req("drv", Ty::Str),
            req("backing_file_depth", Ty::Int),
            req("encrypted", Ty::Bool),
            req("detect_zeroes", Ty::Str),
            req("bps", Ty::Int),
            req("bps_rd", Ty::Int),
            req("bps_wr", Ty::Int),
            req("iops", Ty::Int),
            req("iops_rd", Ty::Int),
            req("iops_wr", Ty::Int),
            req("image", Ty::Named("ImageInfo")),
            opt("bps_max", Ty::Int),
            opt("bps_rd_max", Ty::Int),
            opt("bps_wr_max", Ty::Int),
            opt("iops_max", Ty::Int),
            opt("iops_rd_max", Ty::Int),
            opt("iops_wr_max", Ty::Int),
            opt("bps_max_length", Ty::Int),
            opt("bps_rd_max_length", Ty::Int),
            opt("bps_wr_max_length", Ty::Int),
            opt("iops_max_length", Ty::Int),
            opt("iops_rd_max_length", Ty::Int),
            opt("iops_wr_max_length", Ty::Int),
            opt("iops_size", Ty::Int),
            opt("group", Ty::Str),
            req("cache", Ty::Named("BlockdevCacheInfo")),
            req("write_threshold", Ty::Int),
            opt("dirty-bitmaps", Ty::Array(&Ty::Named("BlockDirtyInfo"))),
        ]),
    },
    TypeDef {
        name: "BlockJobInfo",
        kind: TypeKind::Object(&[
            req("type", Ty::Str),
            req("device", Ty::Str),
            req("len", Ty::Int),
            req("offset", Ty::Int),
            req("busy", Ty::Bool),
            req("paused", Ty::Bool),
            req("speed", Ty::Int),
            req("io-status", Ty::Named("BlockDeviceIoStatus")),
            req("ready", Ty::Bool),
            req("status", Ty::Named("JobStatus")),
            req("auto-finalize", Ty::Bool),
            req("auto-dismiss", Ty::Bool),
            opt("error", Ty::Str),
        ]),
    },
    TypeDef {
        name: "JobInfo",
        kind: TypeKind::Object(&[
            req("id", Ty::Str),
            req("type", Ty::Named("JobType")),
            req("status", Ty::Named("JobStatus")),
            req("current-progress", Ty::Int),
            req("total-progress", Ty::Int),
            opt("error", Ty::Str),
        ]),
    },
    TypeDef {
        name: "JobStatus",
        kind: TypeKind::Enum(&[
            "undefined",
            "created",
            "running",
            "paused",
            "ready",
            "standby",
            "waiting",
            "pending",
            "aborting",
            "concluded",
            "null",
        ]),
    },
    // blockdev-create's options: the branches Flotilla creates (other drivers have the
    // base's members only).
    TypeDef {
        name: "BlockdevCreateOptions",
        kind: TypeKind::Union(Union {
            base: &[req("driver", Ty::Named("BlockdevDriver"))],
            tag: "driver",
            variants: &[
                ("file", "BlockdevCreateOptionsFile"),
                ("qcow2", "BlockdevCreateOptionsQcow2"),
            ],
        }),
    },
    TypeDef {
        name: "BlockdevCreateOptionsFile",
        kind: TypeKind::Object(&[
            req("filename", Ty::Str),
            req("size", Ty::Uint),
            opt("preallocation", Ty::Named("PreallocMode")),
            opt("nocow", Ty::Bool),
            opt("extent-size-hint", Ty::Uint),
        ]),
    },
    TypeDef {
        name: "BlockdevCreateOptionsQcow2",
        kind: TypeKind::Object(&[
            req("file", Ty::Any),
            opt("data-file", Ty::Any),
            opt("data-file-raw", Ty::Bool),
            opt("extended-l2", Ty::Bool),
            req("size", Ty::Uint),
            opt("version", Ty::Named("BlockdevQcow2Version")),
            opt("backing-file", Ty::Str),
            opt("backing-fmt", Ty::Named("BlockdevDriver")),
            opt("encrypt", Ty::Any),
            opt("cluster-size", Ty::Uint),
            opt("preallocation", Ty::Named("PreallocMode")),
            opt("lazy-refcounts", Ty::Bool),
            opt("refcount-bits", Ty::Int),
            opt("compression-type", Ty::Named("Qcow2CompressionType")),
        ]),
    },
    TypeDef {
        name: "BlockdevDriver",
        kind: TypeKind::Enum(&[
            "blkdebug",
            "blklogwrites",
            "blkreplay",
            "blkverify",
            "bochs",
            "cloop",
            "compress",
            "copy-before-write",
            "copy-on-read",
            "dmg",
            "file",
            "snapshot-access",
            "ftp",
            "ftps",
            "gluster",
            "host_cdrom",
            "host_device",
            "http",
            "https",
            "io_uring",
            "iscsi",
            "luks",
            "nbd",
            "nfs",
            "null-aio",
            "null-co",
            "nvme",
            "nvme-io_uring",
            "parallels",
            "preallocate",
            "qcow",
            "qcow2",
            "qed",
            "quorum",
            "raw",
            "rbd",
            "replication",
            "ssh",
            "throttle",
            "vdi",
            "vhdx",
            "virtio-blk-vfio-pci",
            "virtio-blk-vhost-user",
            "virtio-blk-vhost-vdpa",
            "vmdk",
            "vpc",
            "vvfat",
        ]),
    },
    TypeDef {
        name: "PreallocMode",
        kind: TypeKind::Enum(&["off", "metadata", "falloc", "full"]),
    },
    TypeDef {
        name: "BlockdevQcow2Version",
        kind: TypeKind::Enum(&["v2", "v3"]),
    },
    TypeDef {
        name: "Qcow2CompressionType",
        kind: TypeKind::Enum(&["zlib", "zstd"]),
    },
    TypeDef {
        name: "JobType",
        kind: TypeKind::Enum(&[
            "commit",
            "stream",
            "mirror",
            "backup",
            "create",
            "amend",
            "snapshot-load",
            "snapshot-save",
            "snapshot-delete",
        ]),
    },
    TypeDef {
        name: "MirrorSyncMode",
        kind: TypeKind::Enum(&["top", "full", "none", "incremental", "bitmap"]),
    },
    TypeDef {
        name: "BlockdevOnError",
        kind: TypeKind::Enum(&["report", "ignore", "enospc", "stop", "auto"]),
    },
    TypeDef {
        name: "BlockDirtyInfo",
        kind: TypeKind::Object(&[
            opt("name", Ty::Str),
            req("count", Ty::Int),
            req("granularity", Ty::U32),
            req("recording", Ty::Bool),
            req("busy", Ty::Bool),
            req("persistent", Ty::Bool),
        ]),
    },
    TypeDef {
        name: "BlockInfo",
        kind: TypeKind::Object(&[
            req("device", Ty::Str),
            opt("qdev", Ty::Str),
            req("type", Ty::Str),
            req("removable", Ty::Bool),
            req("locked", Ty::Bool),
            opt("inserted", Ty::Named("BlockDeviceInfo")),
            opt("tray_open", Ty::Bool),
            opt("io-status", Ty::Named("BlockDeviceIoStatus")),
        ]),
    },
    TypeDef {
        name: "BlockDeviceIoStatus",
        kind: TypeKind::Enum(&["ok", "failed", "nospace"]),
    },
    TypeDef {
        name: "IoOperationType",
        kind: TypeKind::Enum(&["read", "write"]),
    },
    TypeDef {
        name: "BlockErrorAction",
        kind: TypeKind::Enum(&["ignore", "report", "stop"]),
    },
    TypeDef {
        name: "BlockStats",
        kind: TypeKind::Object(&[
            opt("device", Ty::Str),
            opt("qdev", Ty::Str),
            opt("node-name", Ty::Str),
            req("stats", Ty::Any),
            opt("parent", Ty::Named("BlockStats")),
            opt("driver-specific", Ty::Any),
        ]),
    },
    TypeDef {
        name: "BlockDaemonInfo",
        kind: TypeKind::Object(&[req("pid", Ty::Int)]),
    },
    TypeDef {
        name: "NetDaemonInfo",
        kind: TypeKind::Object(&[req("pid", Ty::Int)]),
    },
    TypeDef {
        name: "VmmUpgradeInfo",
        kind: TypeKind::Object(&[req("pid", Ty::Int), req("downtime-us", Ty::Int)]),
    },
    // Snapshots and transaction (issue 13).
    TypeDef {
        name: "SnapshotInfo",
        kind: TypeKind::Object(&[
            req("id", Ty::Str),
            req("name", Ty::Str),
            req("vm-state-size", Ty::Int),
            req("date-sec", Ty::Int),
            req("date-nsec", Ty::Int),
            req("vm-clock-sec", Ty::Int),
            req("vm-clock-nsec", Ty::Int),
            opt("icount", Ty::Int),
        ]),
    },
    TypeDef {
        name: "NewImageMode",
        kind: TypeKind::Enum(&["existing", "absolute-paths"]),
    },
    TypeDef {
        name: "BlockdevSnapshotSync",
        kind: TypeKind::Object(SNAPSHOT_SYNC_MEMBERS),
    },
    TypeDef {
        name: "BlockdevSnapshot",
        kind: TypeKind::Object(SNAPSHOT_MEMBERS),
    },
    TypeDef {
        name: "BlockdevSnapshotWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("BlockdevSnapshot"))]),
    },
    TypeDef {
        name: "BlockdevSnapshotInternal",
        kind: TypeKind::Object(SNAPSHOT_INTERNAL_MEMBERS),
    },
    TypeDef {
        name: "Abort",
        kind: TypeKind::Object(&[]),
    },
    TypeDef {
        name: "AbortWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("Abort"))]),
    },
    TypeDef {
        name: "BlockdevSnapshotSyncWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("BlockdevSnapshotSync"))]),
    },
    TypeDef {
        name: "BlockdevSnapshotInternalWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("BlockdevSnapshotInternal"))]),
    },
    TypeDef {
        name: "BlockDirtyBitmapAdd",
        kind: TypeKind::Object(BITMAP_ADD_MEMBERS),
    },
    TypeDef {
        name: "BlockDirtyBitmap",
        kind: TypeKind::Object(BITMAP_MEMBERS),
    },
    TypeDef {
        name: "BlockDirtyBitmapAddWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("BlockDirtyBitmapAdd"))]),
    },
    TypeDef {
        name: "BlockDirtyBitmapWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("BlockDirtyBitmap"))]),
    },
    TypeDef {
        name: "BlockDirtyBitmapOrStr",
        kind: TypeKind::Alternate(&[Ty::Str, Ty::Named("BlockDirtyBitmap")]),
    },
    TypeDef {
        name: "BlockDirtyBitmapMerge",
        kind: TypeKind::Object(BITMAP_MERGE_MEMBERS),
    },
    TypeDef {
        name: "BlockDirtyBitmapMergeWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("BlockDirtyBitmapMerge"))]),
    },
    TypeDef {
        name: "DriveBackup",
        kind: TypeKind::Object(DRIVE_BACKUP_MEMBERS),
    },
    TypeDef {
        name: "BlockdevBackup",
        kind: TypeKind::Object(BLOCKDEV_BACKUP_MEMBERS),
    },
    TypeDef {
        name: "DriveBackupWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("DriveBackup"))]),
    },
    TypeDef {
        name: "BlockdevBackupWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("BlockdevBackup"))]),
    },
    TypeDef {
        name: "TransactionActionKind",
        kind: TypeKind::Enum(&[
            "abort",
            "block-dirty-bitmap-add",
            "block-dirty-bitmap-clear",
            "block-dirty-bitmap-remove",
            "block-dirty-bitmap-merge",
            "blockdev-backup",
            "blockdev-snapshot",
            "blockdev-snapshot-sync",
            "blockdev-snapshot-internal-sync",
            "drive-backup",
        ]),
    },
    TypeDef {
        name: "TransactionAction",
        kind: TypeKind::Union(Union {
            base: &[req("type", Ty::Named("TransactionActionKind"))],
            tag: "type",
            variants: &[
                ("abort", "AbortWrapper"),
                ("block-dirty-bitmap-add", "BlockDirtyBitmapAddWrapper"),
                ("block-dirty-bitmap-clear", "BlockDirtyBitmapWrapper"),
                ("block-dirty-bitmap-remove", "BlockDirtyBitmapWrapper"),
                ("block-dirty-bitmap-merge", "BlockDirtyBitmapMergeWrapper"),
                ("blockdev-backup", "BlockdevBackupWrapper"),
                ("drive-backup", "DriveBackupWrapper"),
                ("blockdev-snapshot", "BlockdevSnapshotWrapper"),
                ("blockdev-snapshot-sync", "BlockdevSnapshotSyncWrapper"),
                (
                    "blockdev-snapshot-internal-sync",
                    "BlockdevSnapshotInternalWrapper",
                ),
            ],
        }),
    },
    TypeDef {
        name: "ActionCompletionMode",
        kind: TypeKind::Enum(&["individual", "grouped"]),
    },
    TypeDef {
        name: "TransactionProperties",
        kind: TypeKind::Object(&[opt("completion-mode", Ty::Named("ActionCompletionMode"))]),
    },
    // Migration settings (qmp/handlers/migration.rs).
    TypeDef {
        name: "MigrationCapability",
        kind: TypeKind::Enum(Capability::NAMES),
    },
    TypeDef {
        name: "MigrationCapabilityStatus",
        kind: TypeKind::Object(&[
            req("capability", Ty::Named("MigrationCapability")),
            req("state", Ty::Bool),
        ]),
    },
    TypeDef {
        name: "MigrationParameters",
        kind: TypeKind::Object(&migration_parameters(false)),
    },
    TypeDef {
        name: "StrOrNull",
        kind: TypeKind::Alternate(&[Ty::Str, Ty::Null]),
    },
    TypeDef {
        name: "MultiFDCompression",
        kind: TypeKind::Enum(&["none", "zlib", "zstd"]),
    },
    TypeDef {
        name: "BitmapMigrationNodeAlias",
        kind: TypeKind::Object(&[
            req("node-name", Ty::Str),
            req("alias", Ty::Str),
            req(
                "bitmaps",
                Ty::Array(&Ty::Named("BitmapMigrationBitmapAlias")),
            ),
        ]),
    },
    TypeDef {
        name: "BitmapMigrationBitmapAlias",
        kind: TypeKind::Object(&[
            req("name", Ty::Str),
            req("alias", Ty::Str),
            opt(
                "transform",
                Ty::Named("BitmapMigrationBitmapAliasTransform"),
            ),
        ]),
    },
    TypeDef {
        name: "BitmapMigrationBitmapAliasTransform",
        kind: TypeKind::Object(&[opt("persistent", Ty::Bool)]),
    },
    // Migrations (qmp/handlers/migrate.rs).
    TypeDef {
        name: "MigrationStatus",
        kind: TypeKind::Enum(&[
            "none",
            "setup",
            "cancelling",
            "cancelled",
            "active",
            "postcopy-active",
            "postcopy-paused",
            "postcopy-recover",
            "completed",
            "failed",
            "colo",
            "pre-switchover",
            "device",
            "wait-unplug",
        ]),
    },
    TypeDef {
        name: "MigrationInfo",
        kind: TypeKind::Object(&[
            opt("status", Ty::Named("MigrationStatus")),
            opt("ram", Ty::Named("MigrationStats")),
            opt("disk", Ty::Named("MigrationStats")),
            opt("xbzrle-cache", Ty::Named("XBZRLECacheStats")),
            opt("total-time", Ty::Int),
            opt("expected-downtime", Ty::Int),
            opt("downtime", Ty::Int),
            opt("setup-time", Ty::Int),
            opt("cpu-throttle-percentage", Ty::Int),
            opt("error-desc", Ty::Str),
            opt("compression", Ty::Named("CompressionStats")),
        ]),
    },
    TypeDef {
        name: "MigrationStats",
        kind: TypeKind::Object(&[
            req("transferred", Ty::Int),
            req("remaining", Ty::Int),
            req("total", Ty::Int),
            req("duplicate", Ty::Int),
            req("skipped", Ty::Int),
            req("normal", Ty::Int),
            req("normal-bytes", Ty::Int),
            req("dirty-pages-rate", Ty::Int),
            req("mbps", Ty::Number),
            req("dirty-sync-count", Ty::Int),
            req("postcopy-requests", Ty::Int),
            req("page-size", Ty::Int),
            req("multifd-bytes", Ty::Int),
            req("pages-per-second", Ty::Int),
            req("precopy-bytes", Ty::Int),
            req("downtime-bytes", Ty::Int),
            req("postcopy-bytes", Ty::Int),
            req("dirty-sync-missed-zero-copy", Ty::Int),
        ]),
    },
    TypeDef {
        name: "XBZRLECacheStats",
        kind: TypeKind::Object(&[
            req("cache-size", Ty::Int),
            req("bytes", Ty::Int),
            req("pages", Ty::Int),
            req("cache-miss", Ty::Int),
            req("cache-miss-rate", Ty::Number),
            req("encoding-rate", Ty::Number),
            req("overflow", Ty::Int),
        ]),
    },
    TypeDef {
        name: "CompressionStats",
        kind: TypeKind::Object(&[
            req("pages", Ty::Int),
            req("busy", Ty::Int),
            req("busy-rate", Ty::Number),
            req("compressed-size", Ty::Int),
            req("compression-rate", Ty::Number),
        ]),
    },
    // object-add's arguments: QEMU 7.2's ObjectOptions, with branches for the types
    // Flotilla creates (objects/spec.rs refuses the others by name).
    TypeDef {
        name: "ObjectOptions",
        kind: TypeKind::Union(Union {
            base: &[req("qom-type", Ty::Named("ObjectType")), req("id", Ty::Str)],
            tag: "qom-type",
            variants: &[
                ("iothread", "IothreadProperties"),
                ("memory-backend-file", "MemoryBackendFileProperties"),
                ("memory-backend-memfd", "MemoryBackendMemfdProperties"),
                ("memory-backend-ram", "MemoryBackendProperties"),
                ("secret", "SecretProperties"),
            ],
        }),
    },
    TypeDef {
        name: "ObjectType",
        kind: TypeKind::Enum(crate::objects::QEMU_OBJECT_TYPES),
    },
    TypeDef {
        name: "IothreadProperties",
        kind: TypeKind::Object(&[
            opt("aio-max-batch", Ty::Int),
            opt("thread-pool-min", Ty::Int),
            opt("thread-pool-max", Ty::Int),
            opt("poll-max-ns", Ty::Int),
            opt("poll-grow", Ty::Int),
            opt("poll-shrink", Ty::Int),
        ]),
    },
    TypeDef {
        name: "MemoryBackendProperties",
        kind: TypeKind::Object(memory_backend_members!()),
    },
    TypeDef {
        name: "MemoryBackendMemfdProperties",
        kind: TypeKind::Object(memory_backend_members!(
            opt("hugetlb", Ty::Bool),
            opt("hugetlbsize", Ty::Uint),
            opt("seal", Ty::Bool),
        )),
    },
    TypeDef {
        name: "SecretProperties",
        kind: TypeKind::Object(&[
            opt("loaded", Ty::Bool),
            opt("format", Ty::Named("QCryptoSecretFormat")),
            opt("keyid", Ty::Str),
            opt("iv", Ty::Str),
            opt("data", Ty::Str),
            opt("file", Ty::Str),
        ]),
    },
    TypeDef {
        name: "QCryptoSecretFormat",
        kind: TypeKind::Enum(&["raw", "base64"]),
    },
    TypeDef {
        name: "MemoryBackendFileProperties",
        kind: TypeKind::Object(memory_backend_members!(
            opt("align", Ty::Uint),
            opt("discard-data", Ty::Bool),
            req("mem-path", Ty::Str),
            opt("pmem", Ty::Bool),
            opt("readonly", Ty::Bool),
        )),
    },
    TypeDef {
        name: "HostMemPolicy",
        kind: TypeKind::Enum(&["default", "preferred", "bind", "interleave"]),
    },
    TypeDef {
        name: "IOThreadInfo",
        kind: TypeKind::Object(&[
            req("id", Ty::Str),
            req("thread-id", Ty::Int),
            req("poll-max-ns", Ty::Int),
            req("poll-grow", Ty::Int),
            req("poll-shrink", Ty::Int),
            req("aio-max-batch", Ty::Int),
        ]),
    },
    TypeDef {
        name: "Memdev",
        kind: TypeKind::Object(&[
            opt("id", Ty::Str),
            req("size", Ty::Int),
            req("merge", Ty::Bool),
            req("dump", Ty::Bool),
            req("prealloc", Ty::Bool),
            req("share", Ty::Bool),
            opt("reserve", Ty::Bool),
            req("host-nodes", Ty::Array(&Ty::Int)),
            req("policy", Ty::Named("HostMemPolicy")),
        ]),
    },
    // query-memory-devices and query-acpi-ospm-status (ACPI_DEVICE_OST too), QEMU 7.2's.
    TypeDef {
        name: "MemoryDeviceInfo",
        kind: TypeKind::Union(Union {
            base: &[req("type", Ty::Named("MemoryDeviceInfoKind"))],
            tag: "type",
            variants: &[("dimm", "PCDIMMDeviceInfoWrapper")],
        }),
    },
    TypeDef {
        name: "MemoryDeviceInfoKind",
        kind: TypeKind::Enum(&["dimm", "nvdimm", "virtio-pmem", "virtio-mem", "sgx-epc"]),
    },
    TypeDef {
        name: "PCDIMMDeviceInfoWrapper",
        kind: TypeKind::Object(&[req("data", Ty::Named("PCDIMMDeviceInfo"))]),
    },
    TypeDef {
        name: "PCDIMMDeviceInfo",
        kind: TypeKind::Object(&[
            opt("id", Ty::Str),
            req("addr", Ty::Int),
            req("size", Ty::Int),
            req("slot", Ty::Int),
            req("node", Ty::Int),
            req("memdev", Ty::Str),
            req("hotplugged", Ty::Bool),
            req("hotpluggable", Ty::Bool),
        ]),
    },
    TypeDef {
        name: "ACPIOSTInfo",
        kind: TypeKind::Object(&[
            opt("device", Ty::Str),
            req("slot", Ty::Str),
            req("slot-type", Ty::Named("ACPISlotType")),
            req("source", Ty::Int),
            req("status", Ty::Int),
        ]),
    },
    TypeDef {
        name: "ACPISlotType",
        kind: TypeKind::Enum(&["DIMM", "CPU"]),
    },
]);

/// A migration parameter: its name, its type in migrate-set-parameters and its type in
/// query-migrate-parameters' answer.
struct MigrationParameter {
    name: &'static str,
    set: Ty,
    shown: Ty,
}

const fn parameter(name: &'static str, ty: Ty) -> MigrationParameter {
    MigrationParameter {
        name,
        set: ty,
        shown: ty,
    }
}

/// A TLS name: set as a string or null (none), shown as a string.
const fn tls(name: &'static str) -> MigrationParameter {
    MigrationParameter {
        name,
        set: Ty::Named("StrOrNull"),
        shown: Ty::Str,
    }
}

/// QEMU 7.2's migration parameters, in its order.
const MIGRATION_PARAMETERS: [MigrationParameter; 27] = [
    parameter("announce-initial", Ty::Uint),
    parameter("announce-max", Ty::Uint),
    parameter("announce-rounds", Ty::Uint),
    parameter("announce-step", Ty::Uint),
    parameter("compress-level", Ty::U8),
    parameter("compress-threads", Ty::U8),
    parameter("compress-wait-thread", Ty::Bool),
    parameter("decompress-threads", Ty::U8),
    parameter("throttle-trigger-threshold", Ty::U8),
    parameter("cpu-throttle-initial", Ty::U8),
    parameter("cpu-throttle-increment", Ty::U8),
    parameter("cpu-throttle-tailslow", Ty::Bool),
    tls("tls-creds"),
    tls("tls-hostname"),
    tls("tls-authz"),
    parameter("max-bandwidth", Ty::Uint),
    parameter("downtime-limit", Ty::Uint),
    parameter("x-checkpoint-delay", Ty::U32),
    parameter("block-incremental", Ty::Bool),
    parameter("multifd-channels", Ty::U8),
    parameter("xbzrle-cache-size", Ty::Uint),
    parameter("max-postcopy-bandwidth", Ty::Uint),
    parameter("max-cpu-throttle", Ty::U8),
    parameter("multifd-compression", Ty::Named("MultiFDCompression")),
    parameter("multifd-zlib-level", Ty::U8),
    parameter("multifd-zstd-level", Ty::U8),
    parameter(
        "block-bitmap-mapping",
        Ty::Array(&Ty::Named("BitmapMigrationNodeAlias")),
    ),
];

/// The parameters as members, every one optional: as migrate-set-parameters takes them
/// (`set`, QEMU's MigrateSetParameters) or as query-migrate-parameters shows them
/// (MigrationParameters).
const fn migration_parameters(set: bool) -> [Member; MIGRATION_PARAMETERS.len()] {
    let mut members = [opt("", Ty::Any); MIGRATION_PARAMETERS.len()];
    let mut i = 0;
    while i < members.len() {
        let p = &MIGRATION_PARAMETERS[i];
        members[i] = opt(p.name, if set { p.set } else { p.shown });
        i += 1;
    }
    members
}

/// migrate-set-parameters' arguments.
pub const SET_MIGRATION_PARAMETERS_MEMBERS: &[Member] = &migration_parameters(true);

/// blockdev-snapshot-sync's arguments, also a transaction action's data.
pub const SNAPSHOT_SYNC_MEMBERS: &[Member] = &[
    opt("device", Ty::Str),
    opt("node-name", Ty::Str),
    req("snapshot-file", Ty::Str),
    opt("snapshot-node-name", Ty::Str),
    opt("format", Ty::Str),
    opt("mode", Ty::Named("NewImageMode")),
];

/// blockdev-snapshot's arguments, also a transaction action's data.
pub const SNAPSHOT_MEMBERS: &[Member] = &[req("node", Ty::Str), req("overlay", Ty::Str)];

/// blockdev-snapshot-internal-sync's arguments, also a transaction action's data.
pub const SNAPSHOT_INTERNAL_MEMBERS: &[Member] = &[req("device", Ty::Str), req("name", Ty::Str)];

/// block-dirty-bitmap-add's arguments, also a transaction action's data.
pub const BITMAP_ADD_MEMBERS: &[Member] = &[
    req("node", Ty::Str),
    req("name", Ty::Str),
    opt("granularity", Ty::U32),
    opt("persistent", Ty::Bool),
    opt("disabled", Ty::Bool),
];

/// block-dirty-bitmap-remove's and -clear's arguments, also a transaction action's data.
pub const BITMAP_MEMBERS: &[Member] = &[req("node", Ty::Str), req("name", Ty::Str)];

/// block-dirty-bitmap-merge's arguments, also a transaction action's data.
pub const BITMAP_MERGE_MEMBERS: &[Member] = &[
    req("node", Ty::Str),
    req("target", Ty::Str),
    req("bitmaps", Ty::Array(&Ty::Named("BlockDirtyBitmapOrStr"))),
];

/// drive-backup's arguments, also a transaction action's data.
pub const DRIVE_BACKUP_MEMBERS: &[Member] = &[
    opt("job-id", Ty::Str),
    req("device", Ty::Str),
    req("target", Ty::Str),
    opt("format", Ty::Str),
    req("sync", Ty::Named("MirrorSyncMode")),
    opt("mode", Ty::Named("NewImageMode")),
    opt("speed", Ty::Int),
    opt("bitmap", Ty::Str),
    opt("compress", Ty::Bool),
    opt("on-source-error", Ty::Named("BlockdevOnError")),
    opt("on-target-error", Ty::Named("BlockdevOnError")),
    opt("auto-finalize", Ty::Bool),
    opt("auto-dismiss", Ty::Bool),
];

/// blockdev-backup's arguments, also a transaction action's data.
pub const BLOCKDEV_BACKUP_MEMBERS: &[Member] = &[
    opt("job-id", Ty::Str),
    req("device", Ty::Str),
    req("target", Ty::Str),
    req("sync", Ty::Named("MirrorSyncMode")),
    opt("speed", Ty::Int),
    opt("bitmap", Ty::Str),
    opt("compress", Ty::Bool),
    opt("on-source-error", Ty::Named("BlockdevOnError")),
    opt("on-target-error", Ty::Named("BlockdevOnError")),
    opt("auto-finalize", Ty::Bool),
    opt("auto-dismiss", Ty::Bool),
];
