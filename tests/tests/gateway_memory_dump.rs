//! Guest memory for debugging through the gateway: pmemsave and memsave find the test
//! guest's pattern page (FLOTILLA_DUMP_PATTERN, filled at run time by its idle scenario);
//! dump-guest-memory writes an ELF core that gdb reads (the pattern by its symbol, one
//! thread per vCPU with its registers) and `readelf -n` shows one NT_PRSTATUS per vCPU,
//! as in QEMU 7.2's core of the same guest; paging and begin/length shape the PT_LOADs;
//! detach runs in the background (query-dump, DUMP_COMPLETED, a second dump refused);
//! the kdump formats (zlib, LZO, snappy) hold every RAM page as pmemsave reads it, with
//! headers field by field as QEMU 7.2's kdump-zlib core of the same guest (read by
//! tests/src/kdump.rs; makedumpfile rearranges ours as it does QEMU's, crash reads their
//! headers); win-dmp fails as QEMU's does without a Windows guest's vmcoreinfo note;
//! bad input answers as a live QEMU 7.2 does, in class and words.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::kdump::{self, KdumpCore};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::{path_arg, require_tool, test_guest, TempDir};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const PATTERN_BYTES: u64 = 4096;

/// Word `i` of the guest's pattern (tests/guest/src/scenarios/idle.rs).
fn pattern_word(i: u64) -> u64 {
    0x464c_4f54_494c_4c41 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn pattern() -> Vec<u8> {
    (0..PATTERN_BYTES / 8)
        .flat_map(|i| pattern_word(i).to_le_bytes())
        .collect()
}

/// The pattern's address in the guest (identity-mapped: physical and virtual).
fn pattern_address() -> u64 {
    let nm = require_tool("nm", "binutils");
    let out = Command::new(nm).arg(test_guest()).output().expect("nm");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, _, name) = (f.next()?, f.next()?, f.next()?);
            (name == "FLOTILLA_DUMP_PATTERN").then(|| u64::from_str_radix(addr, 16).ok())?
        })
        .expect("FLOTILLA_DUMP_PATTERN in the test guest's symbols")
}

