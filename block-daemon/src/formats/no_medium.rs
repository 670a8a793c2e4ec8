//! A node with no medium: what a disk serves once its drive was deleted (HMP drive_del)
//! while its device stayed. Every request fails with ENOMEDIUM, as QEMU's fail on a
//! BlockBackend without a node; the size stays what the guest was told.

use super::{Format, FormatError, Mapping};

pub struct NoMedium {
    size: u64,
}

impl NoMedium {
    pub fn new(size: u64) -> NoMedium {
        NoMedium { size }
    }
}

fn no_medium() -> FormatError {
    FormatError::Io(std::io::Error::from_raw_os_error(libc::ENOMEDIUM))
}

impl Format for NoMedium {
    fn name(&self) -> &'static str {
        "none"
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map(&self, _: u64, _: u64, _: bool) -> Result<Mapping, FormatError> {
        Err(no_medium())
    }

    fn read(&self, _: u64, _: &mut [u8]) -> Result<(), FormatError> {
        Err(no_medium())
    }

    fn write(&self, _: u64, _: &[u8]) -> Result<(), FormatError> {
        Err(no_medium())
    }

    fn flush(&self) -> Result<(), FormatError> {
        Err(no_medium())
    }

    fn discard(&self, _: u64, _: u64) -> Result<(), FormatError> {
        Err(no_medium())
    }

    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> Result<(), FormatError> {
        Err(no_medium())
    }

    fn resize(&self, _: u64) -> Result<(), FormatError> {
        Err(no_medium())
    }

    /// Nothing to leave clean.
    fn close(&self) -> Result<(), FormatError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_fails_with_no_medium() {
        let f = NoMedium::new(1 << 20);
        assert_eq!(f.virtual_size(), 1 << 20);
        let errno = |r: Result<(), FormatError>| r.unwrap_err().errno();
        assert_eq!(errno(f.read(0, &mut [0; 512])), libc::ENOMEDIUM);
        assert_eq!(errno(f.write(0, &[0; 512])), libc::ENOMEDIUM);
        assert_eq!(errno(f.flush()), libc::ENOMEDIUM);
        assert_eq!(errno(f.discard(0, 512)), libc::ENOMEDIUM);
        assert_eq!(errno(f.write_zeroes(0, 512, false)), libc::ENOMEDIUM);
        assert_eq!(f.map(0, 512, false).unwrap_err().errno(), libc::ENOMEDIUM);
        assert!(f.close().is_ok());
    }
}
