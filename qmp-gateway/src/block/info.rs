//! QMP's views of block nodes and disks: BlockDeviceInfo (query-block's "inserted",
//! query-named-block-nodes), ImageInfo (with a qcow2 image's header facts, snapshots
//! and its backing chain's ImageInfo nested), and BlockDeviceStats (query-blockstats),
//! built from the graph and the daemons' counters, with the members QEMU 7.2 reports.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use ipc::{BlockStats, Latency, OpCounters, ThrottleLimits};
use serde_json::{json, Map, Value};

use super::graph::{Graph, Node};
use super::throttle;

// BLKGETSIZE64 from <linux/fs.h>.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// (virtual size, bytes allocated on the host) of an opened image.
pub fn image_sizes(fd: &OwnedFd) -> (u64, u64) {
    // SAFETY: fstat fills the struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd we own.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return (0, 0);
    }
    let allocated = st.st_blocks as u64 * 512;
    if st.st_mode & libc::S_IFMT == libc::S_IFBLK {
        let mut size = 0u64;
        // SAFETY: BLKGETSIZE64 writes one u64.
        if unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64, &mut size) } == 0 {
            return (size, 0);
        }
    }
    (st.st_size as u64, allocated)
}

/// ImageInfo of `node`: its image's sizes, and for qcow2 what the image's header and
/// snapshot table said when it was opened, with its backing node's ImageInfo nested.
pub fn image_info(graph: &Graph, node: &Node) -> Value {
    let proto = graph.protocol_of(&node.name);
    let (file_size, actual) = proto
        .and_then(|p| p.image.as_deref())
        .map(image_sizes)
        .unwrap_or((0, 0));
    let image_node = graph.image_node(&node.name).unwrap_or(node);
    let mut info = Map::new();
    info.insert("filename".into(), json!(node.filename));
    info.insert("format".into(), json!(node.driver.name()));
    let mut dirty = false;
    match &image_node.qcow2 {
        Some(q) => {
            info.insert("virtual-size".into(), json!(q.virtual_size));
            info.insert("actual-size".into(), json!(actual));
            info.insert("cluster-size".into(), json!(q.cluster_size));
            info.insert("format-specific".into(), q.format_specific());
            if !q.snapshots.is_empty() {
                info.insert("snapshots".into(), Value::Array(q.snapshots.clone()));
            }
            if let Some(named) = &q.backing_file {
                info.insert("backing-filename".into(), json!(named));
                let full = proto.and_then(|p| {
                    block_daemon::paths::resolve_backing(Path::new(&p.filename), named).ok()
                });
                if let Some(full) = full {
                    info.insert(
                        "full-backing-filename".into(),
                        json!(full.display().to_string()),
                    );
                }
                let backing = image_node.backing.as_deref().and_then(|b| graph.node(b));
                let format = q
                    .backing_format
                    .clone()
                    .or_else(|| backing.map(|b| b.driver.name().to_string()));
                if let Some(format) = format {
                    info.insert("backing-filename-format".into(), json!(format));
                }
            }
            dirty = q.dirty;
        }
        None => {
            // QEMU counts a file's length in whole sectors, rounded up.
            info.insert("virtual-size".into(), json!(file_size.div_ceil(512) * 512));
            info.insert("actual-size".into(), json!(actual));
        }
    }
    info.insert("dirty-flag".into(), json!(dirty));
    if let Some(backing) = image_node.backing.as_deref().and_then(|b| graph.node(b)) {
        info.insert("backing-image".into(), image_info(graph, backing));
    }
    Value::Object(info)
}

/// BlockDeviceInfo of `node`; `throttle`: the limits of the disk it is the root of.
pub fn node_info(
    graph: &Graph,
    node: &Node,
    throttle_of_disk: Option<(&ThrottleLimits, &str)>,
    write_threshold: u64,
) -> Value {
    let mut info = Map::new();
    info.insert("file".into(), json!(node.filename));
    info.insert("node-name".into(), json!(node.name));
    info.insert("ro".into(), json!(node.read_only));
    info.insert("drv".into(), json!(node.driver.name()));
    let backing = graph
        .image_node(&node.name)
        .and_then(|n| n.backing.as_deref())
        .and_then(|b| graph.node(b));
    if let Some(b) = backing {
        info.insert("backing_file".into(), json!(b.filename));
    }
    info.insert(
        "backing_file_depth".into(),
        json!(graph.backing_depth(&node.name)),
    );
    info.insert("encrypted".into(), json!(false));
    info.insert("detect_zeroes".into(), json!(node.detect_zeroes.qmp_name()));
    // BlockDeviceInfo's write_threshold is an int: QEMU shows a uint64 threshold past
    // int64 as the negative number of the same bits.
    info.insert("write_threshold".into(), json!(write_threshold as i64));
    info.insert("image".into(), image_info(graph, node));
    info.insert(
        "cache".into(),
        json!({"writeback": true, "direct": node.cache.direct, "no-flush": node.cache.no_flush}),
    );
    throttle::info_fields(throttle_of_disk, &mut info);
    Value::Object(info)
}

