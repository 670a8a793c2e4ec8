//! What the CPUID vmm-core's vCPUs get says, in QEMU 7.2's x86 CPU property names: one
//! table from CPUID bits to feature names (with the other spellings QEMU lists too), and
//! the CPU's identity (vendor, family, model, stepping, model-id). The bit positions are
//! those of Intel's SDM, AMD's APM and Linux's KVM CPUID documentation; the names are
//! QEMU's (its qom-list of a -cpu host vCPU). Features QEMU reads from MSRs (VMX
//! controls, IA32_ARCH_CAPABILITIES' bits) or that need a leaf we do not give (SGX's,
//! Intel PT's) are not here: a client asking for one is told the property is not found.

use ipc::{CpuidBits, CpuidLeaf};

/// The register of a CPUID leaf a feature bit is in.
pub use ipc::CpuidReg as Reg;

/// A feature: QEMU's name, its other spellings, and where it is (leaf, subleaf,
/// register, mask: all of the mask's bits set means present, as QEMU reads a property
/// covering two bits).
#[derive(Debug)]
pub struct Feature {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub mask: u32,
}

const fn f(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u32) -> Feature {
    Feature {
        name,
        aliases: &[],
        leaf,
        subleaf,
        reg,
        mask: 1 << bit,
    }
}

const fn a(
    name: &'static str,
    aliases: &'static [&'static str],
    leaf: u32,
    reg: Reg,
    bit: u32,
) -> Feature {
    Feature {
        name,
        aliases,
        leaf,
        subleaf: 0,
        reg,
        mask: 1 << bit,
    }
}

use Reg::{Eax, Ebx, Ecx, Edx};

const BASIC: u32 = 1;
const EXT7: u32 = 7;
const XSAVE: u32 = 0xd;
const EXT: u32 = 0x8000_0001;
const KVM: u32 = 0x4000_0001;
const AMD_IDS: u32 = 0x8000_0008;
const SVM: u32 = 0x8000_000a;
const CENTAUR: u32 = 0xc000_0001;

