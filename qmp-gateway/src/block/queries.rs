//! The block layer's answers to QMP's queries: query-block, query-named-block-nodes and
//! query-blockstats (a disk's backing chain nested under "backing"), built from the graph, the thresholds, the disks' health and the
//! daemons' counters. None waits for a daemon longer than STATS_WAIT: a stopped or stuck
//! one is shown with the last counters it gave.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ipc::{BlockReply, BlockRequest, BlockStats};
use serde_json::{json, Value};

use super::error::BlockError;
use super::BlockLayer;
use super::{graph, info};

/// How long query-blockstats waits for the daemons' counters.
const STATS_WAIT: Duration = Duration::from_millis(500);

/// BlockDeviceInfo's "dirty-bitmaps": there only when the node has some (QEMU 7.2).
pub(super) fn with_bitmaps(info: &mut Value, bitmaps: Vec<Value>) {
    if !bitmaps.is_empty() {
        info["dirty-bitmaps"] = Value::Array(bitmaps);
    }
}

impl BlockLayer {
    /// The write threshold set on `node` (0: none).
    pub(super) fn threshold(&self, node: &str) -> u64 {
        self.thresholds.lock().get(node).copied().unwrap_or(0)
    }

    /// query-block: one BlockInfo per disk and per drive no device uses, in the order
    /// their BlockBackends were made.
    pub fn query_block(&self) -> Value {
        let state = self.state.lock();
        let mut out: Vec<(u64, Value)> = state
            .disks
            .iter()
            .map(|d| {
                let mut info = json!({
                    "device": d.device_name(),
                    "qdev": d.qdev,
                    "type": "unknown",
                    "removable": false,
                    "locked": false,
                });
                // Not there: its drive was deleted (no medium).
                if let Some(node) = state.graph.node(&d.root) {
                    let throttle = d.throttle.as_ref().map(|(l, g)| (l, g.as_str()));
                    let mut inserted =
                        info::node_info(&state.graph, node, throttle, self.threshold(&d.root));
                    with_bitmaps(&mut inserted, state.bitmap_infos(&d.root));
                    info["inserted"] = inserted;
                }
                if let Some(status) = d.health.io_status() {
                    info["io-status"] = json!(status);
                }
                (d.born, info)
            })
            .chain(self.unattached_drives(&state))
            .collect();
        out.sort_by_key(|(born, _)| *born);
        out.into_iter().map(|(_, info)| info).collect()
    }

    /// query-named-block-nodes: every node, newest first (as QEMU lists them); `flat`:
    /// without the backing images nested in the image info (and, as QEMU, depth 0).
    pub fn query_named_block_nodes(&self, flat: bool) -> Value {
        let state = self.state.lock();
        state
            .graph
            .nodes()
            .iter()
            .rev()
            .map(|n| {
                let mut v = info::node_info(&state.graph, n, None, self.threshold(&n.name));
                with_bitmaps(&mut v, state.bitmap_infos(&n.name));
                if flat {
                    // QEMU does not walk the chain then: no depth either.
                    if let Some(image) = v["image"].as_object_mut() {
                        image.remove("backing-image");
                    }
                    v["backing_file_depth"] = json!(0);
                }
                v
            })
            .collect()
    }

    /// Every disk's statistics: its counters (kept across daemons), with the latency
    /// windows its daemon gives, asked of all at once and waited for at most STATS_WAIT
    /// (while a disk has no daemon: the counters as its last daemon left them).
    fn daemon_stats(&self) -> BTreeMap<String, BlockStats> {
        let asked: Vec<_> = {
            let state = self.state.lock();
            state
                .disks
                .iter()
                .map(|d| {
                    let link = d.daemon.as_ref().map(|daemon| daemon.link.clone());
                    if let Some(link) = &link {
                        let link = link.clone();
                        d.stats
                            .ask(move || match link.request(BlockRequest::Stats, &[]) {
                                Ok(BlockReply::Stats(s)) => Ok(*s),
                                Ok(other) => {
                                    Err(format!("{} answered stats with {other:?}", link.name()))
                                }
                                Err(e) => Err(format!("statistics: {e}")),
                            });
                    }
                    (d.id.clone(), link.is_some(), d.stats.clone())
                })
                .collect()
        };
        let deadline = Instant::now() + STATS_WAIT;
        asked
            .into_iter()
            .map(|(id, running, cache)| {
                let stats = if running {
                    cache.answer(deadline)
                } else {
                    cache.without_daemon()
                };
                (id, stats)
            })
            .collect()
    }

