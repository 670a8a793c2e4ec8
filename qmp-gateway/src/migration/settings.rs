//! The migration's settings: QEMU 7.2's capabilities and parameters, as
//! migrate-set-capabilities and migrate-set-parameters change them (with QEMU's checks,
//! in its order) and the migration reads them.
//!
//! A capability may be turned on only if Flotilla's migration honours it
//! ([`SUPPORTED_CAPABILITIES`]); the others are refused, never taken and ignored.
//! Capabilities are fixed while a migration runs (QEMU's rule); parameters are not: a
//! client may change the bandwidth or the downtime of a migration under way, and the
//! migration reads them again as it goes.

use std::collections::HashSet;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::well_formed;

/// Declares [`Capability`] with QEMU's names, in QEMU 7.2's order (query-migrate-
/// capabilities lists them so).
macro_rules! capabilities {
    ($($variant:ident = $name:literal),* $(,)?) => {
        /// A migration capability (QEMU's MigrationCapability).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Capability {
            $(#[serde(rename = $name)] $variant),*
        }

        impl Capability {
            /// Every capability, in QEMU's order.
            pub const ALL: &'static [Capability] = &[$(Capability::$variant),*];
            /// Their QMP names, in the same order.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            /// The QMP name.
            pub fn name(self) -> &'static str {
                Self::NAMES[self as usize]
            }
        }
    };
}

capabilities! {
    Xbzrle = "xbzrle",
    RdmaPinAll = "rdma-pin-all",
    AutoConverge = "auto-converge",
    ZeroBlocks = "zero-blocks",
    Compress = "compress",
    Events = "events",
    PostcopyRam = "postcopy-ram",
    XColo = "x-colo",
    ReleaseRam = "release-ram",
    Block = "block",
    ReturnPath = "return-path",
    PauseBeforeSwitchover = "pause-before-switchover",
    Multifd = "multifd",
    DirtyBitmaps = "dirty-bitmaps",
    PostcopyBlocktime = "postcopy-blocktime",
    LateBlockActivate = "late-block-activate",
    XIgnoreShared = "x-ignore-shared",
    ValidateUuid = "validate-uuid",
    BackgroundSnapshot = "background-snapshot",
    ZeroCopySend = "zero-copy-send",
    PostcopyPreempt = "postcopy-preempt",
}

/// The capabilities Flotilla's migration honours: only these may be turned on. Add one
/// here when the migration implements it (`xbzrle`: pages sent as deltas from a cache of
/// xbzrle-cache-size; `auto-converge`: the vCPU throttle; `events`: the MIGRATION events;
/// `zero-blocks`: block migration sends disk chunks that read as zeroes as DISK_ZERO runs
/// instead of their bytes; `compress`: pages deflated by compress-threads workers;
/// `block`: every migrate copies the disks, as its `blk` flag, incremental with the
/// block-incremental parameter, as `inc`; `postcopy-ram`: migrate-start-postcopy
/// switches a migration under way to postcopy, both sides having it on; `return-path`:
/// the destination answers on the connection (its verdict on the state), which Flotilla's
/// destination always does on a two-way channel (a one-way one, a file or a pipe, is
/// refused with it on); `pause-before-switchover`: the source stops the VM, then waits
/// in status pre-switchover for migrate-continue before the device state goes;
/// `late-block-activate`: a destination that does not run the VM once it arrived takes
/// its disks at `cont`, not at the switch-over. libvirt turns the last three on for
/// every migration QEMU lists them for).
pub const SUPPORTED_CAPABILITIES: &[Capability] = &[
    Capability::Xbzrle,
    Capability::AutoConverge,
    Capability::ZeroBlocks,
    Capability::Compress,
    Capability::Events,
    Capability::PostcopyRam,
    Capability::Block,
    Capability::ReturnPath,
    Capability::PauseBeforeSwitchover,
    Capability::LateBlockActivate,
];

/// A capability and whether it is on (QEMU's MigrationCapabilityStatus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityStatus {
    pub capability: Capability,
    pub state: bool,
}

/// How multifd compresses (QEMU's MultiFDCompression).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultifdCompression {
    None,
    Zlib,
    Zstd,
}

/// A block node's dirty bitmaps under another name in the stream (QEMU's
/// BitmapMigrationNodeAlias).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BitmapNodeAlias {
    pub node_name: String,
    pub alias: String,
    pub bitmaps: Vec<BitmapAlias>,
}

