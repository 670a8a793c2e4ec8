//! The one command table: name, arguments, return type, OOB permission, which process
//! serves it, and its handler. Dispatch, argument checking, query-commands,
//! query-qmp-schema and docs/qmp-coverage.md all derive from it.

use std::os::fd::OwnedFd;

use ipc::{VmmReply, VmmRequest};
use serde_json::{json, Map, Value};

use super::protocol::{self, QmpError, QmpResult};
use super::schema::{opt, req, Member, Ty, TypeDef, TypeKind, Types};
use super::{absent, block, hmp, net};
use crate::events::EVENTS;
use crate::fdstore::NamedFds;
use crate::gateway::{ExitReason, Gateway};

/// Which process serves a command (the gateway answers the rest itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Gateway,
    VmmCore,
    /// The daemon of the disk the command names (or each disk's, merged).
    BlockDaemon,
    /// The daemon of the NIC the command names (or each NIC's, merged).
    NetDaemon,
}

/// How far a command is implemented (docs/qmp-coverage.md is checked against this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    Done,
    /// Answered as QEMU answers it when the device does not exist.
    NoDevice,
}

/// Everything a handler may touch.
pub struct Ctx<'a> {
    pub gw: &'a Gateway,
    /// The calling client's named fds.
    pub named_fds: &'a NamedFds,
    /// The fds that arrived with this command (SCM_RIGHTS).
    pub fds: Vec<OwnedFd>,
    /// Set by quit: the gateway ends once the reply is on its way.
    pub exit_after_reply: Option<ExitReason>,
}

impl Ctx<'_> {
    /// The fd sent with the command, as QEMU's getfd/add-fd take it (the first; any
    /// others are closed when the command ends).
    fn take_fd(&mut self) -> Result<OwnedFd, QmpError> {
        if self.fds.is_empty() {
            return Err(QmpError::generic(
                "No file descriptor supplied via SCM_RIGHTS",
            ));
        }
        Ok(self.fds.remove(0))
    }

    pub fn vmm(&self, request: VmmRequest) -> Result<VmmReply, QmpError> {
        Ok(self.gw.vmm.request(request, &[])?)
    }
}

pub type Handler = fn(&mut Ctx, &Map<String, Value>) -> QmpResult;

pub struct Command {
    pub name: &'static str,
    pub args: &'static [Member],
    pub ret: Ty,
    pub allow_oob: bool,
    pub owner: Owner,
    pub coverage: Coverage,
    pub handler: Handler,
}

const fn cmd(
    name: &'static str,
    args: &'static [Member],
    ret: Ty,
    owner: Owner,
    handler: Handler,
) -> Command {
    Command {
        name,
        args,
        ret,
        allow_oob: false,
        owner,
        coverage: Coverage::Done,
        handler,
    }
}

/// The same, allowed out of band (answered from gateway state, never waits).
const fn oob(name: &'static str, args: &'static [Member], ret: Ty, handler: Handler) -> Command {
    Command {
        allow_oob: true,
        ..cmd(name, args, ret, Owner::Gateway, handler)
    }
}

/// A command for a device this VM does not have (see absent.rs).
const fn absent(name: &'static str, args: &'static [Member], ret: Ty, handler: Handler) -> Command {
    Command {
        coverage: Coverage::NoDevice,
        ..cmd(name, args, ret, Owner::Gateway, handler)
    }
}

const EMPTY: Ty = Ty::Named("q_empty");
use Owner::{BlockDaemon as B, Gateway as G, NetDaemon as N, VmmCore as V};

/// block_set_io_throttle's arguments (BlockIOThrottle).
const THROTTLE_ARGS: &[Member] = &[
    opt("device", Ty::Str),
    opt("id", Ty::Str),
    req("bps", Ty::Int),
    req("bps_rd", Ty::Int),
    req("bps_wr", Ty::Int),
    req("iops", Ty::Int),
    req("iops_rd", Ty::Int),
    req("iops_wr", Ty::Int),
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
];