    /// query-blockstats: per disk, or (`query_nodes`) per node.
    pub fn query_blockstats(&self, query_nodes: bool) -> Result<Value, BlockError> {
        let stats_of = self.daemon_stats();
        let state = self.state.lock();
        let disk_stats = |node: &str| -> Option<&BlockStats> {
            state.disk_of_node(node).and_then(|d| stats_of.get(&d.id))
        };
        // A node's own entry: node-level stats, its child as "parent", file counters.
        let node_entry = |name: &str, stats: Value| -> Value {
            let mut v = json!({"node-name": name, "stats": stats});
            let Some(node) = state.graph.node(name) else {
                return v;
            };
            let s = disk_stats(name).cloned().unwrap_or_default();
            if node.driver.is_protocol() {
                v["driver-specific"] = info::file_driver_stats(&s);
            }
            if let Some(child) = &node.child {
                let mut parent = json!({
                    "node-name": child,
                    "stats": info::node_stats(s.wr_highest_offset),
                });
                if state
                    .graph
                    .node(child)
                    .is_some_and(|c| c.driver.is_protocol())
                {
                    parent["driver-specific"] = info::file_driver_stats(&s);
                }
                v["parent"] = parent;
            }
            v
        };
        // A disk's entry nests its backing chain's entries, each with its own backing.
        let with_backing = |name: &str, mut v: Value| -> Value {
            let mut at = &mut v;
            let mut node = state.graph.image_node(name);
            let mut depth = 0;
            while let Some(b) = node
                .and_then(|n| n.backing.as_deref())
                .filter(|_| depth < graph::MAX_CHAIN)
            {
                at["backing"] = node_entry(b, info::node_stats(0));
                at = &mut at["backing"];
                node = state.graph.image_node(b);
                depth += 1;
            }
            v
        };
        let out: Vec<Value> = if query_nodes {
            state
                .graph
                .nodes()
                .iter()
                .map(|n| {
                    let offset = disk_stats(&n.name).map_or(0, |s| s.wr_highest_offset);
                    node_entry(&n.name, info::node_stats(offset))
                })
                .collect()
        } else {
            // A BlockBackend's entry: its counters, its medium's nodes if it has one.
            let backend = |root: Option<&str>, s: &BlockStats| match root {
                Some(r) if state.graph.node(r).is_some() => {
                    with_backing(r, node_entry(r, info::device_stats(s)))
                }
                _ => json!({"stats": info::device_stats(s)}),
            };
            let disks = state.disks.iter().map(|d| {
                let s = stats_of.get(&d.id).cloned().unwrap_or_default();
                // No node once its drive was deleted.
                let mut v = backend(Some(&d.root), &s);
                v["device"] = json!(d.device_name());
                v["qdev"] = json!(d.qdev);
                (d.born, v)
            });
            // The drives no device uses (no counters: nothing reads them), as QEMU
            // lists every named BlockBackend.
            let drives = (state.drives.iter().filter(|d| !d.attached)).map(|d| {
                let mut v = backend(d.root.as_deref(), &BlockStats::default());
                v["device"] = json!(d.id);
                (d.born, v)
            });
            let mut all: Vec<(u64, Value)> = disks.chain(drives).collect();
            all.sort_by_key(|(born, _)| *born);
            all.into_iter().map(|(_, v)| v).collect()
        };
        Ok(Value::Array(out))
    }
}
