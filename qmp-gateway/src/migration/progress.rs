//! A migration's progress as query-migrate reports it: its status (QEMU's
//! MigrationStatus), the times, and the RAM, disk, XBZRLE and compression counters, built
//! from what the agent reports after each part of a pass.

use std::time::Instant;

use ipc::PassReport;
use serde_json::{json, Map, Value};

/// QEMU's MigrationStatus, the values a Flotilla migration goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    None,
    Setup,
    Cancelling,
    Cancelled,
    Active,
    Device,
    /// The source stopped the VM and waits for migrate-continue (pause-before-switchover).
    PreSwitchover,
    /// The VM runs at the destination; the pages it lacks follow.
    PostcopyActive,
    Completed,
    Failed,
}

impl Status {
    pub fn qmp_name(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Setup => "setup",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
            Status::Active => "active",
            Status::Device => "device",
            Status::PreSwitchover => "pre-switchover",
            Status::PostcopyActive => "postcopy-active",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    /// Setup, active, pre-switchover, device, postcopy-active or cancelling: a migration
    /// is under way.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            Status::Setup
                | Status::Active
                | Status::PreSwitchover
                | Status::Device
                | Status::PostcopyActive
                | Status::Cancelling
        )
    }
}

pub const PAGE_SIZE: u64 = 4096;

/// RAM counters (MigrationStats).
#[derive(Clone, Debug, Default)]
pub struct Ram {
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
    pub duplicate: u64,
    pub normal: u64,
    pub dirty_sync_count: u64,
    pub dirty_pages_rate: u64,
    /// Throughput of the last pass, in bytes per second.
    pub bandwidth: f64,
    pub pages_per_second: u64,
    pub precopy_bytes: u64,
    pub downtime_bytes: u64,
    /// Postcopy: bytes sent after the switch, and the destination's page requests.
    pub postcopy_bytes: u64,
    pub postcopy_requests: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Xbzrle {
    pub cache_size: u64,
    pub bytes: u64,
    pub pages: u64,
    pub cache_miss: u64,
    pub overflow: u64,
}

/// The compress capability's counters (QEMU 7.2's CompressionStats): pages sent
/// deflated and their deflated bytes, pages sent whole because every worker was busy;
/// the rates are the last complete pass's (QEMU's are the last sync period's): busy
/// pages per page the pass handled, and page bytes per deflated byte.
#[derive(Clone, Debug, Default)]
pub struct Compression {
    pub pages: u64,
    pub busy: u64,
    pub compressed_size: u64,
    pub busy_rate: f64,
    pub compression_rate: f64,
    /// This pass so far: pages handled, busy pages, pages deflated and their bytes.
    pass_pages: u64,
    pass_busy: u64,
    pass_compressed: u64,
    pass_size: u64,
}

impl Compression {
    fn add(&mut self, r: &PassReport) {
        self.pages += r.compressed_pages;
        self.busy += r.compress_busy;
        self.compressed_size += r.compressed_bytes;
        self.pass_pages += r.normal_pages + r.zero_pages + r.xbzrle_pages + r.compressed_pages;
        self.pass_busy += r.compress_busy;
        self.pass_compressed += r.compressed_pages;
        self.pass_size += r.compressed_bytes;
        if r.remaining_pages == 0 && r.disk_remaining == 0 {
            // As QEMU: a period that handled no page, or deflated none, leaves its rate.
            if self.pass_pages > 0 {
                self.busy_rate = self.pass_busy as f64 / self.pass_pages as f64;
            }
            if self.pass_size > 0 {
                self.compression_rate =
                    (self.pass_compressed * PAGE_SIZE) as f64 / self.pass_size as f64;
            }
            (self.pass_pages, self.pass_busy) = (0, 0);
            (self.pass_compressed, self.pass_size) = (0, 0);
        }
    }
}

/// Block migration counters, as QEMU counts them: how far the first pass's copy of the
/// disks has come (`transferred`, bytes an incremental copy skips included), the rest
/// of their bytes, their total.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
    /// Bytes the guest wrote that the next pass sends (for the downtime estimate).
    pub dirty: u64,
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub status: Status,
    pub started: Option<Instant>,
    /// Set when the migration ended: its total time.
    pub total_ms: Option<u64>,
    pub setup_ms: u64,
    pub downtime_ms: Option<u64>,
    pub expected_downtime_ms: u64,
    pub ram: Ram,
    pub disk: Option<Disk>,
    pub xbzrle: Option<Xbzrle>,
    /// With the compress capability on.
    pub compression: Option<Compression>,
    pub error: Option<String>,
    /// CPU throttle of auto-converge, in percent (0: none).
    pub cpu_throttle: u8,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            status: Status::None,
            started: None,
            total_ms: None,
            setup_ms: 0,
            downtime_ms: None,
            expected_downtime_ms: 0,
            ram: Ram::default(),
            disk: None,
            xbzrle: None,
            compression: None,
            error: None,
            cpu_throttle: 0,
        }
    }
}