/// One bitmap of such a node (QEMU's BitmapMigrationBitmapAlias).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapAlias {
    pub name: String,
    pub alias: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform: Option<BitmapAliasTransform>,
}

/// What changes in a bitmap on its way (QEMU's BitmapMigrationBitmapAliasTransform).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapAliasTransform {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
}

/// The parameters, as query-migrate-parameters shows them (QEMU 7.2's
/// MigrationParameters, with its defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Parameters {
    announce_initial: u64,
    announce_max: u64,
    announce_rounds: u64,
    announce_step: u64,
    compress_level: u8,
    compress_threads: u8,
    compress_wait_thread: bool,
    decompress_threads: u8,
    throttle_trigger_threshold: u8,
    cpu_throttle_initial: u8,
    cpu_throttle_increment: u8,
    cpu_throttle_tailslow: bool,
    tls_creds: String,
    tls_hostname: String,
    tls_authz: String,
    max_bandwidth: u64,
    downtime_limit: u64,
    x_checkpoint_delay: u32,
    block_incremental: bool,
    multifd_channels: u8,
    xbzrle_cache_size: u64,
    max_postcopy_bandwidth: u64,
    max_cpu_throttle: u8,
    multifd_compression: MultifdCompression,
    multifd_zlib_level: u8,
    multifd_zstd_level: u8,
    /// Shown once set (to a list, even an empty one), as QEMU shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    block_bitmap_mapping: Option<Vec<BitmapNodeAlias>>,
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            announce_initial: 50,
            announce_max: 550,
            announce_rounds: 5,
            announce_step: 100,
            compress_level: 1,
            compress_threads: 8,
            compress_wait_thread: true,
            decompress_threads: 2,
            throttle_trigger_threshold: 50,
            cpu_throttle_initial: 20,
            cpu_throttle_increment: 10,
            cpu_throttle_tailslow: false,
            tls_creds: String::new(),
            tls_hostname: String::new(),
            tls_authz: String::new(),
            max_bandwidth: 128 << 20,
            downtime_limit: 300,
            x_checkpoint_delay: 20_000,
            block_incremental: false,
            multifd_channels: 2,
            xbzrle_cache_size: 64 << 20,
            max_postcopy_bandwidth: 0,
            max_cpu_throttle: 99,
            multifd_compression: MultifdCompression::None,
            multifd_zlib_level: 1,
            multifd_zstd_level: 1,
            block_bitmap_mapping: None,
        }
    }
}

/// What migrate-set-parameters changes (QEMU's MigrateSetParameters): each member
/// given, already checked against its QAPI type (uint8, uint32, uint64, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ParameterChanges {
    #[serde(default, deserialize_with = "uint64")]
    pub announce_initial: Option<u64>,
    #[serde(default, deserialize_with = "uint64")]
    pub announce_max: Option<u64>,
    #[serde(default, deserialize_with = "uint64")]
    pub announce_rounds: Option<u64>,
    #[serde(default, deserialize_with = "uint64")]
    pub announce_step: Option<u64>,
    pub compress_level: Option<u8>,
    pub compress_threads: Option<u8>,
    pub compress_wait_thread: Option<bool>,
    pub decompress_threads: Option<u8>,
    pub throttle_trigger_threshold: Option<u8>,
    pub cpu_throttle_initial: Option<u8>,
    pub cpu_throttle_increment: Option<u8>,
    pub cpu_throttle_tailslow: Option<bool>,
    #[serde(default, deserialize_with = "str_or_null")]
    pub tls_creds: Option<String>,
    #[serde(default, deserialize_with = "str_or_null")]
    pub tls_hostname: Option<String>,
    #[serde(default, deserialize_with = "str_or_null")]
    pub tls_authz: Option<String>,
    #[serde(default, deserialize_with = "uint64")]
    pub max_bandwidth: Option<u64>,
    #[serde(default, deserialize_with = "uint64")]
    pub downtime_limit: Option<u64>,
    pub x_checkpoint_delay: Option<u32>,
    pub block_incremental: Option<bool>,
    pub multifd_channels: Option<u8>,
    #[serde(default, deserialize_with = "uint64")]
    pub xbzrle_cache_size: Option<u64>,
    #[serde(default, deserialize_with = "uint64")]
    pub max_postcopy_bandwidth: Option<u64>,
    pub max_cpu_throttle: Option<u8>,
    pub multifd_compression: Option<MultifdCompression>,
    pub multifd_zlib_level: Option<u8>,
    pub multifd_zstd_level: Option<u8>,
    pub block_bitmap_mapping: Option<Vec<BitmapNodeAlias>>,
}

