//! The CPUID a vCPU of another CPU model would get than the VM's (or the none machine's)
//! own: what query-cpu-model-expansion answers when its props turn features off. Only
//! KVM can say which of them it keeps (kvm-pvm keeps the host's instruction-set bits),
//! so a vmm-core is started for it alone (children/cpuid_probe.rs). One probe runs at a
//! time and the last few answers are kept: a client cannot make the gateway start more
//! than one such process at once, nor hold more than `KEPT` answers.

use std::path::Path;

use ipc::CpuModel;
use parking_lot::Mutex;
use sandbox::Mode;

use crate::children::cpuid_probe::{probe_cpuid, ProbeError};
use crate::cpuid_features::GuestCpuid;

/// Answers kept (each a few KiB).
const KEPT: usize = 8;

/// The models probed so far, the newest last.
#[derive(Default)]
pub struct CpuidProbes {
    answers: Mutex<Vec<(CpuModel, GuestCpuid)>>,
}

impl CpuidProbes {
    /// The CPUID KVM holds for a vCPU of `model`, from vmm-core `binary` sandboxed as
    /// `mode` (or kept from an earlier probe of the same model).
    pub fn cpuid(
        &self,
        binary: &Path,
        mode: Mode,
        model: CpuModel,
    ) -> Result<GuestCpuid, ProbeError> {
        // Held while probing: one probe at a time.
        let mut answers = self.answers.lock();
        if let Some((_, cpuid)) = answers.iter().find(|(m, _)| *m == model) {
            return Ok(cpuid.clone());
        }
        let cpuid = GuestCpuid(probe_cpuid(binary, mode, model.clone())?);
        if answers.len() == KEPT {
            answers.remove(0);
        }
        answers.push((model, cpuid.clone()));
        Ok(cpuid)
    }
}
