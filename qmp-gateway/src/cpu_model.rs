//! `--cpu`: the vCPUs' CPU model, read as QEMU 7.2 reads `-cpu host,...` for x86
//! (x86_cpu_parse_featurestr): the model is `host`, the host's CPU as KVM supports it;
//! `FEATURE=on|off` (`FEATURE` alone is on; `_` read as `-`) in order, the last one of a
//! feature winning, then every `+FEATURE` on, then every `-FEATURE` off; `migratable=`
//! is taken and changes nothing (handlers/cpu_models.rs says why). A feature turned off
//! is cleared in every vCPU's CPUID by vmm-core (ipc::CpuModel), with the MSR that
//! belongs to it; turned on, it is there if the host has it, else QEMU's warning and it
//! stays off (as QEMU filters what KVM cannot give). Errors and warnings in QEMU's words.

use std::str::FromStr;

use crate::cpuid_features::{self, Feature, GuestCpuid};
use crate::devices::cpu::CPU_TYPE;
use crate::keyval;

/// The one model.
const HOST: &str = "host";

/// `--cpu`, read (the default: `host`, nothing set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSpec {
    /// Each feature the text sets, once, with its value in effect.
    settings: Vec<(&'static str, bool)>,
    /// QEMU's warnings about the text itself (`+FEATURE` mixed with `FEATURE=`).
    pub warnings: Vec<String>,
}

/// Why `--cpu` was refused (QEMU 7.2's words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuSpecError {
    #[error("unable to find CPU model '{0}'")]
    Model(String),
    #[error(
        "can't apply global {CPU_TYPE}.{name}={value}: Property '{CPU_TYPE}.{name}' not found"
    )]
    NoProperty { name: String, value: String },
    #[error(
        "can't apply global {CPU_TYPE}.{name}={value}: Parameter '{name}' expects 'on' or 'off'"
    )]
    NotOnOff { name: String, value: String },
    /// `+FEATURE` or `-FEATURE` of no feature.
    #[error("Property '{CPU_TYPE}.{0}' not found")]
    NoFeature(String),
}

/// QEMU's feat2prop: `FEATURE=` names are properties, spelt with `-`.
fn feat2prop(name: &str) -> String {
    name.replace('_', "-")
}

impl FromStr for CpuSpec {
    type Err = CpuSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (model, rest) = s.split_once(',').unwrap_or((s, ""));
        if model != HOST {
            return Err(CpuSpecError::Model(model.to_string()));
        }
        let mut spec = CpuSpec::default();
        let (mut plus, mut minus) = (Vec::new(), Vec::new());
        // QEMU's strtok: empty items are skipped.
        for item in rest.split(',').filter(|i| !i.is_empty()) {
            if let Some(name) = item.strip_prefix('+') {
                plus.push(name);
                continue;
            }
            if let Some(name) = item.strip_prefix('-') {
                minus.push(name);
                continue;
            }
            let (name, value) = item.split_once('=').unwrap_or((item, "on"));
            let name = feat2prop(name);
            for (sign, list) in [("+", &plus), ("-", &minus)] {
                if list.contains(&name.as_str()) {
                    spec.warnings.push(format!(
                        "Ambiguous CPU model string. Don't mix both \"{sign}{name}\" and \
                         \"{name}={value}\""
                    ));
                }
            }
            let on = || {
                keyval::boolean(value).ok_or_else(|| CpuSpecError::NotOnOff {
                    name: name.clone(),
                    value: value.to_string(),
                })
            };
            match cpuid_features::find(&name) {
                Some(f) => {
                    let on = on()?;
                    spec.set(f, on);
                }
                // Every feature a migration can carry is the vCPUs' (cpu_models.rs).
                None if name == "migratable" => drop(on()?),
                None => {
                    return Err(CpuSpecError::NoProperty {
                        name,
                        value: value.to_string(),
                    })
                }
            }
        }
        if !spec.warnings.is_empty() {
            spec.warnings.push(
                "Compatibility of ambiguous CPU model strings won't be kept on future QEMU \
                 versions"
                    .into(),
            );
        }
        for (names, on) in [(plus, true), (minus, false)] {
            for name in names {
                let f = cpuid_features::find(name)
                    .ok_or_else(|| CpuSpecError::NoFeature(name.to_string()))?;
                spec.set(f, on);
            }
        }
        Ok(spec)
    }
}

impl CpuSpec {
    fn set(&mut self, f: &'static Feature, on: bool) {
        match self.settings.iter_mut().find(|(name, _)| *name == f.name) {
            Some(setting) => setting.1 = on,
            None => self.settings.push((f.name, on)),
        }
    }

    fn features(&self, on: bool) -> impl Iterator<Item = &'static Feature> + '_ {
        (self.settings.iter())
            .filter(move |(_, value)| *value == on)
            .filter_map(|(name, _)| cpuid_features::find(name))
    }

    /// What vmm-core clears.
    pub fn model(&self) -> ipc::CpuModel {
        ipc::CpuModel {
            off: self.features(false).map(Feature::bits).collect(),
        }
    }

