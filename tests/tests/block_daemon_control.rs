//! block-daemon in gateway mode, driven by the test as the gateway would (its control
//! socket, the image and listener as fds), with bad input on both of its channels: a
//! gateway that hangs up or starts with the wrong call, an image too small, a throttle
//! state page, counters page or dirty bitmap's memory too small (at the open and later),
//! and a vhost-user frontend that hangs up in the
//! middle of a message; a chain of layers that does not match its fds, and damaged qcow2
//! images (refused with QEMU's words, qemu-img being the oracle). Each gets a clear error,
//! and the daemon keeps serving what it can (a frontend that comes after the broken ones
//! is answered).

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use flotilla_tests::blk::{
    block_daemon_under_control as spawn, empty_image, open_call, qemu_img_ok, qemu_img_refusal,
};
use flotilla_tests::{TempDir, Vm};
use ipc::{
    BlockCounters, BlockOpen, BlockReply, BlockRequest, Connection, DirtyBitmapSpec, FromBlock,
    ImageFormat, ImageLayer, RemoteError, SharedBitmap, ThrottleLimits, ToBlock,
};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A daemon on a control link, and the vhost-user listener (in `dir`) to open it with.
fn daemon_in(dir: &std::path::Path) -> (Vm, Connection, UnixListener) {
    let listener = UnixListener::bind(dir.join("s")).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    (spawn(theirs), Connection::new(ours), listener)
}

fn call(conn: &Connection, id: u64, request: BlockRequest, fds: &[std::os::fd::BorrowedFd]) {
    conn.send(&ToBlock { id, request }, fds)
        .expect("sending a call");
}

fn answer(conn: &Connection) -> Result<BlockReply, RemoteError> {
    match conn
        .recv::<FromBlock>()
        .expect("receiving")
        .expect("an answer")
        .msg
    {
        FromBlock::Response { result, .. } => result,
        FromBlock::Event(e) => panic!("unexpected event {e:?}"),
    }
}

fn open_config() -> BlockOpen {
    open_call(vec![ImageLayer {
        node_name: "n0".into(),
        format: ImageFormat::Raw,
        filename: "image".into(),
    }])
}

/// The open call, with the image (read-write), the listener and a counters page.
fn open(conn: &Connection, image: &std::path::Path, listener: &UnixListener) {
    let counters = BlockCounters::create().unwrap();
    open_with(conn, image, listener, counters.fd().as_fd());
}

fn open_with(
    conn: &Connection,
    image: &std::path::Path,
    listener: &UnixListener,
    counters: std::os::fd::BorrowedFd,
) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    call(
        conn,
        1,
        BlockRequest::Open(open_config()),
        &[listener.as_fd(), counters, file.as_fd()],
    );
}

/// The open call for the chain `layers` (top first), with one fd per entry of `files`
/// (the top read-write unless `top_read_only`, the others read-only).
fn open_chain(
    conn: &Connection,
    layers: Vec<ImageLayer>,
    files: &[&std::path::Path],
    listener: &UnixListener,
    top_read_only: bool,
) {
    let counters = BlockCounters::create().unwrap();
    let files: Vec<std::fs::File> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(i == 0 && !top_read_only)
                .open(f)
                .unwrap()
        })
        .collect();
    let mut fds = vec![listener.as_fd(), counters.fd().as_fd()];
    fds.extend(files.iter().map(|f| f.as_fd()));
    call(
        conn,
        1,
        BlockRequest::Open(BlockOpen {
            layers,
            ..open_config()
        }),
        &fds,
    );
}

fn layer(path: &std::path::Path, format: ImageFormat) -> ImageLayer {
    ImageLayer {
        node_name: "n0".into(),
        format,
        filename: path.display().to_string(),
    }
}

fn qcow2() -> ImageFormat {
    ImageFormat::Qcow2(Default::default())
}

