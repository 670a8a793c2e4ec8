//! The one command table: for each command its name, its typed handler (which brings
//! its argument type), its return type, the process that serves it, its coverage and
//! whether it may run out of band. Dispatch, argument checking, query-commands,
//! query-qmp-schema and docs/qmp-coverage.md all derive from it.

use super::args::NoArgs;
pub use super::context::{Command, Coverage, Owner};
use super::context::{Handler, Typed};
use super::handlers::balloon;
use super::handlers::chardev;
use super::handlers::command_line;
use super::handlers::cpu_models;
use super::handlers::cpus;
use super::handlers::devices;
use super::handlers::dump;
use super::handlers::input;
use super::handlers::machine_types;
use super::handlers::memory;
use super::handlers::qom;
use super::handlers::qom_tree;
use super::handlers::{
    absent, bitmaps, block, fds, hmp, jobs, machine, migrate, migration, net, objects, pci,
    snapshot, trace,
};
use super::qapi::Ty;

const fn cmd(name: &'static str, handler: &'static dyn Handler, ret: Ty, owner: Owner) -> Command {
    Command {
        name,
        handler,
        ret,
        allow_oob: false,
        owner,
        coverage: Coverage::Done,
    }
}

/// The same, allowed out of band (answered from gateway state, never waits).
const fn oob(name: &'static str, handler: &'static dyn Handler, ret: Ty) -> Command {
    Command {
        allow_oob: true,
        ..cmd(name, handler, ret, Owner::Gateway)
    }
}

/// A command implemented with limits (docs/qmp-coverage.md says which).
const fn partly(
    name: &'static str,
    handler: &'static dyn Handler,
    ret: Ty,
    owner: Owner,
) -> Command {
    Command {
        coverage: Coverage::Partly,
        ..cmd(name, handler, ret, owner)
    }
}

/// A command for a device this VM does not have (see handlers/absent.rs).
const fn absent(name: &'static str, handler: &'static dyn Handler, ret: Ty) -> Command {
    Command {
        coverage: Coverage::NoDevice,
        ..cmd(name, handler, ret, Owner::Gateway)
    }
}

const EMPTY: Ty = Ty::Named("q_empty");
const ANY_LIST: Ty = Ty::Array(&Ty::Any);
use Owner::{BlockDaemon as B, Gateway as G, NetDaemon as N, VmmCore as V};