/// Every feature we read, in QEMU's feature-word order.
pub const FEATURES: &[Feature] = &[
    // Leaf 1, EDX.
    f("fpu", BASIC, 0, Edx, 0),
    f("vme", BASIC, 0, Edx, 1),
    f("de", BASIC, 0, Edx, 2),
    f("pse", BASIC, 0, Edx, 3),
    f("tsc", BASIC, 0, Edx, 4),
    f("msr", BASIC, 0, Edx, 5),
    f("pae", BASIC, 0, Edx, 6),
    f("mce", BASIC, 0, Edx, 7),
    f("cx8", BASIC, 0, Edx, 8),
    f("apic", BASIC, 0, Edx, 9),
    f("sep", BASIC, 0, Edx, 11),
    f("mtrr", BASIC, 0, Edx, 12),
    f("pge", BASIC, 0, Edx, 13),
    f("mca", BASIC, 0, Edx, 14),
    f("cmov", BASIC, 0, Edx, 15),
    f("pat", BASIC, 0, Edx, 16),
    f("pse36", BASIC, 0, Edx, 17),
    f("pn", BASIC, 0, Edx, 18),
    f("clflush", BASIC, 0, Edx, 19),
    f("ds", BASIC, 0, Edx, 21),
    f("acpi", BASIC, 0, Edx, 22),
    f("mmx", BASIC, 0, Edx, 23),
    f("fxsr", BASIC, 0, Edx, 24),
    f("sse", BASIC, 0, Edx, 25),
    f("sse2", BASIC, 0, Edx, 26),
    f("ss", BASIC, 0, Edx, 27),
    f("ht", BASIC, 0, Edx, 28),
    f("tm", BASIC, 0, Edx, 29),
    f("ia64", BASIC, 0, Edx, 30),
    f("pbe", BASIC, 0, Edx, 31),
    // Leaf 1, ECX.
    a("pni", &["sse3"], BASIC, Ecx, 0),
    a("pclmulqdq", &["pclmuldq"], BASIC, Ecx, 1),
    f("dtes64", BASIC, 0, Ecx, 2),
    f("monitor", BASIC, 0, Ecx, 3),
    a("ds-cpl", &["ds_cpl"], BASIC, Ecx, 4),
    f("vmx", BASIC, 0, Ecx, 5),
    f("smx", BASIC, 0, Ecx, 6),
    f("est", BASIC, 0, Ecx, 7),
    f("tm2", BASIC, 0, Ecx, 8),
    f("ssse3", BASIC, 0, Ecx, 9),
    f("cid", BASIC, 0, Ecx, 10),
    f("fma", BASIC, 0, Ecx, 12),
    f("cx16", BASIC, 0, Ecx, 13),
    f("xtpr", BASIC, 0, Ecx, 14),
    f("pdcm", BASIC, 0, Ecx, 15),
    f("pcid", BASIC, 0, Ecx, 17),
    f("dca", BASIC, 0, Ecx, 18),
    a("sse4.1", &["sse4-1", "sse4_1"], BASIC, Ecx, 19),
    a("sse4.2", &["sse4-2", "sse4_2"], BASIC, Ecx, 20),
    f("x2apic", BASIC, 0, Ecx, 21),
    f("movbe", BASIC, 0, Ecx, 22),
    f("popcnt", BASIC, 0, Ecx, 23),
    f("tsc-deadline", BASIC, 0, Ecx, 24),
    f("aes", BASIC, 0, Ecx, 25),
    f("xsave", BASIC, 0, Ecx, 26),
    f("avx", BASIC, 0, Ecx, 28),
    f("f16c", BASIC, 0, Ecx, 29),
    f("rdrand", BASIC, 0, Ecx, 30),
    f("hypervisor", BASIC, 0, Ecx, 31),
    // Leaf 0x8000_0001, EDX (the bits AMD copies from leaf 1 have no names of their own).
    f("syscall", EXT, 0, Edx, 11),
    a("nx", &["xd"], EXT, Edx, 20),
    f("mmxext", EXT, 0, Edx, 22),
    a("fxsr-opt", &["ffxsr", "fxsr_opt"], EXT, Edx, 25),
    f("pdpe1gb", EXT, 0, Edx, 26),
    f("rdtscp", EXT, 0, Edx, 27),
    a("lm", &["i64"], EXT, Edx, 29),
    f("3dnowext", EXT, 0, Edx, 30),
    f("3dnow", EXT, 0, Edx, 31),
    // Leaf 0x8000_0001, ECX.
    a("lahf-lm", &["lahf_lm"], EXT, Ecx, 0),
    a("cmp-legacy", &["cmp_legacy"], EXT, Ecx, 1),
    f("svm", EXT, 0, Ecx, 2),
    f("extapic", EXT, 0, Ecx, 3),
    f("cr8legacy", EXT, 0, Ecx, 4),
    f("abm", EXT, 0, Ecx, 5),
    f("sse4a", EXT, 0, Ecx, 6),
    f("misalignsse", EXT, 0, Ecx, 7),
    f("3dnowprefetch", EXT, 0, Ecx, 8),
    f("osvw", EXT, 0, Ecx, 9),
    f("ibs", EXT, 0, Ecx, 10),
    f("xop", EXT, 0, Ecx, 11),
    f("skinit", EXT, 0, Ecx, 12),
    f("wdt", EXT, 0, Ecx, 13),
    f("lwp", EXT, 0, Ecx, 15),
    f("fma4", EXT, 0, Ecx, 16),
    f("tce", EXT, 0, Ecx, 17),
    a("nodeid-msr", &["nodeid_msr"], EXT, Ecx, 19),
    f("tbm", EXT, 0, Ecx, 21),
    f("topoext", EXT, 0, Ecx, 22),
    a("perfctr-core", &["perfctr_core"], EXT, Ecx, 23),
    a("perfctr-nb", &["perfctr_nb"], EXT, Ecx, 24),
    // Leaf 0xc000_0001, EDX (Centaur/Zhaoxin).
    f("xstore", CENTAUR, 0, Edx, 2),
    f("xstore-en", CENTAUR, 0, Edx, 3),
    f("xcrypt", CENTAUR, 0, Edx, 6),
    f("xcrypt-en", CENTAUR, 0, Edx, 7),
    f("ace2", CENTAUR, 0, Edx, 8),
    f("ace2-en", CENTAUR, 0, Edx, 9),
    f("phe", CENTAUR, 0, Edx, 10),
    f("phe-en", CENTAUR, 0, Edx, 11),
    f("pmm", CENTAUR, 0, Edx, 12),
    f("pmm-en", CENTAUR, 0, Edx, 13),
    // Leaf 0x4000_0001, EAX: KVM's paravirtual features (kvmclock is both clock MSR sets).
    Feature {
        name: "kvmclock",
        aliases: &[],
        leaf: KVM,
        subleaf: 0,
        reg: Eax,
        mask: 1 | 1 << 3,
    },
    a("kvm-nopiodelay", &["kvm_nopiodelay"], KVM, Eax, 1),
    a("kvm-mmu", &["kvm_mmu"], KVM, Eax, 2),
    a("kvm-asyncpf", &["kvm_asyncpf"], KVM, Eax, 4),
    a("kvm-steal-time", &["kvm_steal_time"], KVM, Eax, 5),
    a("kvm-pv-eoi", &["kvm_pv_eoi"], KVM, Eax, 6),
    a("kvm-pv-unhalt", &["kvm_pv_unhalt"], KVM, Eax, 7),
    f("kvm-pv-tlb-flush", KVM, 0, Eax, 9),
    f("kvm-pv-ipi", KVM, 0, Eax, 11),
    a("kvm-poll-control", &["kvm_poll_control"], KVM, Eax, 12),
    f("kvm-pv-sched-yield", KVM, 0, Eax, 13),
    a("kvm-asyncpf-int", &["kvm_asyncpf_int"], KVM, Eax, 14),
    f("kvm-msi-ext-dest-id", KVM, 0, Eax, 15),
    f("kvmclock-stable-bit", KVM, 0, Eax, 24),
    // Leaf 0x4000_0001, EDX.
    f("kvm-hint-dedicated", KVM, 0, Edx, 0),
    // Leaf 0x8000_000a, EDX: SVM's features.
    f("npt", SVM, 0, Edx, 0),
    f("lbrv", SVM, 0, Edx, 1),
    a("svm-lock", &["svm_lock"], SVM, Edx, 2),
    a("nrip-save", &["nrip_save"], SVM, Edx, 3),
    a("tsc-scale", &["tsc_scale"], SVM, Edx, 4),
    a("vmcb-clean", &["vmcb_clean"], SVM, Edx, 5),
    f("flushbyasid", SVM, 0, Edx, 6),
    f("decodeassists", SVM, 0, Edx, 7),
    a("pause-filter", &["pause_filter"], SVM, Edx, 10),
    f("pfthreshold", SVM, 0, Edx, 12),
    f("avic", SVM, 0, Edx, 13),
    f("v-vmsave-vmload", SVM, 0, Edx, 15),
    f("vgif", SVM, 0, Edx, 16),
    f("svme-addr-chk", SVM, 0, Edx, 28),
    // Leaf 7 subleaf 0, EBX.
    f("fsgsbase", EXT7, 0, Ebx, 0),
    a("tsc-adjust", &["tsc_adjust"], EXT7, Ebx, 1),
    f("sgx", EXT7, 0, Ebx, 2),
    f("bmi1", EXT7, 0, Ebx, 3),
    f("hle", EXT7, 0, Ebx, 4),
    f("avx2", EXT7, 0, Ebx, 5),
    f("smep", EXT7, 0, Ebx, 7),
    f("bmi2", EXT7, 0, Ebx, 8),
    f("erms", EXT7, 0, Ebx, 9),
    f("invpcid", EXT7, 0, Ebx, 10),
    f("rtm", EXT7, 0, Ebx, 11),
    f("mpx", EXT7, 0, Ebx, 14),
    f("avx512f", EXT7, 0, Ebx, 16),
    f("avx512dq", EXT7, 0, Ebx, 17),
    f("rdseed", EXT7, 0, Ebx, 18),
    f("adx", EXT7, 0, Ebx, 19),
    f("smap", EXT7, 0, Ebx, 20),
    f("avx512ifma", EXT7, 0, Ebx, 21),
    f("pcommit", EXT7, 0, Ebx, 22),
    f("clflushopt", EXT7, 0, Ebx, 23),
    f("clwb", EXT7, 0, Ebx, 24),
    f("intel-pt", EXT7, 0, Ebx, 25),
    f("avx512pf", EXT7, 0, Ebx, 26),
    f("avx512er", EXT7, 0, Ebx, 27),
    f("avx512cd", EXT7, 0, Ebx, 28),
    f("sha-ni", EXT7, 0, Ebx, 29),
    f("avx512bw", EXT7, 0, Ebx, 30),
    f("avx512vl", EXT7, 0, Ebx, 31),
    // Leaf 7 subleaf 0, ECX.
    f("avx512vbmi", EXT7, 0, Ecx, 1),
    f("umip", EXT7, 0, Ecx, 2),
    f("pku", EXT7, 0, Ecx, 3),
    f("waitpkg", EXT7, 0, Ecx, 5),
    f("avx512vbmi2", EXT7, 0, Ecx, 6),
    f("gfni", EXT7, 0, Ecx, 8),
    f("vaes", EXT7, 0, Ecx, 9),
    f("vpclmulqdq", EXT7, 0, Ecx, 10),
    f("avx512vnni", EXT7, 0, Ecx, 11),
    f("avx512bitalg", EXT7, 0, Ecx, 12),
    f("avx512-vpopcntdq", EXT7, 0, Ecx, 14),
    f("la57", EXT7, 0, Ecx, 16),
    f("rdpid", EXT7, 0, Ecx, 22),
    f("bus-lock-detect", EXT7, 0, Ecx, 24),
    f("cldemote", EXT7, 0, Ecx, 25),
    f("movdiri", EXT7, 0, Ecx, 27),
    f("movdir64b", EXT7, 0, Ecx, 28),
    f("sgxlc", EXT7, 0, Ecx, 30),
    f("pks", EXT7, 0, Ecx, 31),
    // Leaf 7 subleaf 0, EDX.
    f("avx512-4vnniw", EXT7, 0, Edx, 2),
    f("avx512-4fmaps", EXT7, 0, Edx, 3),
    f("fsrm", EXT7, 0, Edx, 4),
    f("avx512-vp2intersect", EXT7, 0, Edx, 8),
    f("md-clear", EXT7, 0, Edx, 10),
    f("serialize", EXT7, 0, Edx, 14),
    f("tsx-ldtrk", EXT7, 0, Edx, 16),
    f("arch-lbr", EXT7, 0, Edx, 19),
    f("amx-bf16", EXT7, 0, Edx, 22),
    f("avx512-fp16", EXT7, 0, Edx, 23),
    f("amx-tile", EXT7, 0, Edx, 24),
    f("amx-int8", EXT7, 0, Edx, 25),
    f("spec-ctrl", EXT7, 0, Edx, 26),
    f("stibp", EXT7, 0, Edx, 27),
    f("arch-capabilities", EXT7, 0, Edx, 29),
    f("core-capability", EXT7, 0, Edx, 30),
    f("ssbd", EXT7, 0, Edx, 31),
    // Leaf 7 subleaf 1, EAX.
    f("avx-vnni", EXT7, 1, Eax, 4),
    f("avx512-bf16", EXT7, 1, Eax, 5),
    // Leaf 0x8000_0007, EDX.
    f("invtsc", 0x8000_0007, 0, Edx, 8),
    // Leaf 0x8000_0008, EBX.
    f("clzero", AMD_IDS, 0, Ebx, 0),
    f("xsaveerptr", AMD_IDS, 0, Ebx, 2),
    f("wbnoinvd", AMD_IDS, 0, Ebx, 9),
    f("ibpb", AMD_IDS, 0, Ebx, 12),
    f("ibrs", AMD_IDS, 0, Ebx, 14),
    f("amd-stibp", AMD_IDS, 0, Ebx, 15),
    f("amd-ssbd", AMD_IDS, 0, Ebx, 24),
    f("virt-ssbd", AMD_IDS, 0, Ebx, 25),
    f("amd-no-ssb", AMD_IDS, 0, Ebx, 26),
    // Leaf 0xd subleaf 1, EAX.
    f("xsaveopt", XSAVE, 1, Eax, 0),
    f("xsavec", XSAVE, 1, Eax, 1),
    f("xgetbv1", XSAVE, 1, Eax, 2),
    f("xsaves", XSAVE, 1, Eax, 3),
    f("xfd", XSAVE, 1, Eax, 4),
    // Leaf 6, EAX.
    f("arat", 6, 0, Eax, 2),
];