fn run(tool: &str, package: &str, args: &[&str]) -> String {
    let out = Command::new(require_tool(tool, package))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The notes `readelf -n` lists: (owner, data size, description) per note.
fn notes(core: &Path) -> Vec<(String, String, String)> {
    run("readelf", "binutils", &["-n", path_arg(core)])
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let owner = f.next()?;
            let size = f.next()?;
            size.starts_with("0x")
                .then(|| (owner.into(), size.into(), f.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// The PT_LOADs `readelf -l` lists: (virtual, physical, file size).
fn loads(core: &Path) -> Vec<(u64, u64, u64)> {
    let text = run("readelf", "binutils", &["-l", "-W", path_arg(core)]);
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    text.lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (hex(f[2]), hex(f[3]), hex(f[4]))
        })
        .collect()
}

/// What gdb, reading `core` with the guest's symbols, says to `commands`.
fn gdb(core: &Path, commands: &[&str]) -> String {
    let mut args = vec!["-batch", "-nx"];
    for c in commands {
        args.extend(["-ex", c]);
    }
    let guest = test_guest();
    args.extend([path_arg(&guest), path_arg(core)]);
    run("gdb", "gdb", &args)
}

/// The pattern's first two words as gdb reads them from `core`.
fn gdb_pattern(core: &Path) -> String {
    gdb(core, &["x/2gx &FLOTILLA_DUMP_PATTERN"])
}

fn expected_gdb_pattern() -> (String, String) {
    (
        format!("{:#018x}", pattern_word(0)),
        format!("{:#018x}", pattern_word(1)),
    )
}

/// Waits for the test guest to have filled its pattern.
fn idle(gw: &mut Gateway) {
    gw.vm.expect_prefix("GUEST IDLE", Duration::from_secs(30));
}

/// The bad inputs, each answered (class, words) as QEMU 7.2 answers it; `dir` is a
/// scratch directory. Our own refusals (QEMU crashes or writes those) are elsewhere.
fn bad_inputs(dir: &Path) -> Vec<(&'static str, Value)> {
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let proto = |name: &str| format!("file:{}", file(name));
    vec![
        (
            "memsave",
            json!({"val": 0, "size": 16, "filename": file("never"), "cpu-index": 5}),
        ),
        (
            "memsave",
            json!({"val": 0, "size": 16, "filename": file("never"), "cpu-index": -1}),
        ),
        (
            "memsave",
            json!({"val": 0, "size": 16, "filename": "/nonexistent/m"}),
        ),
        // Not canonical; past the end of RAM (mapped by the guest's page tables).
        (
            "memsave",
            json!({"val": 0x8000_0000_0000u64, "size": 100, "filename": file("m")}),
        ),
        (
            "memsave",
            json!({"val": 128 * MIB - 1000, "size": 2000, "filename": file("m")}),
        ),
        (
            "pmemsave",
            json!({"val": 0, "size": 16, "filename": "/nonexistent/p"}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": "file:/nonexistent/d"}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": "fd:nope"}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": "bad:x"}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": proto("d"), "begin": 0}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": proto("d"), "length": 4096}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": proto("d"), "begin": 0, "length": 0}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": proto("d"), "begin": 1u64 << 42, "length": 4096}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": proto("d"), "begin": -5, "length": 4096}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": true, "protocol": proto("d"), "format": "kdump-zlib"}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": proto("d"), "format": "kdump-lzo",
                   "begin": 0, "length": 4096}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": proto("d"), "format": "kdump-snappy",
                   "begin": 0}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": true, "protocol": proto("d"), "format": "win-dmp"}),
        ),
        // Started, then failed (DUMP_COMPLETED with the error): no vmcoreinfo note.
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": proto("w"), "format": "win-dmp"}),
        ),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": proto("d"), "format": "bzip"}),
        ),
    ]
}

/// The answers to `bad_inputs` from one monitor, then HMP's to `hmp_lines`.
fn refusals(qmp: &mut QmpClient, dir: &Path) -> Vec<(String, String)> {
    let qmp_answers: Vec<(String, String)> = bad_inputs(dir)
        .into_iter()
        .map(|(command, args)| qmp.err(command, args))
        .collect();
    let hmp_answers = hmp_lines(dir).into_iter().map(|line| {
        let answer = qmp.ok("human-monitor-command", json!({ "command-line": line }));
        (line, answer.as_str().unwrap_or_default().to_string())
    });
    qmp_answers.into_iter().chain(hmp_answers).collect()
}

/// HMP lines answered alike by QEMU 7.2 and the gateway (`dir`'s name in them is
/// replaced by DIR when compared).
fn hmp_lines(dir: &Path) -> Vec<String> {
    let d = path_arg(dir);
    vec![
        "dump-guest-memory".into(),
        format!("dump-guest-memory -q {d}/h"),
        format!("dump-guest-memory -z -p {d}/h"),
        format!("dump-guest-memory -s {d}/h 0 4096"),
        format!("dump-guest-memory -w {d}/h"),
        format!("dump-guest-memory -z -s {d}/h"),
        format!("dump-guest-memory {d}/h 4096"),
        format!("dump-guest-memory {d}/h 0x10000000000 4096"),
        "dump-guest-memory /nonexistent/h".into(),
        // QEMU's monitor reads "16 /..." as a division.
        format!("memsave 0 16 {d}/h"),
        "memsave 0 16 h extra".into(),
        "memsave 0".into(),
        "pmemsave zz 16 h".into(),
        "pmemsave 0 16 /nonexistent".into(),
        "info dump".into(),
    ]
}