/// blockdev-add's arguments: QEMU 2.x's `options` wrapper, or (today's QEMU) the
/// options themselves; the block layer checks them as QEMU's BlockdevOptions.
const BLOCKDEV_ADD_ARGS: &[Member] = &[
    opt("options", Ty::Any),
    opt("driver", Ty::Any),
    opt("node-name", Ty::Any),
    opt("discard", Ty::Any),
    opt("cache", Ty::Any),
    opt("read-only", Ty::Any),
    opt("auto-read-only", Ty::Any),
    opt("force-share", Ty::Any),
    opt("detect-zeroes", Ty::Any),
    opt("filename", Ty::Any),
    opt("aio", Ty::Any),
    opt("aio-max-batch", Ty::Any),
    opt("locking", Ty::Any),
    opt("drop-cache", Ty::Any),
    opt("x-check-cache-dropped", Ty::Any),
    opt("pr-manager", Ty::Any),
    opt("file", Ty::Any),
    opt("offset", Ty::Any),
    opt("size", Ty::Any),
];

const DEVICE_OR_ID: &[Member] = &[opt("device", Ty::Str), opt("id", Ty::Str)];

pub const COMMANDS: &[Command] = &[
    cmd(
        "qmp_capabilities",
        &[opt("enable", Ty::Array(&Ty::Named("QMPCapability")))],
        EMPTY,
        G,
        qmp_capabilities,
    ),
    oob("query-version", &[], Ty::Named("VersionInfo"), |_, _| {
        Ok(protocol::version())
    }),
    cmd(
        "query-commands",
        &[],
        Ty::Array(&Ty::Named("CommandInfo")),
        G,
        query_commands,
    ),
    cmd(
        "query-events",
        &[],
        Ty::Array(&Ty::Named("EventInfo")),
        G,
        query_events,
    ),
    cmd("query-qmp-schema", &[], Ty::Array(&Ty::Any), G, |_, _| {
        Ok(schema())
    }),
    oob("query-status", &[], Ty::Named("StatusInfo"), query_status),
    cmd("stop", &[], EMPTY, V, |c, _| done(c.vmm(VmmRequest::Stop))),
    cmd("cont", &[], EMPTY, V, |c, _| done(c.vmm(VmmRequest::Cont))),
    cmd("system_reset", &[], EMPTY, V, |c, _| {
        done(c.vmm(VmmRequest::SystemReset))
    }),
    cmd("system_powerdown", &[], EMPTY, V, |c, _| {
        done(c.vmm(VmmRequest::SystemPowerdown))
    }),
    // The platform has no S3 (no \_S3 in the DSDT): there is never a suspended guest.
    cmd("system_wakeup", &[], EMPTY, G, |_, _| {
        Err(QmpError::generic(
            "wake-up from suspend is not supported by this guest",
        ))
    }),
    cmd("quit", &[], EMPTY, G, quit),
    oob("query-kvm", &[], Ty::Named("KvmInfo"), |_, _| {
        Ok(json!({"enabled": true, "present": true}))
    }),
    cmd(
        "query-cpus",
        &[],
        Ty::Array(&Ty::Named("CpuInfo")),
        V,
        query_cpus,
    ),
    cmd(
        "query-cpus-fast",
        &[],
        Ty::Array(&Ty::Named("CpuInfoFast")),
        G,
        query_cpus_fast,
    ),
    oob("query-name", &[], Ty::Named("NameInfo"), query_name),
    oob("query-uuid", &[], Ty::Named("UuidInfo"), |c, _| {
        Ok(json!({"UUID": c.gw.identity.uuid}))
    }),
    cmd("getfd", &[req("fdname", Ty::Str)], EMPTY, G, getfd),
    cmd("closefd", &[req("fdname", Ty::Str)], EMPTY, G, closefd),
    cmd(
        "add-fd",
        &[opt("fdset-id", Ty::Int), opt("opaque", Ty::Str)],
        Ty::Named("AddfdInfo"),
        G,
        add_fd,
    ),
    cmd(
        "remove-fd",
        &[req("fdset-id", Ty::Int), opt("fd", Ty::Int)],
        EMPTY,
        G,
        remove_fd,
    ),
    cmd(
        "query-fdsets",
        &[],
        Ty::Array(&Ty::Named("FdsetInfo")),
        G,
        |c, _| Ok(c.gw.fdsets.query()),
    ),
    cmd("inject-nmi", &[], EMPTY, V, |c, _| {
        done(c.vmm(VmmRequest::InjectNmi))
    }),
    absent(
        "screendump",
        &[
            req("filename", Ty::Str),
            opt("device", Ty::Str),
            opt("head", Ty::Int),
        ],
        EMPTY,
        absent::screendump,
    ),
    absent("query-vnc", &[], Ty::Named("VncInfo"), absent::query_vnc),
    absent(
        "query-spice",
        &[],
        Ty::Named("SpiceInfo"),
        absent::query_spice,
    ),
    absent(
        "set_password",
        &[
            req("protocol", Ty::Named("DisplayProtocol")),
            req("password", Ty::Str),
            opt("connected", Ty::Str),
        ],
        EMPTY,
        absent::set_password,
    ),
    absent(
        "expire_password",
        &[
            req("protocol", Ty::Named("DisplayProtocol")),
            req("time", Ty::Str),
        ],
        EMPTY,
        absent::expire_password,
    ),
    absent(
        "client_migrate_info",
        &[
            req("protocol", Ty::Str),
            req("hostname", Ty::Str),
            opt("port", Ty::Int),
            opt("tls-port", Ty::Int),
            opt("cert-subject", Ty::Str),
        ],
        EMPTY,
        absent::client_migrate_info,
    ),
    absent("balloon", &[req("value", Ty::Int)], EMPTY, absent::balloon),
    absent(
        "query-balloon",
        &[],
        Ty::Named("BalloonInfo"),
        absent::balloon,
    ),
    absent("query-tpm", &[], Ty::Array(&Ty::Any), absent::empty_list),
    absent(
        "query-tpm-models",
        &[],
        Ty::Array(&Ty::Str),
        absent::empty_list,
    ),
    absent(
        "query-tpm-types",
        &[],
        Ty::Array(&Ty::Str),
        absent::empty_list,
    ),
    absent("query-mice", &[], Ty::Array(&Ty::Any), absent::empty_list),
    absent(
        "query-memory-devices",
        &[],
        Ty::Array(&Ty::Any),
        absent::empty_list,
    ),
    absent(
        "query-iothreads",
        &[],
        Ty::Array(&Ty::Any),
        absent::empty_list,
    ),
    absent(
        "query-rocker",
        &[req("name", Ty::Str)],
        Ty::Any,
        absent::rocker,
    ),
    absent(
        "query-rocker-ports",
        &[req("name", Ty::Str)],
        Ty::Array(&Ty::Any),
        absent::rocker,
    ),
    absent(
        "query-rocker-of-dpa-flows",
        &[req("name", Ty::Str), opt("tbl-id", Ty::Int)],
        Ty::Array(&Ty::Any),
        absent::rocker,
    ),
    absent(
        "query-rocker-of-dpa-groups",
        &[req("name", Ty::Str), opt("type", Ty::Int)],
        Ty::Array(&Ty::Any),
        absent::rocker,
    ),
    absent(
        "input-send-event",
        &[
            opt("device", Ty::Str),
            opt("head", Ty::Int),
            req("events", Ty::Array(&Ty::Named("InputEvent"))),
        ],
        EMPTY,
        absent::input_send_event,
    ),
    absent("rtc-reset-reinjection", &[], EMPTY, absent::nothing_to_do),
    absent(
        "xen-set-global-dirty-log",
        &[req("enable", Ty::Bool)],
        EMPTY,
        absent::nothing_to_do,
    ),
    absent(
        "query-acpi-ospm-status",
        &[],
        Ty::Array(&Ty::Any),
        absent::acpi_ospm_status,
    ),
    absent(
        "query-hotpluggable-cpus",
        &[],
        Ty::Array(&Ty::Any),
        absent::hotpluggable_cpus,
    ),
    cmd(
        "query-block",
        &[],
        Ty::Array(&Ty::Named("BlockInfo")),
        G,
        block::query_block,
    ),
    cmd(
        "query-named-block-nodes",
        &[opt("flat", Ty::Bool)],
        Ty::Array(&Ty::Named("BlockDeviceInfo")),
        G,
        block::query_named_block_nodes,
    ),
    cmd(
        "query-blockstats",
        &[opt("query-nodes", Ty::Bool)],
        Ty::Array(&Ty::Named("BlockStats")),
        B,
        block::query_blockstats,
    ),
    cmd(
        "blockdev-add",
        BLOCKDEV_ADD_ARGS,
        EMPTY,
        G,
        block::blockdev_add,
    ),
    cmd(
        "blockdev-del",
        &[req("node-name", Ty::Str)],
        EMPTY,
        G,
        block::blockdev_del,
    ),
    cmd(
        "x-blockdev-del",
        &[req("node-name", Ty::Str)],
        EMPTY,
        G,
        block::blockdev_del,
    ),
    cmd(
        "block_resize",
        &[
            opt("device", Ty::Str),
            opt("node-name", Ty::Str),
            req("size", Ty::Int),
        ],
        EMPTY,
        B,
        block::block_resize,
    ),
    cmd(
        "block_set_io_throttle",
        THROTTLE_ARGS,
        EMPTY,
        B,
        block::block_set_io_throttle,
    ),
    cmd(
        "block-set-write-threshold",
        &[req("node-name", Ty::Str), req("write-threshold", Ty::Int)],
        EMPTY,
        B,
        block::block_set_write_threshold,
    ),
    cmd(
        "block_passwd",
        &[
            opt("device", Ty::Str),
            opt("node-name", Ty::Str),
            req("password", Ty::Str),
        ],
        EMPTY,
        G,
        block::block_passwd,
    ),
    cmd(
        "eject",
        &[
            opt("device", Ty::Str),
            opt("id", Ty::Str),
            opt("force", Ty::Bool),
        ],
        EMPTY,
        G,
        block::not_removable,
    ),
    cmd(
        "change",
        &[
            req("device", Ty::Str),
            req("target", Ty::Str),
            opt("arg", Ty::Str),
        ],
        EMPTY,
        G,
        block::change,
    ),
    cmd(
        "blockdev-change-medium",
        &[
            opt("device", Ty::Str),
            opt("id", Ty::Str),
            req("filename", Ty::Str),
            opt("format", Ty::Str),
            opt("force", Ty::Bool),
            opt("read-only-mode", Ty::Named("BlockdevChangeReadOnlyMode")),
        ],
        EMPTY,
        G,
        block::not_removable,
    ),
    cmd(
        "blockdev-open-tray",
        &[
            opt("device", Ty::Str),
            opt("id", Ty::Str),
            opt("force", Ty::Bool),
        ],
        EMPTY,
        G,
        block::not_removable,
    ),
    cmd(
        "blockdev-close-tray",
        DEVICE_OR_ID,
        EMPTY,
        G,
        block::not_removable,
    ),
    cmd("netdev_add", NETDEV_ADD_ARGS, EMPTY, N, net::netdev_add),
    cmd(
        "netdev_del",
        &[req("id", Ty::Str)],
        EMPTY,
        N,
        net::netdev_del,
    ),
    cmd(
        "set_link",
        &[req("name", Ty::Str), req("up", Ty::Bool)],
        EMPTY,
        N,
        net::set_link,
    ),
    cmd(
        "query-rx-filter",
        &[opt("name", Ty::Str)],
        Ty::Array(&Ty::Named("RxFilterInfo")),
        N,
        net::query_rx_filter,
    ),
    cmd(
        "blockdev-remove-medium",
        DEVICE_OR_ID,
        EMPTY,
        G,
        block::not_removable,
    ),
    cmd(
        "x-blockdev-remove-medium",
        DEVICE_OR_ID,
        EMPTY,
        G,
        block::not_removable,
    ),
    cmd(
        "blockdev-insert-medium",
        &[
            opt("device", Ty::Str),
            opt("id", Ty::Str),
            req("node-name", Ty::Str),
        ],
        EMPTY,
        G,
        block::insert_medium,
    ),
    cmd(
        "x-blockdev-insert-medium",
        &[
            opt("device", Ty::Str),
            opt("id", Ty::Str),
            req("node-name", Ty::Str),
        ],
        EMPTY,
        G,
        block::insert_medium,
    ),
    cmd(
        "x-blockdev-change",
        &[
            req("parent", Ty::Str),
            opt("child", Ty::Str),
            opt("node", Ty::Str),
        ],
        EMPTY,
        G,
        block::x_blockdev_change,
    ),
    cmd(
        "__io.flotilla_block-daemon-restart",
        &[
            opt("device", Ty::Str),
            opt("id", Ty::Str),
            opt("binary", Ty::Str),
        ],
        Ty::Named("BlockDaemonInfo"),
        G,
        block::block_daemon_restart,
    ),
    cmd(
        "human-monitor-command",
        &[req("command-line", Ty::Str), opt("cpu-index", Ty::Int)],
        Ty::Str,
        G,
        hmp::human_monitor_command,
    ),
];

