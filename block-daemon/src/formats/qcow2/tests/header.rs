//! Header, probe, create and snapshot list against qemu-img.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use super::oracle::{check_clean, fails, img_create, info, io, new_file, ok, s, TempDir};
use crate::formats::probe;
use crate::formats::qcow2::create::{create, Compat, CreateOptions};
use crate::formats::qcow2::header::Header;
use crate::formats::qcow2::snapshot;
use crate::formats::FormatError;

fn open(p: &std::path::Path) -> File {
    File::open(p).unwrap()
}

#[test]
fn reads_what_qemu_img_creates() {
    let d = TempDir::new();
    let base = d.path("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    for (opts, version, cbits, rbits, lazy) in [
        ("", 3, 16, 16, false),
        ("cluster_size=512,refcount_bits=1", 3, 9, 1, false),
        ("cluster_size=4096,refcount_bits=2", 3, 12, 2, false),
        ("cluster_size=2M,refcount_bits=64", 3, 21, 64, false),
        ("compat=0.10", 2, 16, 16, false),
        ("lazy_refcounts=on", 3, 16, 16, true),
    ] {
        let p = d.path("a.qcow2");
        img_create(&p, opts, "3G");
        let h = Header::read(&open(&p)).unwrap();
        assert_eq!(h.version, version, "{opts}");
        assert_eq!(h.cluster_bits, cbits, "{opts}");
        assert_eq!(h.refcount_bits(), rbits, "{opts}");
        assert_eq!(h.lazy_refcounts(), lazy, "{opts}");
        assert_eq!(h.size, 3 << 30);
        assert!(!h.dirty() && !h.corrupt());
        assert_eq!(h.backing_file, None);
        assert_eq!(probe(&open(&p)).unwrap(), "qcow2");
    }
    let p = d.path("b.qcow2");
    img_create(
        &p,
        &format!("backing_file={},backing_fmt=raw", s(&base)),
        "1M",
    );
    let h = Header::read(&open(&p)).unwrap();
    assert_eq!(h.backing_file.as_deref(), Some(s(&base)));
    assert_eq!(h.backing_format.as_deref(), Some("raw"));
    assert_eq!(probe(&open(&base)).unwrap(), "raw");
}

#[test]
fn create_makes_images_qemu_img_accepts() {
    let d = TempDir::new();
    let base = d.path("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let cases = [
        CreateOptions {
            size: 1 << 30,
            ..Default::default()
        },
        CreateOptions {
            size: 100 << 20,
            cluster_size: 512,
            refcount_bits: 1,
            ..Default::default()
        },
        CreateOptions {
            size: 8 << 30,
            cluster_size: 512,
            refcount_bits: 64,
            ..Default::default()
        },
        CreateOptions {
            size: 1 << 30,
            cluster_size: 2 << 20,
            refcount_bits: 8,
            ..Default::default()
        },
        CreateOptions {
            size: 1 << 20,
            compat: Compat::V0_10,
            ..Default::default()
        },
        CreateOptions {
            size: 0,
            ..Default::default()
        },
        CreateOptions {
            size: 1 << 20,
            lazy_refcounts: true,
            refcount_bits: 32,
            ..Default::default()
        },
        CreateOptions {
            size: 1 << 20,
            cluster_size: 512,
            backing_file: Some(s(&base).into()),
            backing_format: Some("raw".into()),
            ..Default::default()
        },
    ];
    for o in cases {
        let p = d.path("c.qcow2");
        let f = new_file(&p);
        create(&f, &o).unwrap();
        drop(f);
        check_clean(&p);
        let j = info(&p);
        assert!(
            j.contains(&format!("\"virtual-size\": {},", o.size)),
            "{o:?}: {j}"
        );
        assert!(
            j.contains(&format!("\"cluster-size\": {},", o.cluster_size)),
            "{o:?}: {j}"
        );
        let compat = if o.compat == Compat::V1_1 {
            "1.1"
        } else {
            "0.10"
        };
        assert!(
            j.contains(&format!("\"compat\": \"{compat}\"")),
            "{o:?}: {j}"
        );
        assert!(
            j.contains(&format!("\"refcount-bits\": {}", o.refcount_bits)),
            "{o:?}: {j}"
        );
        if o.compat == Compat::V1_1 {
            assert!(
                j.contains(&format!("\"lazy-refcounts\": {}", o.lazy_refcounts)),
                "{o:?}: {j}"
            );
        }
        if let Some(b) = &o.backing_file {
            assert!(j.contains(&format!("\"backing-filename\": \"{b}\"")), "{j}");
            assert!(j.contains("\"backing-filename-format\": \"raw\""), "{j}");
        }
        // qemu-io can write to it and the result stays consistent.
        if o.size >= 1 << 20 {
            io(&p, "write -P 0x5a 4096 8192");
            check_clean(&p);
        }
    }
}