/// A dump to a pipe passed with getfd: the dump waits for the pipe's reader, so it stays
/// active until the test reads.
fn pipe_dump(qmp: &mut QmpClient) -> std::fs::File {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    qmp.send_with_fds(
        br#"{"execute":"getfd","arguments":{"fdname":"core"}}"#,
        &[writer.as_fd()],
    );
    assert_eq!(qmp.reply(), json!({"return": {}}));
    drop(writer);
    qmp.ok(
        "dump-guest-memory",
        json!({"paging": false, "protocol": "fd:core", "detach": true}),
    );
    std::fs::File::from(reader)
}

#[test]
fn guest_memory_reaches_files_and_cores_as_on_qemu() {
    let dir = TempDir::new("memdump");
    let path = |name: &str| dir.path().join(name);
    let mut gw = Gateway::start(&[]);
    idle(&mut gw);
    let mut qmp = gw.client();
    let at = pattern_address();

    // pmemsave (physical) and memsave (virtual, through vCPU 1's page tables).
    qmp.ok(
        "pmemsave",
        json!({"val": at, "size": PATTERN_BYTES, "filename": path_arg(&path("p"))}),
    );
    assert!(std::fs::read(path("p")).unwrap() == pattern(), "pmemsave");
    qmp.ok(
        "memsave",
        json!({"val": at, "size": PATTERN_BYTES, "filename": path_arg(&path("m")), "cpu-index": 1}),
    );
    assert!(std::fs::read(path("m")).unwrap() == pattern(), "memsave");
    // Past the end of RAM pmemsave reads zeroes, as QEMU's.
    qmp.ok(
        "pmemsave",
        json!({"val": 1u64 << 40, "size": 100, "filename": path_arg(&path("z"))}),
    );
    assert_eq!(std::fs::read(path("z")).unwrap(), vec![0; 100]);

    let formats = qmp.ok("query-dump-guest-memory-capability", json!({}));
    assert_eq!(
        formats,
        json!({"formats": ["elf", "kdump-zlib", "kdump-lzo", "kdump-snappy", "win-dmp"]})
    );
    assert_eq!(
        qmp.ok("query-dump", json!({})),
        json!({"status": "none", "completed": 0, "total": 0})
    );

    // A whole dump: the VM stops for it and runs again after.
    let core = path("core");
    qmp.ok(
        "dump-guest-memory",
        json!({"paging": false, "protocol": format!("file:{}", path_arg(&core))}),
    );
    qmp.event("STOP");
    let done = qmp.event("DUMP_COMPLETED");
    qmp.event("RESUME");
    let whole = json!({"status": "completed", "completed": 128 * MIB, "total": 128 * MIB});
    assert_eq!(done["data"], json!({ "result": whole }));
    assert_eq!(qmp.ok("query-dump", json!({})), whole);
    assert_eq!(qmp.ok("query-status", json!({}))["status"], "running");
    let mode = std::fs::metadata(&core).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o400,
        "created read-only for its owner, as QEMU's"
    );
    let ours = notes(&core);
    let prstatus = ours.iter().filter(|n| n.2.contains("NT_PRSTATUS")).count();
    assert_eq!(prstatus, 2, "one NT_PRSTATUS per vCPU: {ours:?}");
    assert_eq!(loads(&core), vec![(0, 0, 128 * MIB)]);
    let (w0, w1) = expected_gdb_pattern();
    let read = gdb_pattern(&core);
    assert!(read.contains(&w0) && read.contains(&w1), "gdb read {read}");
    // One thread per vCPU; each one's registers (halted in the guest's code, on a stack).
    let threads = gdb(
        &core,
        &[
            "info threads",
            "thread 1",
            "info symbol $pc",
            "p/x $rsp",
            "thread 2",
            "info symbol $pc",
            "p/x $rsp",
        ],
    );
    assert!(
        threads.contains("LWP 2") && !threads.contains("LWP 3"),
        "{threads}"
    );
    assert_eq!(
        threads.matches("in section .text").count(),
        2,
        "each vCPU's pc is in the guest's code: {threads}"
    );
    assert!(!threads.contains("$1 = 0x0\n"), "rsp read: {threads}");

    // HMP: a paging dump of a filter, its status, pmemsave of the pattern (a name
    // without an operator's character: relative to the gateway's directory).
    let hmp = |qmp: &mut QmpClient, line: &str| {
        let answer = qmp.ok("human-monitor-command", json!({ "command-line": line }));
        answer.as_str().unwrap_or_default().to_string()
    };
    let hmp_core = path("hmp-core");
    let line = format!("dump-guest-memory -p {} {at:#x} 64", path_arg(&hmp_core));
    assert_eq!(hmp(&mut qmp, &line), "");
    assert_eq!(qmp.event("DUMP_COMPLETED")["data"]["result"]["total"], 64);
    assert_eq!(loads(&hmp_core), vec![(at, at, 64)]);
    assert_eq!(hmp(&mut qmp, "info dump"), "Status: completed\r\n");
    let relative = format!("flotilla-pmemsave-{}", std::process::id());
    let line = format!("pmemsave {at:#x} {PATTERN_BYTES} {relative}");
    assert_eq!(hmp(&mut qmp, &line), "");
    let saved = std::fs::read(&relative);
    let _ = std::fs::remove_file(&relative);
    assert!(saved.unwrap() == pattern(), "HMP pmemsave");

    // paging: virtual addresses from the page tables (identity: the same); begin/length:
    // only that page.
    let page = at & !0xfff;
    let paged = path("paged");
    qmp.ok(
        "dump-guest-memory",
        json!({"paging": true, "protocol": format!("file:{}", path_arg(&paged)),
               "begin": page, "length": 8192}),
    );
    assert_eq!(qmp.event("DUMP_COMPLETED")["data"]["result"]["total"], 8192);
    assert_eq!(loads(&paged), vec![(page, page, 8192)]);
    let read = gdb_pattern(&paged);
    assert!(read.contains(&w0) && read.contains(&w1), "gdb read {read}");
    let paged_all = path("paged-all");
    qmp.ok(
        "dump-guest-memory",
        json!({"paging": true, "protocol": format!("file:{}", path_arg(&paged_all))}),
    );
    qmp.event("DUMP_COMPLETED");
    // The guest maps its 4 GiB 1:1; of it, 128 MiB are RAM.
    assert_eq!(loads(&paged_all), vec![(0, 0, 128 * MIB)]);

    // detach: answered at once, the dump runs (and the VM waits) until the pipe is read.
    let mut pipe = pipe_dump(&mut qmp);
    let active = qmp.ok("query-dump", json!({}));
    assert_eq!(active["status"], "active", "{active}");
    assert_eq!(active["total"], 128 * MIB, "{active}");
    assert!(
        active["completed"].as_u64().unwrap() < 128 * MIB,
        "{active}"
    );
    assert_eq!(qmp.ok("query-status", json!({}))["status"], "paused");
    let second = qmp.err(
        "dump-guest-memory",
        json!({"paging": false, "protocol": format!("file:{}", path_arg(&path("second")))}),
    );
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).map(|_| bytes.len() as u64)
    });
    let done = qmp.event("DUMP_COMPLETED");
    assert_eq!(done["data"], json!({ "result": whole }));
    qmp.event("RESUME");
    let written = reader.join().unwrap().expect("the pipe read");
    assert!(
        written > 128 * MIB,
        "the core came through the pipe: {written}"
    );
    // The name went with the dump, as QEMU's monitor_get_fd takes it.
    assert_eq!(
        qmp.err("closefd", json!({"fdname": "core"})).1,
        "File descriptor named 'core' not found"
    );

    let kdumps = kdump_formats(&mut qmp, dir.path(), at, &whole);

    // Our own refusals: a size QEMU 7.2 crashes on, and one beyond the bound.
    for size in [-1, (1i64 << 30) + 1] {
        let (class, desc) = qmp.err(
            "pmemsave",
            json!({"val": 0, "size": size, "filename": path_arg(&path("big"))}),
        );
        assert_eq!(class, "GenericError");
        assert!(
            desc.starts_with("Parameter 'size' expects a size from 0 to"),
            "{desc}"
        );
    }
    let ours_bad = refusals(&mut qmp, dir.path());
    assert!(
        !path("never").exists(),
        "a bad cpu-index is refused before the file is made"
    );

    // QEMU 7.2 with the same guest: the same refusals, word for word, and its core's notes
    // shaped as ours.
    let qemu_dir = TempDir::new("memdump-qemu");
    let mut qemu = Qemu::guest("", &["-smp", "2"]);
    let mut theirs = qemu.client();
    theirs.ok("cont", json!({}));
    qemu.vm.expect_prefix("GUEST IDLE", Duration::from_secs(30));
    let qemu_core = qemu_dir.path().join("core");
    theirs.ok(
        "dump-guest-memory",
        json!({"paging": false, "protocol": format!("file:{}", path_arg(&qemu_core))}),
    );
    let qemu_notes = notes(&qemu_core);
    assert_eq!(ours, qemu_notes, "ours, then QEMU's");
    // QEMU 7.2 here is built without LZO and snappy: its formats are ours, less those.
    let qemu_formats = theirs.ok("query-dump-guest-memory-capability", json!({}));
    let qemu_formats = qemu_formats["formats"].as_array().unwrap();
    let mut ours_formats = formats["formats"].as_array().unwrap().iter();
    assert!(
        qemu_formats.iter().all(|f| ours_formats.any(|o| o == f)),
        "QEMU's {qemu_formats:?} in ours, in order: {formats}"
    );
    compare_with_qemu_kdump(&mut theirs, qemu_dir.path(), at, &kdumps);
    let mut pipe = pipe_dump(&mut theirs);
    let qemu_second = theirs.err(
        "dump-guest-memory",
        json!({"paging": false, "protocol": format!("file:{}", path_arg(&qemu_dir.path().join("second")))}),
    );
    assert_eq!(second, qemu_second, "a second dump while one runs");
    std::thread::spawn(move || std::io::copy(&mut pipe, &mut std::io::sink()));
    theirs.event("DUMP_COMPLETED");
    theirs.event("RESUME");
    while theirs.ok("query-dump", json!({}))["status"] == "active" {
        std::thread::sleep(Duration::from_millis(10));
    }
    let qemu_bad = refusals(&mut theirs, qemu_dir.path());
    assert_eq!(ours_bad.len(), qemu_bad.len());
    let ours_dir = path_arg(dir.path());
    let qemu_dir = path_arg(qemu_dir.path());
    for (ours, qemu) in ours_bad.iter().zip(&qemu_bad) {
        let ours = (
            ours.0.replace(ours_dir, "DIR"),
            ours.1.replace(ours_dir, "DIR"),
        );
        let qemu = (
            qemu.0.replace(qemu_dir, "DIR"),
            qemu.1.replace(qemu_dir, "DIR"),
        );
        assert_eq!(ours, qemu, "ours, then QEMU's");
    }
}

