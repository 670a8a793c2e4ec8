//! Guest memory for debugging: dump-guest-memory, query-dump,
//! query-dump-guest-memory-capability, memsave and pmemsave, with QEMU 7.2's checks in
//! its order and its words. The gateway opens the file (`file:PATH`, or takes the
//! client's `fd:NAME` from getfd, which the dump consumes as QEMU's does) and hands it to
//! vmm-core, which reads guest memory and the vCPUs' registers and writes (vmm-core's
//! dump module). A dump without `detach` answers once it is written; the VM is paused
//! while it is written either way, as QEMU's is.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use ipc::{
    errno_text, DumpFilter, DumpFormat, DumpRequest, DumpStatus, RunState, VmmReply, VmmRequest,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::dump::query_result;
use crate::qmp::args::{serde_arguments, Int, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::handlers::hmp::reply::{quiet, try_help};
use crate::qmp::handlers::migrate::take_named;
use crate::qmp::monitor_number::monitor_number;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};

/// memsave and pmemsave write at most this much per call: vmm-core writes it while it
/// serves nothing else (a whole guest goes with dump-guest-memory, on its own thread).
pub const SAVE_MAX: i64 = 1 << 30;

#[derive(Debug, Deserialize)]
pub struct DumpGuestMemory {
    pub paging: bool,
    pub protocol: String,
    pub detach: Option<bool>,
    pub begin: Option<Int>,
    pub length: Option<Int>,
    pub format: Option<DumpFormat>,
}

serde_arguments!(
    DumpGuestMemory,
    [
        req("paging", Ty::Bool),
        req("protocol", Ty::Str),
        opt("detach", Ty::Bool),
        opt("begin", Ty::Int),
        opt("length", Ty::Int),
        opt("format", Ty::Named("DumpGuestMemoryFormat")),
    ]
);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Memsave {
    pub val: Int,
    pub size: Int,
    pub filename: String,
    pub cpu_index: Option<Int>,
}

serde_arguments!(
    Memsave,
    [
        req("val", Ty::Int),
        req("size", Ty::Int),
        req("filename", Ty::Str),
        opt("cpu-index", Ty::Int),
    ]
);

#[derive(Debug, Deserialize)]
pub struct Pmemsave {
    pub val: Int,
    pub size: Int,
    pub filename: String,
}

serde_arguments!(
    Pmemsave,
    [
        req("val", Ty::Int),
        req("size", Ty::Int),
        req("filename", Ty::Str),
    ]
);

/// An int64 argument (the checker let only int64 values through).
fn int64(v: Int) -> i64 {
    v.as_i64().unwrap_or(i64::MAX)
}

/// Opens `path` for writing as QEMU does (created with `mode`, truncated); its words
/// when it cannot.
fn create(path: &str, mode: u32) -> Result<File, QmpError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| QmpError::generic(format!("Could not open '{path}': {}", errno_text(&e))))
}

fn progress(c: &Ctx) -> Result<ipc::DumpProgress, QmpError> {
    match c.vmm(VmmRequest::QueryDump)? {
        VmmReply::Dump(p) => Ok(p),
        other => Err(QmpError::generic(format!(
            "vmm-core answered query-dump with {other:?}"
        ))),
    }
}