#[test]
fn create_refuses_bad_options_as_qemu() {
    let d = TempDir::new();
    let p = d.path("x.qcow2");
    let f = new_file(&p);
    for (o, qopts) in [
        (
            CreateOptions {
                size: 1 << 20,
                cluster_size: 1000,
                ..Default::default()
            },
            "cluster_size=1000",
        ),
        (
            CreateOptions {
                size: 1 << 20,
                cluster_size: 4 << 20,
                ..Default::default()
            },
            "cluster_size=4M",
        ),
        (
            CreateOptions {
                size: 1 << 20,
                backing_format: Some("raw".into()),
                ..Default::default()
            },
            "backing_fmt=raw",
        ),
        (
            CreateOptions {
                size: 1 << 20,
                refcount_bits: 3,
                ..Default::default()
            },
            "refcount_bits=3",
        ),
        (
            CreateOptions {
                size: 1 << 20,
                compat: Compat::V0_10,
                refcount_bits: 8,
                ..Default::default()
            },
            "compat=0.10,refcount_bits=8",
        ),
        (
            CreateOptions {
                size: 1 << 20,
                compat: Compat::V0_10,
                lazy_refcounts: true,
                ..Default::default()
            },
            "compat=0.10,lazy_refcounts=on",
        ),
    ] {
        let ours = create(&f, &o).unwrap_err().to_string();
        let qemu = fails(
            "qemu-img",
            &["create", "-f", "qcow2", "-o", qopts, s(&p), "1M"],
        );
        assert!(qemu.contains(&ours), "ours {ours:?}, qemu-img {qemu:?}");
    }
}

/// Bytes to write at an offset.
type Edit<'a> = (u64, &'a [u8]);

