//! migration-agent's command line: it runs under the gateway only (`--control-fd`),
//! which hands it everything it works on.

use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ipc::child::ChildLink;
use ipc::process::{block_terminating_signals, init_logging, take_inherited_fd};
use ipc::userfault::MappedRange;
use ipc::{
    AgentEvent, AgentReply, AgentRequest, Channel, IncomingStart, OutgoingStart, PageLog,
    RemoteError,
};
use migration_agent::disks::sink::{DiskSinks, SinkSlot};
use migration_agent::incoming::{Answer, Receiver};
use migration_agent::outgoing::{Outgoing, ANSWER_TIMEOUT};
use migration_agent::postcopy::destination::{Faults, Given};
use migration_agent::postcopy::source::PostcopySource;
use migration_agent::ram::GuestRam;

type Link = ChildLink<AgentRequest, AgentReply, AgentEvent>;

#[derive(Parser, Debug)]
#[command(
    name = "migration-agent",
    about = "Flotilla's live migration of one VM (started by the gateway)"
)]
struct Args {
    #[command(flatten)]
    trace: ipc::trace::TraceArgs,
    /// The control channel: this inherited socket.
    #[arg(long)]
    control_fd: RawFd,
    /// Sandbox this process (`enforce`, `log`, `off`; see the sandbox crate).
    #[arg(long, value_parser = |s: &str| s.parse::<sandbox::Mode>())]
    sandbox: Option<sandbox::Mode>,
}

fn remote(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::generic(e.to_string())
}

fn take(fds: &mut std::vec::IntoIter<OwnedFd>, what: &str) -> Result<OwnedFd, RemoteError> {
    fds.next()
        .ok_or_else(|| RemoteError::generic(format!("the request lacks the {what} fd")))
}

/// Guest memory's files (RAM's memfd, then each DIMM's), as the windows name them.
fn memory_files(
    fds: &mut std::vec::IntoIter<OwnedFd>,
    windows: &[ipc::RamWindow],
) -> Result<Vec<OwnedFd>, RemoteError> {
    (0..ipc::memory_files(windows))
        .map(|_| take(fds, "guest memory"))
        .collect()
}

fn start_outgoing(s: &OutgoingStart, fds: Vec<OwnedFd>) -> Result<Outgoing, RemoteError> {
    let mut fds = fds.into_iter();
    let files = memory_files(&mut fds, &s.windows)?;
    let ram = GuestRam::map(files, &s.windows, false).map_err(remote)?;
    let log = PageLog::from_fd(take(&mut fds, "dirty log")?, s.log_len).map_err(remote)?;
    let channel = File::from(take(&mut fds, "connection")?);
    let two_way = match s.channel {
        Channel::Socket => true,
        Channel::OneWay => false,
        Channel::Listener => return Err(RemoteError::generic("a source does not listen")),
    };
    Outgoing::start(ram, log, channel, two_way, s).map_err(remote)
}

fn start_incoming(
    link: &Link,
    s: &IncomingStart,
    fds: Vec<OwnedFd>,
) -> Result<(Answer, SinkSlot, Faults), RemoteError> {
    let mut fds = fds.into_iter();
    let files = memory_files(&mut fds, &s.windows)?;
    let ram = GuestRam::map(files, &s.windows, true).map_err(remote)?;
    let fd = take(&mut fds, "connection")?;
    let page_end = s
        .windows
        .iter()
        .map(|w| (w.guest_addr + w.size) / ipc::page_log::PAGE_SIZE)
        .max()
        .unwrap_or(0);
    let answer = Answer::default();
    let sinks = SinkSlot::default();
    let faults = Faults::default();
    let receiver = Receiver {
        ram,
        shape: s.shape.clone(),
        answer: answer.clone(),
        page_end,
        disks: DiskSinks::new(sinks.clone()),
        decompress_threads: s.decompress_threads,
        faults: faults.clone(),
    };
    let (events, channel) = (link.clone(), s.channel);
    std::thread::Builder::new()
        .name("receive".into())
        .spawn(move || {
            if let Err(e) = receiver.run(channel, fd, |ev| events.event(ev)) {
                events.event(AgentEvent::Failed(e.to_string()));
            }
        })
        .map_err(remote)?;
    Ok((answer, sinks, faults))
}

/// Postcopy's userfaultfds from the gateway: vmm-core's, then the backends'.
fn given(vmm_ranges: Vec<MappedRange>, fds: Vec<OwnedFd>) -> Result<Given, RemoteError> {
    let mut fds = fds.into_iter();
    let vmm = take(&mut fds, "vmm-core's userfaultfd")?;
    Ok(Given {
        vmm,
        vmm_ranges,
        backends: fds.collect(),
    })
}