impl Feature {
    /// Where its bits are, for vmm-core (ipc::CpuModel).
    pub fn bits(&self) -> CpuidBits {
        CpuidBits {
            leaf: self.leaf,
            subleaf: self.subleaf,
            reg: self.reg,
            mask: self.mask,
        }
    }

    /// Each of its bits as QEMU's warnings name it: `CPUID.07H:EDX.arch-capabilities
    /// [bit 29]` (the leaf in hex, two digits at least; no subleaf).
    pub fn described(&self) -> Vec<String> {
        (self.bit_masks())
            .map(|m| m.trailing_zeros())
            .map(|bit| {
                let (leaf, reg, name) = (self.leaf, self.reg, self.name);
                format!("CPUID.{leaf:02X}H:{reg}.{name} [bit {bit}]")
            })
            .collect()
    }

    /// Each of its bits on its own, lowest first.
    pub fn bit_masks(&self) -> impl Iterator<Item = u32> + '_ {
        (0..32)
            .map(|bit| 1u32 << bit)
            .filter(|m| self.mask & m != 0)
    }
}

/// The feature named `name` (any of its spellings).
pub fn find(name: &str) -> Option<&'static Feature> {
    FEATURES
        .iter()
        .find(|f| f.name == name || f.aliases.contains(&name))
}

