//! Kernel command line: the guest only looks at `scenario=NAME`; other words are ignored
//! (QEMU microvm, for one, appends its own).

/// The value of the first `scenario=` word, if any.
pub fn scenario(cmdline: &[u8]) -> Option<&[u8]> {
    cmdline
        .split(|b| b.is_ascii_whitespace())
        .find_map(|word| word.strip_prefix(b"scenario="))
}
