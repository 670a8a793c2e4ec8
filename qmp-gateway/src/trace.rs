//! The gateway's part in tracing (`ipc::trace` has the event table, the state page every
//! process reads and the lines): `--trace` as QEMU 7.2's -trace (`[enable=]PATTERN`,
//! `events=FILE`, `file=FILE`), the log file it opens for every process, and the rules of
//! trace-event-get-state / trace-event-set-state (QMP and HMP), in QEMU 7.2's words.
//!
//! None of our events is vCPU-specific and all are compiled in: so `vcpu` only selects
//! (nothing, for a pattern) or is refused as QEMU refuses it for such an event, and no
//! event is ever "unavailable" (ignore-unavailable changes nothing).

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use ipc::trace::{self as points, EVENTS};

/// A bad `--trace`; the texts are QEMU 7.2's.
#[derive(Debug, thiserror::Error)]
pub enum TraceOptionError {
    #[error("--trace {spec}: Invalid parameter '{key}'")]
    InvalidParameter { spec: String, key: String },
    #[error("Error opening logfile {}: {error}", .path.display())]
    Log {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", .path.display())]
    Events {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Trace(#[from] points::TraceError),
}

/// What the `--trace` options say: the patterns to turn on (or off, with a leading `-`)
/// in order, each with where it came from (for warnings), and the log file.
#[derive(Debug, Default, PartialEq)]
pub struct TraceOptions {
    pub patterns: Vec<(String, String)>,
    pub file: Option<PathBuf>,
}

impl TraceOptions {
    /// Reads the options in order (the last `file=` counts, as in QEMU); an events file
    /// is read here, one pattern a line, `#` lines and empty ones skipped.
    pub fn parse(specs: &[String]) -> Result<TraceOptions, TraceOptionError> {
        let mut options = TraceOptions::default();
        for spec in specs {
            let source = format!("--trace {spec}");
            for (i, part) in spec.split(',').enumerate() {
                let (key, value) = match part.split_once('=') {
                    Some(kv) => kv,
                    // The first may leave out its key (QEMU's implied `enable`).
                    None if i == 0 => ("enable", part),
                    None => ("", part),
                };
                match key {
                    "enable" => options.patterns.push((value.to_string(), source.clone())),
                    "file" => options.file = Some(PathBuf::from(value)),
                    "events" => options.read_events(PathBuf::from(value))?,
                    _ => {
                        return Err(TraceOptionError::InvalidParameter {
                            spec: spec.clone(),
                            key: if key.is_empty() { part } else { key }.to_string(),
                        })
                    }
                }
            }
        }
        Ok(options)
    }

    fn read_events(&mut self, path: PathBuf) -> Result<(), TraceOptionError> {
        let text = std::fs::read_to_string(&path).map_err(|error| TraceOptionError::Events {
            path: path.clone(),
            error,
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let source = format!("{}:{}", path.display(), n + 1);
            self.patterns.push((line.to_string(), source));
        }
        Ok(())
    }
}

/// Starts tracing in the gateway (before any child starts): the log file opened (its
/// lines appended from every process; emptied first, as QEMU's), the patterns applied.
pub fn start(specs: &[String]) -> Result<(), TraceOptionError> {
    let options = TraceOptions::parse(specs)?;
    let log = match &options.file {
        Some(path) => Some(OwnedFd::from(
            OpenOptions::new()
                .append(true)
                .create(true)
                .custom_flags(libc::O_TRUNC)
                .open(path)
                .map_err(|error| TraceOptionError::Log {
                    path: path.clone(),
                    error,
                })?,
        )),
        None => None,
    };
    points::start_gateway(log)?;
    for (pattern, source) in &options.patterns {
        if let Some(warning) = enable_from_options(pattern) {
            log::warn!("{source}: {warning}");
        }
    }
    Ok(())
}

/// One pattern of the options (QEMU's do_trace_enable_events): a leading `-` turns off;
/// a name no event has is a warning.
fn enable_from_options(line: &str) -> Option<String> {
    let (on, pattern) = match line.strip_prefix('-') {
        Some(rest) => (false, rest),
        None => (true, line),
    };
    match points::select(pattern) {
        Some(indexes) => {
            for i in indexes {
                points::set_state(i, on);
            }
            None
        }
        None => Some(format!("trace event '{pattern}' does not exist")),
    }
}

/// Why trace-event-get-state or -set-state refused; QEMU 7.2's words.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TraceStateError {
    #[error("invalid vCPU index {0}")]
    NoVcpu(u32),
    #[error("unknown event \"{0}\"")]
    Unknown(String),
    #[error("event \"{0}\" is not vCPU-specific")]
    NotVcpu(String),
}

/// An event's state as TraceEventInfo has it.
#[derive(Debug, PartialEq, Eq)]
pub struct EventState {
    pub name: &'static str,
    pub enabled: bool,
}

/// The events `name` selects, checked as QEMU's qmp_trace_event_*_state check them: the
/// vCPU first (`present`: the vCPUs there), then the name.
fn selected(name: &str, vcpu: Option<i64>, present: &[u32]) -> Result<Vec<usize>, TraceStateError> {
    if let Some(v) = vcpu {
        // QEMU passes it on as an int and prints it unsigned.
        let index = v as i32 as u32;
        if !present.contains(&index) {
            return Err(TraceStateError::NoVcpu(index));
        }
    }
    let indexes = points::select(name).ok_or_else(|| TraceStateError::Unknown(name.into()))?;
    match vcpu {
        Some(_) if !points::is_pattern(name) => Err(TraceStateError::NotVcpu(name.into())),
        // With a vCPU a pattern selects the vCPU events among those it matches: none.
        Some(_) => Ok(Vec::new()),
        None => Ok(indexes),
    }
}

/// trace-event-get-state: in QEMU's order (its list is built by prepending, so the last
/// of the table comes first).
pub fn get_state(
    name: &str,
    vcpu: Option<i64>,
    present: &[u32],
) -> Result<Vec<EventState>, TraceStateError> {
    Ok(selected(name, vcpu, present)?
        .into_iter()
        .rev()
        .map(|i| EventState {
            name: EVENTS[i].name,
            enabled: points::state(i),
        })
        .collect())
}

/// trace-event-set-state: every selected event on or off, in every process.
pub fn set_state(
    name: &str,
    enable: bool,
    vcpu: Option<i64>,
    present: &[u32],
) -> Result<(), TraceStateError> {
    for i in selected(name, vcpu, present)? {
        points::set_state(i, enable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_as_qemu_reads_them() {
        let dir = std::env::temp_dir().join(format!("flotilla-trace-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let events = dir.join("events");
        std::fs::write(&events, "virtio_*\n# a comment\n\n-virtio_net_rx\n").unwrap();
        let specs = vec![
            "qmp_command_*".to_string(),
            format!("events={},file=/a", events.display()),
            "enable=child_restart,file=/b".to_string(),
        ];
        let o = TraceOptions::parse(&specs).unwrap();
        let patterns: Vec<&str> = o.patterns.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            patterns,
            [
                "qmp_command_*",
                "virtio_*",
                "-virtio_net_rx",
                "child_restart"
            ]
        );
        assert_eq!(o.patterns[2].1, format!("{}:4", events.display()));
        assert_eq!(o.file, Some(PathBuf::from("/b")));
        let err = TraceOptions::parse(&["x,foo=bar".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--trace x,foo=bar: Invalid parameter 'foo'"
        );
        let err = TraceOptions::parse(&["x,y".into()]).unwrap_err();
        assert_eq!(err.to_string(), "--trace x,y: Invalid parameter 'y'");
        let err = TraceOptions::parse(&["events=/nonexistent".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent: No such file or directory (os error 2)"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_and_vcpus_are_checked_as_qemu_checks_them() {
        let present = [0, 1];
        let unknown = get_state("nosuch", None, &present).unwrap_err();
        assert_eq!(unknown.to_string(), "unknown event \"nosuch\"");
        // `?` without `*` is a name.
        assert!(get_state("virtio_net_?x", None, &present).is_err());
        assert_eq!(get_state("nosuch*", None, &present), Ok(vec![]));
        let both = get_state("virtio_net_?x*", None, &present).unwrap();
        let names: Vec<&str> = both.iter().map(|e| e.name).collect();
        assert_eq!(names, ["virtio_net_rx", "virtio_net_tx"]);
        assert_eq!(
            get_state("virtio_net_rx", Some(5), &present)
                .unwrap_err()
                .to_string(),
            "invalid vCPU index 5"
        );
        assert_eq!(
            get_state("nosuch", Some(-1), &present)
                .unwrap_err()
                .to_string(),
            "invalid vCPU index 4294967295"
        );
        assert_eq!(
            get_state("virtio_net_rx", Some(1), &present)
                .unwrap_err()
                .to_string(),
            "event \"virtio_net_rx\" is not vCPU-specific"
        );
        assert_eq!(get_state("virtio_*", Some(0), &present), Ok(vec![]));
        assert_eq!(
            enable_from_options("-nosuch"),
            Some("trace event 'nosuch' does not exist".into())
        );
    }
}
