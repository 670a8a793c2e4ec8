//! A real Linux guest (Debian's kernel under QEMU TCG, QEMU as the vhost-user frontend)
//! writing files on ext4 on a raw disk served by block-daemon, driven by the test as the
//! gateway drives it: while the guest writes, a mirror copies the disk to a second image,
//! becomes ready, and completes, so the daemon serves the copy from then on. The guest
//! sees no I/O error, its files read back, fsck finds the filesystem clean in the guest
//! and on the target as e2fsck reads it afterwards, and the source did not get the
//! writes that came after the completion.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::blk::{block_daemon_under_control, open_call};
use flotilla_tests::linux::{
    expect_ext4_writer_clean, ext4_writer_script, linux_on_vhost_user_blk,
};
use flotilla_tests::{path_arg as s, require_tool, TempDir};
use ipc::{
    BlockCounters, BlockEvent, BlockOpen, BlockReply, BlockRequest, Connection, FromBlock,
    ImageFormat, ImageLayer, JobControl, JobEvent, JobKind, JobSpec, MirrorSpec, OnError,
    SharedBitmap, SyncMode, ToBlock,
};

const LINUX: Duration = Duration::from_secs(300);
const SIZE: u64 = 64 << 20;

/// The daemon's link: calls, and the job's events as they come.
struct Link {
    conn: Connection,
    next_id: u64,
    events: Vec<JobEvent>,
}

impl Link {
    fn call(&mut self, request: BlockRequest, fds: &[std::os::fd::BorrowedFd]) -> BlockReply {
        self.next_id += 1;
        let id = self.next_id;
        self.conn
            .send(&ToBlock { id, request }, fds)
            .expect("sending a call");
        loop {
            match self.receive() {
                Some(FromBlock::Response { result, .. }) => {
                    return result.expect("the daemon's answer")
                }
                Some(FromBlock::Event(e)) => self.keep(e),
                None => panic!("the daemon hung up"),
            }
        }
    }

    fn receive(&self) -> Option<FromBlock> {
        self.conn
            .recv::<FromBlock>()
            .expect("receiving")
            .map(|m| m.msg)
    }

    fn keep(&mut self, e: BlockEvent) {
        match e {
            BlockEvent::Job(j) => self.events.push(j),
            other => eprintln!("event: {other:?}"),
        }
    }

    /// The next job event `want` accepts, within `timeout`.
    fn job_event(&mut self, want: impl Fn(&JobEvent) -> bool, timeout: Duration) -> JobEvent {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(&want) {
                return self.events.remove(i);
            }
            assert!(
                Instant::now() < deadline,
                "no such job event: {:?}",
                self.events
            );
            match self.receive() {
                Some(FromBlock::Event(e)) => self.keep(e),
                Some(other) => panic!("an answer to no call: {other:?}"),
                None => panic!("the daemon hung up"),
            }
        }
    }
}

fn raw_layer(path: &Path, node: &str) -> ImageLayer {
    ImageLayer {
        node_name: node.into(),
        format: ImageFormat::Raw,
        filename: s(path).into(),
    }
}

fn raw_image(path: &Path) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(SIZE).unwrap();
    f
}

#[test]
fn linux_writes_on_while_a_mirror_moves_its_disk() {
    let e2fsck = require_tool("e2fsck", "e2fsprogs");
    let dir = TempDir::new("linux-mirror");
    let (source, target) = (dir.path().join("source.raw"), dir.path().join("target.raw"));
    let source_file = raw_image(&source);
    let target_file = raw_image(&target);

    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut daemon = block_daemon_under_control(theirs);
    let mut link = Link {
        conn: Connection::new(ours),
        next_id: 0,
        events: Vec::new(),
    };
    let sock = dir.path().join("vhost.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let counters = BlockCounters::create().unwrap();
    let opened = link.call(
        BlockRequest::Open(BlockOpen {
            queues: 2,
            on_write_error: OnError::Report,
            ..open_call(vec![raw_layer(&source, "n0")])
        }),
        &[listener.as_fd(), counters.fd().as_fd(), source_file.as_fd()],
    );
    assert_eq!(
        opened,
        BlockReply::Opened {
            size: SIZE,
            loaded_bitmaps: vec![]
        }
    );

    let mut linux = linux_on_vhost_user_blk(dir.path(), &ext4_writer_script(60), &sock, false);
    linux.expect_prefix("WROTE 5", LINUX);
    let granularity = 64 << 10;
    let dirty = SharedBitmap::create(SIZE, granularity).unwrap();
    let copying = SharedBitmap::create(SIZE, granularity).unwrap();
    let spec = JobSpec {
        id: "m".into(),
        kind: JobKind::Mirror(MirrorSpec {
            target: raw_layer(&target, "t0"),
            sync: SyncMode::Full,
            granularity,
            buf_size: 10 << 20,
            unmap: true,
            fresh_target: true,
        }),
        speed: 0,
        on_source_error: OnError::Report,
        on_target_error: OnError::Report,
        resume: false,
        ready: false,
        offset: 0,
        paused: false,
        completing: false,
    };
    assert_eq!(
        link.call(
            BlockRequest::StartJob(spec),
            &[
                target_file.as_fd(),
                dirty.fd().unwrap(),
                copying.fd().unwrap()
            ],
        ),
        BlockReply::Done
    );
    link.job_event(|e| matches!(e, JobEvent::Ready { .. }), LINUX);
    // The guest goes on writing while the mirror follows it, then it completes.
    linux.expect_prefix("WROTE 12", LINUX);
    assert_eq!(
        link.call(
            BlockRequest::ControlJob {
                id: "m".into(),
                control: JobControl::Complete,
            },
            &[],
        ),
        BlockReply::Done
    );
    let ended = link.job_event(|e| matches!(e, JobEvent::Ended { .. }), LINUX);
    assert!(
        matches!(
            ended,
            JobEvent::Ended {
                cancelled: false,
                error: None,
                ..
            }
        ),
        "{ended:?}"
    );
    assert!(
        !linux.transcript().contains("WROTE 60"),
        "the guest finished before the completion: nothing proves it wrote through it"
    );
    expect_ext4_writer_clean(&mut linux, LINUX);
    assert_eq!(link.call(BlockRequest::Quit, &[]), BlockReply::Done);
    drop(link);
    assert!(
        daemon.wait(Duration::from_secs(20)).success(),
        "{}",
        daemon.transcript()
    );

    let fsck = Command::new(&e2fsck)
        .arg("-fn")
        .arg(&target)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "e2fsck of the target: {fsck:?}");
    assert!(
        std::fs::read(&source).unwrap() != std::fs::read(&target).unwrap(),
        "the writes after the completion reached the source"
    );
}
