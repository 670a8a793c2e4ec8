//! I/O limits: block_set_io_throttle's numbers checked with QEMU's rules and messages
//! into the six buckets the daemons apply, and the throttle fields query-block shows.

use ipc::{
    BucketLimits, ThrottleLimits, BPS_READ, BPS_TOTAL, BPS_WRITE, OPS_READ, OPS_TOTAL, OPS_WRITE,
};
use serde_json::{json, Map, Value};

/// QEMU's THROTTLE_VALUE_MAX.
const VALUE_MAX: u64 = 1_000_000_000_000_000;

/// Argument name of each bucket.
pub const NAMES: [(usize, &str); 6] = [
    (BPS_TOTAL, "bps"),
    (BPS_READ, "bps_rd"),
    (BPS_WRITE, "bps_wr"),
    (OPS_TOTAL, "iops"),
    (OPS_READ, "iops_rd"),
    (OPS_WRITE, "iops_wr"),
];

/// Limits QEMU refuses (its texts, in the order it checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleError {
    #[error("bps/iops/max values must be within [0, {VALUE_MAX}]")]
    OutOfRange,
    #[error("bps/iops/max total values and read/write values cannot be used at the same time")]
    TotalAndReadWrite,
    #[error("iops size requires an iops value to be set")]
    IopsSizeWithoutIops,
    #[error("the burst length cannot be 0")]
    ZeroBurstLength,
    #[error("burst length set without burst rate")]
    BurstLengthWithoutRate,
    #[error("burst length too high for this burst rate")]
    BurstLengthTooHigh,
    #[error("bps_max/iops_max require corresponding bps/iops values")]
    MaxWithoutAverage,
    #[error("bps_max/iops_max cannot be lower than bps/iops")]
    MaxBelowAverage,
}

/// One bucket as a client asked for it: the average rate, the burst rate and the burst
/// length in seconds, each any integer (None: not given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketRequest {
    pub avg: Option<i128>,
    pub max: Option<i128>,
    pub burst_length: Option<i128>,
}

/// block_set_io_throttle's numbers, buckets indexed as `ipc` numbers them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleRequest {
    pub buckets: [BucketRequest; 6],
    pub iops_size: Option<i128>,
}

/// A value (absent: `default`). A negative one is the uint64 of its bits, as QEMU's
/// LeakyBucket holds it: out of range for `check`, after its other checks.
fn value(v: Option<i128>, default: u64) -> Result<u64, ThrottleError> {
    v.map_or(Ok(default), |v| {
        (u64::try_from(v).or_else(|_| i64::try_from(v).map(|v| v as u64)))
            .map_err(|_| ThrottleError::OutOfRange)
    })
}

/// Checks the limits asked for and makes them the daemons' buckets.
pub fn limits(request: &ThrottleRequest) -> Result<ThrottleLimits, ThrottleError> {
    let mut limits = ThrottleLimits::default();
    for (i, _) in NAMES {
        let b = &request.buckets[i];
        limits.buckets[i] = BucketLimits {
            avg: value(b.avg, 0)?,
            max: value(b.max, 0)?,
            burst_length: value(b.burst_length, 1)?,
        };
    }
    limits.iops_size = value(request.iops_size, 0)?;
    check(&limits)?;
    Ok(limits)
}

/// QEMU's throttle_is_valid, in its order.
fn check(l: &ThrottleLimits) -> Result<(), ThrottleError> {
    let b = &l.buckets;
    let mixed = |total: usize, rd: usize, wr: usize, f: fn(&BucketLimits) -> u64| {
        f(&b[total]) != 0 && (f(&b[rd]) != 0 || f(&b[wr]) != 0)
    };
    if mixed(BPS_TOTAL, BPS_READ, BPS_WRITE, |b| b.avg)
        || mixed(OPS_TOTAL, OPS_READ, OPS_WRITE, |b| b.avg)
        || mixed(BPS_TOTAL, BPS_READ, BPS_WRITE, |b| b.max)
        || mixed(OPS_TOTAL, OPS_READ, OPS_WRITE, |b| b.max)
    {
        return Err(ThrottleError::TotalAndReadWrite);
    }
    if l.iops_size != 0 && b[OPS_TOTAL].avg == 0 && b[OPS_READ].avg == 0 && b[OPS_WRITE].avg == 0 {
        return Err(ThrottleError::IopsSizeWithoutIops);
    }
    for bucket in b {
        if bucket.avg > VALUE_MAX || bucket.max > VALUE_MAX {
            return Err(ThrottleError::OutOfRange);
        }
        if bucket.burst_length == 0 {
            return Err(ThrottleError::ZeroBurstLength);
        }
        if bucket.burst_length > 1 && bucket.max == 0 {
            return Err(ThrottleError::BurstLengthWithoutRate);
        }
        if bucket.max != 0 && bucket.burst_length > VALUE_MAX / bucket.max {
            return Err(ThrottleError::BurstLengthTooHigh);
        }
        if bucket.max != 0 && bucket.avg == 0 {
            return Err(ThrottleError::MaxWithoutAverage);
        }
        if bucket.max != 0 && bucket.max < bucket.avg {
            return Err(ThrottleError::MaxBelowAverage);
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

    /// The request block_set_io_throttle's arguments `v` make (the six rates default to
    /// 0, as a client must give them).
    fn args(v: Value) -> ThrottleRequest {
        let int = |key: &str| {
            v.get(key).map(|n| {
                n.as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
                    .unwrap()
            })
        };
        let mut r = ThrottleRequest::default();
        for (i, name) in NAMES {
            r.buckets[i] = BucketRequest {
                avg: int(name).or(Some(0)),
                max: int(&format!("{name}_max")),
                burst_length: int(&format!("{name}_max_length")),
            };
        }
        r.iops_size = int("iops_size");
        r
    }

    fn parse(r: &ThrottleRequest) -> Result<ThrottleLimits, ThrottleError> {
        limits(r)
    }

    fn err(v: Value) -> String {
        parse(&args(v)).unwrap_err().to_string()
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
        // A negative value is a huge one, out of range after the other checks (QEMU's
        // uint64 buckets).
        assert_eq!(
            err(json!({"bps": 1, "bps_rd": -1})),
            "bps/iops/max total values and read/write values cannot be used at the same time"
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