/// The memory the test guest's dump covers: 128 MiB of RAM, page after page.
const RAM_PAGES: u64 = 128 * MIB / kdump::PAGE;

/// Reads the kdump core at `file` (flattened); `makedumpfile -R` puts it in place the
/// same way, and crash reads the result's headers.
fn read_kdump(file: &Path) -> KdumpCore {
    let flat = std::fs::read(file).unwrap();
    let core = KdumpCore::from_flattened(&flat).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    let plain = file.with_extension("plain");
    let out = Command::new(require_tool("makedumpfile", "makedumpfile"))
        .arg("-R")
        .arg(&plain)
        .stdin(std::fs::File::open(file).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "makedumpfile -R: {out:?}");
    let rearranged = KdumpCore::from_plain(std::fs::read(&plain).unwrap()).unwrap();
    assert!(
        rearranged == core,
        "makedumpfile -R rearranged {file:?} otherwise"
    );
    // crash, given no kernel, prints the dump's headers (-d) and stops there.
    let out = Command::new(require_tool("crash", "crash"))
        .args(["-d", "4", "--minimal"])
        .arg(&plain)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let pages = core.pages().unwrap().len();
    for line in [
        format!("total_valid_pages: {pages}"),
        "num_prstatus_notes: 2".into(),
        format!("status: {} (DUMP_DH_COMPRESSED_", core.status()),
    ] {
        assert!(
            said.contains(&line),
            "crash on {file:?} lacks {line:?}:\n{said}"
        );
    }
    core
}

