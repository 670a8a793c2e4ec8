//! A real Linux guest (Debian's kernel under QEMU TCG, QEMU as the vhost-user frontend)
//! writing files on ext4 on a qcow2 disk served by block-daemon in gateway mode, driven
//! by the test as the gateway drives it (the gateway drives vmm-core, not QEMU): while
//! the guest writes, an external snapshot puts a new qcow2 top over the image (PushTop)
//! and an internal snapshot is made of it. The guest sees no I/O error, its files read
//! back, fsck finds the filesystem clean (in the guest, and on the chain as qemu-img
//! reads it), `qemu-img check` finds both images clean, the writes after the snapshot
//! went to the overlay, and the internal snapshot is a filesystem fsck accepts (it was
//! taken with the filesystem mounted: journal replay may be due, nothing more).

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::blk::{
    block_daemon_under_control, open_call, qcow2_over, qemu_img, qemu_img_ok,
};
use flotilla_tests::linux::{
    expect_ext4_writer_clean, ext4_writer_script, linux_on_vhost_user_blk,
};
use flotilla_tests::{path_arg as s, require_tool, TempDir};
use ipc::{
    BlockCounters, BlockOpen, BlockReply, BlockRequest, Connection, FromBlock, ImageFormat,
    ImageLayer, OnError, ToBlock,
};

const LINUX: Duration = Duration::from_secs(300);

/// One call and its answer (events, none expected here, are skipped).
fn call(
    conn: &Connection,
    id: u64,
    request: BlockRequest,
    fds: &[std::os::fd::BorrowedFd],
) -> BlockReply {
    conn.send(&ToBlock { id, request }, fds)
        .expect("sending a call");
    loop {
        match conn
            .recv::<FromBlock>()
            .expect("receiving")
            .expect("an answer")
            .msg
        {
            FromBlock::Response { result, .. } => return result.expect("the daemon's answer"),
            FromBlock::Event(e) => eprintln!("event: {e:?}"),
        }
    }
}

fn qcow2_layer(path: &Path) -> ImageLayer {
    ImageLayer {
        node_name: "n0".into(),
        format: ImageFormat::Qcow2(Default::default()),
        filename: s(path).into(),
    }
}

#[test]
fn linux_keeps_writing_through_snapshots() {
    let e2fsck = require_tool("e2fsck", "e2fsprogs");
    let dir = TempDir::new("linux-snap");
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", s(&base), "64M"]);
    qcow2_over(&top, s(&base));

    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut daemon = block_daemon_under_control(theirs);
    let conn = Connection::new(ours);
    let sock = dir.path().join("vhost.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let counters = BlockCounters::create().unwrap();
    let image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&base)
        .unwrap();
    let opened = call(
        &conn,
        1,
        BlockRequest::Open(BlockOpen {
            queues: 2,
            on_write_error: OnError::Report,
            ..open_call(vec![qcow2_layer(&base)])
        }),
        &[listener.as_fd(), counters.fd().as_fd(), image.as_fd()],
    );
    assert_eq!(
        opened,
        BlockReply::Opened {
            size: 64 << 20,
            loaded_bitmaps: vec![]
        }
    );

    let mut linux = linux_on_vhost_user_blk(dir.path(), &ext4_writer_script(40), &sock, false);
    linux.expect_prefix("WROTE 5", LINUX);
    // An internal snapshot of the image the guest writes, then a new top over it.
    let made = call(
        &conn,
        2,
        BlockRequest::SnapshotCreate {
            name: "mounted".into(),
        },
        &[],
    );
    assert!(
        matches!(made, BlockReply::Snapshot(ref s) if s.name == "mounted" && s.id == "1"),
        "{made:?}"
    );
    let new_top = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&top)
        .unwrap();
    assert_eq!(
        call(
            &conn,
            3,
            BlockRequest::PushTop(qcow2_layer(&top)),
            &[new_top.as_fd()]
        ),
        BlockReply::Done
    );
    let after = linux.transcript();
    assert!(
        !after.contains("WROTE 40"),
        "the guest finished before the snapshot: nothing proves it wrote through it"
    );
    expect_ext4_writer_clean(&mut linux, LINUX);
    assert_eq!(call(&conn, 4, BlockRequest::Quit, &[]), BlockReply::Done);
    drop(conn);
    assert!(
        daemon.wait(Duration::from_secs(20)).success(),
        "{}",
        daemon.transcript()
    );

    for image in [&base, &top] {
        let (ok, out, err) = qemu_img(&["check", s(image)]);
        assert!(
            ok && out.contains("No errors were found"),
            "qemu-img check {}:\n{out}{err}",
            image.display()
        );
    }
    assert!(qemu_img_ok(&["snapshot", "-l", s(&base)]).contains("mounted"));
    // The chain as qemu-img reads it is a clean filesystem holding what the guest
    // wrote; the base alone lacks what came after the snapshot.
    let fsck = |raw: &Path, strict: bool| {
        let out = Command::new(&e2fsck)
            .args(if strict { ["-fn"] } else { ["-fy"] })
            .arg(raw)
            .output()
            .unwrap();
        // 0: clean; 1: errors corrected (a journal replayed, for a snapshot of a
        // mounted filesystem).
        let code = out.status.code().unwrap_or(-1);
        assert!(
            code == 0 || (!strict && code == 1),
            "e2fsck {}: {out:?}",
            raw.display()
        );
    };
    let chain = dir.path().join("chain.raw");
    qemu_img_ok(&["convert", "-O", "raw", s(&top), s(&chain)]);
    fsck(&chain, true);
    let below = dir.path().join("base.raw");
    qemu_img_ok(&["convert", "-O", "raw", s(&base), s(&below)]);
    assert!(
        std::fs::read(&chain).unwrap() != std::fs::read(&below).unwrap(),
        "the writes after the snapshot reached the base"
    );
    let snap = dir.path().join("snap.raw");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        "-l",
        "snapshot.name=mounted",
        s(&base),
        s(&snap),
    ]);
    fsck(&snap, false);
}
