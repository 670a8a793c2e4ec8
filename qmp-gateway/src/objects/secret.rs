//! QEMU's `secret` object: bytes given inline (data=) or read from a file (file=, read
//! by the gateway, the process that opens paths), raw or base64. libvirt passes one
//! (masterKey0) to every domain, for the secrets it would send encrypted with it; nothing
//! in Flotilla takes a secret yet (no TLS, no encrypted images), so the object is held,
//! listed and deleted, and its bytes are never shown. Encrypted secrets (keyid=, iv=)
//! are refused: Flotilla has no AES.

use std::io::Read;
use std::path::Path;

/// Most bytes a secret's file may hold (QEMU reads any; a key is a few dozen bytes).
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub id: String,
    data: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// A secret's properties as object-add and -object give them.
#[derive(Debug, Default)]
pub struct SecretProps<'a> {
    pub data: Option<&'a str>,
    pub file: Option<&'a str>,
    pub base64: bool,
    pub keyid: Option<&'a str>,
}

impl Secret {
    /// Loads the secret as QEMU's qcrypto_secret_load_data does, with its words.
    pub fn load(id: &str, p: SecretProps) -> Result<Secret, String> {
        let raw = match (p.data, p.file) {
            (Some(_), Some(_)) => return Err("'file' and 'data' are mutually exclusive".into()),
            (None, None) => return Err("Either 'file' or 'data' must be provided".into()),
            (Some(d), None) => d.as_bytes().to_vec(),
            (None, Some(f)) => read_file(Path::new(f))?,
        };
        if let Some(k) = p.keyid {
            return Err(format!(
                "Flotilla does not decrypt secrets: keyid='{k}' is not taken (give the \
                 secret itself)"
            ));
        }
        let data = if p.base64 { decode_base64(&raw)? } else { raw };
        Ok(Secret {
            id: id.to_string(),
            data,
        })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let unable = |e: std::io::Error| {
        format!(
            "Unable to read {shown}: Failed to open file “{shown}”: {}",
            ipc::errno_text(&e)
        )
    };
    let f = std::fs::File::open(path).map_err(unable)?;
    let mut data = Vec::new();
    f.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("Unable to read {shown}: {}", ipc::errno_text(&e)))?;
    if data.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!(
            "Unable to read {shown}: Flotilla takes secrets of at most {MAX_SECRET_BYTES} bytes"
        ));
    }
    Ok(data)
}

/// Base64 as QEMU's qbase64_decode takes it (glib's decoder: padding optional).
fn decode_base64(text: &[u8]) -> Result<Vec<u8>, String> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let body = text.strip_suffix(b"==").or_else(|| text.strip_suffix(b"="));
    let body = body.unwrap_or(text);
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in body {
        let v = value(c).ok_or("Base64 data contains invalid characters")?;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(p: SecretProps) -> Result<usize, String> {
        Secret::load("s", p).map(|s| s.len())
    }

    #[test]
    fn loads_as_qemu_and_refuses_in_its_words() {
        let data = |d, base64| SecretProps {
            data: Some(d),
            base64,
            ..Default::default()
        };
        assert_eq!(load(data("abc", false)), Ok(3));
        assert_eq!(
            Secret::load("s", data("aGVsbG8=", true)).unwrap().data,
            b"hello"
        );
        assert_eq!(
            Secret::load("s", data("aGVsbG8", true)).unwrap().data,
            b"hello"
        );
        assert_eq!(
            load(data("%%%", true)),
            Err("Base64 data contains invalid characters".into())
        );
        assert_eq!(
            load(SecretProps::default()),
            Err("Either 'file' or 'data' must be provided".into())
        );
        assert_eq!(
            load(SecretProps {
                data: Some("x"),
                file: Some("/etc/hostname"),
                ..Default::default()
            }),
            Err("'file' and 'data' are mutually exclusive".into())
        );
        assert_eq!(
            load(SecretProps {
                file: Some("/nonexistent"),
                ..Default::default()
            }),
            Err("Unable to read /nonexistent: Failed to open file “/nonexistent”: No such file or directory".into())
        );
        let dir = std::env::temp_dir().join(format!("flotilla-secret-{}", std::process::id()));
        std::fs::write(&dir, vec![7u8; 32]).unwrap();
        let file = SecretProps {
            file: dir.to_str(),
            ..Default::default()
        };
        assert_eq!(load(file), Ok(32));
        std::fs::write(&dir, vec![7u8; MAX_SECRET_BYTES as usize + 1]).unwrap();
        let file = SecretProps {
            file: dir.to_str(),
            ..Default::default()
        };
        assert!(load(file).unwrap_err().contains("at most 65536 bytes"));
        std::fs::remove_file(&dir).unwrap();
        assert!(load(SecretProps {
            data: Some("x"),
            keyid: Some("k"),
            ..Default::default()
        })
        .unwrap_err()
        .starts_with("Flotilla does not decrypt secrets"));
    }
}
