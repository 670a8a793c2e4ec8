//! The texts of HMP's block commands, from query-block, query-named-block-nodes,
//! query-blockstats and query-block-jobs, as QEMU 7.2 prints them; block_set_io_throttle,
//! which names a BlockBackend or a device as QEMU's does.

use serde_json::{Map, Value};

use super::reply::{error, quiet, read_args, run_qmp, usage};
use crate::qmp::context::Ctx;

/// HMP `info block [-n] [-v] [device]`: every disk (or the one named `device`), or with
/// -n (or a `device` that names no disk) the nodes (the one named so). Its flags are read
/// as QEMU's monitor reads them: each in its place (-n before -v), a flag out of place
/// skipped and then read as the device's name.
pub fn info_block(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    let mut rest = arguments.trim_start();
    let mut flags = [false, false];
    for (flag, letter) in flags.iter_mut().zip(['n', 'v']) {
        let Some(after) = rest.strip_prefix('-') else {
            continue;
        };
        match after.chars().next() {
            Some(l) if l == letter => {
                *flag = true;
                rest = after[1..].trim_start();
            }
            Some('n' | 'v') => {}
            other => {
                let shown = other.map(String::from).unwrap_or_default();
                return usage(
                    "block",
                    "info block",
                    &format!("unsupported option -{shown}"),
                );
            }
        }
    }
    let [nodes, verbose] = flags;
    let mut words = rest.split_whitespace();
    let device = words.next();
    if words.next().is_some() {
        return usage(
            "block",
            "info block",
            "extraneous characters at the end of line",
        );
    }
    let mut text = String::new();
    let mut printed = false;
    if !nodes {
        let disks = match run_qmp(c, "query-block", Map::new()) {
            Ok(d) => d,
            Err(e) => return error(&e),
        };
        for (i, disk) in list(&disks).iter().enumerate() {
            if device.is_some_and(|d| disk["device"] != d) {
                continue;
            }
            // As for nodes below: by the place in the whole list.
            if i > 0 {
                text.push('\n');
            }
            text += &block_info(Some(disk), disk.get("inserted"), verbose);
            printed = true;
        }
    }
    if (device.is_none() && !nodes) || printed {
        return text;
    }
    let all = match run_qmp(c, "query-named-block-nodes", Map::new()) {
        Ok(n) => n,
        Err(e) => return error(&e),
    };
    for (i, node) in list(&all).iter().enumerate() {
        if device.is_some_and(|d| node["node-name"] != d) {
            continue;
        }
        // QEMU separates by the place in the whole list, not by what it printed.
        if i > 0 {
            text.push('\n');
        }
        text += &block_info(None, Some(node), verbose);
    }
    text
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

fn int_of(v: &Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or_default()
}

/// One disk (`info`, query-block's entry) or node, and its inserted image.
fn block_info(info: Option<&Value>, inserted: Option<&Value>, verbose: bool) -> String {
    let mut t = String::new();
    let node_name = inserted.and_then(|i| i["node-name"].as_str());
    match info {
        Some(disk) if !str_of(disk, "device").is_empty() => {
            t += str_of(disk, "device");
            if let Some(node) = node_name {
                t += &format!(" ({node})");
            }
        }
        _ => {
            let qdev = info.and_then(|d| d["qdev"].as_str());
            t += node_name.or(qdev).unwrap_or("<anonymous>");
        }
    }
    match inserted {
        Some(i) => {
            let flag = |key: &str, word: &'static str| if i[key] == true { word } else { "" };
            t += &format!(
                ": {} ({}{}{})\n",
                str_of(i, "file"),
                str_of(i, "drv"),
                flag("ro", ", read-only"),
                flag("encrypted", ", encrypted")
            );
        }
        None => t += ": [not inserted]\n",
    }
    if let Some(disk) = info {
        if let Some(qdev) = disk["qdev"].as_str() {
            t += &format!("    Attached to:      {qdev}\n");
        }
        if let Some(status) = disk["io-status"].as_str().filter(|s| *s != "ok") {
            t += &format!("    I/O status:       {status}\n");
        }
        if disk["removable"] == true {
            let locked = if disk["locked"] == true { "" } else { "not " };
            let tray = if disk["tray_open"] == true {
                "open"
            } else {
                "closed"
            };
            t += &format!("    Removable device: {locked}locked, tray {tray}\n");
        }
    }
    let Some(i) = inserted else {
        return t;
    };
    let cache = &i["cache"];
    t += &format!(
        "    Cache mode:       {}{}{}\n",
        if cache["writeback"] == true {
            "writeback"
        } else {
            "writethrough"
        },
        if cache["direct"] == true {
            ", direct"
        } else {
            ""
        },
        if cache["no-flush"] == true {
            ", ignore flushes"
        } else {
            ""
        }
    );
    if let Some(backing) = i["backing_file"].as_str() {
        t += &format!(
            "    Backing file:     {backing} (chain depth: {})\n",
            int_of(i, "backing_file_depth")
        );
    }
    let zeroes = str_of(i, "detect_zeroes");
    if !zeroes.is_empty() && zeroes != "off" {
        t += &format!("    Detect zeroes:    {zeroes}\n");
    }
    let limits = ["bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"];
    if limits.iter().any(|k| int_of(i, k) != 0) {
        let keys = [
            "bps",
            "bps_rd",
            "bps_wr",
            "bps_max",
            "bps_rd_max",
            "bps_wr_max",
            "iops",
            "iops_rd",
            "iops_wr",
            "iops_max",
            "iops_rd_max",
            "iops_wr_max",
            "iops_size",
        ];
        let values: Vec<String> = keys
            .iter()
            .map(|k| format!("{k}={}", int_of(i, k)))
            .collect();
        t += &format!(
            "    I/O throttling:   {} group={}\n",
            values.join(" "),
            str_of(i, "group")
        );
    }
    if verbose {
        t += "\nImages:\n";
        let mut image = Some(&i["image"]);
        while let Some(im) = image.filter(|im| im.is_object()) {
            t += &image_info(im);
            image = im.get("backing-image");
        }
    }
    t
}

/// QEMU's size_to_str: three significant digits and a binary prefix ("16 MiB").
fn size_to_str(bytes: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // The prefix by the value's binary exponent, as QEMU's frexp() picks it: below
    // 1000 of a unit, so three digits never need an exponent.
    let scaled = bytes as f64 / (1000.0 / 1024.0);
    let exponent = if scaled == 0.0 {
        0
    } else {
        scaled.log2().floor() as i64 + 1
    };
    let i = ((exponent - 1).max(0) / 10).min(6) as usize;
    let value = bytes as f64 / (1u64 << (i * 10)) as f64;
    format!("{} {}B", three_digits(value), SUFFIXES[i])
}

/// C's "%0.3g" for 0 <= value < 1000.
fn three_digits(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let digits_before = value.log10().floor() as i32 + 1;
    let decimals = (3 - digits_before).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// One image of `info block -v` (QEMU's bdrv_image_info_dump, without the format's own
/// information: see qmp-coverage.md).
fn image_info(im: &Value) -> String {
    let size = im["virtual-size"].as_u64().unwrap_or_default();
    let disk = match im["actual-size"].as_u64() {
        Some(bytes) => size_to_str(bytes),
        None => "unavailable".into(),
    };
    let mut t = format!(
        "image: {}\nfile format: {}\nvirtual size: {} ({size} bytes)\ndisk size: {disk}\n",
        str_of(im, "filename"),
        str_of(im, "format"),
        size_to_str(size)
    );
    if im["encrypted"] == true {
        t += "encrypted: yes\n";
    }
    if let Some(cluster) = im["cluster-size"].as_i64() {
        t += &format!("cluster_size: {cluster}\n");
    }
    if im["dirty-flag"] == true {
        t += "cleanly shut down: no\n";
    }
    if let Some(backing) = im["backing-filename"].as_str() {
        t += &format!("backing file: {backing}");
        match im["full-backing-filename"].as_str() {
            None => t += " (cannot determine actual path)",
            Some(full) if full != backing => t += &format!(" (actual path: {full})"),
            Some(_) => {}
        }
        t.push('\n');
        if let Some(format) = im["backing-filename-format"].as_str() {
            t += &format!("backing file format: {format}\n");
        }
    }
    t
}

/// HMP `info blockstats`: each disk's counters on one line.
pub fn info_blockstats(stats: &Value, _: u32) -> String {
    const COUNTERS: [&str; 11] = [
        "rd_bytes",
        "wr_bytes",
        "rd_operations",
        "wr_operations",
        "flush_operations",
        "wr_total_time_ns",
        "rd_total_time_ns",
        "flush_total_time_ns",
        "rd_merged",
        "wr_merged",
        "idle_time_ns",
    ];
    list(stats)
        .iter()
        .filter_map(|s| {
            let device = s["device"].as_str()?;
            let counters: String = COUNTERS
                .iter()
                .map(|k| format!(" {k}={}", int_of(&s["stats"], k)))
                .collect();
            Some(format!("{device}:{counters}\n"))
        })
        .collect()
}

/// HMP `info block-jobs`.
pub fn info_block_jobs(jobs: &Value, _: u32) -> String {
    if list(jobs).is_empty() {
        return "No active jobs\n".into();
    }
    list(jobs)
        .iter()
        .map(|j| {
            let what = match str_of(j, "type") {
                "stream" => format!("Streaming device {}", str_of(j, "device")),
                kind => format!("Type {kind}, device {}", str_of(j, "device")),
            };
            format!(
                "{what}: Completed {} of {} bytes, speed limit {} bytes/s\n",
                int_of(j, "offset"),
                int_of(j, "len"),
                int_of(j, "speed")
            )
        })
        .collect()
}

/// HMP `block_set_io_throttle device bps bps_rd bps_wr iops iops_rd iops_wr`, as QEMU 7.2's:
/// `device` is a BlockBackend's name if one has it, else a device's id or QOM path.
pub fn block_set_io_throttle(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    const NAME: &str = "block_set_io_throttle";
    const SPEC: &str = "device:B,bps:l,bps_rd:l,bps_wr:l,iops:l,iops_rd:l,iops_wr:l";
    let mut members = match read_args(NAME, SPEC, arguments) {
        Ok(m) => m,
        Err(usage) => return usage,
    };
    let device = members.remove("device").unwrap_or_default();
    let name = device.as_str().unwrap_or_default();
    let key = if c.gw.block.has_backend_named(name) {
        "device"
    } else {
        "id"
    };
    members.insert(key.into(), device);
    quiet(run_qmp(c, "block_set_io_throttle", members))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_qemus_size_to_str() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(4096), "4 KiB");
        assert_eq!(size_to_str(16 << 20), "16 MiB");
        assert_eq!(size_to_str(1000), "0.977 KiB");
        assert_eq!(size_to_str(999), "999 B");
        assert_eq!(size_to_str(1536 << 20), "1.5 GiB");
        assert_eq!(size_to_str(200 << 30), "200 GiB");
    }
}