pub fn dump_guest_memory(c: &mut Ctx, a: DumpGuestMemory) -> QmpResult {
    if c.gw.run_state() == RunState::InMigrate {
        return Err(QmpError::generic(
            "Dump not allowed during incoming migration.",
        ));
    }
    if progress(c)?.status == DumpStatus::Active {
        return Err(QmpError::generic(
            "There is a dump in process, please wait.",
        ));
    }
    let format = a.format.unwrap_or(DumpFormat::Elf);
    if format != DumpFormat::Elf && (a.paging || a.begin.is_some() || a.length.is_some()) {
        return Err(QmpError::generic(
            "kdump-compressed format doesn't support paging or filter",
        ));
    }
    let filter = match (a.begin, a.length) {
        (Some(begin), Some(length)) => Some(DumpFilter {
            begin: int64(begin),
            length: int64(length),
        }),
        (Some(_), None) => return Err(QmpError::generic("Parameter 'length' is missing")),
        (None, Some(_)) => return Err(QmpError::generic("Parameter 'begin' is missing")),
        (None, None) => None,
    };
    let fd: OwnedFd = if let Some(name) = a.protocol.strip_prefix("fd:") {
        take_named(c, name).map_err(QmpError::generic)?
    } else if let Some(path) = a.protocol.strip_prefix("file:") {
        create(path, 0o400)?.into()
    } else {
        return Err(QmpError::generic("Invalid parameter 'protocol'"));
    };
    let seen = c.gw.dumps.ended();
    let request = DumpRequest {
        paging: a.paging,
        filter,
        format,
    };
    c.gw.vmm
        .request(VmmRequest::DumpGuestMemory(request), &[fd.as_fd()])?;
    drop(fd);
    if a.detach != Some(true) {
        // vmm-core gone (the link fails) ends the wait too.
        let alive = || c.gw.vmm.request(VmmRequest::QueryDump, &[]).is_ok();
        c.gw.dumps
            .wait_past(seen, alive)
            .map_err(QmpError::generic)?;
    }
    Ok(json!({}))
}

pub fn query_dump(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(query_result(&progress(c)?))
}

/// Every format, as QEMU 7.2 built with LZO and snappy lists them: the kdump ones are
/// written (vmm-core's dump/kdump.rs); win-dmp needs a Windows guest's vmcoreinfo note,
/// which a VM here never has (no vmcoreinfo device), so it fails as QEMU's does then.
pub fn query_dump_guest_memory_capability(_: &mut Ctx, _: NoArgs) -> QmpResult {
    let formats: Vec<Value> = DumpFormat::ALL
        .iter()
        .map(|f| json!(f.qmp_name()))
        .collect();
    Ok(json!({ "formats": formats }))
}

/// memsave's and pmemsave's size: QEMU 7.2 takes any (a negative one crashes it); ours
/// is bounded.
fn save_size(size: Int) -> Result<u64, QmpError> {
    match int64(size) {
        s @ 0..=SAVE_MAX => Ok(s as u64),
        _ => Err(QmpError::generic(format!(
            "Parameter 'size' expects a size from 0 to {SAVE_MAX} (dump-guest-memory writes more)"
        ))),
    }
}

fn save(c: &mut Ctx, addr: Int, size: u64, filename: &str, vcpu: Option<u32>) -> QmpResult {
    // memsave's and pmemsave's file, as QEMU's fopen("wb") makes it.
    let file = create(filename, 0o666)?;
    let request = VmmRequest::MemorySave {
        addr: int64(addr) as u64,
        size,
        vcpu,
    };
    c.gw.vmm.request(request, &[file.as_fd()])?;
    Ok(json!({}))
}

pub fn memsave(c: &mut Ctx, a: Memsave) -> QmpResult {
    let index = a.cpu_index.map(int64).unwrap_or(0);
    let known = c.gw.vcpus().iter().any(|v| i64::from(v.index) == index);
    if !known {
        return Err(QmpError::generic(
            "Parameter 'cpu-index' expects a CPU number",
        ));
    }
    let size = save_size(a.size)?;
    save(c, a.val, size, &a.filename, Some(index as u32))
}

pub fn pmemsave(c: &mut Ctx, a: Pmemsave) -> QmpResult {
    let size = save_size(a.size)?;
    save(c, a.val, size, &a.filename, None)
}