/// A QAPI uint64 as QEMU's input visitor reads one: a negative int64 is the uint64 of
/// the same bits.
fn uint64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Uint64 {
        Unsigned(u64),
        Negative(i64),
    }
    Ok(Some(match Uint64::deserialize(d)? {
        Uint64::Unsigned(n) => n,
        Uint64::Negative(n) => n as u64,
    }))
}

/// A TLS name given as a string, or as null for none (QEMU keeps "" for that).
fn str_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(Option::<String>::deserialize(d)?.unwrap_or_default()))
}

/// QEMU's limits on downtime-limit (ms) and migrate_set_downtime (s).
const MAX_DOWNTIME_SECONDS: u64 = 2000;

/// The target page size, the least xbzrle-cache-size.
const PAGE_SIZE: u64 = 4096;

/// What a settings command refuses, in QEMU's words where QEMU has them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("There's a migration process in progress")]
    MigrationRunning,
    /// A capability QEMU has and Flotilla's migration does not honour.
    #[error("Migration capability '{}' is not supported", .0.name())]
    Unsupported(Capability),
    /// QEMU's "invalid parameter value", naming the parameter as QEMU's check does.
    #[error("Parameter '{parameter}' expects {expects}")]
    Invalid {
        parameter: &'static str,
        expects: &'static str,
    },
    #[error("Invalid mapping given for block-bitmap-mapping: {0}")]
    Mapping(#[from] MappingError),
}

/// What is wrong with a block-bitmap-mapping (QEMU's texts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("The node alias '{0}' is not well-formed")]
    AliasNotWellFormed(String),
    #[error("The node alias '{0}' is longer than 255 bytes")]
    AliasTooLong(String),
    #[error("The node name '{0}' is longer than 31 bytes")]
    NodeNameTooLong(String),
    #[error("The node name '{0}' is mapped twice")]
    NodeMappedTwice(String),
    #[error("The node alias '{0}' is used twice")]
    NodeAliasUsedTwice(String),
    #[error("The bitmap alias '{0}' is longer than 255 bytes")]
    BitmapAliasTooLong(String),
    #[error("The bitmap name '{0}' is longer than 1023 bytes")]
    BitmapNameTooLong(String),
    #[error("The bitmap '{0}'/'{1}' is mapped twice")]
    BitmapMappedTwice(String, String),
    #[error("The bitmap alias '{0}'/'{1}' is used twice")]
    BitmapAliasUsedTwice(String, String),
}

fn invalid(parameter: &'static str, expects: &'static str) -> SettingsError {
    SettingsError::Invalid { parameter, expects }
}

/// Takes `change` into `field` if there is one.
fn take<T: Clone>(field: &mut T, change: &Option<T>) {
    if let Some(v) = change {
        *field = v.clone();
    }
}

impl Parameters {
    /// These parameters with `c` taken in.
    fn changed(&self, c: &ParameterChanges) -> Parameters {
        let mut p = self.clone();
        take(&mut p.announce_initial, &c.announce_initial);
        take(&mut p.announce_max, &c.announce_max);
        take(&mut p.announce_rounds, &c.announce_rounds);
        take(&mut p.announce_step, &c.announce_step);
        take(&mut p.compress_level, &c.compress_level);
        take(&mut p.compress_threads, &c.compress_threads);
        take(&mut p.compress_wait_thread, &c.compress_wait_thread);
        take(&mut p.decompress_threads, &c.decompress_threads);
        take(
            &mut p.throttle_trigger_threshold,
            &c.throttle_trigger_threshold,
        );
        take(&mut p.cpu_throttle_initial, &c.cpu_throttle_initial);
        take(&mut p.cpu_throttle_increment, &c.cpu_throttle_increment);
        take(&mut p.cpu_throttle_tailslow, &c.cpu_throttle_tailslow);
        take(&mut p.tls_creds, &c.tls_creds);
        take(&mut p.tls_hostname, &c.tls_hostname);
        take(&mut p.tls_authz, &c.tls_authz);
        take(&mut p.max_bandwidth, &c.max_bandwidth);
        take(&mut p.downtime_limit, &c.downtime_limit);
        take(&mut p.x_checkpoint_delay, &c.x_checkpoint_delay);
        take(&mut p.block_incremental, &c.block_incremental);
        take(&mut p.multifd_channels, &c.multifd_channels);
        take(&mut p.xbzrle_cache_size, &c.xbzrle_cache_size);
        take(&mut p.max_postcopy_bandwidth, &c.max_postcopy_bandwidth);
        take(&mut p.max_cpu_throttle, &c.max_cpu_throttle);
        take(&mut p.multifd_compression, &c.multifd_compression);
        take(&mut p.multifd_zlib_level, &c.multifd_zlib_level);
        take(&mut p.multifd_zstd_level, &c.multifd_zstd_level);
        if let Some(mapping) = &c.block_bitmap_mapping {
            p.block_bitmap_mapping = Some(mapping.clone());
        }
        p
    }