pub const COMMANDS: &[Command] = &[
    cmd(
        "qmp_capabilities",
        &Typed(machine::qmp_capabilities),
        EMPTY,
        G,
    ),
    oob(
        "query-version",
        &Typed(machine::query_version),
        Ty::Named("VersionInfo"),
    ),
    cmd(
        "query-commands",
        &Typed(machine::query_commands),
        Ty::Array(&Ty::Named("CommandInfo")),
        G,
    ),
    cmd(
        "query-events",
        &Typed(machine::query_events),
        Ty::Array(&Ty::Named("EventInfo")),
        G,
    ),
    cmd(
        "query-qmp-schema",
        &Typed(machine::query_qmp_schema),
        ANY_LIST,
        G,
    ),
    oob(
        "query-status",
        &Typed(machine::query_status),
        Ty::Named("StatusInfo"),
    ),
    cmd("stop", &Typed(machine::stop), EMPTY, V),
    cmd("cont", &Typed(machine::cont), EMPTY, V),
    cmd("system_reset", &Typed(machine::system_reset), EMPTY, V),
    cmd(
        "system_powerdown",
        &Typed(machine::system_powerdown),
        EMPTY,
        V,
    ),
    cmd("system_wakeup", &Typed(machine::system_wakeup), EMPTY, G),
    cmd("quit", &Typed(machine::quit), EMPTY, G),
    cmd(
        "chardev-add",
        &Typed(chardev::chardev_add),
        Ty::Named("ChardevReturn"),
        G,
    ),
    cmd("chardev-remove", &Typed(chardev::chardev_remove), EMPTY, G),
    cmd(
        "query-chardev",
        &Typed(chardev::query_chardev),
        Ty::Array(&Ty::Named("ChardevInfo")),
        G,
    ),
    cmd(
        "query-chardev-backends",
        &Typed(chardev::query_chardev_backends),
        Ty::Array(&Ty::Named("ChardevBackendInfo")),
        G,
    ),
    cmd("ringbuf-write", &Typed(chardev::ringbuf_write), EMPTY, G),
    cmd("ringbuf-read", &Typed(chardev::ringbuf_read), Ty::Str, G),
    cmd("add_client", &Typed(chardev::add_client), EMPTY, G),
    oob(
        "query-kvm",
        &Typed(machine::query_kvm),
        Ty::Named("KvmInfo"),
    ),
    cmd(
        "query-target",
        &Typed(machine_types::query_target),
        Ty::Named("TargetInfo"),
        G,
    ),
    cmd(
        "query-machines",
        &Typed(machine_types::query_machines),
        Ty::Array(&Ty::Named("MachineInfo")),
        G,
    ),
    cmd(
        "query-cpu-definitions",
        &Typed(cpu_models::query_cpu_definitions),
        Ty::Array(&Ty::Named("CpuDefinitionInfo")),
        G,
    ),
    absent(
        "query-sev-capabilities",
        &Typed(absent::query_sev_capabilities),
        Ty::Named("SevCapability"),
    ),
    absent(
        "query-sgx-capabilities",
        &Typed(absent::query_sgx_capabilities),
        Ty::Named("SGXInfo"),
    ),
    cmd(
        "qom-list-types",
        &Typed(qom::qom_list_types),
        Ty::Array(&Ty::Named("ObjectTypeInfo")),
        G,
    ),
    cmd(
        "device-list-properties",
        &Typed(qom::device_list_properties),
        Ty::Array(&Ty::Named("ObjectPropertyInfo")),
        G,
    ),
    cmd(
        "qom-list-properties",
        &Typed(qom::qom_list_properties),
        Ty::Array(&Ty::Named("ObjectPropertyInfo")),
        G,
    ),
    cmd(
        "query-cpu-model-expansion",
        &Typed(cpu_models::query_cpu_model_expansion),
        Ty::Named("CpuModelExpansionInfo"),
        G,
    ),
    cmd(
        "qom-list",
        &Typed(qom_tree::qom_list),
        Ty::Array(&Ty::Named("ObjectPropertyInfo")),
        G,
    ),
    cmd("qom-get", &Typed(qom_tree::qom_get), Ty::Any, G),
    cmd(
        "query-cpus",
        &Typed(machine::query_cpus),
        Ty::Array(&Ty::Named("CpuInfo")),
        V,
    ),
    cmd(
        "query-cpus-fast",
        &Typed(machine::query_cpus_fast),
        Ty::Array(&Ty::Named("CpuInfoFast")),
        G,
    ),
    cmd(
        "query-pci",
        &Typed(pci::query_pci),
        Ty::Array(&Ty::Named("PciInfo")),
        V,
    ),
    partly("device_add", &devices::DeviceAdd, EMPTY, G),
    cmd("cpu-add", &Typed(cpus::cpu_add), EMPTY, V),
    cmd("cpu", &Typed(cpus::cpu), EMPTY, G),
    cmd("device_del", &Typed(devices::device_del), EMPTY, G),
    cmd(
        "query-command-line-options",
        &Typed(command_line::query_command_line_options),
        Ty::Array(&Ty::Named("CommandLineOptionInfo")),
        G,
    ),
    oob(
        "query-name",
        &Typed(machine::query_name),
        Ty::Named("NameInfo"),
    ),
    oob(
        "query-uuid",
        &Typed(machine::query_uuid),
        Ty::Named("UuidInfo"),
    ),
    cmd("getfd", &Typed(fds::getfd), EMPTY, G),
    cmd("closefd", &Typed(fds::closefd), EMPTY, G),
    cmd("add-fd", &Typed(fds::add_fd), Ty::Named("AddfdInfo"), G),
    cmd("remove-fd", &Typed(fds::remove_fd), EMPTY, G),
    cmd(
        "query-fdsets",
        &Typed(fds::query_fdsets),
        Ty::Array(&Ty::Named("FdsetInfo")),
        G,
    ),
    cmd("inject-nmi", &Typed(machine::inject_nmi), EMPTY, V),
    cmd(
        "dump-guest-memory",
        &Typed(dump::dump_guest_memory),
        EMPTY,
        V,
    ),
    cmd(
        "query-dump",
        &Typed(dump::query_dump),
        Ty::Named("DumpQueryResult"),
        V,
    ),
    cmd(
        "query-dump-guest-memory-capability",
        &Typed(dump::query_dump_guest_memory_capability),
        Ty::Named("DumpGuestMemoryCapability"),
        G,
    ),
    cmd("memsave", &Typed(dump::memsave), EMPTY, V),
    cmd("pmemsave", &Typed(dump::pmemsave), EMPTY, V),
    absent("screendump", &Typed(absent::screendump), EMPTY),
    absent(
        "query-spice",
        &Typed(absent::query_spice),
        Ty::Named("SpiceInfo"),
    ),
    absent("set_password", &Typed(absent::set_password), EMPTY),
    absent("expire_password", &Typed(absent::expire_password), EMPTY),
    absent(
        "client_migrate_info",
        &Typed(absent::client_migrate_info),
        EMPTY,
    ),
    cmd("balloon", &Typed(balloon::balloon), EMPTY, V),
    cmd(
        "query-balloon",
        &Typed(balloon::query_balloon),
        Ty::Named("BalloonInfo"),
        V,
    ),
    absent("query-tpm", &Typed(absent::empty_list), ANY_LIST),
    absent(
        "query-tpm-models",
        &Typed(absent::empty_list),
        Ty::Array(&Ty::Str),
    ),
    absent(
        "query-tpm-types",
        &Typed(absent::empty_list),
        Ty::Array(&Ty::Str),
    ),
    cmd(
        "query-mice",
        &Typed(input::query_mice),
        Ty::Array(&Ty::Named("MouseInfo")),
        G,
    ),
    cmd("send-key", &Typed(input::send_key), EMPTY, V),
    cmd(
        "query-memory-devices",
        &Typed(memory::query_memory_devices),
        Ty::Array(&Ty::Named("MemoryDeviceInfo")),
        G,
    ),
    cmd(
        "query-iothreads",
        &Typed(objects::query_iothreads),
        Ty::Array(&Ty::Named("IOThreadInfo")),
        G,
    ),
    absent(
        "query-rocker",
        &Typed(absent::rocker::<absent::Rocker>),
        Ty::Any,
    ),
    absent(
        "query-rocker-ports",
        &Typed(absent::rocker::<absent::Rocker>),
        ANY_LIST,
    ),
    absent(
        "query-rocker-of-dpa-flows",
        &Typed(absent::rocker::<absent::RockerFlows>),
        ANY_LIST,
    ),
    absent(
        "query-rocker-of-dpa-groups",
        &Typed(absent::rocker::<absent::RockerGroups>),
        ANY_LIST,
    ),
    cmd(
        "input-send-event",
        &Typed(input::input_send_event),
        EMPTY,
        V,
    ),
    absent(
        "rtc-reset-reinjection",
        &Typed(absent::nothing_to_do::<NoArgs>),
        EMPTY,
    ),
    absent(
        "xen-set-global-dirty-log",
        &Typed(absent::nothing_to_do::<absent::XenSetGlobalDirtyLog>),
        EMPTY,
    ),
    cmd(
        "query-acpi-ospm-status",
        &Typed(memory::query_acpi_ospm_status),
        Ty::Array(&Ty::Named("ACPIOSTInfo")),
        V,
    ),
    cmd(
        "query-hotpluggable-cpus",
        &Typed(cpus::query_hotpluggable_cpus),
        Ty::Array(&Ty::Named("HotpluggableCPU")),
        G,
    ),
    cmd(
        "query-block",
        &Typed(block::query_block),
        Ty::Array(&Ty::Named("BlockInfo")),
        G,
    ),
    cmd(
        "query-named-block-nodes",
        &Typed(block::query_named_block_nodes),
        Ty::Array(&Ty::Named("BlockDeviceInfo")),
        G,
    ),
    cmd(
        "query-blockstats",
        &Typed(block::query_blockstats),
        Ty::Array(&Ty::Named("BlockStats")),
        B,
    ),
    cmd("blockdev-add", &Typed(block::blockdev_add), EMPTY, G),
    cmd("blockdev-del", &Typed(block::blockdev_del), EMPTY, G),
    cmd("x-blockdev-del", &Typed(block::blockdev_del), EMPTY, G),
    cmd("block_resize", &Typed(block::block_resize), EMPTY, B),
    cmd(
        "blockdev-snapshot",
        &Typed(snapshot::blockdev_snapshot),
        EMPTY,
        B,
    ),
    cmd(
        "blockdev-snapshot-sync",
        &Typed(snapshot::blockdev_snapshot_sync),
        EMPTY,
        B,
    ),
    cmd(
        "blockdev-snapshot-internal-sync",
        &Typed(snapshot::blockdev_snapshot_internal_sync),
        EMPTY,
        B,
    ),
    cmd(
        "blockdev-snapshot-delete-internal-sync",
        &Typed(snapshot::blockdev_snapshot_delete_internal_sync),
        Ty::Named("SnapshotInfo"),
        B,
    ),
    cmd("transaction", &Typed(snapshot::transaction), EMPTY, B),
    cmd("drive-mirror", &Typed(jobs::drive_mirror), EMPTY, B),
    cmd("blockdev-mirror", &Typed(jobs::blockdev_mirror), EMPTY, B),
    cmd("drive-backup", &Typed(jobs::drive_backup), EMPTY, B),
    cmd("blockdev-backup", &Typed(jobs::blockdev_backup), EMPTY, B),
    cmd("block-stream", &Typed(jobs::block_stream), EMPTY, B),
    cmd("block-commit", &Typed(jobs::block_commit), EMPTY, B),
    cmd(
        "query-block-jobs",
        &Typed(jobs::query_block_jobs),
        Ty::Array(&Ty::Named("BlockJobInfo")),
        B,
    ),
    cmd(
        "query-jobs",
        &Typed(jobs::query_jobs),
        Ty::Array(&Ty::Named("JobInfo")),
        B,
    ),
    partly("blockdev-create", &Typed(jobs::blockdev_create), EMPTY, G),
    cmd("job-cancel", &Typed(jobs::job_cancel), EMPTY, B),
    cmd("job-pause", &Typed(jobs::job_pause), EMPTY, B),
    cmd("job-resume", &Typed(jobs::job_resume), EMPTY, B),
    cmd("job-complete", &Typed(jobs::job_complete), EMPTY, B),
    cmd("job-finalize", &Typed(jobs::job_finalize), EMPTY, G),
    cmd("job-dismiss", &Typed(jobs::job_dismiss), EMPTY, G),
    cmd("block-job-pause", &Typed(jobs::block_job_pause), EMPTY, B),
    cmd("block-job-resume", &Typed(jobs::block_job_resume), EMPTY, B),
    cmd("block-job-cancel", &Typed(jobs::block_job_cancel), EMPTY, B),
    cmd(
        "block-job-complete",
        &Typed(jobs::block_job_complete),
        EMPTY,
        B,
    ),
    cmd(
        "block-job-set-speed",
        &Typed(jobs::block_job_set_speed),
        EMPTY,
        B,
    ),
    partly(
        "block-dirty-bitmap-add",
        &Typed(bitmaps::block_dirty_bitmap_add),
        EMPTY,
        B,
    ),
    cmd(
        "block-dirty-bitmap-remove",
        &Typed(bitmaps::block_dirty_bitmap_remove),
        EMPTY,
        B,
    ),
    cmd(
        "block-dirty-bitmap-clear",
        &Typed(bitmaps::block_dirty_bitmap_clear),
        EMPTY,
        B,
    ),
    cmd(
        "block-dirty-bitmap-merge",
        &Typed(bitmaps::block_dirty_bitmap_merge),
        EMPTY,
        B,
    ),
    cmd(
        "change-backing-file",
        &Typed(snapshot::change_backing_file),
        EMPTY,
        B,
    ),
    cmd(
        "block_set_io_throttle",
        &Typed(block::block_set_io_throttle),
        EMPTY,
        B,
    ),
    cmd(
        "block-set-write-threshold",
        &Typed(block::block_set_write_threshold),
        EMPTY,
        B,
    ),
    cmd("block_passwd", &Typed(block::block_passwd), EMPTY, G),
    cmd("eject", &Typed(block::eject), EMPTY, G),
    cmd("change", &Typed(block::change), EMPTY, G),
    cmd(
        "blockdev-change-medium",
        &Typed(block::change_medium),
        EMPTY,
        G,
    ),
    cmd("blockdev-open-tray", &Typed(block::open_tray), EMPTY, G),
    cmd("blockdev-close-tray", &Typed(block::close_tray), EMPTY, G),
    partly("object-add", &Typed(objects::object_add), EMPTY, G),
    cmd("object-del", &Typed(objects::object_del), EMPTY, G),
    cmd(
        "query-memdev",
        &Typed(objects::query_memdev),
        Ty::Array(&Ty::Named("Memdev")),
        G,
    ),
    cmd("netdev_add", &Typed(net::netdev_add), EMPTY, N),
    cmd("netdev_del", &Typed(net::netdev_del), EMPTY, N),
    cmd("set_link", &Typed(net::set_link), EMPTY, N),
    cmd(
        "query-rx-filter",
        &Typed(net::query_rx_filter),
        Ty::Array(&Ty::Named("RxFilterInfo")),
        N,
    ),
    cmd(
        "blockdev-remove-medium",
        &Typed(block::remove_medium),
        EMPTY,
        G,
    ),
    cmd(
        "x-blockdev-remove-medium",
        &Typed(block::remove_medium),
        EMPTY,
        G,
    ),
    cmd(
        "blockdev-insert-medium",
        &Typed(block::insert_medium),
        EMPTY,
        G,
    ),
    cmd(
        "x-blockdev-insert-medium",
        &Typed(block::insert_medium),
        EMPTY,
        G,
    ),
    cmd(
        "x-blockdev-change",
        &Typed(block::x_blockdev_change),
        EMPTY,
        G,
    ),
    cmd(
        "__io.flotilla_block-daemon-restart",
        &Typed(block::block_daemon_restart),
        Ty::Named("BlockDaemonInfo"),
        G,
    ),
    cmd(
        "__io.flotilla_net-daemon-restart",
        &Typed(net::net_daemon_restart),
        Ty::Named("NetDaemonInfo"),
        G,
    ),
    partly(
        "migrate-set-capabilities",
        &Typed(migration::migrate_set_capabilities),
        EMPTY,
        G,
    ),
    cmd(
        "query-migrate-capabilities",
        &Typed(migration::query_migrate_capabilities),
        Ty::Array(&Ty::Named("MigrationCapabilityStatus")),
        G,
    ),
    cmd(
        "migrate-set-parameters",
        &Typed(migration::migrate_set_parameters),
        EMPTY,
        G,
    ),
    cmd(
        "query-migrate-parameters",
        &Typed(migration::query_migrate_parameters),
        Ty::Named("MigrationParameters"),
        G,
    ),
    cmd(
        "migrate-set-cache-size",
        &Typed(migration::migrate_set_cache_size),
        EMPTY,
        G,
    ),
    cmd(
        "query-migrate-cache-size",
        &Typed(migration::query_migrate_cache_size),
        Ty::Int,
        G,
    ),
    cmd(
        "migrate_set_speed",
        &Typed(migration::migrate_set_speed),
        EMPTY,
        G,
    ),
    cmd(
        "migrate_set_downtime",
        &Typed(migration::migrate_set_downtime),
        EMPTY,
        G,
    ),
    // migrate (uri, blk, inc, detach: all of the spec's) and migrate-start-postcopy
    // (docs/qmp-coverage.md, docs/migration-stream.md).
    cmd("migrate", &Typed(migrate::migrate), EMPTY, G),
    cmd(
        "migrate-incoming",
        &Typed(migrate::migrate_incoming),
        EMPTY,
        G,
    ),
    cmd("migrate_cancel", &Typed(migrate::migrate_cancel), EMPTY, G),
    // Not in the spec's list: QEMU's, for pause-before-switchover (libvirt's migrations).
    cmd(
        "migrate-continue",
        &Typed(migrate::migrate_continue),
        EMPTY,
        G,
    ),
    cmd(
        "__io.flotilla_vmm-upgrade",
        &Typed(migrate::vmm_upgrade),
        Ty::Named("VmmUpgradeInfo"),
        G,
    ),
    cmd(
        "query-migrate",
        &Typed(migrate::query_migrate),
        Ty::Named("MigrationInfo"),
        G,
    ),
    cmd(
        "migrate-start-postcopy",
        &Typed(migrate::migrate_start_postcopy),
        EMPTY,
        G,
    ),
    cmd(
        "xen-save-devices-state",
        &Typed(migrate::xen_save_devices_state),
        EMPTY,
        V,
    ),
    cmd(
        "xen-load-devices-state",
        &Typed(migrate::xen_load_devices_state),
        EMPTY,
        V,
    ),
    cmd(
        "human-monitor-command",
        &Typed(hmp::human_monitor_command),
        Ty::Str,
        G,
    ),
    cmd(
        "trace-event-get-state",
        &Typed(trace::trace_event_get_state),
        Ty::Array(&Ty::Named("TraceEventInfo")),
        G,
    ),
    cmd(
        "trace-event-set-state",
        &Typed(trace::trace_event_set_state),
        EMPTY,
        G,
    ),
];

