//! QMP's pretty form (a monitor's pretty=on): QEMU 7.2's JSON writer with indentation,
//! four spaces a level, an empty object or array still split over two lines, and every
//! line ending in CR LF as the monitor writes them.

use serde_json::Value;

/// `line`, one compact JSON message, in the pretty form (unchanged if it is no JSON).
pub fn pretty_line(line: &[u8]) -> Vec<u8> {
    let Ok(value) = serde_json::from_slice::<Value>(line) else {
        return line.to_vec();
    };
    let mut out = String::new();
    write(&value, 0, &mut out);
    out.push('\n');
    out.replace('\n', "\r\n").into_bytes()
}

fn newline(depth: usize, out: &mut String) {
    out.push('\n');
    out.extend(std::iter::repeat_n(' ', 4 * depth));
}

fn write(value: &Value, depth: usize, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(depth + 1, out);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write(v, depth + 1, out);
            }
            newline(depth, out);
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(depth + 1, out);
                write(v, depth + 1, out);
            }
            newline(depth, out);
            out.push(']');
        }
        leaf => out.push_str(&leaf.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_is_qemus() {
        // Bytes QEMU 7.2 wrote with -mon ...,mode=control,pretty=on.
        assert_eq!(
            String::from_utf8(pretty_line(b"{\"return\":{}}\r\n")).unwrap(),
            "{\r\n    \"return\": {\r\n    }\r\n}\r\n"
        );
        assert_eq!(
            String::from_utf8(pretty_line(
                br#"{"return":{"running":false,"singlestep":false,"status":"prelaunch"}}"#
            ))
            .unwrap(),
            "{\r\n    \"return\": {\r\n        \"running\": false,\r\n        \"singlestep\": \
             false,\r\n        \"status\": \"prelaunch\"\r\n    }\r\n}\r\n"
        );
        assert_eq!(
            String::from_utf8(pretty_line(br#"{"return":[{"name":"a"}]}"#)).unwrap(),
            "{\r\n    \"return\": [\r\n        {\r\n            \"name\": \"a\"\r\n        }\r\n    ]\r\n}\r\n"
        );
    }
}