/// netdev_add's arguments: type and id, then the options of every backend type we
/// serve (the network layer checks them per type, as QEMU's Netdev union does).
const NETDEV_ADD_ARGS: &[Member] = &[
    req("type", Ty::Str),
    req("id", Ty::Str),
    opt("ifname", Ty::Any),
    opt("fd", Ty::Any),
    opt("queues", Ty::Any),
    opt("script", Ty::Any),
    opt("downscript", Ty::Any),
    opt("vhost", Ty::Any),
    opt("vnet_hdr", Ty::Any),
    opt("udp", Ty::Any),
    opt("localaddr", Ty::Any),
    opt("local", Ty::Any),
    opt("remote", Ty::Any),
];

/// Named types the commands and events use.
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
        kind: TypeKind::Object(&[req("type", Ty::Str), req("data", Ty::Any)]),
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
            opt("io-status", Ty::Str),
        ]),
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
        name: "q_obj_BLOCK_WRITE_THRESHOLD-arg",
        kind: TypeKind::Object(&[
            req("node-name", Ty::Str),
            req("amount-exceeded", Ty::Int),
            req("write-threshold", Ty::Int),
        ]),
    },
    TypeDef {
        name: "BlockDaemonInfo",
        kind: TypeKind::Object(&[req("pid", Ty::Int)]),
    },
    TypeDef {
        name: "q_obj_BLOCK_DAEMON_EXITED-arg",
        kind: TypeKind::Object(&[
            req("device", Ty::Str),
            opt("pid", Ty::Int),
            req("reason", Ty::Str),
            opt("restart-in-ms", Ty::Int),
        ]),
    },
    TypeDef {
        name: "q_obj_BLOCK_DAEMON_RESTARTED-arg",
        kind: TypeKind::Object(&[req("device", Ty::Str), req("pid", Ty::Int)]),
    },
    TypeDef {
        name: "q_obj_SHUTDOWN-arg",
        kind: TypeKind::Object(&[
            req("guest", Ty::Bool),
            req("reason", Ty::Named("ShutdownCause")),
        ]),
    },
]);