fn expect_failure(vm: &mut Vm, message: &str) {
    let status = vm.wait(TIMEOUT);
    assert!(!status.success(), "exited {status}:\n{}", vm.transcript());
    let t = vm.transcript();
    assert!(t.contains(message), "no '{message}' in:\n{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn a_gateway_that_hangs_up_before_opening() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut vm = spawn(theirs);
    drop(ours);
    expect_failure(&mut vm, "hung up before opening a node");
}

#[test]
fn the_first_call_must_open() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut vm = spawn(theirs);
    let conn = Connection::new(ours);
    call(&conn, 1, BlockRequest::Stats, &[]);
    expect_failure(&mut vm, "expected the open call first");
}

#[test]
fn garbage_on_the_control_channel() {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let mut vm = spawn(theirs);
    // A frame header promising 64 bytes, then 64 bytes that decode to nothing.
    let mut frame = 64u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(&[0xff; 64]);
    ours.write_all(&frame).unwrap();
    expect_failure(&mut vm, "undecodable message");
}

#[test]
fn an_image_smaller_than_a_sector_is_refused() {
    let dir = TempDir::new("bd-control-tiny");
    let image = dir.path().join("tiny.img");
    empty_image(&image, 100);
    let (mut vm, conn, listener) = daemon_in(dir.path());
    open(&conn, &image, &listener);
    let err = answer(&conn).unwrap_err();
    assert!(err.desc.contains("smaller than one sector"), "{err:?}");
    expect_failure(&mut vm, "smaller than one sector");
}

#[test]
fn a_counters_page_smaller_than_its_layout_is_refused() {
    let dir = TempDir::new("bd-control-counters");
    let image = dir.path().join("d.img");
    empty_image(&image, 1 << 20);
    let listener = UnixListener::bind(dir.path().join("s")).unwrap();
    let counters = BlockCounters::create().unwrap();
    std::fs::File::from(counters.fd().try_clone().unwrap())
        .set_len(8)
        .unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut vm = spawn(theirs);
    let conn = Connection::new(ours);
    open_with(&conn, &image, &listener, counters.fd().as_fd());
    let err = answer(&conn).unwrap_err();
    assert!(err.desc.contains("counters page is 8 bytes"), "{err:?}");
    expect_failure(&mut vm, "counters page is 8 bytes");
}

#[test]
fn an_open_whose_dirty_bitmap_memory_is_short_is_refused() {
    let dir = TempDir::new("bd-control-bitmap");
    let image = dir.path().join("d.img");
    empty_image(&image, 1 << 20);
    let (mut vm, conn, listener) = daemon_in(dir.path());
    let counters = BlockCounters::create().unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    let memory = SharedBitmap::create(1 << 20, 65536).unwrap();
    let config = BlockOpen {
        dirty_bitmaps: vec![DirtyBitmapSpec {
            name: "b".into(),
            size: 1 << 40,
            granularity: 512,
            recording: true,
            persistent: false,
            inconsistent: false,
        }],
        ..open_config()
    };
    call(
        &conn,
        1,
        BlockRequest::Open(config),
        &[
            listener.as_fd(),
            counters.fd().as_fd(),
            file.as_fd(),
            memory.fd().unwrap(),
        ],
    );
    let err = answer(&conn).unwrap_err();
    let why = "dirty bitmap 'b': dirty bitmap memory is 4096 bytes, 268435456 needed";
    assert_eq!(err.desc, why);
    expect_failure(&mut vm, why);
}

