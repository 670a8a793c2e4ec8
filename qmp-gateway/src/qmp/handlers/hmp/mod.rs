//! HMP, QEMU's human monitor: one table of the HMP commands that map onto what the
//! gateway serves, each either an argument-less QMP command of the command table whose
//! answer it prints, or a function that reads its own arguments. `run_line` runs one
//! line (human-monitor-command here, a readline monitor on a chardev elsewhere); `help`
//! and `info` list the table. Unknown commands are answered as QEMU answers them: the
//! text "unknown command: '...'".

mod args;
mod block;
mod drive;
mod info;
mod migrate;
mod page_tables;
mod registers;
pub mod reply;
mod ringbuf;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::fdstore::NamedFds;
use crate::qmp::args::{serde_arguments, Int};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};
use reply::{error, invalid_value, present_vcpus, quiet, read_args, run_qmp, usage};

use crate::migration::settings::Capability;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HumanMonitorCommand {
    pub command_line: String,
    pub cpu_index: Option<Int>,
}

serde_arguments!(
    HumanMonitorCommand,
    [req("command-line", Ty::Str), opt("cpu-index", Ty::Int)]
);

/// What an HMP command does.
pub enum Run {
    /// Runs this QMP command of the command table, without arguments (words after the
    /// command's own are ignored, as QEMU ignores them), and prints its answer with the
    /// function (`cpu`: the current CPU's index); an error as "Error: ...".
    Qmp(&'static str, fn(answer: &Value, cpu: u32) -> String),
    /// Reads the text after the command's words itself; `cpu` is the monitor's current
    /// CPU (`cpu N` changes it).
    Line(fn(c: &mut Ctx, arguments: &str, cpu: &mut u32) -> String),
}

/// One HMP command: its words and its help as QEMU 7.2's `help` shows them, and what it
/// runs.
pub struct HmpCommand {
    /// Its words, short forms after '|' ("stop|s"); an info command's start with "info ".
    pub name: &'static str,
    /// Its arguments as `help` shows them ("" for none).
    pub params: &'static str,
    pub help: &'static str,
    pub run: Run,
}

impl HmpCommand {
    /// Whether `word` (after "info " for an info command) names it.
    fn named(&self, word: &str) -> bool {
        self.name.split('|').any(|n| n == word)
    }

