//! How a device's state travels (migration, live upgrade): each device that holds state
//! the guest can see encodes its own serde struct here, and the bus that holds it keys
//! the bytes by the device's base address, which the same VM shape places identically
//! on both sides.

use serde::{de::DeserializeOwned, Serialize};

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// A device's state as bytes.
pub fn encode<T: Serialize>(state: &T) -> Vec<u8> {
    // Encoding plain structs into a Vec cannot fail.
    bincode::serde::encode_to_vec(state, config()).unwrap_or_default()
}

/// A device's state from bytes another vmm-core wrote; an error names what is wrong.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    match bincode::serde::decode_from_slice(bytes, config()) {
        Ok((state, used)) if used == bytes.len() => Ok(state),
        Ok(_) => Err(format!("{what}: trailing bytes in its state")),
        Err(e) => Err(format!("{what}: malformed state: {e}")),
    }
}
