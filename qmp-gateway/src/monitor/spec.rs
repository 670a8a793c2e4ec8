//! A --mon as QEMU's -mon reads it: QemuOpts with `chardev` implied, QEMU 7.2's keys
//! and its words for what is wrong.

use serde_json::Value;

use crate::keyval;

/// The keys --mon takes (cli_options.rs lists all but id, as QEMU).
pub const KEYS: &[&str] = &["mode", "chardev", "pretty", "id"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// QMP.
    Control,
    /// HMP.
    Readline,
}

/// One --mon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonSpec {
    pub chardev: String,
    pub mode: Mode,
    pub id: Option<String>,
    pub pretty: bool,
}

/// QEMU's id_wellformed: a letter, then letters, digits, '-', '.' and '_'.
fn identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

impl MonSpec {
    /// `--mon` as QEMU's -mon reads it (QemuOpts, `chardev` implied), with its words.
    pub fn from_cli(s: &str) -> Result<MonSpec, String> {
        let opts = keyval::qemu_opts(s, "chardev");
        let text = |k: &str| opts.get(k).and_then(Value::as_str).map(str::to_string);
        if let Some(k) = opts.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!("Invalid parameter '{k}'"));
        }
        let id = text("id");
        if id.as_deref().is_some_and(|i| !identifier(i)) {
            return Err("Parameter 'id' expects an identifier".into());
        }
        let pretty = match text("pretty") {
            None => false,
            Some(p) => keyval::boolean(&p)
                .ok_or_else(|| "Parameter 'pretty' expects 'on' or 'off'".to_string())?,
        };
        let mode = match text("mode").as_deref() {
            None | Some("readline") => Mode::Readline,
            Some("control") => Mode::Control,
            Some(other) => return Err(format!("Parameter 'mode' does not accept value '{other}'")),
        };
        let chardev = text("chardev").ok_or("Parameter 'chardev' is missing")?;
        if mode == Mode::Readline && pretty {
            return Err("'pretty' is not compatible with HMP monitors".into());
        }
        Ok(MonSpec {
            chardev,
            mode,
            id,
            pretty,
        })
    }

    /// The monitor's name as the chardev's frontend.
    pub(super) fn frontend(&self) -> String {
        self.id.clone().unwrap_or_else(|| "monitor".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mon_reads_as_qemus_mon() {
        assert_eq!(
            MonSpec::from_cli("chardev=c,mode=control,id=m,pretty=on"),
            Ok(MonSpec {
                chardev: "c".into(),
                mode: Mode::Control,
                id: Some("m".into()),
                pretty: true
            })
        );
        // The chardev is implied; readline is the default.
        assert_eq!(
            MonSpec::from_cli("c").map(|m| (m.chardev, m.mode)),
            Ok(("c".into(), Mode::Readline))
        );
        for (bad, why) in [
            (
                "chardev=c,mode=foo",
                "Parameter 'mode' does not accept value 'foo'",
            ),
            ("mode=control", "Parameter 'chardev' is missing"),
            ("", "Parameter 'chardev' is missing"),
            (
                "chardev=c,pretty=maybe",
                "Parameter 'pretty' expects 'on' or 'off'",
            ),
            ("chardev=c,bogus=1", "Invalid parameter 'bogus'"),
            ("chardev=c,default=on", "Invalid parameter 'default'"),
            ("chardev=c,id=", "Parameter 'id' expects an identifier"),
            ("chardev=c,id=1a", "Parameter 'id' expects an identifier"),
            (
                "chardev=c,mode=readline,pretty=on",
                "'pretty' is not compatible with HMP monitors",
            ),
        ] {
            assert_eq!(MonSpec::from_cli(bad).unwrap_err(), why, "{bad}");
        }
        assert!(MonSpec::from_cli("chardev=c,mode=readline,pretty=off").is_ok());
    }
}
