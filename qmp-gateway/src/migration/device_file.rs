//! xen-save-devices-state's file: the device state a migration's STATE record carries
//! (`ipc::MigratedState`: vmm-core's state and the NICs' host sides), without guest RAM,
//! behind a magic and a version, so that xen-load-devices-state names anything else for
//! what it is. (QEMU's own format, a QEMU_VM_FILE_MAGIC stream, is not read or written.)

use std::io::Read;

use ipc::{MalformedState, MigratedState};

/// The first bytes of every such file.
const MAGIC: &[u8; 8] = b"FLOTDEV\n";
/// The layout after the magic: a `u32` (little-endian) version, then the state.
const VERSION: u32 = 1;
const HEADER: usize = MAGIC.len() + 4;
/// A file larger than this cannot hold a state (MigratedState's own bound is 16 MiB):
/// the reader stops there rather than take whatever a path gives it.
const MAX_STATE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DeviceFileError {
    #[error("reading it: {0}")]
    Read(String),
    #[error("it is not a Flotilla device state (one written by xen-save-devices-state)")]
    Magic,
    #[error("it is a device state of version {0}; this gateway reads version {VERSION}")]
    Version(u32),
    #[error("it is larger than a device state can be ({MAX_STATE} bytes)")]
    TooLarge,
    #[error(transparent)]
    Malformed(#[from] MalformedState),
}

/// The file's bytes for `state`.
pub fn encode(state: &MigratedState) -> Result<Vec<u8>, MalformedState> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&state.encode()?);
    Ok(out)
}

/// The state in a file (anyone's: checked and bounded).
pub fn read(file: &mut impl Read) -> Result<MigratedState, DeviceFileError> {
    let mut bytes = Vec::new();
    let limit = HEADER as u64 + MAX_STATE + 1;
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| DeviceFileError::Read(ipc::errno_text(&e)))?;
    if bytes.len() as u64 == limit {
        return Err(DeviceFileError::TooLarge);
    }
    if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
        return Err(DeviceFileError::Magic);
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[MAGIC.len()..HEADER]);
    match u32::from_le_bytes(version) {
        VERSION => Ok(MigratedState::decode(&bytes[HEADER..])?),
        other => Err(DeviceFileError::Version(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> MigratedState {
        MigratedState {
            vmm: vec![1, 2, 3],
            nics: Vec::new(),
        }
    }

    #[test]
    fn a_state_reads_back() {
        let bytes = encode(&state()).expect("encode");
        assert_eq!(&bytes[..8], b"FLOTDEV\n");
        let back = read(&mut bytes.as_slice()).expect("read");
        assert_eq!(back.vmm, vec![1, 2, 3]);
    }

    #[test]
    fn other_files_are_named_for_what_they_are() {
        let err = |bytes: &[u8]| read(&mut &bytes[..]).expect_err("read").to_string();
        // QEMU's xen-save-devices-state file, an empty one, a short one.
        assert!(err(b"QEVM\0\0\0\x03\x04\0\0\0").contains("not a Flotilla device state"));
        assert!(err(b"").contains("not a Flotilla device state"));
        assert!(err(b"FLOTDEV\n\x01").contains("not a Flotilla device state"));
        let mut bytes = encode(&state()).expect("encode");
        bytes[8] = 9;
        assert_eq!(
            err(&bytes),
            "it is a device state of version 9; this gateway reads version 1"
        );
        let mut bytes = encode(&state()).expect("encode");
        bytes.truncate(bytes.len() - 1);
        assert!(err(&bytes).starts_with("the migrated state is malformed"));
        let mut huge = encode(&state()).expect("encode");
        huge.resize(HEADER + (16 << 20) + 1, 0);
        assert_eq!(
            err(&huge),
            "it is larger than a device state can be (16777216 bytes)"
        );
    }
}