    /// QEMU's warning for each bit of a feature turned on that the vCPUs' CPUID (the
    /// host's, as KVM supports it) lacks.
    pub fn unsupported(&self, cpuid: &GuestCpuid) -> Vec<String> {
        self.features(true)
            .flat_map(|f| {
                (f.described().into_iter().zip(f.bit_masks()))
                    .filter(|(_, mask)| !cpuid.has_bits(f, *mask))
                    .map(|(what, _)| format!("host doesn't support requested feature: {what}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::{CpuidBits, CpuidLeaf, CpuidReg};

    fn off(spec: &str) -> Vec<CpuidBits> {
        spec.parse::<CpuSpec>().unwrap().model().off
    }

    const ARCH_CAPABILITIES: CpuidBits = CpuidBits {
        leaf: 7,
        subleaf: 0,
        reg: CpuidReg::Edx,
        mask: 1 << 29,
    };

    #[test]
    fn libvirts_host_passthrough_line() {
        assert_eq!(
            off("host,migratable=on,arch-capabilities=off"),
            vec![ARCH_CAPABILITIES]
        );
        assert_eq!(off("host"), vec![]);
        assert_eq!(off("host,migratable=off"), vec![]);
    }

    #[test]
    fn qemus_order_and_spellings() {
        // The last FEATURE= wins; + after them; - last of all.
        assert_eq!(
            off("host,arch-capabilities=off,arch-capabilities=on"),
            vec![]
        );
        assert_eq!(
            off("host,-arch-capabilities,arch-capabilities=on"),
            vec![ARCH_CAPABILITIES]
        );
        assert_eq!(
            off("host,+arch-capabilities,-arch-capabilities"),
            vec![ARCH_CAPABILITIES]
        );
        assert_eq!(off("host,arch-capabilities=off,+arch-capabilities"), vec![]);
        // Aliases and '_' for '-' name one feature; a bare name is on; empty items go.
        let sse42 = off("host,sse4_2=off");
        assert_eq!(sse42, off("host,sse4.2=no,,"));
        assert_eq!(sse42, off("host,-sse4-2"));
        assert_eq!(sse42.len(), 1);
        assert_eq!(off("host,sse4.2=off,sse4-2"), vec![]);
        let s: CpuSpec = "host,+lahf_lm".parse().unwrap();
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn ambiguous_strings_warn_as_qemu() {
        let s: CpuSpec = "host,+avx512f,avx512f=off".parse().unwrap();
        assert_eq!(
            s.warnings,
            [
                "Ambiguous CPU model string. Don't mix both \"+avx512f\" and \"avx512f=off\"",
                "Compatibility of ambiguous CPU model strings won't be kept on future QEMU \
                 versions"
            ]
        );
        // + wins over FEATURE=.
        assert_eq!(s.model().off, vec![]);
    }

    #[test]
    fn refusals_in_qemus_words() {
        let err = |s: &str| s.parse::<CpuSpec>().unwrap_err().to_string();
        assert_eq!(err("max"), "unable to find CPU model 'max'");
        assert_eq!(err("host-foo,x=on"), "unable to find CPU model 'host-foo'");
        assert_eq!(
            err("host,foo=off"),
            "can't apply global host-x86_64-cpu.foo=off: Property 'host-x86_64-cpu.foo' not found"
        );
        assert_eq!(
            err("host,foo_bar"),
            "can't apply global host-x86_64-cpu.foo-bar=on: Property \
             'host-x86_64-cpu.foo-bar' not found"
        );
        assert_eq!(
            err("host,=on"),
            "can't apply global host-x86_64-cpu.=on: Property 'host-x86_64-cpu.' not found"
        );
        assert_eq!(err("host,+foo"), "Property 'host-x86_64-cpu.foo' not found");
        assert_eq!(err("host,-foo"), "Property 'host-x86_64-cpu.foo' not found");
        assert_eq!(
            err("host,arch-capabilities=bogus"),
            "can't apply global host-x86_64-cpu.arch-capabilities=bogus: Parameter \
             'arch-capabilities' expects 'on' or 'off'"
        );
        assert_eq!(
            err("host,migratable=bogus"),
            "can't apply global host-x86_64-cpu.migratable=bogus: Parameter 'migratable' \
             expects 'on' or 'off'"
        );
        // Properties of QEMU's that Flotilla's vCPUs lack: not theirs.
        assert_eq!(
            err("host,level=22"),
            "can't apply global host-x86_64-cpu.level=22: Property 'host-x86_64-cpu.level' \
             not found"
        );
    }

    #[test]
    fn features_on_the_host_lacks_warn_as_qemu() {
        let cpuid = GuestCpuid(vec![CpuidLeaf {
            function: 7,
            edx: 1 << 29,
            ..Default::default()
        }]);
        let s: CpuSpec = "host,arch-capabilities=on,pcommit=on,+kvmclock,sse=off"
            .parse()
            .unwrap();
        assert_eq!(
            s.unsupported(&cpuid),
            [
                "host doesn't support requested feature: CPUID.07H:EBX.pcommit [bit 22]",
                "host doesn't support requested feature: CPUID.40000001H:EAX.kvmclock [bit 0]",
                "host doesn't support requested feature: CPUID.40000001H:EAX.kvmclock [bit 3]",
            ]
        );
    }
}