    /// QEMU's migrate_params_check, in its order, on the whole set as it would be: the
    /// first parameter out of its range is named (the checks that relate two, like
    /// max-cpu-throttle's, see the other's new value).
    fn check(&self) -> Result<(), SettingsError> {
        let between = |v: u64, lo: u64, hi: u64| (lo..=hi).contains(&v);
        let checks: [(bool, &'static str, &'static str); 16] = [
            (
                self.compress_level <= 9,
                "compress_level",
                "a value between 0 and 9",
            ),
            (
                self.compress_threads >= 1,
                "compress_threads",
                "a value between 1 and 255",
            ),
            (
                self.decompress_threads >= 1,
                "decompress_threads",
                "a value between 1 and 255",
            ),
            (
                between(self.throttle_trigger_threshold.into(), 1, 100),
                "throttle_trigger_threshold",
                "an integer in the range of 1 to 100",
            ),
            (
                between(self.cpu_throttle_initial.into(), 1, 99),
                "cpu_throttle_initial",
                "an integer in the range of 1 to 99",
            ),
            (
                between(self.cpu_throttle_increment.into(), 1, 99),
                "cpu_throttle_increment",
                "an integer in the range of 1 to 99",
            ),
            (
                self.downtime_limit <= MAX_DOWNTIME_SECONDS * 1000,
                "downtime_limit",
                "an integer in the range of 0 to (2000 * 1000) ms",
            ),
            (
                self.multifd_channels >= 1,
                "multifd_channels",
                "a value between 1 and 255",
            ),
            (
                self.multifd_zlib_level <= 9,
                "multifd_zlib_level",
                "a value between 0 and 9",
            ),
            (
                self.multifd_zstd_level <= 20,
                "multifd_zstd_level",
                "a value between 0 and 20",
            ),
            (
                self.xbzrle_cache_size >= PAGE_SIZE && self.xbzrle_cache_size.is_power_of_two(),
                "xbzrle_cache_size",
                "a power of two no less than the target page size",
            ),
            (
                between(
                    self.max_cpu_throttle.into(),
                    self.cpu_throttle_initial.into(),
                    99,
                ),
                "max_cpu_throttle",
                "an integer in the range of cpu_throttle_initial to 99",
            ),
            (
                self.announce_initial <= 100_000,
                "announce_initial",
                "a value between 0 and 100000",
            ),
            (
                self.announce_max <= 100_000,
                "announce_max",
                "a value between 0 and 100000",
            ),
            (
                self.announce_rounds <= 1000,
                "announce_rounds",
                "a value between 0 and 1000",
            ),
            (
                between(self.announce_step, 1, 10_000),
                "announce_step",
                "a value between 0 and 10000",
            ),
        ];
        if let Some((_, parameter, expects)) = checks.iter().find(|(ok, _, _)| !ok) {
            return Err(invalid(parameter, expects));
        }
        match &self.block_bitmap_mapping {
            Some(mapping) => Ok(check_mapping(mapping)?),
            None => Ok(()),
        }
    }
}

/// `name`, if it is at most `max` bytes long.
fn at_most(name: &str, max: usize, error: fn(String) -> MappingError) -> Result<(), MappingError> {
    if name.len() > max {
        Err(error(name.to_string()))
    } else {
        Ok(())
    }
}

/// `key` into `seen`, where it must not be yet.
fn first<'a>(
    seen: &mut HashSet<&'a str>,
    key: &'a str,
    twice: impl FnOnce() -> MappingError,
) -> Result<(), MappingError> {
    if seen.insert(key) {
        Ok(())
    } else {
        Err(twice())
    }
}