/// HMP's `dump-guest-memory [-p] [-d] [-z|-l|-s|-w] filename [begin length]`, as QEMU
/// 7.2's monitor reads it (its numbers: monitor_number.rs).
pub fn hmp_dump(c: &mut Ctx, arguments: &str) -> String {
    const NAME: &str = "dump-guest-memory";
    // QEMU's monitor takes the flags in its argument order only, each once: a flag
    // after a later one is unsupported there.
    const ORDER: &str = "pdwzls";
    let mut words = arguments.split_whitespace().peekable();
    let (mut paging, mut detach, mut formats) = (false, false, Vec::new());
    let mut next = 0;
    while let Some(flag) = words.next_if(|w| w.starts_with('-')) {
        let found = flag
            .strip_prefix('-')
            .filter(|f| f.len() == 1)
            .and_then(|f| ORDER[next..].find(f).map(|at| (f, next + at)));
        let Some((letter, at)) = found else {
            return try_help(&format!("{NAME}: unsupported option {flag}"), NAME);
        };
        next = at + 1;
        match letter {
            "p" => paging = true,
            "d" => detach = true,
            "z" => formats.push(DumpFormat::KdumpZlib),
            "l" => formats.push(DumpFormat::KdumpLzo),
            "s" => formats.push(DumpFormat::KdumpSnappy),
            _ => formats.push(DumpFormat::WinDmp),
        }
    }
    let Some(file) = words.next() else {
        return try_help(&format!("{NAME}: filename expected"), NAME);
    };
    let mut number = || {
        words
            .next()
            .map(|w| monitor_number(NAME, w).map(|v| Int(i128::from(v as i64))))
            .transpose()
    };
    let (begin, length) = match (number(), number()) {
        (Ok(b), Ok(l)) => (b, l),
        (Err(e), _) | (_, Err(e)) => return try_help(&e, NAME),
    };
    if formats.len() > 1 {
        return "Error: only one of '-z|-l|-s|-w' can be set\n".to_string();
    }
    quiet(dump_guest_memory(
        c,
        DumpGuestMemory {
            paging,
            protocol: format!("file:{file}"),
            detach: Some(detach),
            begin,
            length,
            format: Some(formats.first().copied().unwrap_or(DumpFormat::Elf)),
        },
    ))
}

/// HMP's `memsave addr size file` (virtual addresses of the monitor's current vCPU
/// `cpu`) and `pmemsave addr size file` (`command`), as QEMU 7.2's monitor reads them:
/// an argument after a number that starts with an operator is read as QEMU's
/// expressions read it, a refusal.
pub fn hmp_save(c: &mut Ctx, command: &str, arguments: &str, cpu: u32) -> String {
    let words: Vec<&str> = arguments.split_whitespace().collect();
    let number = |at: usize| -> Result<Int, String> {
        let text = words.get(at).copied().unwrap_or("");
        let value = monitor_number(command, text)?;
        // QEMU's expression goes on across spaces when an operator follows.
        if let Some(next) = words.get(at + 1) {
            let mut chars = next.chars();
            if chars.next().is_some_and(|op| "*/%+-&|^".contains(op)) {
                return Err(match chars.next() {
                    Some(ch) => format!("invalid char '{ch}' in expression"),
                    None => "unexpected end of expression".into(),
                });
            }
        }
        Ok(Int(i128::from(value as i64)))
    };
    let (val, size) = match (number(0), number(1)) {
        (Ok(v), Ok(s)) => (v, s),
        (Err(e), _) | (_, Err(e)) => return try_help(&e, command),
    };
    let Some(filename) = words.get(2).map(|f| f.to_string()) else {
        return try_help(&format!("{command}: string expected"), command);
    };
    if words.len() > 3 {
        return try_help(
            &format!("{command}: extraneous characters at the end of line"),
            command,
        );
    }
    quiet(match command {
        "memsave" => memsave(
            c,
            Memsave {
                val,
                size,
                filename,
                cpu_index: Some(Int(i128::from(cpu))),
            },
        ),
        _ => pmemsave(
            c,
            Pmemsave {
                val,
                size,
                filename,
            },
        ),
    })
}

/// HMP `info dump`.
pub fn info_dump(result: &Value, _: u32) -> String {
    let status = result["status"].as_str().unwrap_or("none");
    let mut text = format!("Status: {status}\n");
    if status == "active" {
        let (done, total) = (result["completed"].as_f64(), result["total"].as_f64());
        if let (Some(done), Some(total)) = (done, total.filter(|t| *t > 0.0)) {
            text += &format!("Finished: {:.2} %\n", 100.0 * done / total);
        }
    }
    text
}