pub fn find(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

fn done(reply: Result<VmmReply, QmpError>) -> QmpResult {
    reply.map(|_| json!({}))
}

fn str_arg<'a>(args: &'a Map<String, Value>, name: &str) -> &'a str {
    // Arguments were checked against the table before the handler runs.
    args.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn int_arg(args: &Map<String, Value>, name: &str) -> Option<i64> {
    args.get(name).and_then(Value::as_i64)
}

fn qmp_capabilities(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    // Before negotiation the session handles this command itself.
    Err(QmpError::not_found(
        "Capabilities negotiation is already complete, command ignored",
    ))
}

fn query_commands(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Ok(COMMANDS.iter().map(|c| json!({"name": c.name})).collect())
}

fn query_events(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Ok(EVENTS.iter().map(|e| json!({"name": e.name})).collect())
}

pub fn status_info(gw: &Gateway) -> Value {
    let state = gw.run_state();
    json!({
        "running": state == ipc::RunState::Running,
        "singlestep": false,
        "status": state.qmp_name(),
    })
}

fn query_status(c: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Ok(status_info(c.gw))
}

fn quit(c: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    c.exit_after_reply = Some(ExitReason::Quit);
    Ok(json!({}))
}

pub fn qom_path(index: u32) -> String {
    format!("/machine/unattached/device[{index}]")
}