/// QEMU's check of a block-bitmap-mapping: the names and aliases, then that no node or
/// bitmap is mapped twice (name to alias, node by node), then that no alias is used
/// twice (alias to name).
fn check_mapping(mapping: &[BitmapNodeAlias]) -> Result<(), MappingError> {
    use MappingError as E;
    for by_alias in [false, true] {
        let mut nodes = HashSet::new();
        for node in mapping {
            if !well_formed(&node.alias) {
                return Err(E::AliasNotWellFormed(node.alias.clone()));
            }
            at_most(&node.alias, 255, E::AliasTooLong)?;
            at_most(&node.node_name, 31, E::NodeNameTooLong)?;
            let (name, alias) = (&node.node_name, &node.alias);
            match by_alias {
                false => first(&mut nodes, name, || E::NodeMappedTwice(name.clone()))?,
                true => first(&mut nodes, alias, || E::NodeAliasUsedTwice(alias.clone()))?,
            }
            let mut bitmaps = HashSet::new();
            for bitmap in &node.bitmaps {
                at_most(&bitmap.alias, 255, E::BitmapAliasTooLong)?;
                at_most(&bitmap.name, 1023, E::BitmapNameTooLong)?;
                let twice = |key: &String| match by_alias {
                    false => E::BitmapMappedTwice(name.clone(), key.clone()),
                    true => E::BitmapAliasUsedTwice(alias.clone(), key.clone()),
                };
                let key = if by_alias {
                    &bitmap.alias
                } else {
                    &bitmap.name
                };
                first(&mut bitmaps, key, || twice(key))?;
            }
        }
    }
    Ok(())
}

/// The migration's capabilities and parameters, and whether a migration runs.
#[derive(Debug, Clone, Default)]
pub struct MigrationSettings {
    /// Which capabilities are on, by [`Capability`] (as `usize`).
    enabled: [bool; Capability::ALL.len()],
    parameters: Parameters,
    running: bool,
}

impl MigrationSettings {
    /// Whether capability `c` is on.
    pub fn capability(&self, c: Capability) -> bool {
        self.enabled[c as usize]
    }

    /// Every capability and its state, in QEMU's order.
    pub fn capabilities(&self) -> Vec<CapabilityStatus> {
        Capability::ALL
            .iter()
            .map(|&capability| CapabilityStatus {
                capability,
                state: self.capability(capability),
            })
            .collect()
    }

    /// migrate-set-capabilities: `changes` in their order (the last word on one
    /// capability wins), taken all or none. Refused while a migration runs, and if a
    /// capability Flotilla does not honour would end up on (the first in QEMU's order).
    pub fn set_capabilities(&mut self, changes: &[CapabilityStatus]) -> Result<(), SettingsError> {
        if self.running {
            return Err(SettingsError::MigrationRunning);
        }
        let mut enabled = self.enabled;
        for change in changes {
            enabled[change.capability as usize] = change.state;
        }
        let unsupported = Capability::ALL
            .iter()
            .find(|c| enabled[**c as usize] && !SUPPORTED_CAPABILITIES.contains(c));
        if let Some(c) = unsupported {
            return Err(SettingsError::Unsupported(*c));
        }
        self.enabled = enabled;
        Ok(())
    }

    /// The parameters, for query-migrate-parameters.
    pub fn parameters(&self) -> &Parameters {
        &self.parameters
    }

    /// migrate-set-parameters: `changes` taken all or none, if the parameters they
    /// make pass QEMU's checks. A migration under way goes on with the new values.
    pub fn set_parameters(&mut self, changes: &ParameterChanges) -> Result<(), SettingsError> {
        let changed = self.parameters.changed(changes);
        changed.check()?;
        self.parameters = changed;
        Ok(())
    }

    /// migrate_set_downtime (the spec's): the downtime in seconds, as QEMU 2.x-5.x took
    /// it (0 to 2000, in whole milliseconds).
    pub fn set_downtime_seconds(&mut self, seconds: f64) -> Result<(), SettingsError> {
        if !(0.0..=MAX_DOWNTIME_SECONDS as f64).contains(&seconds) {
            return Err(invalid(
                "downtime_limit",
                "an integer in the range of 0 to 2000 seconds",
            ));
        }
        self.set_parameters(&ParameterChanges {
            // Within 0 to 2000000: the cast truncates to whole milliseconds, as QEMU's.
            downtime_limit: Some((seconds * 1000.0) as u64),
            ..ParameterChanges::default()
        })
    }

    /// Set by the migration while one runs: capabilities cannot change meanwhile.
    pub fn set_running(&mut self, running: bool) {
        self.running = running;
    }

