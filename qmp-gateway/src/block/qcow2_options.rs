//! A qcow2 node's run-time options as QEMU 7.2 reads them (read_cache_sizes and
//! qcow2_update_options_prepare): cache-size split between the L2 and refcount caches,
//! the limits on each, lazy-refcounts only on compat 1.1 images; with QEMU's texts.
//! The outcome is what the daemon serves the image with.

use ipc::Qcow2Options;

use super::error::BlockError;
use super::image_info::Qcow2Image;
use super::options::Qcow2Settings;

/// QEMU's MIN_REFCOUNT_CACHE_SIZE, in clusters.
const MIN_REFCOUNT_CLUSTERS: u64 = 4;
/// The most cache entries QEMU allows (INT_MAX).
const MAX_ENTRIES: u64 = i32::MAX as u64;

/// The options `settings` give for `image`.
pub fn resolve(settings: &Qcow2Settings, image: &Qcow2Image) -> Result<Qcow2Options, BlockError> {
    let cluster = image.cluster_size.max(1);
    let mut l2 = settings.l2_cache_size;
    let mut refcount = settings.refcount_cache_size;
    if let Some(combined) = settings.cache_size {
        if l2.is_some() && refcount.is_some() {
            return Err(BlockError::Qcow2Option(
                "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time",
            ));
        }
        if l2.is_some_and(|l| l > combined) {
            return Err(BlockError::Qcow2Option(
                "l2-cache-size may not exceed cache-size",
            ));
        }
        if refcount.is_some_and(|r| r > combined) {
            return Err(BlockError::Qcow2Option(
                "refcount-cache-size may not exceed cache-size",
            ));
        }
        let max_l2 = (image.virtual_size.div_ceil(cluster) * 8).div_ceil(cluster) * cluster;
        let min_refcount = MIN_REFCOUNT_CLUSTERS * cluster;
        (l2, refcount) = match (l2, refcount) {
            (Some(l), _) => (Some(l), Some(combined - l)),
            (None, Some(r)) => (Some(combined - r), Some(r)),
            (None, None) if combined >= max_l2.saturating_add(min_refcount) => {
                (Some(max_l2), Some(combined - max_l2))
            }
            (None, None) => {
                let r = combined.min(min_refcount);
                (Some(combined - r), Some(r))
            }
        };
    }
    if l2.is_some_and(|l| l / cluster > MAX_ENTRIES) {
        return Err(BlockError::Qcow2Option("L2 cache size too big"));
    }
    if refcount.is_some_and(|r| r / cluster > MAX_ENTRIES) {
        return Err(BlockError::Qcow2Option("Refcount cache size too big"));
    }
    let lazy = settings.lazy_refcounts.unwrap_or(image.lazy_refcounts);
    if lazy && image.version < 3 {
        return Err(BlockError::Qcow2Option(
            "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level",
        ));
    }
    Ok(Qcow2Options {
        l2_cache_bytes: l2,
        refcount_cache_bytes: refcount,
        lazy_refcounts: settings.lazy_refcounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(version: u32) -> Qcow2Image {
        Qcow2Image {
            virtual_size: 64 << 20,
            cluster_size: 65536,
            version,
            lazy_refcounts: false,
            refcount_bits: 16,
            corrupt: false,
            dirty: false,
            extended_l2: false,
            compression_type: 0,
            backing_file: None,
            backing_format: None,
            snapshots: Vec::new(),
        }
    }

    fn settings(cache: Option<u64>, l2: Option<u64>, rc: Option<u64>) -> Qcow2Settings {
        Qcow2Settings {
            cache_size: cache,
            l2_cache_size: l2,
            refcount_cache_size: rc,
            lazy_refcounts: None,
        }
    }

    #[test]
    fn cache_size_is_split_as_qemu_splits_it() {
        let img = image(3);
        // 64 MiB of 64 KiB clusters: 1024 L2 entries, one cluster of L2 tables.
        let o = resolve(&settings(Some(1 << 20), None, None), &img).unwrap();
        assert_eq!(o.l2_cache_bytes, Some(65536));
        assert_eq!(o.refcount_cache_bytes, Some((1 << 20) - 65536));
        let o = resolve(&settings(Some(100_000), None, None), &img).unwrap();
        assert_eq!(o.refcount_cache_bytes, Some(100_000));
        assert_eq!(o.l2_cache_bytes, Some(0));
        let o = resolve(&settings(Some(1 << 20), Some(1 << 19), None), &img).unwrap();
        assert_eq!(o.refcount_cache_bytes, Some(1 << 19));
        let o = resolve(&settings(None, None, None), &img).unwrap();
        assert_eq!(o, Qcow2Options::default());
    }

    #[test]
    fn refusals() {
        let img = image(3);
        let err = |s: Qcow2Settings, img: &Qcow2Image| resolve(&s, img).unwrap_err().to_string();
        assert!(err(settings(Some(9), Some(1), Some(1)), &img).starts_with("cache-size, l2"));
        assert_eq!(
            err(settings(Some(9), Some(10), None), &img),
            "l2-cache-size may not exceed cache-size"
        );
        assert_eq!(
            err(settings(None, Some(u64::MAX), None), &img),
            "L2 cache size too big"
        );
        let lazy = Qcow2Settings {
            lazy_refcounts: Some(true),
            ..Default::default()
        };
        assert!(err(lazy, &image(2)).starts_with("Lazy refcounts require"));
    }
}
