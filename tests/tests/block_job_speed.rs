//! Block jobs keep to the speed they are given (bytes per second, within 10% over a run
//! of a few seconds), measured with the VM stopped so that only the job copies: a backup
//! to its end, a mirror to its first pass's end, a stream (whose walk a commit shares)
//! to its last byte (the flush after it is not rate-limited, and on a busy disk it alone
//! can take seconds). A file of its own, and its tests one at a time, so that no other
//! test's VM or job shares the CPUs or the disk while one is timed.

use std::path::Path;
use std::time::Duration;

use flotilla_tests::blk::{pattern_image, qcow2_from_raw, qcow2_over};
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::TempDir;
use serde_json::json;

const SEED: u64 = 0x0c14_0003;
/// 16 MiB.
const SECTORS: u64 = 32768;

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Held by the test that runs: one timed job at a time.
static TIMED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits until the job has copied its last byte (or is over).
fn until_copied(c: &mut QmpClient) {
    loop {
        let jobs = c.ok("query-block-jobs", json!({}));
        let copied = jobs.get(0).is_none_or(|j| {
            let (offset, len) = (j["offset"].as_u64(), j["len"].as_u64());
            len.is_some_and(|l| l > 0 && offset >= Some(l))
        });
        if copied {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for job `id`'s BLOCK_JOB_COMPLETED (no error).
fn completed(c: &mut QmpClient, id: &str) {
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert_eq!(done["data"]["device"], id, "{done}");
    assert!(done["data"].get("error").is_none(), "{done}");
}

#[test]
fn jobs_keep_to_their_speed() {
    let _alone = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("jobs-speed");
    let image = dir.path().join("d0.raw");
    pattern_image(&image, SEED, SECTORS);
    let gw = Gateway::start(&[
        "-S",
        "--drive",
        &format!("file={},format=raw,id=d0", p(&image)),
    ]);
    let mut c = gw.client();
    // The VM stays stopped: only the jobs copy. 16 MiB at 4 MiB/s: the first MiB goes
    // at once, the other 15 at the speed: 3.75 s.
    let expected = Duration::from_secs_f64(15.0 / 4.0);
    let within = |took: Duration, what: &str| {
        let ratio = took.as_secs_f64() / expected.as_secs_f64();
        assert!(
            (0.9..=1.1).contains(&ratio),
            "{what} took {took:?}, {ratio:.2} times the {expected:?} its speed allows"
        );
    };
    let started = std::time::Instant::now();
    c.ok(
        "drive-backup",
        json!({"device": "d0", "target": p(&dir.path().join("b.raw")), "format": "raw", "sync": "full", "speed": 4 << 20}),
    );
    until_copied(&mut c);
    within(started.elapsed(), "a backup");
    completed(&mut c, "d0");
    let started = std::time::Instant::now();
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "target": p(&dir.path().join("m.raw")), "format": "raw", "sync": "full", "speed": 4 << 20}),
    );
    c.event("BLOCK_JOB_READY");
    within(started.elapsed(), "a mirror's first pass");
    c.ok("block-job-cancel", json!({"device": "d0"}));
    c.event("BLOCK_JOB_COMPLETED");
}

#[test]
fn a_stream_keeps_to_its_speed() {
    let _alone = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("jobs-speed-stream");
    let raw = dir.path().join("base.raw");
    pattern_image(&raw, SEED, SECTORS);
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    qcow2_from_raw(&raw, &base, None);
    qcow2_over(&top, &p(&base));
    let gw = Gateway::start(&[
        "-S",
        "--drive",
        &format!("file={},format=qcow2,id=d0", p(&top)),
    ]);
    let mut c = gw.client();
    // All 16 MiB of base is copied into the top at 4 MiB/s: 4 s (each chunk's copy is
    // followed by the wait it costs, the last one's too).
    let expected = Duration::from_secs(4);
    let started = std::time::Instant::now();
    c.ok("block-stream", json!({"device": "d0", "speed": 4 << 20}));
    until_copied(&mut c);
    let took = started.elapsed();
    completed(&mut c, "d0");
    let ratio = took.as_secs_f64() / expected.as_secs_f64();
    assert!(
        (0.9..=1.1).contains(&ratio),
        "a stream took {took:?}, {ratio:.2} times the {expected:?} its speed allows"
    );
}