#[test]
fn bad_state_and_a_broken_frontend_leave_the_daemon_serving() {
    let dir = TempDir::new("bd-control-serving");
    let image = dir.path().join("d.img");
    empty_image(&image, 1 << 20);
    let socket = dir.path().join("s");
    let listener = UnixListener::bind(&socket).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut vm = spawn(theirs);
    let conn = Connection::new(ours);
    open(&conn, &image, &listener);
    assert_eq!(
        answer(&conn),
        Ok(BlockReply::Opened {
            size: 1 << 20,
            loaded_bitmaps: vec![]
        })
    );
    drop(listener);

    // A throttle state page smaller than the state: refused, nothing else changes.
    let page: OwnedFd = ipc::new_throttle_state().unwrap();
    std::fs::File::from(page.try_clone().unwrap())
        .set_len(8)
        .unwrap();
    let mut limits = ThrottleLimits::default();
    limits.buckets[ipc::OPS_TOTAL].avg = 10;
    call(
        &conn,
        2,
        BlockRequest::SetThrottle(Some(limits)),
        &[page.as_fd()],
    );
    let err = answer(&conn).unwrap_err();
    assert!(err.desc.contains("smaller than"), "{err:?}");

    // Dirty bitmaps whose memory is smaller than their size needs, or whose granularity
    // is not one: refused, and the set marked into stays as it was.
    let memory = SharedBitmap::create(1 << 20, 512).unwrap();
    for (id, size, granularity, why) in [
        (
            10,
            1u64 << 30,
            512,
            "dirty bitmap 'b': dirty bitmap memory is 4096 bytes, 262144 needed",
        ),
        (
            11,
            1 << 20,
            1000,
            "dirty bitmap 'b': granularity 1000 is not a power of 2",
        ),
    ] {
        let spec = DirtyBitmapSpec {
            name: "b".into(),
            size,
            granularity,
            recording: true,
            persistent: false,
            inconsistent: false,
        };
        call(
            &conn,
            id,
            BlockRequest::SetDirtyBitmaps(vec![spec]),
            &[memory.fd().unwrap()],
        );
        let err = answer(&conn).unwrap_err();
        assert!(err.desc.starts_with(why), "{err:?}");
    }

    // A frontend that sends half a vhost-user header and hangs up; then another that
    // hangs up at once. The daemon goes back to listening after each.
    for partial in [&[1u8, 0, 0][..], &[]] {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(partial).unwrap();
        drop(s);
    }
    // connect() alone would succeed from the listen backlog whether or not the daemon
    // accepts: the daemon must answer a well-formed message. GET_FEATURES (1), version
    // flag 0x1, no payload; the reply has the reply flag (0x4) and the features (u64).
    let mut again = UnixStream::connect(&socket).expect("the daemon listens again");
    again.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut msg = 1u32.to_le_bytes().to_vec();
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    again.write_all(&msg).unwrap();
    let mut reply = [0u8; 20];
    std::io::Read::read_exact(&mut again, &mut reply).expect("a reply to GET_FEATURES");
    let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().unwrap());
    assert_eq!(
        (word(0), word(4), word(8)),
        (1, 0x5, 8),
        "GET_FEATURES reply header"
    );
    let features = u64::from_le_bytes(reply[12..20].try_into().unwrap());
    // VHOST_USER_F_PROTOCOL_FEATURES (bit 30) and VIRTIO_F_VERSION_1 (bit 32).
    let (protocol_features, version_1) = (1u64 << 30, 1u64 << 32);
    assert_ne!(
        features & protocol_features,
        0,
        "features {features:#x} lack VHOST_USER_F_PROTOCOL_FEATURES"
    );
    assert_ne!(
        features & version_1,
        0,
        "features {features:#x} lack VERSION_1"
    );
    drop(again);

    call(&conn, 3, BlockRequest::Stats, &[]);
    match answer(&conn) {
        Ok(BlockReply::Stats(s)) => assert_eq!(s.size, 1 << 20),
        other => panic!("stats: {other:?}"),
    }
    call(&conn, 4, BlockRequest::Quit, &[]);
    assert_eq!(answer(&conn), Ok(BlockReply::Done));
    let status = vm.wait(TIMEOUT);
    assert!(status.success(), "{status}:\n{}", vm.transcript());
    assert!(!vm.transcript().contains("panicked"));
}

/// The chain's fds must be what the open call says they are: a writable node's image
/// opened read-only is refused (the link itself refuses a frame whose fds do not number
/// what its message declares: ipc's tests).
#[test]
fn a_writable_node_on_a_read_only_fd_is_refused() {
    let dir = TempDir::new("bd-control-mismatch");
    let image = dir.path().join("d.img");
    empty_image(&image, 1 << 20);
    let (mut vm, conn, listener) = daemon_in(dir.path());
    let raw = layer(&image, ImageFormat::Raw);
    open_chain(&conn, vec![raw], &[&image], &listener, true);
    let err = answer(&conn).unwrap_err();
    let text = format!(
        "'{}' is open read-only but the node is writable",
        image.display()
    );
    assert_eq!(err.desc, text);
    expect_failure(&mut vm, &text);
}

