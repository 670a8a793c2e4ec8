//! A vmm-core started for the CPUID alone (`--cpuid-only`). With no VM (`--machine none`,
//! which libvirt probes an emulator with, asking query-cpu-model-expansion for the host
//! model) the CPUID a vCPU would get is still vmm-core's to say: it makes it with the code
//! a VM's vCPUs are made with (VcpuRecipe), so the two cannot drift apart, and the KVM
//! ioctls stay in its sandbox (a seccomp list of just the two it needs). It gets its
//! control socket and /dev/kvm, answers once and exits; the gateway keeps the answer.

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use ipc::{Call, Connection, CpuModel, CpuidLeaf, Upcall, VmmEvent, VmmReply, VmmRequest};
use sandbox::Mode;

use super::spawn::{spawn_child, SpawnError};

/// Why the CPUID could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("/dev/kvm: {0}")]
    Kvm(std::io::Error),
    #[error("starting vmm-core: {0}")]
    Spawn(#[from] SpawnError),
    #[error("vmm-core's CPUID: {0}")]
    Ipc(#[from] ipc::IpcError),
    #[error("vmm-core's CPUID: {0}")]
    Remote(String),
    #[error("vmm-core's CPUID: it hung up without an answer")]
    NoAnswer,
}

/// The CPUID vCPU 0 of a one-vCPU VM of `model` gets, from a vmm-core at `binary`.
pub fn probe_cpuid(
    binary: &Path,
    mode: Mode,
    model: CpuModel,
) -> Result<Vec<CpuidLeaf>, ProbeError> {
    let kvm = (OpenOptions::new().read(true).write(true))
        .open("/dev/kvm")
        .map_err(ProbeError::Kvm)?;
    let (mut child, conn) = spawn_child(binary, &["--cpuid-only"], mode)?;
    let answer = ask(&conn, model, &kvm);
    drop(conn);
    // It exits once it answered (or saw the hang-up); one that does not is ended.
    let ended = child.wait_until(Instant::now() + Duration::from_secs(5));
    if !matches!(ended, Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
    answer
}

fn ask(
    conn: &Connection,
    model: CpuModel,
    kvm: &std::fs::File,
) -> Result<Vec<CpuidLeaf>, ProbeError> {
    let call = Call {
        id: 0,
        request: VmmRequest::ProbeCpuid(model),
    };
    conn.send(&call, &[kvm.as_fd()])?;
    loop {
        let upcall = conn.recv::<Upcall<VmmReply, VmmEvent>>()?;
        match upcall.map(|u| u.msg) {
            None => return Err(ProbeError::NoAnswer),
            Some(Upcall::Response { result, .. }) => {
                return match result {
                    Ok(VmmReply::Cpuid(leaves)) => Ok(leaves),
                    Ok(other) => Err(ProbeError::Remote(format!("answered {other:?}"))),
                    Err(e) => Err(ProbeError::Remote(e.desc)),
                }
            }
            // It raises none; nothing to do with one.
            Some(Upcall::Event(_)) => {}
        }
    }
}