/// The agent's one migration: the first request says which side, the rest drive it.
fn serve(link: &Link) -> anyhow::Result<()> {
    let mut outgoing: Option<Outgoing> = None;
    let mut postcopy: Option<PostcopySource> = None;
    let mut answer: Option<Answer> = None;
    let mut sinks: Option<SinkSlot> = None;
    let mut faults: Option<Faults> = None;
    while let Some(call) = link.recv()? {
        if call.request == AgentRequest::Quit {
            link.reply(call.id, Ok(AgentReply::Done));
            break;
        }
        let result = match call.request {
            AgentRequest::Outgoing(s) if outgoing.is_none() && answer.is_none() => {
                start_outgoing(&s, call.fds).map(|o| {
                    outgoing = Some(o);
                    AgentReply::Done
                })
            }
            AgentRequest::Incoming(s) if outgoing.is_none() && answer.is_none() => {
                start_incoming(link, &s, call.fds).map(|(a, slot, f)| {
                    answer = Some(a);
                    sinks = Some(slot);
                    faults = Some(f);
                    AgentReply::Done
                })
            }
            AgentRequest::SendPass {
                first,
                budget_ms,
                max_bandwidth,
            } => match outgoing.as_mut() {
                Some(o) => o
                    .send(
                        first,
                        Duration::from_millis(budget_ms.into()),
                        max_bandwidth,
                    )
                    .map(AgentReply::Pass)
                    .map_err(remote),
                None => Err(RemoteError::generic("no outgoing migration")),
            },
            AgentRequest::Finish { state, running } => match outgoing.as_mut() {
                Some(o) => o
                    .finish(&state, running)
                    .map(|_| AgentReply::Done)
                    .map_err(remote),
                None => Err(RemoteError::generic("no outgoing migration")),
            },
            // Block migration: the source's disks, the destination's disks readied.
            AgentRequest::Disks(d) => match outgoing.as_mut() {
                Some(o) => o
                    .add_disks(&d, call.fds)
                    .map(|()| AgentReply::Done)
                    .map_err(remote),
                None => Err(RemoteError::generic("no outgoing migration")),
            },
            AgentRequest::DiskSinks(ready) => match &sinks {
                Some(slot) => {
                    slot.fill(ready.map(|_| call.fds));
                    Ok(AgentReply::Done)
                }
                None => Err(RemoteError::generic("no incoming migration")),
            },
            AgentRequest::Resumed(outcome) => match &answer {
                Some(a) => {
                    if let (Err(why), Some(f)) = (&outcome, &faults) {
                        // A receiver waiting for the userfaultfds waits no more.
                        f.give(Err(why.clone()));
                    }
                    a.send(outcome.as_ref().map(|_| ()).map_err(|e| e.as_str()))
                        .map(|()| AgentReply::Done)
                        .map_err(remote)
                }
                None => Err(RemoteError::generic("no incoming migration")),
            },
            // Postcopy, source: the switch, then its progress.
            AgentRequest::Postcopy {
                state,
                running,
                max_bandwidth,
            } => match outgoing.take() {
                Some(o) => o
                    .into_postcopy(&state, running, max_bandwidth)
                    .map_err(remote)
                    .and_then(|source| {
                        let outcome = source.outcome(ANSWER_TIMEOUT).map_err(remote);
                        postcopy = Some(source);
                        outcome.map(|()| AgentReply::Done)
                    }),
                None => Err(RemoteError::generic("no outgoing migration")),
            },
            AgentRequest::PostcopyProgress { wait_ms } => match &postcopy {
                Some(p) => p
                    .progress(Duration::from_millis(wait_ms.into()))
                    .map(AgentReply::Postcopy)
                    .map_err(RemoteError::generic),
                None => Err(RemoteError::generic("no postcopy phase")),
            },
            // Postcopy, destination: the advice's answer, the userfaultfds and the
            // backends' mappings.
            AgentRequest::PostcopyAdvice(advice) => match &faults {
                Some(f) => {
                    f.advise(advice);
                    Ok(AgentReply::Done)
                }
                None => Err(RemoteError::generic("no incoming migration")),
            },
            AgentRequest::PostcopyFaults { vmm, .. } => match &faults {
                Some(f) => given(vmm, call.fds).map(|g| {
                    f.give(Ok(g));
                    AgentReply::Done
                }),
                None => Err(RemoteError::generic("no incoming migration")),
            },
            AgentRequest::PostcopyRanges { backend, ranges } => match &faults {
                Some(f) => f
                    .ranges(backend, ranges)
                    .map(|()| AgentReply::Done)
                    .map_err(RemoteError::generic),
                None => Err(RemoteError::generic("no incoming migration")),
            },
            other => Err(RemoteError::generic(format!(
                "{other:?}: this agent already serves a migration"
            ))),
        };
        link.reply(call.id, result);
    }
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(mode) = args.sandbox {
        migration_agent::seccomp::enter(mode).context("sandbox")?;
    }
    // Signals end the agent only through the gateway (which kills it to cancel).
    let _signals = block_terminating_signals()?;
    let stream = UnixStream::from(take_inherited_fd("--control-fd", args.control_fd)?);
    serve(&Link::new(stream))
}

fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    // Before the sandbox: the trace page and log come from the gateway's descriptors.
    if let Err(e) = ipc::trace::start_child(ipc::trace::Process::MigrationAgent, &args.trace) {
        eprintln!("migration-agent: error: {e}");
        return ExitCode::FAILURE;
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("migration-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