/// A qcow2 chain (qcow2 over raw, made by qemu-img) opens at the top's virtual size.
#[test]
fn a_qcow2_chain_opens_at_its_virtual_size() {
    let dir = TempDir::new("bd-control-qcow2");
    let base = dir.path().join("base.raw");
    let top = dir.path().join("top.qcow2");
    empty_image(&base, 1 << 20);
    let (b, t) = (base.to_str().unwrap(), top.to_str().unwrap());
    qemu_img_ok(&["create", "-q", "-f", "qcow2", "-b", b, "-F", "raw", t, "3M"]);
    let info = qemu_img_ok(&["info", "--output=json", t]);
    assert!(info.contains("\"virtual-size\": 3145728"), "{info}");
    let (mut vm, conn, listener) = daemon_in(dir.path());
    open_chain(
        &conn,
        vec![layer(&top, qcow2()), layer(&base, ImageFormat::Raw)],
        &[&top, &base],
        &listener,
        false,
    );
    assert_eq!(
        answer(&conn),
        Ok(BlockReply::Opened {
            size: 3 << 20,
            loaded_bitmaps: vec![]
        })
    );
    call(&conn, 2, BlockRequest::Quit, &[]);
    assert_eq!(answer(&conn), Ok(BlockReply::Done));
    let status = vm.wait(TIMEOUT);
    assert!(status.success(), "{status}:\n{}", vm.transcript());
    let (ok, out, err) = flotilla_tests::blk::qemu_img(&["check", t]);
    assert!(ok, "qemu-img check after a clean close:\n{out}{err}");
}

/// Damaged qcow2 images: the open is refused with the words qemu-img uses for the same
/// image, and the daemon ends without a panic.
#[test]
fn damaged_qcow2_images_are_refused_with_qemus_words() {
    let dir = TempDir::new("bd-control-damaged");
    // (what is damaged, offset in the header, big-endian bytes written there)
    let damage: &[(&str, u64, &[u8])] = &[
        ("version 4", 4, &[0, 0, 0, 4]),
        ("cluster_bits 30", 20, &[0, 0, 0, 30]),
        ("the magic", 0, b"QFJ\xfb"),
        (
            "an L1 table offset not cluster-aligned",
            40,
            &[0, 0, 0, 0, 0, 1, 0, 1],
        ),
        ("an L1 table too large", 36, &[0x10, 0, 0, 0]),
        (
            "a refcount table offset not aligned",
            48,
            &[0, 0, 0, 0, 0, 1, 2, 0],
        ),
        ("a refcount table too large", 56, &[0xff, 0xff, 0xff, 0xff]),
        (
            "an unknown incompatible feature",
            72,
            &[0x80, 0, 0, 0, 0, 0, 0, 0],
        ),
        ("a header length too short", 100, &[0, 0, 0, 0x10]),
    ];
    for (what, offset, bytes) in damage {
        let image = dir.path().join("bad.qcow2");
        let path = image.to_str().unwrap();
        qemu_img_ok(&["create", "-q", "-f", "qcow2", path, "16M"]);
        // A header field changed in place.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, bytes, *offset).unwrap();
        drop(f);
        let expected = qemu_img_refusal(&image, "qcow2");
        let (mut vm, conn, listener) = daemon_in(dir.path());
        open_chain(
            &conn,
            vec![layer(&image, qcow2())],
            &[&image],
            &listener,
            false,
        );
        let err = answer(&conn).unwrap_err();
        assert_eq!(err.desc, expected, "{what}");
        expect_failure(&mut vm, &expected);
        std::fs::remove_file(dir.path().join("s")).unwrap();
    }
}