/// Guest memory as `core` holds it, from address 0 to `pages` pages (what it lacks reads
/// as 0xee), after checking each present page's descriptor: compressed with the core's
/// method and smaller than a page, or stored as it is.
fn memory_in(core: &KdumpCore, pages: u64) -> (Vec<u8>, usize) {
    let mut memory = vec![0xee; (pages * kdump::PAGE) as usize];
    let descriptors = core.descriptors().unwrap();
    let mut compressed = 0;
    for (pfn, d) in core.pages().unwrap().into_iter().zip(descriptors) {
        let (_, size, flags) = d;
        match flags {
            0 => assert_eq!(size, 4096, "pfn {pfn:#x} stored"),
            f => {
                assert_eq!(f, core.status(), "pfn {pfn:#x}: the core's compression");
                assert!(size < 4096, "pfn {pfn:#x} compressed to {size} bytes");
                compressed += 1;
            }
        }
        let data = core
            .page_data(d)
            .unwrap_or_else(|e| panic!("pfn {pfn:#x}: {e}"));
        if pfn < pages {
            let at = (pfn * kdump::PAGE) as usize;
            memory[at..at + data.len()].copy_from_slice(&data);
        }
    }
    (memory, compressed)
}

/// Each kdump format of the stopped guest: all of RAM, every page as pmemsave reads it
/// (the pattern among them), the VM left stopped by the dump. Returns the cores.
fn kdump_formats(qmp: &mut QmpClient, dir: &Path, at: u64, whole: &Value) -> Vec<KdumpCore> {
    qmp.ok("stop", json!({}));
    qmp.event("STOP");
    let ram = dir.join("ram");
    qmp.ok(
        "pmemsave",
        json!({"val": 0, "size": 128 * MIB, "filename": path_arg(&ram)}),
    );
    let ram = std::fs::read(&ram).unwrap();
    let mut cores = Vec::new();
    for (format, flag) in [
        ("kdump-zlib", kdump::ZLIB),
        ("kdump-lzo", kdump::LZO),
        ("kdump-snappy", kdump::SNAPPY),
    ] {
        let file = dir.join(format);
        let started = Instant::now();
        qmp.ok(
            "dump-guest-memory",
            json!({"paging": false, "protocol": format!("file:{}", path_arg(&file)),
                   "format": format}),
        );
        let took = started.elapsed();
        let done = qmp.event("DUMP_COMPLETED");
        assert_eq!(done["data"], json!({ "result": whole }), "{format}");
        let core = read_kdump(&file);
        let size = std::fs::metadata(&file).unwrap().len();
        eprintln!("{format}: {took:?}, {size} bytes");
        assert_eq!(core.status(), flag, "{format}: the header's compression");
        let pages = core.pages().unwrap();
        assert!(
            pages == (0..RAM_PAGES).collect::<Vec<_>>(),
            "{format}: every RAM page and no other"
        );
        let (memory, compressed) = memory_in(&core, RAM_PAGES);
        let at = at as usize;
        assert!(
            memory[at..at + PATTERN_BYTES as usize] == pattern(),
            "{format}: the pattern"
        );
        let differ = (0..RAM_PAGES as usize)
            .filter(|p| memory[p * 4096..(p + 1) * 4096] != ram[p * 4096..(p + 1) * 4096])
            .collect::<Vec<_>>();
        assert!(
            differ.is_empty(),
            "{format}: pages unlike pmemsave's: {differ:x?}"
        );
        assert!(compressed > 0, "{format}: no page compressed");
        check_with_c_libraries(&core, format);
        cores.push(core);
    }
    // A stopped VM stays stopped after a dump (no RESUME), as QEMU's.
    assert_eq!(qmp.ok("query-status", json!({}))["status"], "paused");
    qmp.ok("cont", json!({}));
    qmp.event("RESUME");
    // win-dmp: started, then failed, as QEMU's without a Windows guest's note.
    let (class, desc) = qmp.err(
        "dump-guest-memory",
        json!({"paging": false, "protocol": format!("file:{}", path_arg(&dir.join("w"))),
               "format": "win-dmp"}),
    );
    assert_eq!(
        (class.as_str(), desc.as_str()),
        ("GenericError", "win-dump: invalid vmcoreinfo note size")
    );
    let failed = qmp.event("DUMP_COMPLETED")["data"].clone();
    assert_eq!(failed["error"], "win-dump: invalid vmcoreinfo note size");
    assert_eq!(failed["result"]["status"], "failed");
    assert_eq!(failed["result"]["completed"], 0);
    cores
}