/// The CPUID vCPUs get, as vmm-core reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCpuid(pub Vec<CpuidLeaf>);

impl GuestCpuid {
    /// The leaf's registers; zeroes for a leaf the vCPUs do not have (as the CPU reads
    /// a missing subleaf of a leaf with subleaves: QEMU's filtered features read false).
    fn leaf(&self, function: u32, index: u32) -> CpuidLeaf {
        let l = self
            .0
            .iter()
            .find(|l| l.function == function && (l.index == index || !has_subleaves(function)));
        l.copied().unwrap_or_default()
    }

    fn reg(&self, function: u32, index: u32, reg: Reg) -> u32 {
        let l = self.leaf(function, index);
        match reg {
            Eax => l.eax,
            Ebx => l.ebx,
            Ecx => l.ecx,
            Edx => l.edx,
        }
    }

    /// Whether the vCPUs have feature `f`.
    pub fn has(&self, f: &Feature) -> bool {
        self.has_bits(f, f.mask)
    }

    /// Whether the vCPUs have the bits `mask` of feature `f`'s register.
    pub fn has_bits(&self, f: &Feature, mask: u32) -> bool {
        self.reg(f.leaf, f.subleaf, f.reg) & mask == mask
    }

    /// Leaf 0's vendor string (EBX, EDX, ECX).
    pub fn vendor(&self) -> String {
        let l = self.leaf(0, 0);
        ascii(&[l.ebx, l.edx, l.ecx])
    }

