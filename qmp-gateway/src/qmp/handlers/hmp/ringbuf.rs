//! HMP `ringbuf_read`: ringbuf-read's text printed as QEMU 7.2's hmp_ringbuf_read
//! prints it (backslashes doubled, control characters as \uXXXX, up to a NUL).

use serde_json::Value;

use super::reply::{error, read_args, run_qmp};
use crate::qmp::context::Ctx;

/// HMP `ringbuf_read device size`.
pub fn ringbuf_read(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    const NAME: &str = "ringbuf_read";
    let members = match read_args(NAME, "device:s,size:i", arguments) {
        Ok(m) => m,
        Err(usage) => return usage,
    };
    match run_qmp(c, "ringbuf-read", members) {
        Ok(Value::String(data)) => printed(&data),
        Ok(_) => String::new(),
        Err(e) => error(&e),
    }
}

/// `data` as HMP prints it, with the line's end.
fn printed(data: &str) -> String {
    let mut out = String::new();
    // QEMU's loop stops at the C string's end.
    for ch in data.chars().take_while(|&ch| ch != '\0') {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' | '\t' => out.push(ch),
            ch if (ch as u32) < 0x20 || ch == '\x7f' => {
                out.push_str(&format!("\\u{:04X}", ch as u32))
            }
            ch => out.push(ch),
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::printed;

    #[test]
    fn control_characters_and_backslashes_are_escaped() {
        assert_eq!(
            printed("a\\b\tc\n\x1b[0m\x7fé\0rest"),
            "a\\\\b\tc\n\\u001B[0m\\u007Fé\n"
        );
    }
}