fn query_cpus(c: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    let VmmReply::Cpus(cpus) = c.vmm(VmmRequest::QueryCpus)? else {
        return Err(QmpError::generic(
            "vmm-core answered query-cpus with something else",
        ));
    };
    Ok(cpus
        .iter()
        .map(|cpu| {
            json!({
                "CPU": cpu.index,
                "current": cpu.index == 0,
                "halted": cpu.halted,
                "qom_path": qom_path(cpu.index),
                "thread_id": c.gw.host_tid(cpu.thread_id),
                "arch": "x86",
                "pc": cpu.pc,
            })
        })
        .collect())
}

fn query_cpus_fast(c: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    // One package of N cores with one thread each, as vmm-core's CPUID describes it.
    Ok(c.gw
        .vcpus()
        .iter()
        .map(|v| {
            json!({
                "cpu-index": v.index,
                "qom-path": qom_path(v.index),
                "thread-id": v.thread_id,
                "props": {"socket-id": 0, "core-id": v.index, "thread-id": 0},
                "target": "x86_64",
            })
        })
        .collect())
}

fn query_name(c: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Ok(match &c.gw.identity.name {
        Some(n) => json!({"name": n}),
        None => json!({}),
    })
}

fn getfd(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    let fd = c.take_fd()?;
    c.named_fds.insert(str_arg(args, "fdname"), fd)?;
    Ok(json!({}))
}