/// QEMU's RAM and ROM ranges (start, end exclusive, name) as `info mtree -f` shows
/// the system address space: what its dump covers.
fn qemu_memory(qemu: &mut QmpClient) -> Vec<(u64, u64, String)> {
    let tree = qemu.ok(
        "human-monitor-command",
        json!({"command-line": "info mtree -f"}),
    );
    let tree = tree.as_str().unwrap();
    let (_, system) = tree
        .split_once("AS \"memory\"")
        .expect("the memory address space");
    let system = system.split("FlatView #").next().unwrap();
    let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
    system
        .lines()
        .filter_map(|l| {
            let (range, rest) = l.trim().split_once(" (prio ")?;
            let (kind, name) = rest.split_once("): ")?;
            let kind = kind.split(", ").nth(1)?;
            let (start, end) = range.split_once('-')?;
            matches!(kind, "ram" | "rom" | "romd").then(|| {
                let name = name.split_whitespace().next().unwrap_or_default();
                (hex(start), hex(end) + 1, name.to_string())
            })
        })
        .collect()
}

/// QEMU 7.2's kdump-zlib core of the same guest, stopped: the same headers but for the
/// compression (ours in each format) and the count of page frames (QEMU's firmware ROM
/// sits just below 4 GiB, so its bitmaps cover 4 GiB, ours 128 MiB); the same notes; the
/// same pages but QEMU's firmware (pc.bios), which our VM has not (it boots the guest
/// itself); the pattern page alike.
fn compare_with_qemu_kdump(qemu: &mut QmpClient, dir: &Path, at: u64, ours: &[KdumpCore]) {
    qemu.ok("stop", json!({}));
    let file = dir.join("kdump-zlib");
    qemu.ok(
        "dump-guest-memory",
        json!({"paging": false, "protocol": format!("file:{}", path_arg(&file)),
               "format": "kdump-zlib"}),
    );
    qemu.event("DUMP_COMPLETED");
    let memory = qemu_memory(qemu);
    qemu.ok("cont", json!({}));
    let theirs = read_kdump(&file);
    let qemu_pages = theirs.pages().unwrap();
    let last = qemu_pages.last().copied().unwrap();
    let mapnr = |n: u64| n.to_string();
    for core in ours {
        for ((name, mine), (_, qemus)) in core.header().into_iter().zip(theirs.header()) {
            match name {
                "status" => {}
                "max_mapnr" => {
                    assert_eq!((mine, qemus), (mapnr(RAM_PAGES), mapnr(last + 1)), "{name}")
                }
                // Two bitmaps of a bit per page frame, in blocks.
                "bitmap_blocks" => assert_eq!(
                    (mine, qemus),
                    (
                        mapnr(2 * RAM_PAGES.div_ceil(8 * 4096)),
                        mapnr(2 * (last + 1).div_ceil(8 * 4096))
                    ),
                    "{name}"
                ),
                _ => assert_eq!(mine, qemus, "header field {name}: ours, then QEMU's"),
            }
        }
        for ((name, mine), (_, qemus)) in core.sub_header().into_iter().zip(theirs.sub_header()) {
            match name {
                "max_mapnr_64" => assert_eq!((mine, qemus), (RAM_PAGES, last + 1), "{name}"),
                _ => assert_eq!(mine, qemus, "sub-header field {name}: ours, then QEMU's"),
            }
        }
        assert_eq!(core.notes(), theirs.notes(), "notes: ours, then QEMU's");
    }
    assert_eq!(ours[0].status(), theirs.status(), "both zlib");
    let page_set = |ranges: &mut dyn Iterator<Item = (u64, u64)>| {
        let mut pages: Vec<u64> = ranges
            .flat_map(|(s, e)| s / 4096..e.div_ceil(4096))
            .collect();
        pages.sort_unstable();
        pages.dedup();
        pages
    };
    let firmware = page_set(
        &mut memory
            .iter()
            .filter(|r| r.2 == "pc.bios")
            .map(|r| (r.0, r.1)),
    );
    assert!(!firmware.is_empty(), "QEMU's firmware in {memory:?}");
    let expected = page_set(
        &mut (0..RAM_PAGES)
            .map(|p| (p * 4096, p * 4096 + 1))
            .chain(firmware.iter().map(|p| (p * 4096, p * 4096 + 1))),
    );
    assert!(
        qemu_pages == expected,
        "QEMU's pages are ours and its firmware's: {} pages, {} expected",
        qemu_pages.len(),
        expected.len()
    );
    let (memory, _) = memory_in(&theirs, RAM_PAGES);
    let at = at as usize;
    assert!(
        memory[at..at + PATTERN_BYTES as usize] == pattern(),
        "QEMU's core: the pattern"
    );
    let size = std::fs::metadata(&file).unwrap().len();
    eprintln!("QEMU's kdump-zlib: {size} bytes");
}

