//! A vCPU's complete architectural state as KVM holds it, read while the vCPU is parked
//! and written into a vCPU of the same VM shape elsewhere (migration, live upgrade).
//!
//! What is read follows what the host has: XSAVE (and XCRs) where KVM offers them, the
//! legacy FPU image otherwise; every MSR of KVM's index list that this KVM lets us read.
//! The restore order is the one KVM needs: registers, FPU, XCRs, segment registers
//! (which bring CR4/EFER, needed before MSRs that depend on them), MSRs, the LAPIC, the
//! MP state, pending events and the debug registers.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Which optional parts this host's KVM has (KVM_CHECK_EXTENSION, asked once per VM).
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuCaps {
    pub xsave: bool,
    pub xcrs: bool,
    pub debugregs: bool,
}

/// The legacy FPU/SSE image (kvm_fpu has no serde form of its own).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FpuState {
    fpr: Vec<[u8; 16]>,
    fcw: u16,
    fsw: u16,
    ftwx: u8,
    last_opcode: u16,
    last_ip: u64,
    last_dp: u64,
    xmm: Vec<[u8; 16]>,
    mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr.to_vec(),
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm.to_vec(),
            mxcsr: f.mxcsr,
        }
    }
}

impl FpuState {
    fn to_kvm(&self) -> Result<kvm_fpu, StateError> {
        let mut f = kvm_fpu {
            fcw: self.fcw,
            fsw: self.fsw,
            ftwx: self.ftwx,
            last_opcode: self.last_opcode,
            last_ip: self.last_ip,
            last_dp: self.last_dp,
            mxcsr: self.mxcsr,
            ..Default::default()
        };
        if self.fpr.len() != f.fpr.len() || self.xmm.len() != f.xmm.len() {
            return Err(StateError::Malformed("FPU register count"));
        }
        f.fpr.copy_from_slice(&self.fpr);
        f.xmm.copy_from_slice(&self.xmm);
        Ok(f)
    }
}

#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u32,
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: FpuState,
    xsave: Option<kvm_xsave>,
    xcrs: Option<kvm_xcrs>,
    msrs: Vec<kvm_msr_entry>,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    events: kvm_vcpu_events,
    debugregs: Option<kvm_debugregs>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("vCPU {vcpu}: {what}: {error}")]
    Kvm {
        vcpu: u32,
        what: &'static str,
        error: kvm_ioctls::Error,
    },
    #[error("vCPU {vcpu}: KVM took {set} of {total} MSRs (refused {index:#x})")]
    Msr {
        vcpu: u32,
        set: usize,
        total: usize,
        index: u32,
    },
    #[error("malformed state: {0}")]
    Malformed(&'static str),
}

fn kvm(vcpu: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |error| StateError::Kvm { vcpu, what, error }
}

/// The MSRs of `list` this vCPU lets us read (KVM's KVM_GET_MSRS stops at the first it
/// refuses, so refused ones are dropped one at a time); done once, before the VM stops.
pub fn readable_msrs(fd: &VcpuFd, id: u32, list: &[u32]) -> Result<Vec<u32>, StateError> {
    Ok(read_msrs(fd, id, list)?.iter().map(|e| e.index).collect())
}

/// The MSRs of `list` this vCPU lets us read, with their values.
fn read_msrs(fd: &VcpuFd, id: u32, list: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut wanted: Vec<u32> = list.to_vec();
    loop {
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| StateError::Malformed("too many MSRs"))?;
        let read = fd.get_msrs(&mut msrs).map_err(kvm(id, "reading MSRs"))?;
        if read == wanted.len() {
            return Ok(msrs.as_slice().to_vec());
        }
        // Entry `read` was refused: leave it out and read again.
        wanted.remove(read);
    }
}

impl VcpuState {
    /// Reads the state of a parked vCPU. `msr_list` is KVM_GET_MSR_INDEX_LIST.
    pub fn save(
        fd: &VcpuFd,
        id: u32,
        caps: VcpuCaps,
        msr_list: &[u32],
    ) -> Result<Self, StateError> {
        // Pending events first: reading them does not change them, and everything below
        // is consistent with the instruction boundary the vCPU stopped at.
        let events = fd.get_vcpu_events().map_err(kvm(id, "reading events"))?;
        Ok(VcpuState {
            id,
            regs: fd.get_regs().map_err(kvm(id, "reading registers"))?,
            sregs: fd
                .get_sregs()
                .map_err(kvm(id, "reading segment registers"))?,
            fpu: FpuState::from(&fd.get_fpu().map_err(kvm(id, "reading the FPU"))?),
            xsave: match caps.xsave {
                true => Some(fd.get_xsave().map_err(kvm(id, "reading XSAVE"))?),
                false => None,
            },
            xcrs: match caps.xcrs {
                true => Some(fd.get_xcrs().map_err(kvm(id, "reading XCRs"))?),
                false => None,
            },
            msrs: read_msrs(fd, id, msr_list)?,
            lapic: fd.get_lapic().map_err(kvm(id, "reading the LAPIC"))?,
            mp_state: fd.get_mp_state().map_err(kvm(id, "reading the MP state"))?,
            events,
            debugregs: match caps.debugregs {
                true => Some(
                    fd.get_debug_regs()
                        .map_err(kvm(id, "reading debug registers"))?,
                ),
                false => None,
            },
        })
    }

    /// Writes this state into `fd` (a parked vCPU of a VM built like the one it came
    /// from). A part the source had and this host lacks is an error, not a silent loss.
    pub fn restore(&self, fd: &VcpuFd, caps: VcpuCaps) -> Result<(), StateError> {
        let id = self.id;
        fd.set_regs(&self.regs)
            .map_err(kvm(id, "setting registers"))?;
        match (&self.xsave, caps.xsave) {
            // SAFETY: the buffer is a kvm_xsave of the size KVM_SET_XSAVE reads; XSAVE
            // areas larger than 4 KiB (AMX) are not created by this VMM's CPUID.
            (Some(x), true) => unsafe { fd.set_xsave(x) }.map_err(kvm(id, "setting XSAVE"))?,
            (Some(_), false) => {
                return Err(StateError::Malformed("XSAVE state on a host without XSAVE"))
            }
            (None, _) => fd
                .set_fpu(&self.fpu.to_kvm()?)
                .map_err(kvm(id, "setting the FPU"))?,
        }
        match (&self.xcrs, caps.xcrs) {
            (Some(x), true) => fd.set_xcrs(x).map_err(kvm(id, "setting XCRs"))?,
            (Some(_), false) => return Err(StateError::Malformed("XCRs on a host without XCRs")),
            (None, _) => {}
        }
        fd.set_sregs(&self.sregs)
            .map_err(kvm(id, "setting segment registers"))?;
        let msrs =
            Msrs::from_entries(&self.msrs).map_err(|_| StateError::Malformed("too many MSRs"))?;
        let set = fd.set_msrs(&msrs).map_err(kvm(id, "setting MSRs"))?;
        if set != self.msrs.len() {
            return Err(StateError::Msr {
                vcpu: id,
                set,
                total: self.msrs.len(),
                index: self.msrs[set].index,
            });
        }
        fd.set_lapic(&self.lapic)
            .map_err(kvm(id, "setting the LAPIC"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(kvm(id, "setting the MP state"))?;
        fd.set_vcpu_events(&self.events)
            .map_err(kvm(id, "setting events"))?;
        if let Some(d) = &self.debugregs {
            fd.set_debug_regs(d)
                .map_err(kvm(id, "setting debug registers"))?;
        }
        Ok(())
    }
}
