//! Standalone mode's exports: `socket=PATH,image=PATH[,format=raw|qcow2][,...]`, each a block node on its own
//! vhost-user socket, for any vhost-user frontend (QEMU's vhost-user-blk-pci, or vmm-core
//! run on its own). Under the gateway the daemon serves one node it gets as fds instead.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipc::BlockCounters;
use vhost::vhost_user::Listener;

use vhost_backend::ServeError;

use crate::device::{BlkDevice, Policy, DEFAULT_POLL, QUEUE_SIZE};
use crate::disk::{CacheMode, Disk};
use crate::engine::{self, EngineKind};
use crate::formats::chain::{self, ChainOptions};
use crate::paths::{self, FormatName};
use crate::stats::Stats;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    pub socket: PathBuf,
    pub image: PathBuf,
    /// The image's format (`format=`): raw, or qcow2 with its backing chain.
    pub format: FormatName,
    pub read_only: bool,
    pub queues: usize,
    pub cache: CacheMode,
    pub engine: EngineKind,
    /// What GET_ID reports (at most 20 bytes are used).
    pub id: String,
    pub discard_unmap: bool,
    /// How long each queue is watched for new requests and completions after its last
    /// batch (`poll-us=`; zero: not at all, like a backend that cannot poll).
    pub poll: Duration,
}

impl Default for ExportSpec {
    fn default() -> Self {
        ExportSpec {
            socket: PathBuf::new(),
            image: PathBuf::new(),
            format: FormatName::Raw,
            read_only: false,
            queues: 1,
            cache: CacheMode::Writeback,
            engine: EngineKind::Uring,
            id: "flotilla-disk".into(),
            discard_unmap: true,
            poll: DEFAULT_POLL,
        }
    }
}

impl ExportSpec {
    pub fn check(&self) -> Result<(), String> {
        if self.socket.as_os_str().is_empty() || self.image.as_os_str().is_empty() {
            return Err("an export needs socket=PATH and image=PATH".into());
        }
        if !(1..=64).contains(&self.queues) {
            return Err(format!("queues={}: 1 to 64", self.queues));
        }
        if self.poll > MAX_POLL {
            return Err(format!(
                "poll-us={}: at most {}",
                self.poll.as_micros(),
                MAX_POLL.as_micros()
            ));
        }
        Ok(())
    }
}

/// The longest queue watch an export may ask for: past this the worker would spin
/// rather than poll.
const MAX_POLL: Duration = Duration::from_millis(10);

/// `poll-us=N`: microseconds (0: polling off); `off` is accepted for 0.
pub fn parse_poll(s: &str) -> Result<Duration, String> {
    if s == "off" {
        return Ok(Duration::ZERO);
    }
    s.parse::<u64>()
        .map(Duration::from_micros)
        .map_err(|_| format!("poll-us={s}: microseconds (0 or off: no polling)"))
}

pub fn parse_cache(s: &str) -> Result<CacheMode, String> {
    Ok(match s {
        "writeback" => CacheMode::Writeback,
        "none" => CacheMode::Direct,
        "unsafe" => CacheMode::NoFlush,
        "direct-no-flush" => CacheMode::DirectNoFlush,
        _ => {
            return Err(format!(
                "cache={s}: writeback, none, unsafe or direct-no-flush"
            ))
        }
    })
}

pub fn parse_format(s: &str) -> Result<FormatName, String> {
    match s {
        "raw" => Ok(FormatName::Raw),
        "qcow2" => Ok(FormatName::Qcow2),
        _ => Err(format!("format={s}: raw or qcow2")),
    }
}

pub fn parse_engine(s: &str) -> Result<EngineKind, String> {
    match s {
        "uring" => Ok(EngineKind::Uring),
        "sync" => Ok(EngineKind::Sync),
        _ => Err(format!("engine={s}: uring or sync")),
    }
}

impl FromStr for ExportSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<ExportSpec, String> {
        let mut e = ExportSpec::default();
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected key=value"))?;
            match k {
                "socket" => e.socket = v.into(),
                "image" => e.image = v.into(),
                "format" => e.format = parse_format(v)?,
                "read-only" => {
                    e.read_only = match v {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("read-only={v}: on or off")),
                    }
                }
                "queues" => e.queues = v.parse().map_err(|_| format!("queues={v}: a number"))?,
                "cache" => e.cache = parse_cache(v)?,
                "engine" => e.engine = parse_engine(v)?,
                "id" => e.id = v.to_string(),
                "poll-us" => e.poll = parse_poll(v)?,
                "discard" => {
                    e.discard_unmap = match v {
                        "unmap" => true,
                        "ignore" => false,
                        _ => return Err(format!("discard={v}: unmap or ignore")),
                    }
                }
                _ => return Err(format!("unknown export option '{k}'")),
            }
        }
        e.check()?;
        Ok(e)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("image {0}: {1}")]
    Image(PathBuf, String),
    #[error("I/O engine (try engine=sync): {0}")]
    Engine(std::io::Error),
    #[error("vhost-user socket {0}: {1}")]
    Socket(PathBuf, String),
    #[error("{0}: {1}")]
    Serve(PathBuf, ServeError),
}

