//! Persistent dirty bitmaps in the bitmaps extension, with qemu-img and qemu-io as the
//! oracles: QEMU's bitmaps load here bit for bit, ours load in QEMU (which marks into
//! them and stores them back), and the clusters they take are counted (qemu-img check).

use std::fs::OpenOptions;
use std::path::Path;

use super::oracle::{check_clean, img_create, info, io_then_abort, ok, s, TempDir};
use crate::formats::qcow2::bitmaps::{bits_len, StoredBitmap};
use crate::formats::qcow2::Qcow2;
use crate::formats::Format;

fn rw(p: &Path) -> std::fs::File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

fn open_keeping(p: &Path, writable: bool) -> Qcow2 {
    let f = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(p)
        .unwrap();
    Qcow2::open_keeping_bitmaps(f, None, &ipc::Qcow2Options::default(), writable).unwrap()
}

/// The chunks set in `b`, in order.
fn chunks(b: &StoredBitmap) -> Vec<u64> {
    (0..b.bits.len() as u64 * 8)
        .filter(|&c| b.bits[(c / 8) as usize] & (1 << (c % 8)) != 0)
        .collect()
}

/// (name, flags) of the bitmaps qemu-img info lists.
fn listed(p: &Path) -> Vec<(String, Vec<String>, u64)> {
    let v: serde_json::Value = serde_json::from_str(&info(p)).unwrap();
    v["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    let flags = b["flags"].as_array().unwrap();
                    (
                        b["name"].as_str().unwrap().to_string(),
                        flags
                            .iter()
                            .map(|f| f.as_str().unwrap().to_string())
                            .collect(),
                        b["granularity"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn qemu_io(p: &Path, cmd: &str) {
    ok("qemu-io", &["-f", "qcow2", "-c", cmd, s(p)]);
}

#[test]
fn bitmaps_go_both_ways_between_qemu_and_us() {
    let t = TempDir::new();
    let img = t.path("disk.qcow2");
    img_create(&img, "", "4M");
    ok("qemu-img", &["bitmap", "--add", "-g", "64k", s(&img), "b0"]);
    ok(
        "qemu-img",
        &["bitmap", "--add", "-g", "512", "--disable", s(&img), "b1"],
    );
    // QEMU marks into the recording one (b0) only: chunks 0 and 16.
    qemu_io(&img, "write -P 1 0 64k");
    qemu_io(&img, "write -P 2 1048676 10");

    let q = open_keeping(&img, true);
    let mut loaded = q.load_bitmaps().unwrap();
    assert_eq!(loaded.len(), 2);
    let (b0, b1) = (&loaded[0], &loaded[1]);
    assert_eq!(
        (b0.name.as_str(), b0.granularity, b0.recording),
        ("b0", 65536, true)
    );
    assert_eq!(chunks(b0), vec![0, 16]);
    assert_eq!(
        (b1.name.as_str(), b1.granularity, b1.recording),
        ("b1", 512, false)
    );
    assert_eq!(chunks(b1), Vec::<u64>::new());
    assert_eq!(b1.bits.len() as u64, bits_len(4 << 20, 512));
    // Loaded by a writable open: in use until stored back.
    let flags: Vec<_> = listed(&img).into_iter().map(|(_, f, _)| f).collect();
    assert!(
        flags.iter().all(|f| f.contains(&"in-use".to_string())),
        "{flags:?}"
    );

    // We mark chunk 63 of b0, drop b1, add b2 (4 KiB, disabled, one bit).
    loaded[0].bits[7] |= 0x80;
    let mut b2 = StoredBitmap {
        name: "b2".into(),
        granularity: 4096,
        recording: false,
        in_use: false,
        bits: vec![0; bits_len(4 << 20, 4096) as usize],
    };
    b2.bits[100] = 0x10; // chunk 804
    q.store_bitmaps(&[loaded[0].clone(), b2]).unwrap();
    q.close().unwrap();
    drop(q);
    assert_eq!(
        listed(&img),
        vec![
            ("b0".to_string(), vec!["auto".to_string()], 65536),
            ("b2".to_string(), vec![], 4096)
        ]
    );
    check_clean(&img);

    // QEMU loads ours, marks chunk 32 of b0, stores them back; we read its bits.
    qemu_io(&img, "write -P 3 2M 4k");
    check_clean(&img);
    let q = open_keeping(&img, false);
    let again = q.load_bitmaps().unwrap();
    assert_eq!(chunks(&again[0]), vec![0, 16, 32, 63]);
    assert_eq!(chunks(&again[1]), vec![804]);
    drop(q);

    // Stored again with none: the extension and its clusters go.
    let q = open_keeping(&img, true);
    q.load_bitmaps().unwrap();
    q.store_bitmaps(&[]).unwrap();
    q.close().unwrap();
    drop(q);
    assert_eq!(listed(&img), vec![]);
    check_clean(&img);
}

#[test]
fn an_open_that_does_not_keep_bitmaps_says_they_are_stale() {
    let t = TempDir::new();
    let img = t.path("disk.qcow2");
    img_create(&img, "", "1M");
    ok("qemu-img", &["bitmap", "--add", s(&img), "b0"]);
    // A read-only open changes nothing; a writable one that keeps them neither.
    for writable in [false, true] {
        let q = open_keeping(&img, writable);
        drop(q);
    }
    let q = open_keeping(&img, false);
    assert_eq!(q.load_bitmaps().unwrap().len(), 1);
    drop(q);
    // Written without keeping them (a job's target, a commit's base): QEMU ignores them.
    let f = rw(&img);
    drop(Qcow2::open(f, None, &ipc::Qcow2Options::default(), true).unwrap());
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read 0 512", s(&img)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("inconsistent"), "{text}");
    assert_eq!(open_keeping(&img, false).load_bitmaps().unwrap(), vec![]);
}

#[test]
fn a_malformed_directory_fails_a_keeping_open_with_a_clear_error() {
    let t = TempDir::new();
    let img = t.path("disk.qcow2");
    img_create(&img, "", "1M");
    ok("qemu-img", &["bitmap", "--add", s(&img), "b0"]);
    let q = open_keeping(&img, false);
    let dir = q.with_meta(|m| m.header.bitmaps.unwrap().directory_offset);
    drop(q);
    // The entry's type byte (16) becomes 7.
    let f = rw(&img);
    std::os::unix::fs::FileExt::write_all_at(&f, &[7], dir + 16).unwrap();
    let f = rw(&img);
    let err = Qcow2::open_keeping_bitmaps(f, None, &ipc::Qcow2Options::default(), true)
        .err()
        .expect("a bad bitmap type must fail the open");
    assert!(
        err.to_string().contains("bitmap 'b0' has flags, a type"),
        "{err}"
    );
    // An open that does not keep them still works.
    let f = OpenOptions::new().read(true).open(&img).unwrap();
    Qcow2::open(f, None, &ipc::Qcow2Options::default(), false).unwrap();
}

#[test]
fn a_bitmap_left_in_use_loads_stale_empty_and_is_stored_back_as_it_was() {
    let t = TempDir::new();
    let img = t.path("disk.qcow2");
    img_create(&img, "", "1M");
    ok("qemu-img", &["bitmap", "--add", s(&img), "b0"]);
    // QEMU dies with the bitmap loaded: in use in the image, written chunk 0.
    io_then_abort(&img, &["write 0 64k"]);
    let q = open_keeping(&img, true);
    let loaded = q.load_bitmaps().unwrap();
    assert_eq!(loaded.len(), 1);
    assert!(
        loaded[0].in_use && loaded[0].recording,
        "{:?}",
        loaded[0].name
    );
    assert_eq!(
        chunks(&loaded[0]),
        Vec::<u64>::new(),
        "stale bits are not read"
    );
    q.store_bitmaps(&loaded).unwrap();
    q.close().unwrap();
    drop(q);
    assert_eq!(
        listed(&img),
        vec![(
            "b0".to_string(),
            vec!["in-use".to_string(), "auto".to_string()],
            65536
        )]
    );
    check_clean(&img);
}
