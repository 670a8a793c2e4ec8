//! What a stream or commit asks of an image: which bytes it holds itself (checked
//! against qemu-img map), its backing image, and a new backing image and header name.

use std::sync::Arc;

use super::oracle::{img_create, io, ok, s, TempDir};
use super::rw::open;
use crate::formats::Format;

/// The (start, length) runs qemu-img map says `path`'s own layer holds.
fn qemu_own_runs(path: &std::path::Path) -> Vec<(u64, u64)> {
    let map: serde_json::Value =
        serde_json::from_str(&ok("qemu-img", &["map", "--output=json", s(path)])).unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["depth"] == 0)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

#[test]
fn allocated_runs_match_qemu_img_map_and_the_backing_can_be_replaced() {
    let t = TempDir::new();
    let (base, mid, top) = (
        t.path("base.qcow2"),
        t.path("mid.qcow2"),
        t.path("top.qcow2"),
    );
    img_create(&base, "", "4M");
    io(&base, "write -P 0x11 0 4M");
    img_create(
        &mid,
        &format!("backing_file={},backing_fmt=qcow2", s(&base)),
        "4M",
    );
    io(&mid, "write -P 0x22 64k 192k");
    img_create(
        &top,
        &format!("backing_file={},backing_fmt=qcow2", s(&mid)),
        "4M",
    );
    io(&top, "write -P 0x33 1M 64k");
    io(&top, "write -z 2M 128k");

    let b: Arc<dyn Format> = Arc::new(open(&base, None, false));
    let m: Arc<dyn Format> = Arc::new(open(&mid, Some(b.clone()), false));
    let q = open(&top, Some(m.clone()), true);
    // Our runs of owned bytes, walked as a job walks them.
    let mut ours = Vec::new();
    let mut at = 0;
    while at < q.virtual_size() {
        let (own, n) = q.allocated(at, q.virtual_size() - at).unwrap();
        assert!(n > 0, "a run is never empty");
        if own {
            match ours.last_mut() {
                Some((start, len)) if *start + *len == at => *len += n,
                _ => ours.push((at, n)),
            }
        }
        at += n;
    }
    assert_eq!(
        ours,
        qemu_own_runs(&top),
        "top's own bytes (data and zeroes)"
    );
    assert!(q.backing().is_some_and(|x| Arc::ptr_eq(&x, &m)));

    // Cut mid out: the top reads through base, and names it.
    q.name_backing(s(&base), Some("qcow2")).unwrap();
    q.replace_backing(Some(b.clone()));
    let mut buf = vec![0u8; 4096];
    q.read(64 << 10, &mut buf).unwrap();
    assert!(
        buf.iter().all(|&x| x == 0x11),
        "mid's data is no longer read"
    );
    drop(q);
    let info = ok("qemu-img", &["info", "--output=json", s(&top)]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["backing-filename"], s(&base), "{info}");
    assert_eq!(info["backing-filename-format"], "qcow2", "{info}");
    // An image without a backing file owns everything.
    assert_eq!(b.allocated(0, 4 << 20).unwrap(), (true, 4 << 20));
}