/// An export, opened and listening.
pub struct Export {
    pub spec: ExportSpec,
    device: BlkDevice,
    listener: Listener,
}

impl Export {
    pub fn open(spec: ExportSpec) -> Result<Export, ExportError> {
        let image_error = |e: String| ExportError::Image(spec.image.clone(), e);
        // Standalone, the counters page is this daemon's alone (nobody reads it after).
        let counters = Arc::new(BlockCounters::create().map_err(|e| image_error(e.to_string()))?);
        let (layers, files) =
            paths::open_chain(&spec.image, spec.format, spec.read_only).map_err(image_error)?;
        let chain = chain::open(
            &layers,
            files,
            &ChainOptions {
                writable: !spec.read_only,
                direct: spec.cache.direct(),
                counters: Some(counters.clone()),
                discard_unmap: spec.discard_unmap,
                keep_bitmaps: false,
            },
        )
        .map_err(|e| image_error(e.to_string()))?;
        let disk = Disk::new(
            chain.top,
            chain.flush_fd,
            spec.read_only,
            spec.cache,
            &spec.id,
        )
        .map_err(|e| image_error(e.to_string()))?;
        let disk = Arc::new(disk);
        let engines = engine::per_queue(spec.engine, &disk, spec.queues, u32::from(QUEUE_SIZE))
            .map_err(ExportError::Engine)?;
        let policy = Policy {
            discard_unmap: spec.discard_unmap,
            ..Policy::default()
        };
        let device = BlkDevice::new(disk, engines, Arc::new(Stats::new(&[], counters)), policy)
            .map_err(ExportError::Engine)?;
        device.set_poll(spec.poll);
        let listener = Listener::new(&spec.socket, true)
            .map_err(|e| ExportError::Socket(spec.socket.clone(), e.to_string()))?;
        Ok(Export {
            spec,
            device,
            listener,
        })
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.device.disk().capacity_sectors()
    }

    /// The export's node (to leave its image clean when the daemon is told to end).
    pub fn disk(&self) -> Arc<Disk> {
        self.device.disk().clone()
    }

    /// Serves frontends one after another (one that disconnects may come back, or
    /// another take its place); with `once`, only the first, then removes the socket.
    pub fn serve(mut self, once: bool) -> Result<(), ExportError> {
        let label = self.spec.socket.display().to_string();
        let result = vhost_backend::serve_frontends(&self.device, &mut self.listener, once, &label);
        let _ = std::fs::remove_file(&self.spec.socket);
        if let Err(e) = self.device.disk().close() {
            log::error!("{label}: closing the image: {e}");
        }
        result.map_err(|e| ExportError::Serve(self.spec.socket.clone(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_options() {
        let e: ExportSpec =
            "socket=/s,image=/i,read-only=on,queues=4,cache=none,engine=sync,id=x,discard=ignore,format=qcow2"
                .parse()
                .unwrap();
        assert_eq!(e.socket, PathBuf::from("/s"));
        assert!(e.read_only && !e.discard_unmap);
        assert_eq!(e.format, FormatName::Qcow2);
        assert_eq!(
            (e.queues, e.cache, e.engine),
            (4, CacheMode::Direct, EngineKind::Sync)
        );
        for bad in [
            "image=/i",
            "socket=/s,image=/i,queues=0",
            "socket=/s,image=/i,cache=fast",
            "socket=/s,image=/i,bogus=1",
            "socket=/s,image=/i,read-only",
            "socket=/s,image=/i,poll-us=-1",
            "socket=/s,image=/i,poll-us=fast",
            "socket=/s,image=/i,poll-us=10001",
            "socket=/s,image=/i,format=vmdk",
        ] {
            assert!(bad.parse::<ExportSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn poll_option() {
        let spec = |s: &str| s.parse::<ExportSpec>().unwrap().poll;
        assert_eq!(spec("socket=/s,image=/i"), Duration::from_micros(32));
        assert_eq!(spec("socket=/s,image=/i,poll-us=0"), Duration::ZERO);
        assert_eq!(spec("socket=/s,image=/i,poll-us=off"), Duration::ZERO);
        assert_eq!(
            spec("socket=/s,image=/i,poll-us=100"),
            Duration::from_micros(100)
        );
    }

    /// The device an export serves watches its queues for as long as the export says.
    #[test]
    fn an_export_polls_as_its_spec_says() {
        let dir =
            std::env::temp_dir().join(format!("flotilla-blk-export-poll-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("d.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(1 << 16)
            .unwrap();
        for (option, window) in [
            ("", DEFAULT_POLL),
            (",poll-us=0", Duration::ZERO),
            (",poll-us=250", Duration::from_micros(250)),
        ] {
            let socket = dir.join("s.sock");
            let spec: ExportSpec = format!(
                "socket={},image={}{option}",
                socket.display(),
                image.display()
            )
            .parse()
            .unwrap();
            let export = Export::open(spec).unwrap();
            assert_eq!(export.device.poll_window(), window, "{option}");
            drop(export);
            let _ = std::fs::remove_file(&socket);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