fn closefd(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.named_fds.close(str_arg(args, "fdname"))?;
    Ok(json!({}))
}

fn add_fd(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    let fd = c.take_fd()?;
    let opaque = args
        .get("opaque")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (id, number) = c.gw.fdsets.add(int_arg(args, "fdset-id"), fd, opaque)?;
    Ok(json!({"fdset-id": id, "fd": number}))
}

fn remove_fd(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    let id = int_arg(args, "fdset-id").unwrap_or_default();
    c.gw.fdsets.remove(id, int_arg(args, "fd"))?;
    Ok(json!({}))
}

/// query-qmp-schema: every command, event and type, in QEMU's SchemaInfo form.
pub fn schema() -> Value {
    use super::schema::{builtin_json_type, members_schema, schema_name};
    let mut out: Vec<Value> = Vec::new();
    let mut arrays: Vec<Ty> = Vec::new();
    let note = |ty: Ty, arrays: &mut Vec<Ty>| {
        if let Ty::Array(_) = ty {
            if !arrays.contains(&ty) {
                arrays.push(ty);
            }
        }
    };
    for c in COMMANDS {
        let arg_type = format!("q_obj_{}-arg", c.name);
        let mut info = json!({
            "name": c.name,
            "meta-type": "command",
            "arg-type": arg_type,
            "ret-type": schema_name(c.ret),
        });
        if c.allow_oob {
            info["allow-oob"] = json!(true);
        }
        out.push(info);
        out.push(
            json!({"name": arg_type, "meta-type": "object", "members": members_schema(c.args)}),
        );
        note(c.ret, &mut arrays);
        c.args.iter().for_each(|m| note(m.ty, &mut arrays));
    }
    for e in EVENTS {
        out.push(json!({"name": e.name, "meta-type": "event", "arg-type": e.arg_type}));
    }
    for t in TYPES.0 {
        match t.kind {
            TypeKind::Object(members) => {
                members.iter().for_each(|m| note(m.ty, &mut arrays));
                out.push(json!({"name": t.name, "meta-type": "object", "members": members_schema(members)}));
            }
            TypeKind::Enum(values) => out.push(json!({
                "name": t.name,
                "meta-type": "enum",
                "values": values,
                "members": values.iter().map(|v| json!({"name": v})).collect::<Vec<_>>(),
            })),
        }
    }
    for a in arrays {
        if let Ty::Array(elem) = a {
            out.push(json!({"name": schema_name(a), "meta-type": "array", "element-type": schema_name(*elem)}));
        }
    }
    for b in [Ty::Str, Ty::Int, Ty::Bool, Ty::Number, Ty::Any, Ty::Null] {
        out.push(json!({
            "name": schema_name(b),
            "meta-type": "builtin",
            "json-type": builtin_json_type(b),
        }));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique() {
        let mut seen = HashSet::new();
        assert!(COMMANDS.iter().all(|c| seen.insert(c.name)));
    }

    #[test]
    fn schema_is_closed() {
        // Every type a command, event or member names is defined in the schema.
        let schema = schema();
        let entries = schema.as_array().unwrap();
        let defined: HashSet<&str> = entries
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        for e in entries {
            for key in ["arg-type", "ret-type", "element-type"] {
                if let Some(t) = e.get(key) {
                    assert!(
                        defined.contains(t.as_str().unwrap()),
                        "{key} {t} of {}",
                        e["name"]
                    );
                }
            }
            if let Some(members) = e.get("members").and_then(|m| m.as_array()) {
                for m in members.iter().filter_map(|m| m.get("type")) {
                    assert!(
                        defined.contains(m.as_str().unwrap()),
                        "member type {m} of {}",
                        e["name"]
                    );
                }
            }
        }
    }
}