    /// Its line in `help`.
    fn help_line(&self) -> String {
        format!("{} {} -- {}\n", self.name, self.params, self.help)
    }
}

const fn qmp(
    name: &'static str,
    params: &'static str,
    help: &'static str,
    qmp: &'static str,
    text: fn(&Value, u32) -> String,
) -> HmpCommand {
    HmpCommand {
        name,
        params,
        help,
        run: Run::Qmp(qmp, text),
    }
}

/// A QMP command whose success prints nothing.
const fn action(name: &'static str, help: &'static str, command: &'static str) -> HmpCommand {
    qmp(name, "", help, command, |_, _| String::new())
}

const fn line(
    name: &'static str,
    params: &'static str,
    help: &'static str,
    run: fn(&mut Ctx, &str, &mut u32) -> String,
) -> HmpCommand {
    HmpCommand {
        name,
        params,
        help,
        run: Run::Line(run),
    }
}

/// The HMP commands served (`help` and `info` list them sorted, as QEMU does).
pub const HMP: &[HmpCommand] = &[
    line(
        "balloon",
        "target",
        "request VM to change its memory allocation (in MB)",
        |c, a, _| super::balloon::hmp_balloon(c, a),
    ),
    action("cont|c", "resume emulation", "cont"),
    line("cpu", "index", "set the default CPU", |c, a, cpu| {
        super::cpus::hmp_cpu(c, a, cpu)
    }),
    line(
        "dump-guest-memory",
        "[-p] [-d] [-z|-l|-s|-w] filename [begin length]",
        "dump guest memory into file 'filename'.\n\
         \t\t\t-p: do paging to get guest's memory mapping.\n\
         \t\t\t-d: return immediately (do not wait for completion).\n\
         \t\t\t-z: dump in kdump-compressed format, with zlib compression.\n\
         \t\t\t-l: dump in kdump-compressed format, with lzo compression.\n\
         \t\t\t-s: dump in kdump-compressed format, with snappy compression.\n\
         \t\t\t-w: dump in Windows crashdump format (can be used instead of ELF-dump converting),\n\
         \t\t\t    for Windows x86 and x64 guests with vmcoreinfo driver only.\n\
         \t\t\tbegin: the starting physical address.\n\
         \t\t\tlength: the memory size, in bytes.",
        |c, a, _| super::dump::hmp_dump(c, a),
    ),
    line("help|?", "[cmd]", "show the help", |_, a, _| help(a)),
    line(
        "info",
        "[subcommand]",
        "show various information about the system state",
        |_, _, _| help("info"),
    ),
    qmp(
        "info balloon",
        "",
        "show balloon information",
        "query-balloon",
        super::balloon::info_balloon,
    ),
    line(
        "info block",
        "[-n] [-v] [device]",
        "show info of one block device or all block devices (-n: show named nodes; -v: show details)",
        block::info_block,
    ),
    qmp(
        "info block-jobs",
        "",
        "show progress of ongoing block device operations",
        "query-block-jobs",
        block::info_block_jobs,
    ),
    qmp(
        "info blockstats",
        "",
        "show block device statistics",
        "query-blockstats",
        block::info_blockstats,
    ),
    qmp(
        "info chardev",
        "",
        "show the character devices",
        "query-chardev",
        info::info_chardev,
    ),
    qmp(
        "info cpus",
        "",
        "show infos for each CPU",
        "query-cpus-fast",
        info::info_cpus,
    ),
    qmp(
        "info dump",
        "",
        "Display the latest dump status",
        "query-dump",
        super::dump::info_dump,
    ),
    qmp(
        "info hotpluggable-cpus",
        "",
        "Show information about hotpluggable CPUs",
        "query-hotpluggable-cpus",
        info::info_hotpluggable_cpus,
    ),
    qmp(
        "info iothreads",
        "",
        "show iothreads",
        "query-iothreads",
        info::info_iothreads,
    ),
    qmp(
        "info kvm",
        "",
        "show KVM information",
        "query-kvm",
        info::info_kvm,
    ),
    qmp(
        "info memdev",
        "",
        "show memory backends",
        "query-memdev",
        info::info_memdev,
    ),
    qmp(
        "info mice",
        "",
        "show which guest mouse is receiving events",
        "query-mice",
        super::input::info_mice,
    ),
    qmp(
        "info migrate",
        "",
        "show migration status",
        "query-migrate",
        migrate::info_migrate,
    ),
    qmp(
        "info migrate_capabilities",
        "",
        "show current migration capabilities",
        "query-migrate-capabilities",
        info::info_migrate_capabilities,
    ),
    qmp(
        "info migrate_parameters",
        "",
        "show current migration parameters",
        "query-migrate-parameters",
        info::info_migrate_parameters,
    ),
    line(
        "info network",
        "",
        "show the network state",
        info::info_network,
    ),
    qmp(
        "info name",
        "",
        "show the current VM name",
        "query-name",
        info::info_name,
    ),
    qmp("info pci", "", "show PCI info", "query-pci", |buses, _| {
        super::pci::info_pci(buses)
    }),
    line(
        "info mem",
        "",
        "show the active virtual memory mappings",
        page_tables::info_mem,
    ),
    line(
        "info registers",
        "[-a|vcpu]",
        "show the cpu registers (-a: show register info for all cpus; vcpu: specific vCPU to query; show the current CPU's registers if no argument is specified)",
        registers::info_registers,
    ),
    line(
        "info tlb",
        "",
        "show virtual to physical memory mappings",
        page_tables::info_tlb,
    ),
    qmp(
        "info status",
        "",
        "show the current VM status (running|paused)",
        "query-status",
        info::info_status,
    ),
    line(
        "info trace-events",
        "[name] [vcpu]",
        "show available trace-events & their state (name: event name pattern; vcpu: vCPU to query, default is any)",
        |c, a, _| super::trace::hmp_info_trace_events(c, a),
    ),
    qmp(
        "info uuid",
        "",
        "show the current VM UUID",
        "query-uuid",
        info::info_uuid,
    ),
    qmp(
        "info version",
        "",
        "show the version of QEMU",
        "query-version",
        info::info_version,
    ),
    line(
        "memsave",
        "addr size file",
        "save to disk virtual memory dump starting at 'addr' of size 'size'",
        |c, a, cpu| super::dump::hmp_save(c, "memsave", a, *cpu),
    ),
    line(
        "mouse_button",
        "state",
        "change mouse button state (1=L, 2=M, 4=R)",
        super::input::hmp_mouse_button,
    ),
    line(
        "mouse_move",
        "dx dy [dz]",
        "send mouse move events",
        super::input::hmp_mouse_move,
    ),
    action("nmi", "inject an NMI", "inject-nmi"),
    line(
        "pmemsave",
        "addr size file",
        "save to disk physical memory dump starting at 'addr' of size 'size'",
        |c, a, cpu| super::dump::hmp_save(c, "pmemsave", a, *cpu),
    ),
    action("quit|q", "quit the emulator", "quit"),
    line(
        "sendkey",
        "keys [hold_ms]",
        "send keys to the VM (e.g. 'sendkey ctrl-alt-f1', default hold time=100 ms)",
        super::input::hmp_sendkey,
    ),
    action("stop|s", "stop emulation", "stop"),
    action(
        "system_powerdown",
        "send system power down event",
        "system_powerdown",
    ),
    action("system_reset", "reset the system", "system_reset"),
    line(
        "trace-event",
        "name on|off [vcpu]",
        "changes status of a specific trace event (vcpu: vCPU to set, default is all)",
        |c, a, _| super::trace::hmp_trace_event(c, a),
    ),
    line(
        "block_job_cancel",
        "[-f] device",
        "stop an active background block operation (use -f\n\t\t\t if you want to abort the operation immediately\n\t\t\t instead of keep running until data is in sync)",
        |c, a, _| mapped(c, a, "block_job_cancel", "force:-f,device:B", "block-job-cancel"),
    ),
    line(
        "block_job_complete",
        "device",
        "stop an active background block operation",
        |c, a, _| mapped(c, a, "block_job_complete", "device:B", "block-job-complete"),
    ),
    line(
        "block_job_pause",
        "device",
        "pause an active background block operation",
        |c, a, _| mapped(c, a, "block_job_pause", "device:B", "block-job-pause"),
    ),
    line(
        "block_job_resume",
        "device",
        "resume a paused background block operation",
        |c, a, _| mapped(c, a, "block_job_resume", "device:B", "block-job-resume"),
    ),
    line(
        "block_job_set_speed",
        "device speed",
        "set maximum speed for a background block operation",
        |c, a, _| mapped(c, a, "block_job_set_speed", "device:B,speed:o", "block-job-set-speed"),
    ),
    line(
        "block_resize",
        "device size",
        "resize a block image",
        |c, a, _| mapped(c, a, "block_resize", "device:B,size:o", "block_resize"),
    ),
    line(
        "block_set_io_throttle",
        "device bps bps_rd bps_wr iops iops_rd iops_wr",
        "change I/O throttle limits for a block drive",
        block::block_set_io_throttle,
    ),
    line("chardev-remove", "id", "remove chardev", |c, a, _| {
        mapped(c, a, "chardev-remove", "id:s", "chardev-remove")
    }),
    line(
        "device_add",
        "driver[,prop=value][,...]",
        "add device, like -device on the command line",
        |c, a, _| with_opts(c, a, "device_add", "driver"),
    ),
    line("device_del", "device", "remove device", |c, a, _| {
        mapped(c, a, "device_del", "id:s", "device_del")
    }),
    line(
        "drive_add",
        "[-n] [[<domain>:]<bus>:]<slot>\n[file=file][,if=type][,bus=n]\n[,unit=m][,media=d][,index=i]\n[,snapshot=on|off][,cache=on|off]\n[,readonly=on|off][,copy-on-read=on|off]",
        "add drive to PCI storage controller",
        drive::drive_add,
    ),
    line(
        "drive_del",
        "device",
        "remove host block device",
        drive::drive_del,
    ),
    line(
        "closefd",
        "closefd name",
        "close a file descriptor previously passed via SCM rights",
        |c, a, _| mapped(c, a, "closefd", "fdname:s", "closefd"),
    ),
    line(
        "getfd",
        "getfd name",
        "receive a file descriptor via SCM rights and assign it a name",
        |c, a, _| mapped(c, a, "getfd", "fdname:s", "getfd"),
    ),
    line(
        "ringbuf_read",
        "device size",
        "Read from a ring buffer character device",
        ringbuf::ringbuf_read,
    ),
    line(
        "ringbuf_write",
        "device data",
        "Write to a ring buffer character device",
        |c, a, _| mapped(c, a, "ringbuf_write", "device:s,data:s", "ringbuf-write"),
    ),
    line(
        "eject",
        "[-f] device",
        "eject a removable medium (use -f to force it)",
        |c, a, _| mapped(c, a, "eject", "force:-f,device:B", "eject"),
    ),
    line(
        "migrate",
        "[-d] [-b] [-i] [-r] uri",
        "migrate to URI (using -d to not wait for completion)\n\t\t\t -b for migration without shared storage with full copy of disk\n\t\t\t -i for migration without shared storage with incremental copy of disk (base image shared between src and destination)\n\t\t\t -r to resume a paused migration",
        migrate,
    ),
    action("migrate_cancel", "cancel the current VM migration", "migrate_cancel"),
    line(
        "migrate_set_capability",
        "capability state",
        "Enable/Disable the usage of a capability for migration",
        migrate_set_capability,
    ),
    line(
        "netdev_add",
        "[user|tap|socket|stream|dgram|vde|bridge|hubport|netmap|vhost-user],id=str[,prop=value][,...]",
        "add host network device",
        |c, a, _| with_opts(c, a, "netdev_add", "type"),
    ),
    line("netdev_del", "id", "remove host network device", |c, a, _| {
        mapped(c, a, "netdev_del", "id:s", "netdev_del")
    }),
    line("object_del", "id", "destroy QOM object", |c, a, _| {
        mapped(c, a, "object_del", "id:s", "object-del")
    }),
    line(
        "screendump",
        "filename [-f format] [device [head]]",
        "save screen from head 'head' of display device 'device'in specified format 'format' as image 'filename'.Currently only 'png' and 'ppm' formats are supported.",
        screendump,
    ),
    line(
        "set_link",
        "name on|off",
        "change the link status of a network adapter",
        |c, a, _| mapped(c, a, "set_link", "name:s,up:b", "set_link"),
    ),
    action("system_wakeup", "wakeup guest from suspend", "system_wakeup"),
    line(
        "migrate_set_parameter",
        "parameter value",
        "Set the parameter for migration",
        migrate::migrate_set_parameter,
    ),
    line(
        "object_add",
        "[qom-type=]type,id=str[,prop=value][,...]",
        "create QOM object",
        object_add,
    ),
];

pub fn human_monitor_command(c: &mut Ctx, a: HumanMonitorCommand) -> QmpResult {
    let present = present_vcpus(c);
    // An index beyond int64 counts as none given; an added vCPU may leave a gap.
    let mut current = match a.cpu_index.and_then(Int::as_i64) {
        None => 0,
        Some(i) if u32::try_from(i).is_ok_and(|i| present.contains(&i)) => i as u32,
        Some(_) => {
            return Err(QmpError::generic(
                "Parameter 'cpu-index' expects a CPU number",
            ))
        }
    };
    // human-monitor-command's monitor is a new one each time: a `cpu N` does not last,
    // and its named fds (getfd, closefd) are its own, none at first. It has no
    // connection of its own either: fds sent with the message are not its (QEMU 7.2's
    // getfd here answers that none was supplied), and are closed.
    let named = NamedFds::default();
    let mut monitor = Ctx {
        gw: c.gw,
        named_fds: &named,
        fd_account: c.fd_account,
        fds: Vec::new(),
        exit_after_reply: None,
        commands: c.commands,
    };
    let text = run_line(&mut monitor, &a.command_line, &mut current);
    c.exit_after_reply = monitor.exit_after_reply.take();
    Ok(json!(text))
}

/// Runs one HMP command line as QEMU's monitor does and returns what it prints, lines
/// ending in CRLF as QEMU's monitor ends them. `cpu` is the monitor's current CPU, which
/// `cpu N` changes.
pub fn run_line(c: &mut Ctx, line: &str, cpu: &mut u32) -> String {
    let (word, rest) = split_word(line);
    // What was typed of the command's name (QEMU's usage errors name it).
    let (typed, arguments) = match (word, split_word(rest)) {
        ("", _) => return String::new(),
        ("info", (what, arguments)) if !what.is_empty() => (format!("info {what}"), arguments),
        _ => (word.to_string(), rest),
    };
    let text = match lookup(&typed) {
        Err(name) => format!("unknown command: '{name}'\n"),
        Ok(h) => match h.run {
            Run::Qmp(..) if !arguments.trim_end().is_empty() => {
                let name = h.name.strip_prefix("info ").unwrap_or(h.name);
                usage(name, &typed, "extraneous characters at the end of line")
            }
            Run::Qmp(name, text) => match run_qmp(c, name, Map::new()) {
                Ok(answer) => text(&answer, *cpu),
                Err(e) => error(&e),
            },
            Run::Line(run) => run(c, arguments, cpu),
        },
    };
    text.replace('\n', "\r\n")
}

/// Runs the QMP command `qmp` with the members HMP's `name` reads from `arguments` by
/// `spec` (args.rs); nothing printed when it works.
fn mapped(c: &mut Ctx, arguments: &str, name: &str, spec: &str, qmp: &str) -> String {
    match read_args(name, spec, arguments) {
        Ok(members) => quiet(run_qmp(c, qmp, members)),
        Err(usage) => usage,
    }
}

/// HMP `migrate_set_capability NAME on|off`: QEMU checks the name first.
fn migrate_set_capability(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    const NAME: &str = "migrate_set_capability";
    let members = match read_args(NAME, "capability:s,state:b", arguments) {
        Ok(m) => m,
        Err(usage) => return usage,
    };
    let capability = members["capability"].as_str().unwrap_or_default();
    let known = Capability::ALL.iter().any(|c| c.name() == capability);
    if !known {
        return invalid_value(capability);
    }
    let mut arguments = Map::new();
    arguments.insert("capabilities".into(), json!([members]));
    quiet(run_qmp(c, "migrate-set-capabilities", arguments))
}

/// HMP `object_add TYPE,id=ID,...`: read as --object reads QEMU's -object (object_add.rs;
/// a value of the wrong type is refused in -object's words, which differ from HMP's).
fn object_add(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    if arguments.trim().is_empty() {
        return usage("object_add", "object_add", "string expected");
    }
    let spec = match crate::qmp::object_add::from_cli(arguments.trim()) {
        Ok(spec) => spec,
        Err(why) => return format!("Error: {why}\n"),
    };
    quiet(c.gw.objects.add(spec).map_err(QmpError::from))
}

/// HMP `screendump filename [-f format] [device [head]]`: QEMU's monitor checks the
/// format (ppm or png) itself; the QMP command, with no display here, refuses the rest.
fn screendump(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    const NAME: &str = "screendump";
    let spec = "filename:F,format:-fs,device:s?,head:i?";
    let mut members = match read_args(NAME, spec, arguments) {
        Ok(m) => m,
        Err(usage) => return usage,
    };
    if let Some(format) = members.remove("format") {
        let format = format.as_str().unwrap_or_default();
        if !["ppm", "png"].contains(&format) {
            return invalid_value(format);
        }
    }
    quiet(run_qmp(c, NAME, members))
}

/// HMP `migrate [-d] [-b] [-i] [-r] uri`. Without -d QEMU's monitor would wait for the
/// end, but a monitor that cannot be suspended (human-monitor-command's) goes on
/// detached, as QEMU says.
fn migrate(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    const NAME: &str = "migrate";
    let spec = "detach:-d,blk:-b,inc:-i,resume:-r,uri:s";
    let mut members = match read_args(NAME, spec, arguments) {
        Ok(m) => m,
        Err(usage) => return usage,
    };
    let detach = members.remove("detach").is_some();
    match run_qmp(c, "migrate", members) {
        Err(e) => error(&e),
        Ok(_) if detach => String::new(),
        Ok(_) => "terminal does not allow synchronous migration, continuing detached\n".into(),
    }
}

/// HMP's `device_add` and `netdev_add` (`qmp`): their text read as QEMU's -device and
/// -netdev read theirs (QemuOpts: a first part without '=' is `implied`).
fn with_opts(c: &mut Ctx, arguments: &str, qmp: &str, implied: &str) -> String {
    let members = crate::keyval::qemu_opts(arguments.trim(), implied);
    // -netdev's options need an id before anything else is looked at.
    if qmp == "netdev_add" && !members.contains_key("id") {
        return "Error: Parameter 'id' is missing\n".into();
    }
    quiet(run_qmp(c, qmp, members))
}

/// The first word of `line` and the text after it (its leading blanks removed).
fn split_word(line: &str) -> (&str, &str) {
    let line = line.trim_start();
    match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (line, ""),
    }
}