fn latency_fields(prefix: &str, l: &Latency, out: &mut Map<String, Value>) {
    out.insert(format!("min_{prefix}_latency_ns"), json!(l.min_ns));
    out.insert(format!("max_{prefix}_latency_ns"), json!(l.max_ns));
    out.insert(format!("avg_{prefix}_latency_ns"), json!(l.avg_ns));
}

fn op_fields(prefix: &str, c: &OpCounters, out: &mut Map<String, Value>, with_bytes: bool) {
    if with_bytes {
        out.insert(format!("{prefix}_bytes"), json!(c.bytes));
    }
    out.insert(format!("{prefix}_operations"), json!(c.operations));
    out.insert(format!("{prefix}_total_time_ns"), json!(c.total_time_ns));
    out.insert(format!("failed_{prefix}_operations"), json!(c.failed));
    out.insert(format!("invalid_{prefix}_operations"), json!(c.invalid));
    if prefix != "flush" {
        // Flotilla never merges requests.
        out.insert(format!("{prefix}_merged"), json!(0));
    }
}

/// BlockDeviceStats of a disk (what its guest device did), from its daemon's counters.
pub fn device_stats(s: &BlockStats) -> Value {
    let mut out = Map::new();
    op_fields("rd", &s.read, &mut out, true);
    op_fields("wr", &s.write, &mut out, true);
    op_fields("flush", &s.flush, &mut out, false);
    op_fields("unmap", &s.unmap, &mut out, true);
    out.insert("wr_highest_offset".into(), json!(s.wr_highest_offset));
    if let Some(idle) = s.idle_time_ns {
        out.insert("idle_time_ns".into(), json!(idle));
    }
    out.insert("account_invalid".into(), json!(true));
    out.insert("account_failed".into(), json!(true));
    let timed: Vec<Value> = s
        .timed
        .iter()
        .map(|t| {
            let mut m = Map::new();
            m.insert("interval_length".into(), json!(t.interval_length));
            latency_fields("rd", &t.read, &mut m);
            latency_fields("wr", &t.write, &mut m);
            latency_fields("flush", &t.flush, &mut m);
            m.insert("avg_rd_queue_depth".into(), json!(t.read.avg_queue_depth));
            m.insert("avg_wr_queue_depth".into(), json!(t.write.avg_queue_depth));
            Value::Object(m)
        })
        .collect();
    out.insert("timed_stats".into(), Value::Array(timed));
    Value::Object(out)
}

/// BlockDeviceStats of a node on its own: no device accounts through it, so only the
/// highest offset written is known (as in QEMU).
pub fn node_stats(wr_highest_offset: u64) -> Value {
    let mut v = device_stats(&BlockStats::default());
    v["wr_highest_offset"] = json!(wr_highest_offset);
    v["account_invalid"] = json!(false);
    v["account_failed"] = json!(false);
    v
}

/// The file driver's own counters (BlockStatsSpecificFile).
pub fn file_driver_stats(s: &BlockStats) -> Value {
    json!({
        "driver": "file",
        "discard-nb-ok": s.discard_ok,
        "discard-nb-failed": s.discard_failed,
        "discard-bytes-ok": s.discard_bytes_ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::TimedStats;

    #[test]
    fn stats_members() {
        let s = BlockStats {
            read: OpCounters {
                operations: 3,
                bytes: 12288,
                ..Default::default()
            },
            idle_time_ns: Some(5),
            timed: vec![TimedStats {
                interval_length: 60,
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = device_stats(&s);
        for key in [
            "rd_bytes",
            "wr_bytes",
            "unmap_bytes",
            "rd_operations",
            "wr_operations",
            "flush_operations",
            "unmap_operations",
            "rd_total_time_ns",
            "wr_total_time_ns",
            "flush_total_time_ns",
            "unmap_total_time_ns",
            "wr_highest_offset",
            "rd_merged",
            "wr_merged",
            "unmap_merged",
            "idle_time_ns",
            "failed_rd_operations",
            "failed_wr_operations",
            "failed_flush_operations",
            "failed_unmap_operations",
            "invalid_rd_operations",
            "invalid_wr_operations",
            "invalid_flush_operations",
            "invalid_unmap_operations",
            "account_invalid",
            "account_failed",
        ] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        assert_eq!(v["rd_operations"], 3);
        let t = &v["timed_stats"][0];
        for key in [
            "interval_length",
            "min_rd_latency_ns",
            "max_rd_latency_ns",
            "avg_rd_latency_ns",
            "min_wr_latency_ns",
            "max_wr_latency_ns",
            "avg_wr_latency_ns",
            "min_flush_latency_ns",
            "max_flush_latency_ns",
            "avg_flush_latency_ns",
            "avg_rd_queue_depth",
            "avg_wr_queue_depth",
        ] {
            assert!(t.get(key).is_some(), "timed {key} missing");
        }
        let n = node_stats(4096);
        assert_eq!(n["wr_highest_offset"], 4096);
        assert_eq!(n["account_failed"], false);
        assert!(n.get("idle_time_ns").is_none());
    }
}