pub fn find(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EVENTS;
    use crate::qmp::qapi::{Member, TypeKind};
    use crate::qmp::schema;
    use crate::qmp::types::TYPES;
    use serde_json::{json, Map, Value};
    use std::collections::HashSet;

    #[test]
    fn names_are_unique() {
        let mut seen = HashSet::new();
        assert!(COMMANDS.iter().all(|c| seen.insert(c.name)));
    }

    #[test]
    fn schema_is_closed() {
        // Every type a command, event or member names is defined in the schema.
        let schema = schema::build(COMMANDS, EVENTS, &TYPES);
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

    /// A valid value of `ty`.
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
                Some(TypeKind::Object(members)) => Value::Object(arguments(members, true)),
                Some(TypeKind::Union(u)) => {
                    let (case, branch) = u.variants[0];
                    let mut value = arguments(u.base, true);
                    value.insert(u.tag.into(), json!(case));
                    if let Value::Object(more) = sample(Ty::Named(branch)) {
                        value.extend(more);
                    }
                    Value::Object(value)
                }
                Some(TypeKind::Alternate(types)) => sample(types[0]),
                None => panic!("unknown type {name}"),
            },
        }
    }

    /// Arguments with every member (`all`) or only the required ones.
    fn arguments(members: &[Member], all: bool) -> Map<String, Value> {
        members
            .iter()
            .filter(|m| all || !m.optional)
            .map(|m| (m.name.to_string(), sample(m.ty)))
            .collect()
    }

    #[test]
    fn every_hmp_command_runs_a_command_that_needs_no_arguments() {
        for h in hmp::HMP {
            let hmp::Run::Qmp(qmp, _) = h.run else {
                continue;
            };
            let command = find(qmp).unwrap_or_else(|| panic!("{}: no {qmp}", h.name));
            assert!(
                command.args().iter().all(|m| m.optional),
                "{}: {qmp} needs arguments",
                h.name
            );
        }
    }

    #[test]
    fn every_argument_type_reads_exactly_its_members() {
        for c in COMMANDS {
            let members: Vec<&str> = c.args().iter().map(|m| m.name).collect();
            let Some(fields) = c.handler.serde_fields() else {
                // Read by hand (blockdev-add, netdev_add): their own tests cover them.
                continue;
            };
            assert_eq!(fields, members, "{}: the type's fields", c.name);
            for all in [true, false] {
                let args = arguments(c.args(), all);
                TYPES.check_members(c.args(), &args, "").unwrap();
                if let Err(e) = c.handler.decodes(args) {
                    panic!("{} (all members: {all}): {}", c.name, e.desc);
                }
            }
        }
    }
}