/// The command `name` names ("info X" for an info command), or the name to report.
fn lookup(name: &str) -> Result<&'static HmpCommand, String> {
    let info = name.starts_with("info ");
    HMP.iter()
        .find(|h| match name.strip_prefix("info ") {
            Some(what) => h.name.strip_prefix("info ") == Some(what),
            None => !info && h.named(name),
        })
        .ok_or_else(|| name.to_string())
}

/// HMP `help [cmd]`: every top-level command, the info commands (`help info`, or `info`
/// alone), or one command, a line each, sorted by name as QEMU sorts them.
fn help(arguments: &str) -> String {
    let (word, rest) = split_word(arguments);
    let (what, _) = split_word(rest);
    let mut shown: Vec<&HmpCommand> = match (word, what) {
        ("", _) => HMP
            .iter()
            .filter(|h| !h.name.starts_with("info "))
            .collect(),
        ("info", "") => HMP.iter().filter(|h| h.name.starts_with("info ")).collect(),
        ("info", what) => match lookup(&format!("info {what}")) {
            Ok(h) => vec![h],
            Err(name) => return format!("unknown command: '{name}'\n"),
        },
        (word, _) => match lookup(word) {
            Ok(h) => vec![h],
            Err(name) => return format!("unknown command: '{name}'\n"),
        },
    };
    shown.sort_by_key(|h| h.name);
    shown.iter().map(|h| h.help_line()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_info_commands_have_one_word() {
        for (i, h) in HMP.iter().enumerate() {
            for other in &HMP[i + 1..] {
                assert!(
                    !h.name.split('|').any(|n| other.named(n)),
                    "{} twice",
                    h.name
                );
            }
            if let Some(what) = h.name.strip_prefix("info ") {
                assert!(!what.contains([' ', '|']), "{}", h.name);
            }
        }
    }

    #[test]
    fn help_lists_the_table_as_qemu_does() {
        assert_eq!(
            help("info version"),
            "info version  -- show the version of QEMU\n"
        );
        assert_eq!(help("s"), "stop|s  -- stop emulation\n");
        assert_eq!(help("bogus"), "unknown command: 'bogus'\n");
        assert_eq!(help("info bogus"), "unknown command: 'info bogus'\n");
        let all = help("");
        assert!(all.starts_with("balloon target -- "), "{all}");
        assert!(all.contains("\ninfo [subcommand] -- show various"));
        assert!(!all.contains("info status"));
        let info = help("info");
        assert!(info.starts_with("info balloon  -- show balloon information\n"));
        assert_eq!(
            info.lines().count(),
            HMP.iter().filter(|h| h.name.starts_with("info ")).count()
        );
    }

    #[test]
    fn a_line_finds_its_command() {
        assert_eq!(lookup("c").map(|h| h.name), Ok("cont|c"));
        assert_eq!(lookup("info status").map(|h| h.name), Ok("info status"));
        assert_eq!(lookup("status").map(|h| h.name), Err("status".into()));
        assert_eq!(lookup("info stop").map(|h| h.name), Err("info stop".into()));
        assert_eq!(split_word("  info   block  d0 "), ("info", "block  d0 "));
    }
}