impl Progress {
    /// Adds what the agent reported for part of a pass.
    pub fn add(&mut self, r: &PassReport, stopped: bool) {
        if let Some(d) = &mut self.disk {
            d.transferred = r.disk_transferred.min(d.total);
            d.remaining = d.total - d.transferred;
            d.dirty = r.disk_dirty;
        }
        let r = &PassReport {
            bytes: r.bytes.saturating_sub(r.disk_bytes),
            ..*r
        };
        self.ram.transferred += r.bytes;
        self.ram.duplicate += r.zero_pages;
        self.ram.normal += r.normal_pages;
        self.ram.remaining = r.remaining_pages * PAGE_SIZE;
        if stopped {
            self.ram.downtime_bytes += r.bytes;
        } else {
            self.ram.precopy_bytes += r.bytes;
        }
        if let Some(x) = &mut self.xbzrle {
            x.bytes += r.xbzrle_bytes;
            x.pages += r.xbzrle_pages;
            x.cache_miss += r.xbzrle_cache_miss;
            x.overflow += r.xbzrle_overflow;
        }
        if let Some(c) = &mut self.compression {
            c.add(r);
        }
    }

    /// What the agent reported of the postcopy phase so far (totals since the switch;
    /// `before`: the previous report).
    pub fn add_postcopy(&mut self, r: &ipc::PostcopyReport, before: &ipc::PostcopyReport) {
        let bytes = r.bytes.saturating_sub(before.bytes);
        self.ram.transferred += bytes;
        self.ram.postcopy_bytes += bytes;
        self.ram.normal += r.normal_pages.saturating_sub(before.normal_pages);
        self.ram.duplicate += r.zero_pages.saturating_sub(before.zero_pages);
        self.ram.postcopy_requests = r.requests;
        self.ram.remaining = r.remaining_pages * PAGE_SIZE;
    }

    fn elapsed_ms(&self) -> u64 {
        match (self.total_ms, self.started) {
            (Some(t), _) => t,
            (None, Some(s)) => s.elapsed().as_millis() as u64,
            (None, None) => 0,
        }
    }