    /// Leaves 0x8000_0002-4: the brand string, as QEMU's model-id (NULs dropped).
    pub fn model_id(&self) -> String {
        let regs: Vec<u32> = (0x8000_0002..=0x8000_0004)
            .flat_map(|leaf| {
                let l = self.leaf(leaf, 0);
                [l.eax, l.ebx, l.ecx, l.edx]
            })
            .collect();
        ascii(&regs)
    }

    fn version(&self) -> u32 {
        self.leaf(BASIC, 0).eax
    }

    /// The family, extended family included (as QEMU's family property reads it).
    pub fn family(&self) -> u32 {
        let base = (self.version() >> 8) & 0xf;
        if base == 0xf {
            base + ((self.version() >> 20) & 0xff)
        } else {
            base
        }
    }

    /// The model, extended model included.
    pub fn model(&self) -> u32 {
        let v = self.version();
        ((v >> 4) & 0xf) | ((v >> 12) & 0xf0)
    }

    pub fn stepping(&self) -> u32 {
        self.version() & 0xf
    }

    /// The highest basic leaf (QEMU's level).
    pub fn level(&self) -> u32 {
        self.leaf(0, 0).eax
    }

    /// The highest extended leaf (QEMU's xlevel).
    pub fn xlevel(&self) -> u32 {
        self.leaf(0x8000_0000, 0).eax
    }
}