    /// The `block` capability and the `block-incremental` parameter: a block migration
    /// (copy of the disks) with every `migrate`, and whether incremental.
    pub fn block_options(&self) -> (bool, bool) {
        (
            self.capability(Capability::Block),
            self.parameters.block_incremental,
        )
    }

    /// Sets both, as QEMU does for one migration when its `migrate` asks for a block
    /// migration with its `blk` / `inc` flags (and clears them once it ended).
    pub fn set_block_options(&mut self, block: bool, incremental: bool) {
        self.enabled[Capability::Block as usize] = block;
        self.parameters.block_incremental = incremental;
    }

    /// The most the migration sends, in bytes per second.
    pub fn max_bandwidth(&self) -> u64 {
        self.parameters.max_bandwidth
    }

    /// The most the postcopy phase sends, in bytes per second (0: no limit).
    pub fn max_postcopy_bandwidth(&self) -> u64 {
        self.parameters.max_postcopy_bandwidth
    }

    /// The longest the guest may stand still at the switch-over, in milliseconds.
    pub fn downtime_limit_ms(&self) -> u64 {
        self.parameters.downtime_limit
    }

    /// The XBZRLE page cache's size, in bytes (a power of two, at least a page).
    pub fn xbzrle_cache_size(&self) -> u64 {
        self.parameters.xbzrle_cache_size
    }

    /// auto-converge's first throttle of the vCPUs, in percent (1 to 99).
    pub fn cpu_throttle_initial(&self) -> u8 {
        self.parameters.cpu_throttle_initial
    }

    /// auto-converge's step up of the throttle, in percent (1 to 99).
    pub fn cpu_throttle_increment(&self) -> u8 {
        self.parameters.cpu_throttle_increment
    }

    /// auto-converge's highest throttle, in percent (cpu_throttle_initial to 99).
    pub fn max_cpu_throttle(&self) -> u8 {
        self.parameters.max_cpu_throttle
    }

    /// auto-converge throttles when a period's dirtied bytes exceed this percentage of
    /// the bytes sent in it (1 to 100).
    pub fn throttle_trigger_threshold(&self) -> u8 {
        self.parameters.throttle_trigger_threshold
    }

    /// auto-converge steps up by less than cpu-throttle-increment when less would do.
    pub fn cpu_throttle_tailslow(&self) -> bool {
        self.parameters.cpu_throttle_tailslow
    }

    /// compress: zlib's level, 0 (none) to 9.
    pub fn compress_level(&self) -> u8 {
        self.parameters.compress_level
    }

    /// compress: the source's worker threads (1 to 255).
    pub fn compress_threads(&self) -> u8 {
        self.parameters.compress_threads
    }

    /// compress: with every worker busy, wait for one (else send the page whole).
    pub fn compress_wait_thread(&self) -> bool {
        self.parameters.compress_wait_thread
    }

