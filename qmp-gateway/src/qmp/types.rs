//! The named QAPI types the commands' arguments and returns use (and the enums the
//! events' data uses), as query-qmp-schema lists them and the argument checker reads
//! them.

use super::qapi::{opt, req, Ty, TypeDef, TypeKind, Types};

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
        name: "CpuInfoFast",
        kind: TypeKind::Object(&[
            req("cpu-index", Ty::Int),
            req("qom-path", Ty::Str),
            req("thread-id", Ty::Int),
            opt("props", Ty::Named("CpuInstanceProperties")),
            req("target", Ty::Str),
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
        name: "VncInfo",
        kind: TypeKind::Object(&[req("enabled", Ty::Bool)]),
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
        name: "InputEvent",
        kind: TypeKind::Object(&[
            req("type", Ty::Named("InputEventKind")),
            req("data", Ty::Any),
        ]),
    },
    TypeDef {
        // QEMU 7.2's input event kinds.
        name: "InputEventKind",
        kind: TypeKind::Enum(&["key", "btn", "rel", "abs"]),
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
]);