/// Writes `bytes` at `at` of a fresh qemu-img image and returns (our error, qemu's).
fn damage(
    d: &TempDir,
    opts: &str,
    edits: &[(u64, &[u8])],
) -> (Result<Header, FormatError>, String) {
    let p = d.path("bad.qcow2");
    img_create(&p, opts, "64M");
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    for (at, b) in edits {
        f.write_all_at(b, *at).unwrap();
    }
    let ours = Header::read(&f);
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", s(&p)])
        .output()
        .expect("qemu-img is needed by this test");
    (ours, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn damaged_headers_fail_with_qemus_words() {
    let d = TempDir::new();
    let cases: Vec<(&[Edit], &str)> = vec![
        (&[(0, b"QFJ\xfb")], "Image is not in qcow2 format"), // qemu-img probes it as raw: checked below
        (&[(4, &[0, 0, 0, 4])], "Unsupported qcow2 version 4"),
        (&[(20, &[0, 0, 0, 8])], "Unsupported cluster size: 2^8"),
        (&[(20, &[0, 0, 0, 22])], "Unsupported cluster size: 2^22"),
        (&[(100, &[0, 0, 0, 100])], "qcow2 header too short"),
        (&[(100, &[0, 1, 0, 8])], "qcow2 header exceeds cluster size"),
        (
            &[(8, &[0, 0, 0, 0, 0, 2, 0, 0])],
            "Invalid backing file offset",
        ),
        (
            &[(72, &[0, 0, 0, 0, 0, 0, 0, 0x20])],
            "Unsupported qcow2 feature(s): Unknown incompatible feature: 20",
        ),
        (
            &[(72, &[0x80, 0, 0, 0, 0, 0, 0, 0x21])],
            "Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000020",
        ),
        (
            &[(96, &[0, 0, 0, 7])],
            "Reference count entry width too large; may not exceed 64 bits",
        ),
        (
            &[(56, &[0, 0, 0, 0])],
            "Image does not contain a reference count table",
        ),
        (&[(56, &[0, 0, 0x10, 0])], "Reference count table too large"),
        (
            &[(48, &[0, 0, 0, 0, 0, 0, 0x10, 1])],
            "Reference count table offset invalid",
        ),
        (
            &[(40, &[0, 0, 0, 0, 0, 3, 0, 1])],
            "Active L1 table offset invalid",
        ),
        (&[(36, &[0, 0x40, 0, 1])], "Active L1 table too large"),
        (&[(24, &[0, 0, 0, 1, 0, 0, 0, 0])], "L1 table is too small"),
        (&[(60, &[0, 1, 0, 1])], "Snapshot table too large"),
        (
            &[(64, &[0, 0, 0, 0, 0, 0, 0, 8]), (60, &[0, 0, 0, 1])],
            "Snapshot table offset invalid",
        ),
        (
            &[(104, &[2]), (72, &[0, 0, 0, 0, 0, 0, 0, 8])],
            "qcow2: unknown compression type: 2",
        ),
        (
            &[(72, &[0, 0, 0, 0, 0, 0, 0, 8])],
            "qcow2: Compression type incompatible feature bit must not be set",
        ),
        (
            &[(104, &[1])],
            "qcow2: Compression type incompatible feature bit must be set",
        ),
        (&[(116, &[0, 1, 0, 0])], "Header extension too large"),
        (
            &[(8, &[0, 0, 0, 0, 0, 0, 2, 0]), (16, &[0, 0, 0x10, 0])],
            "Backing file name too long",
        ),
    ];
    for (edits, text) in cases {
        let (ours, qemu) = damage(&d, "", edits);
        let ours = ours.expect_err(text).to_string();
        assert_eq!(ours, text);
        if !text.starts_with("Image is not") {
            assert!(
                qemu.contains(text),
                "qemu-img says {qemu:?}, expected {text:?}"
            );
        }
    }
    // The feature name table names a known bit that this version does not know.
    let (ours, qemu) = damage(
        &d,
        "",
        &[
            (72, &[0, 0, 0, 0, 0, 0, 0, 0x40]),
            (0x70 + 8 + 48 * 4 + 1, &[6]),
        ],
    );
    let ours = ours.unwrap_err().to_string();
    assert_eq!(ours, "Unsupported qcow2 feature(s): extended L2 entries");
    assert!(qemu.contains(&ours), "{qemu}");
}

#[test]
fn snapshot_list_matches_qemu_img() {
    let d = TempDir::new();
    let p = d.path("s.qcow2");
    img_create(&p, "", "16M");
    io(&p, "write -P 1 0 64k");
    ok("qemu-img", &["snapshot", "-c", "first", s(&p)]);
    io(&p, "write -P 2 0 64k");
    ok("qemu-img", &["snapshot", "-c", "second one", s(&p)]);
    ok("qemu-img", &["snapshot", "-d", "first", s(&p)]);
    ok("qemu-img", &["snapshot", "-c", "third", s(&p)]);
    let f = open(&p);
    let h = Header::read(&f).unwrap();
    let list = snapshot::list(&f, &h).unwrap();
    let names: Vec<(&str, &str)> = list
        .iter()
        .map(|s| (s.id.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(names, [("2", "second one"), ("3", "third")]);
    let j = info(&p);
    for sn in &list {
        assert!(
            j.contains(&format!("\"date-sec\": {},", sn.date_sec)),
            "{j}"
        );
        assert_eq!(sn.vm_state_size, 0);
        assert_eq!(sn.disk_size, 16 << 20);
        assert_eq!(sn.l1_size, 1);
        assert_eq!(sn.icount, Some(0)); // qemu-img info: "icount": 0
        assert!(
            j.contains(&format!("\"date-nsec\": {},", sn.date_nsec)),
            "{j}"
        );
    }
    // A table entry claiming too much extra data.
    let fw = OpenOptions::new().write(true).open(&p).unwrap();
    fw.write_all_at(&[0, 0, 0x10, 0], h.snapshots_offset + 36)
        .unwrap();
    let err = snapshot::list(&f, &h).unwrap_err().to_string();
    assert_eq!(err, "Too much extra metadata in snapshot table entry 0");
    let qemu = fails("qemu-img", &["info", s(&p)]);
    assert!(qemu.contains(&err), "{qemu}");
}

#[test]
fn features_this_implementation_lacks_are_refused_but_readable() {
    let d = TempDir::new();
    let df = d.path("data.raw");
    let cases = [
        (
            "z.qcow2",
            "compression_type=zstd".to_string(),
            "compression type: 1",
        ),
        ("e.qcow2", "extended_l2=on".to_string(), "extended L2"),
        (
            "d.qcow2",
            format!("data_file={}", s(&df)),
            "external data file",
        ),
    ];
    for (name, opts, text) in cases {
        let p = d.path(name);
        img_create(&p, &opts, "1M");
        let h = Header::read(&open(&p)).unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let err = crate::formats::qcow2::Qcow2::open(file, None, &Default::default(), false)
            .err()
            .unwrap();
        assert!(
            matches!(err, FormatError::Unsupported(_)),
            "{opts}: {err:?}"
        );
        assert!(err.to_string().contains(text), "{opts}: {err}");
        assert_eq!(h.compression_type == 1, name == "z.qcow2");
        assert_eq!(h.extended_l2, name == "e.qcow2");
    }
    // An AES-encrypted image (crypt_method 1; QEMU reads its header too).
    let p = d.path("enc.qcow2");
    img_create(&p, "", "1M");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&[0, 0, 0, 1], 32).unwrap();
    let h = Header::read(&open(&p)).unwrap();
    assert_eq!(h.crypt_method, 1);
    assert!(info(&p).contains("\"encrypted\": true"));
    let err = crate::formats::qcow2::Qcow2::open(open(&p), None, &Default::default(), false)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("encrypted images are not supported"),
        "{err}"
    );
}

#[test]
fn options_and_feature_bits_as_qemu() {
    let d = TempDir::new();
    let p = d.path("v2.qcow2");
    img_create(&p, "compat=0.10", "1M");
    let opts = ipc::Qcow2Options {
        lazy_refcounts: Some(true),
        ..Default::default()
    };
    let file = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let ours = crate::formats::qcow2::Qcow2::open(file, None, &opts, true)
        .err()
        .unwrap()
        .to_string();
    let qemu = fails(
        "qemu-io",
        &[
            "--image-opts",
            "-c",
            "read 0 512",
            &format!("driver=qcow2,lazy-refcounts=on,file.filename={}", s(&p)),
        ],
    );
    assert!(qemu.contains(&ours), "ours {ours:?}, qemu-io {qemu:?}");

    // Unknown compatible bits are ignored; unknown autoclear bits are cleared by a
    // writable open only.
    let p = d.path("v3.qcow2");
    img_create(&p, "", "1M");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&[0, 0, 0, 0, 0, 0, 0, 8], 80).unwrap();
    f.write_all_at(&[0, 0, 0, 0, 0, 0, 0, 0x20], 88).unwrap();
    let q = crate::formats::qcow2::Qcow2::open(open(&p), None, &Default::default(), false).unwrap();
    drop(q);
    assert_eq!(Header::read(&open(&p)).unwrap().autoclear_features, 0x20);
    let file = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    drop(crate::formats::qcow2::Qcow2::open(file, None, &Default::default(), true).unwrap());
    let h = Header::read(&open(&p)).unwrap();
    assert_eq!(h.autoclear_features, 0);
    assert_eq!(h.compatible_features, 8);
    check_clean(&p);
}

#[test]
fn probe_as_qemu_probes() {
    let d = TempDir::new();
    let p = d.path("p.img");
    let mut b = vec![0u8; 112];
    b[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
    // qemu-img reads its probe buffer padded with zeroes: eight bytes decide.
    for (len, version, want) in [
        (112, 3, "qcow2"),
        (8, 3, "qcow2"),
        (112, 0, "raw"),
        (4096, 2, "qcow2"),
    ] {
        b.resize(len, 0);
        b[7] = version;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(
            probe(&open(&p)).unwrap(),
            want,
            "{len} bytes, version {version}"
        );
        let j = std::process::Command::new("qemu-img")
            .args(["info", "--output=json", s(&p)])
            .output()
            .expect("qemu-img is needed by this test");
        let out =
            String::from_utf8_lossy(&j.stdout).into_owned() + &String::from_utf8_lossy(&j.stderr);
        if want == "raw" {
            assert!(out.contains("\"format\": \"raw\""), "{out}");
        } else {
            // qemu-img probes it as qcow2 (then finds it damaged).
            assert!(!out.contains("\"format\": \"raw\""), "{out}");
        }
    }
    // Version 1 is QEMU's old qcow format: refused, not served as raw.
    b[7] = 1;
    std::fs::write(&p, &b).unwrap();
    assert!(probe(&open(&p)).is_err());
    // (qemu-img takes it for qcow and fails on it, rather than reading it as raw)
    fails("qemu-img", &["info", s(&p)]);
    std::fs::write(&p, b"QFI\xfb\0\0\0").unwrap();
    assert_eq!(probe(&open(&p)).unwrap(), "raw");
    std::fs::write(&p, b"").unwrap();
    assert_eq!(probe(&open(&p)).unwrap(), "raw");
}
