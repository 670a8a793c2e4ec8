//! The machine every process agrees on: the limits vmm-core builds it with and the
//! gateway reports (query-machines' cpu-max), so that neither copies the other's.

/// The most vCPUs the machine can have: the MADT describes them with xAPIC ids, and
/// 0xff is the broadcast id.
pub const MAX_VCPUS: usize = 255;
