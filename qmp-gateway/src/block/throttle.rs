//! block_set_io_throttle's arguments: read into the six buckets the daemons apply,
//! checked with QEMU's rules and messages; and the throttle fields query-block shows.

use ipc::{
    BucketLimits, ThrottleLimits, BPS_READ, BPS_TOTAL, BPS_WRITE, OPS_READ, OPS_TOTAL, OPS_WRITE,
};
use serde_json::{json, Map, Value};

use crate::qmp::protocol::QmpError;

/// QEMU's THROTTLE_VALUE_MAX.
const VALUE_MAX: u64 = 1_000_000_000_000_000;

/// Argument name of each bucket.
const NAMES: [(usize, &str); 6] = [
    (BPS_TOTAL, "bps"),
    (BPS_READ, "bps_rd"),
    (BPS_WRITE, "bps_wr"),
    (OPS_TOTAL, "iops"),
    (OPS_READ, "iops_rd"),
    (OPS_WRITE, "iops_wr"),
];

fn within() -> QmpError {
    QmpError::generic(format!(
        "bps/iops/max values must be within [0, {VALUE_MAX}]"
    ))
}

/// A non-negative integer argument (absent: `default`); negative values are out of range.
fn value(args: &Map<String, Value>, name: &str, default: u64) -> Result<u64, QmpError> {
    match args.get(name) {
        None => Ok(default),
        Some(v) => v.as_u64().ok_or_else(within),
    }
}

/// Reads and checks the limits (argument types were checked against the table).
pub fn parse(args: &Map<String, Value>) -> Result<ThrottleLimits, QmpError> {
    let mut limits = ThrottleLimits::default();
    for (i, name) in NAMES {
        limits.buckets[i] = BucketLimits {
            avg: value(args, name, 0)?,
            max: value(args, &format!("{name}_max"), 0)?,
            burst_length: value(args, &format!("{name}_max_length"), 1)?,
        };
    }
    limits.iops_size = value(args, "iops_size", 0)?;
    check(&limits)?;
    Ok(limits)
}

/// QEMU's throttle_is_valid, in its order.
fn check(l: &ThrottleLimits) -> Result<(), QmpError> {
    let b = &l.buckets;
    let mixed = |total: usize, rd: usize, wr: usize, f: fn(&BucketLimits) -> u64| {
        f(&b[total]) != 0 && (f(&b[rd]) != 0 || f(&b[wr]) != 0)
    };
    if mixed(BPS_TOTAL, BPS_READ, BPS_WRITE, |b| b.avg)
        || mixed(OPS_TOTAL, OPS_READ, OPS_WRITE, |b| b.avg)
        || mixed(BPS_TOTAL, BPS_READ, BPS_WRITE, |b| b.max)
        || mixed(OPS_TOTAL, OPS_READ, OPS_WRITE, |b| b.max)
    {
        return Err(QmpError::generic(
            "bps/iops/max total values and read/write values cannot be used at the same time",
        ));
    }
    if l.iops_size != 0 && b[OPS_TOTAL].avg == 0 && b[OPS_READ].avg == 0 && b[OPS_WRITE].avg == 0 {
        return Err(QmpError::generic(
            "iops size requires an iops value to be set",
        ));
    }
    for bucket in b {
        if bucket.avg > VALUE_MAX || bucket.max > VALUE_MAX {
            return Err(within());
        }
        if bucket.burst_length == 0 {
            return Err(QmpError::generic("the burst length cannot be 0"));
        }
        if bucket.burst_length > 1 && bucket.max == 0 {
            return Err(QmpError::generic("burst length set without burst rate"));
        }
        if bucket.max != 0 && bucket.burst_length > VALUE_MAX / bucket.max {
            return Err(QmpError::generic(
                "burst length too high for this burst rate",
            ));
        }
        if bucket.max != 0 && bucket.avg == 0 {
            return Err(QmpError::generic(
                "bps_max/iops_max require corresponding bps/iops values",
            ));
        }
        if bucket.max != 0 && bucket.max < bucket.avg {
            return Err(QmpError::generic(
                "bps_max/iops_max cannot be lower than bps/iops",
            ));
        }
    }
    Ok(())
}

/// The throttle members of a BlockDeviceInfo: the six rates always, bursts and the group
/// when limits are on.
pub fn info_fields(limits: Option<(&ThrottleLimits, &str)>, info: &mut Map<String, Value>) {
    let zero = ThrottleLimits::default();
    let l = limits.map_or(&zero, |(l, _)| l);
    for (i, name) in NAMES {
        info.insert(name.into(), json!(l.buckets[i].avg));
    }
    let Some((l, group)) = limits else {
        return;
    };
    for (i, name) in NAMES {
        let b = &l.buckets[i];
        if b.max != 0 {
            info.insert(format!("{name}_max"), json!(b.max));
            info.insert(format!("{name}_max_length"), json!(b.burst_length));
        }
    }
    if l.iops_size != 0 {
        info.insert("iops_size".into(), json!(l.iops_size));
    }
    info.insert("group".into(), json!(group));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        let mut base =
            json!({"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0});
        for (k, val) in v.as_object().unwrap() {
            base[k] = val.clone();
        }
        base.as_object().unwrap().clone()
    }

    fn err(v: Value) -> String {
        parse(&args(v)).unwrap_err().desc
    }

    #[test]
    fn qemu_messages() {
        assert_eq!(
            err(json!({"bps": 1000000, "bps_rd": 10})),
            "bps/iops/max total values and read/write values cannot be used at the same time"
        );
        assert_eq!(
            err(json!({"iops": -1})),
            "bps/iops/max values must be within [0, 1000000000000000]"
        );
        assert_eq!(
            err(json!({"bps": 1000000000000001u64})),
            "bps/iops/max values must be within [0, 1000000000000000]"
        );
        assert_eq!(
            err(json!({"bps": 100, "bps_max": 50})),
            "bps_max/iops_max cannot be lower than bps/iops"
        );
        assert_eq!(
            err(json!({"bps": 100, "bps_max_length": 5})),
            "burst length set without burst rate"
        );
        assert_eq!(
            err(json!({"bps": 100, "bps_max": 1000, "bps_max_length": 0})),
            "the burst length cannot be 0"
        );
        assert_eq!(
            err(json!({"bps": 100, "bps_max": 1000, "iops_size": 4096})),
            "iops size requires an iops value to be set"
        );
        assert_eq!(
            err(json!({"bps_max": 1000})),
            "bps_max/iops_max require corresponding bps/iops values"
        );
    }

    #[test]
    fn limits_and_their_info() {
        let l = parse(&args(
            json!({"iops": 100, "iops_max": 1000, "iops_max_length": 3, "iops_size": 8192}),
        ))
        .unwrap();
        assert_eq!(l.buckets[OPS_TOTAL].avg, 100);
        assert_eq!(l.buckets[OPS_TOTAL].burst_length, 3);
        assert!(l.enabled());
        let mut info = Map::new();
        info_fields(Some((&l, "g")), &mut info);
        assert_eq!(info["iops"], 100);
        assert_eq!(info["iops_max"], 1000);
        assert_eq!(info["iops_max_length"], 3);
        assert_eq!(info["iops_size"], 8192);
        assert_eq!(info["group"], "g");
        assert!(info.get("bps_max").is_none());
        let mut off = Map::new();
        info_fields(None, &mut off);
        assert_eq!(off.len(), 6);
        assert!(!parse(&args(json!({}))).unwrap().enabled());
    }
}