/// Leaves whose ECX picks a subleaf (those the table reads).
fn has_subleaves(function: u32) -> bool {
    matches!(function, EXT7 | XSAVE)
}

/// Registers' bytes as text, stopping at the first NUL.
fn ascii(regs: &[u32]) -> String {
    let bytes: Vec<u8> = regs.iter().flat_map(|r| r.to_le_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A CPUID for tests: "AuthenticAMD", family 0x19 (0xf + 0xa), model 0x11, stepping 1,
/// brand "AMD EPC", highest basic leaf 0x10; sse, sse4.2, avx2, avx-vnni and kvmclock's
/// first bit.
#[cfg(test)]
pub(crate) fn test_cpuid() -> GuestCpuid {
    let leaf = |function, index, [eax, ebx, ecx, edx]: [u32; 4]| CpuidLeaf {
        function,
        index,
        eax,
        ebx,
        ecx,
        edx,
    };
    GuestCpuid(vec![
        leaf(0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
        leaf(1, 0, [0x00a1_0f11, 0, 1 << 20, 1 << 25]),
        leaf(7, 0, [0, 1 << 5, 0, 0]),
        leaf(7, 1, [1 << 4, 0, 0, 0]),
        leaf(0x4000_0001, 0, [1, 0, 0, 0]),
        leaf(0x8000_0002, 0, [0x2044_4d41, 0x0043_5045, 0, 0]),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut all: Vec<&str> = FEATURES
            .iter()
            .flat_map(|f| std::iter::once(f.name).chain(f.aliases.iter().copied()))
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn reads_bits_identity_and_subleaves() {
        let cpuid = test_cpuid();
        assert_eq!(cpuid.vendor(), "AuthenticAMD");
        assert_eq!(
            (cpuid.family(), cpuid.model(), cpuid.stepping()),
            (25, 17, 1)
        );
        assert_eq!(cpuid.model_id(), "AMD EPC");
        let has = |n| cpuid.has(find(n).unwrap());
        assert!(has("sse4_2") && has("sse4.2") && has("sse") && has("avx2"));
        assert!(has("avx-vnni") && !has("avx512-bf16"));
        assert!(!has("sse4.1") && !has("fma") && !has("xsaveopt"));
        // kvmclock is both clock bits.
        assert!(!has("kvmclock"));
        assert!(find("no-such").is_none());
    }
}