    /// query-migrate's answer (MigrationInfo).
    pub fn to_qmp(&self) -> Value {
        let mut m = Map::new();
        if self.status == Status::None {
            return Value::Object(m);
        }
        m.insert("status".into(), json!(self.status.qmp_name()));
        let shows_stats = matches!(
            self.status,
            Status::Active
                | Status::PreSwitchover
                | Status::Device
                | Status::PostcopyActive
                | Status::Completed
                | Status::Cancelling
        );
        // QEMU shows a failed or cancelled migration by its status (and error-desc) only.
        if shows_stats {
            m.insert("total-time".into(), json!(self.elapsed_ms()));
            m.insert("setup-time".into(), json!(self.setup_ms));
        }
        if self.status == Status::Completed {
            if let Some(d) = self.downtime_ms {
                m.insert("downtime".into(), json!(d));
            }
        } else if shows_stats {
            m.insert("expected-downtime".into(), json!(self.expected_downtime_ms));
        }
        if shows_stats {
            let r = &self.ram;
            let mbps = r.bandwidth * 8.0 / 1e6;
            m.insert(
                "ram".into(),
                json!({
                    "transferred": r.transferred,
                    "remaining": r.remaining,
                    "total": r.total,
                    "duplicate": r.duplicate,
                    "skipped": 0,
                    "normal": r.normal,
                    "normal-bytes": r.normal * PAGE_SIZE,
                    "dirty-sync-count": r.dirty_sync_count,
                    "dirty-pages-rate": r.dirty_pages_rate,
                    "mbps": mbps,
                    "page-size": PAGE_SIZE,
                    "pages-per-second": r.pages_per_second,
                    "postcopy-requests": r.postcopy_requests,
                    "multifd-bytes": 0,
                    "precopy-bytes": r.precopy_bytes,
                    "downtime-bytes": r.downtime_bytes,
                    "postcopy-bytes": r.postcopy_bytes,
                    "dirty-sync-missed-zero-copy": 0,
                }),
            );
            // QEMU 7.2 shows it while the disks move, not once completed, and as its
            // RAM's MigrationStats type (the members block migration does not count 0).
            if let Some(d) = self
                .disk
                .as_ref()
                .filter(|_| self.status != Status::Completed)
            {
                m.insert(
                    "disk".into(),
                    json!({
                        "transferred": d.transferred,
                        "remaining": d.remaining,
                        "total": d.total,
                        "duplicate": 0,
                        "skipped": 0,
                        "normal": 0,
                        "normal-bytes": 0,
                        "dirty-sync-count": 0,
                        "dirty-pages-rate": 0,
                        "mbps": 0,
                        "page-size": 0,
                        "pages-per-second": 0,
                        "postcopy-requests": 0,
                        "multifd-bytes": 0,
                        "precopy-bytes": 0,
                        "downtime-bytes": 0,
                        "postcopy-bytes": 0,
                        "dirty-sync-missed-zero-copy": 0,
                    }),
                );
            }
            if let Some(x) = &self.xbzrle {
                let looked = x.pages + x.cache_miss;
                let rate = if looked == 0 {
                    0.0
                } else {
                    x.cache_miss as f64 / looked as f64
                };
                m.insert(
                    "xbzrle-cache".into(),
                    json!({
                        "cache-size": x.cache_size,
                        "bytes": x.bytes,
                        "pages": x.pages,
                        "cache-miss": x.cache_miss,
                        "cache-miss-rate": rate,
                        "encoding-rate": if x.bytes == 0 { 0.0 } else { (x.pages * PAGE_SIZE) as f64 / x.bytes as f64 },
                        "overflow": x.overflow,
                    }),
                );
            }
            if let Some(c) = &self.compression {
                m.insert(
                    "compression".into(),
                    json!({
                        "pages": c.pages,
                        "busy": c.busy,
                        "busy-rate": c.busy_rate,
                        "compressed-size": c.compressed_size,
                        "compression-rate": c.compression_rate,
                    }),
                );
            }
            if self.cpu_throttle > 0 {
                m.insert("cpu-throttle-percentage".into(), json!(self.cpu_throttle));
            }
        }
        if let (Status::Failed, Some(e)) = (self.status, &self.error) {
            m.insert("error-desc".into(), json!(e));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_migration_is_an_empty_object_and_failure_carries_its_reason() {
        assert_eq!(Progress::default().to_qmp(), json!({}));
        let p = Progress {
            status: Status::Failed,
            error: Some("Failed to connect to '127.0.0.1:1': Connection refused".into()),
            total_ms: Some(1),
            ..Progress::default()
        };
        let v = p.to_qmp();
        assert_eq!(v["status"], "failed");
        assert_eq!(
            v["error-desc"],
            "Failed to connect to '127.0.0.1:1': Connection refused"
        );
        assert!(v.get("ram").is_none());
    }

    #[test]
    fn block_migration_shows_its_disks_while_they_move() {
        let mut p = Progress {
            status: Status::Active,
            started: Some(Instant::now()),
            disk: Some(Disk {
                total: 64 << 20,
                remaining: 64 << 20,
                ..Disk::default()
            }),
            ..Progress::default()
        };
        p.add(
            &PassReport {
                bytes: 5000,
                disk_bytes: 4000,
                disk_transferred: 16 << 20,
                disk_dirty: 65536,
                ..PassReport::default()
            },
            false,
        );
        let v = p.to_qmp();
        assert_eq!(v["ram"]["transferred"], 1000, "the disks' bytes are theirs");
        assert_eq!(v["disk"]["transferred"], 16 << 20);
        assert_eq!(v["disk"]["remaining"], 48 << 20);
        assert_eq!(v["disk"]["total"], 64 << 20);
        // QEMU's MigrationStats, as its RAM's.
        assert_eq!(v["disk"]["normal-bytes"], 0);
        assert_eq!(p.disk.as_ref().unwrap().dirty, 65536);
        p.status = Status::Completed;
        assert!(
            p.to_qmp().get("disk").is_none(),
            "QEMU 7.2 drops it once done"
        );
    }

    #[test]
    fn an_active_migration_shows_ram_and_expected_downtime() {
        let mut p = Progress {
            status: Status::Active,
            started: Some(Instant::now()),
            ..Progress::default()
        };
        p.ram.total = 256 << 20;
        p.add(
            &PassReport {
                bytes: 8192 + 26,
                normal_pages: 2,
                zero_pages: 10,
                remaining_pages: 5,
                ..PassReport::default()
            },
            false,
        );
        let v = p.to_qmp();
        assert_eq!(v["ram"]["normal-bytes"], 8192);
        assert_eq!(v["ram"]["duplicate"], 10);
        assert_eq!(v["ram"]["remaining"], 5 * 4096);
        assert!(v.get("expected-downtime").is_some());
        assert!(v.get("downtime").is_none());
    }

    #[test]
    fn compression_counts_and_rates_follow_the_passes() {
        let mut p = Progress {
            status: Status::Active,
            started: Some(Instant::now()),
            compression: Some(Compression::default()),
            ..Progress::default()
        };
        let part = |compressed_pages, compressed_bytes, busy, remaining_pages| PassReport {
            normal_pages: busy,
            zero_pages: 6,
            compressed_pages,
            compressed_bytes,
            compress_busy: busy,
            remaining_pages,
            ..PassReport::default()
        };
        // A pass in two parts: 10 pages deflated to 4096 bytes, 4 busy, of 26 handled.
        p.add(&part(6, 2048, 2, 100), false);
        let v = p.to_qmp();
        assert_eq!(v["compression"]["pages"], 6);
        assert_eq!(
            v["compression"]["compression-rate"], 0.0,
            "no pass ended yet"
        );
        p.add(&part(4, 2048, 2, 0), false);
        let v = p.to_qmp();
        assert_eq!(
            v["compression"],
            json!({"pages": 10, "busy": 4, "busy-rate": 4.0 / 26.0,
                   "compressed-size": 4096, "compression-rate": 10.0})
        );
        // Deflated pages are not normal ones (QEMU counts them apart too).
        assert_eq!(v["ram"]["normal"], 4);
        // A pass that deflated nothing keeps the rate.
        p.add(&part(0, 0, 0, 0), false);
        assert_eq!(p.to_qmp()["compression"]["compression-rate"], 10.0);
        assert_eq!(p.to_qmp()["compression"]["busy-rate"], 0.0);
        p.compression = None;
        assert!(p.to_qmp().get("compression").is_none());
    }
}