/// The pages `core` holds compressed with LZO or snappy, decompressed by those formats'
/// own C libraries (liblzo2's lzo1x_decompress_safe, which crash and makedumpfile call,
/// and libsnappy, through Debian's python3-lzo and python3-snappy): the same bytes as
/// tests/src/kdump.rs reads. (zlib's reader is checked on QEMU's core.)
fn check_with_c_libraries(core: &KdumpCore, format: &str) {
    let module = match format {
        "kdump-lzo" => "import lzo\ndef unpack(d): return lzo.decompress(d, False, 4096)",
        "kdump-snappy" => "import snappy\ndef unpack(d): return snappy.uncompress(d)",
        _ => return,
    };
    let script = format!(
        "{module}\nimport sys\ndata = sys.stdin.buffer.read()\nat = 0\n\
         while at < len(data):\n    n = int.from_bytes(data[at:at + 4], 'little')\n\
         \x20   sys.stdout.buffer.write(unpack(data[at + 4:at + 4 + n]))\n    at += 4 + n\n"
    );
    let compressed: Vec<_> = core
        .descriptors()
        .unwrap()
        .into_iter()
        .filter(|d| d.2 == core.status())
        .collect();
    let mut input = Vec::new();
    for d in &compressed {
        let stored = core.stored(*d).unwrap();
        input.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        input.extend_from_slice(stored);
    }
    let dir = TempDir::new("kdump-c");
    let packed = dir.path().join("pages");
    std::fs::write(&packed, &input).unwrap();
    // Debian's own Python, where its python3-lzo and python3-snappy are.
    let python = Path::new("/usr/bin/python3");
    assert!(
        python.exists(),
        "missing /usr/bin/python3: install python3-lzo and python3-snappy"
    );
    let out = Command::new(python)
        .args(["-c", &script])
        .stdin(std::fs::File::open(&packed).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{format} by the C library: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Vec<u8> = compressed
        .iter()
        .flat_map(|d| core.page_data(*d).unwrap())
        .collect();
    assert!(
        out.stdout == ours,
        "{format}: the C library reads {} bytes otherwise ({} pages)",
        out.stdout.len(),
        compressed.len()
    );
}