    /// The destination's threads that inflate compressed pages (1 to 255).
    pub fn decompress_threads(&self) -> u8 {
        self.parameters.decompress_threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn changes(v: serde_json::Value) -> ParameterChanges {
        serde_json::from_value(v).unwrap()
    }

    fn on(capability: Capability) -> CapabilityStatus {
        CapabilityStatus {
            capability,
            state: true,
        }
    }

    #[test]
    fn names_are_qemus() {
        for (c, name) in Capability::ALL.iter().zip(Capability::NAMES) {
            assert_eq!(c.name(), *name);
            assert_eq!(serde_json::to_value(c).unwrap(), json!(name));
        }
        assert_eq!(Capability::ALL.len(), 21);
        assert_eq!(Capability::XColo.name(), "x-colo");
    }

    #[test]
    fn capabilities_flotilla_does_not_honour_are_refused_whole() {
        let mut s = MigrationSettings::default();
        assert!(Capability::ALL.iter().all(|c| !s.capability(*c)));
        // The first refused one in QEMU's order is named (x-colo before release-ram),
        // and the supported ones in the same command are not taken either.
        assert_eq!(
            s.set_capabilities(&[
                on(Capability::Xbzrle),
                on(Capability::XColo),
                on(Capability::ReleaseRam),
                on(Capability::Events),
            ]),
            Err(SettingsError::Unsupported(Capability::XColo))
        );
        assert!(!s.capability(Capability::Events) && !s.capability(Capability::Xbzrle));
        assert_eq!(
            SettingsError::Unsupported(Capability::ReleaseRam).to_string(),
            "Migration capability 'release-ram' is not supported"
        );
        // Turned on and off again in one command: off, as QEMU checks the outcome.
        let off = CapabilityStatus {
            state: false,
            ..on(Capability::ReleaseRam)
        };
        s.set_capabilities(&[on(Capability::ReleaseRam), off, on(Capability::Events)])
            .unwrap();
        assert!(s.capability(Capability::Events));
        assert!(!s.capability(Capability::ReleaseRam));
        assert_eq!(s.capabilities()[5], on(Capability::Events));
    }

    #[test]
    fn the_honoured_capabilities_may_be_turned_on() {
        let mut s = MigrationSettings::default();
        s.set_capabilities(&[on(Capability::Xbzrle), on(Capability::AutoConverge)])
            .unwrap();
        assert!(s.capability(Capability::Xbzrle) && s.capability(Capability::AutoConverge));
        let honoured: Vec<_> = Capability::ALL
            .iter()
            .filter(|c| s.set_capabilities(&[on(**c)]).is_ok())
            .map(|c| c.name())
            .collect();
        assert_eq!(
            honoured,
            [
                "xbzrle",
                "auto-converge",
                "zero-blocks",
                "compress",
                "events",
                "postcopy-ram",
                "block",
                "return-path",
                "pause-before-switchover",
                "late-block-activate"
            ]
        );
    }

    #[test]
    fn capabilities_are_fixed_while_a_migration_runs_parameters_are_not() {
        let mut s = MigrationSettings::default();
        s.set_running(true);
        assert_eq!(
            s.set_capabilities(&[on(Capability::Events)]),
            Err(SettingsError::MigrationRunning)
        );
        assert_eq!(
            s.set_capabilities(&[]).unwrap_err().to_string(),
            "There's a migration process in progress"
        );
        s.set_parameters(&changes(json!({"max-bandwidth": 1000})))
            .unwrap();
        assert_eq!(s.max_bandwidth(), 1000);
        s.set_running(false);
        s.set_capabilities(&[on(Capability::Events)]).unwrap();
    }

    #[test]
    fn defaults_and_getters() {
        let s = MigrationSettings::default();
        assert_eq!(s.max_bandwidth(), 134_217_728);
        assert_eq!(s.downtime_limit_ms(), 300);
        assert_eq!(s.xbzrle_cache_size(), 67_108_864);
        assert_eq!(
            (
                s.cpu_throttle_initial(),
                s.cpu_throttle_increment(),
                s.max_cpu_throttle(),
                s.throttle_trigger_threshold(),
                s.cpu_throttle_tailslow()
            ),
            (20, 10, 99, 50, false)
        );
        assert_eq!(
            (
                s.compress_level(),
                s.compress_threads(),
                s.compress_wait_thread(),
                s.decompress_threads()
            ),
            (1, 8, true, 2)
        );
        let shown = serde_json::to_value(s.parameters()).unwrap();
        assert_eq!(shown.as_object().unwrap().len(), 26);
        assert_eq!(shown["tls-creds"], "");
        assert_eq!(shown["multifd-compression"], "none");
    }

    #[test]
    fn checks_see_the_whole_set_and_the_first_wins() {
        let mut s = MigrationSettings::default();
        let refused =
            |s: &mut MigrationSettings, v| s.set_parameters(&changes(v)).unwrap_err().to_string();
        assert_eq!(
            refused(
                &mut s,
                json!({"compress-threads": 0, "compress-level": 10, "downtime-limit": 5})
            ),
            "Parameter 'compress_level' expects a value between 0 and 9"
        );
        assert_eq!(s.downtime_limit_ms(), 300, "nothing was taken");
        s.set_parameters(&changes(json!({"cpu-throttle-initial": 50})))
            .unwrap();
        assert_eq!(
            refused(&mut s, json!({"max-cpu-throttle": 40})),
            "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"
        );
        s.set_parameters(&changes(
            json!({"max-cpu-throttle": 40, "cpu-throttle-initial": 30}),
        ))
        .unwrap();
        assert_eq!(
            refused(&mut s, json!({"downtime-limit": 2_000_001})),
            "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
        );
        for size in [0, 2048, 6000, u64::MAX] {
            assert_eq!(
                refused(&mut s, json!({"xbzrle-cache-size": size})),
                "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size"
            );
        }
        assert_eq!(
            refused(&mut s, json!({"multifd-zstd-level": 21})),
            "Parameter 'multifd_zstd_level' expects a value between 0 and 20"
        );
        assert_eq!(
            refused(&mut s, json!({"announce-step": 0})),
            "Parameter 'announce_step' expects a value between 0 and 10000"
        );
    }

    #[test]
    fn uint64s_take_negative_int64s_and_tls_names_take_null() {
        let mut s = MigrationSettings::default();
        s.set_parameters(&changes(json!({"max-bandwidth": -1, "tls-creds": "tc"})))
            .unwrap();
        assert_eq!(s.max_bandwidth(), u64::MAX);
        assert_eq!(s.parameters().tls_creds, "tc");
        s.set_parameters(&changes(json!({"tls-creds": null})))
            .unwrap();
        assert_eq!(s.parameters().tls_creds, "");
        assert_eq!(changes(json!({})), ParameterChanges::default());
    }

    #[test]
    fn downtime_in_seconds() {
        let mut s = MigrationSettings::default();
        s.set_downtime_seconds(0.1234).unwrap();
        assert_eq!(s.downtime_limit_ms(), 123);
        s.set_downtime_seconds(2000.0).unwrap();
        assert_eq!(s.downtime_limit_ms(), 2_000_000);
        for bad in [-0.001, 2000.001] {
            assert_eq!(
                s.set_downtime_seconds(bad).unwrap_err().to_string(),
                "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000 seconds"
            );
        }
    }

    #[test]
    fn bitmap_mappings_are_checked_as_qemu_checks_them() {
        let node = |n: &str, a: &str, bitmaps: &[(&str, &str)]| BitmapNodeAlias {
            node_name: n.into(),
            alias: a.into(),
            bitmaps: bitmaps
                .iter()
                .map(|(name, alias)| BitmapAlias {
                    name: (*name).into(),
                    alias: (*alias).into(),
                    transform: None,
                })
                .collect(),
        };
        let check = |m: &[BitmapNodeAlias]| check_mapping(m).map_err(|e| e.to_string());
        assert_eq!(check(&[node("", "a", &[("", ""), ("b", "1 2")])]), Ok(()));
        assert_eq!(
            check(&[node(
                &"n".repeat(31),
                &"a".repeat(255),
                &[(&"b".repeat(1023), &"c".repeat(255))]
            )]),
            Ok(())
        );
        let refused = [
            (
                vec![node("n", "1a", &[])],
                "The node alias '1a' is not well-formed",
            ),
            (
                vec![node(&"n".repeat(40), "a b", &[])],
                "The node alias 'a b' is not well-formed",
            ),
            (
                vec![node("n", &"a".repeat(256), &[])],
                "is longer than 255 bytes",
            ),
            (
                vec![node(&"n".repeat(32), "a", &[])],
                "is longer than 31 bytes",
            ),
            (
                vec![node("n", "a", &[(&"b".repeat(1024), "c")])],
                "is longer than 1023 bytes",
            ),
            (
                vec![node("n", "a", &[("b", &"c".repeat(256))])],
                "is longer than 255 bytes",
            ),
            // Pass one (names) ends before pass two (aliases) begins.
            (
                vec![
                    node("n", "a", &[("b", "c"), ("e", "c")]),
                    node("n", "x", &[]),
                ],
                "The node name 'n' is mapped twice",
            ),
            (
                vec![
                    node("n", "a", &[]),
                    node("m", "a", &[("b", "c"), ("b", "d")]),
                ],
                "The bitmap 'm'/'b' is mapped twice",
            ),
            (
                vec![
                    node("n", "a", &[]),
                    node("m", "a", &[("b", "c"), ("e", "c")]),
                ],
                "The node alias 'a' is used twice",
            ),
            (
                vec![node("n", "a", &[("b", "c"), ("e", "c")])],
                "The bitmap alias 'a'/'c' is used twice",
            ),
        ];
        for (mapping, error) in refused {
            let got = check(&mapping).unwrap_err();
            assert!(got.ends_with(error), "{got} / {error}");
        }
        let mut s = MigrationSettings::default();
        let bad = changes(
            json!({"block-bitmap-mapping": [{"node-name": "n", "alias": "", "bitmaps": []}]}),
        );
        assert_eq!(
            s.set_parameters(&bad).unwrap_err().to_string(),
            "Invalid mapping given for block-bitmap-mapping: The node alias '' is not well-formed"
        );
        s.set_parameters(&changes(json!({"block-bitmap-mapping": []})))
            .unwrap();
        assert_eq!(
            serde_json::to_value(s.parameters()).unwrap()["block-bitmap-mapping"],
            json!([])
        );
    }
}
