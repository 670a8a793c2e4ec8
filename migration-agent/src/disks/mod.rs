//! Block migration in the stream (QMP migrate's `blk` and `inc`): the disks' content goes
//! with memory. The source's agent reads each disk through its block daemon's disk
//! channel (`ipc::disk_channel`) and sends DISKS, DISK_DATA and DISK_ZERO records
//! (`records`): the whole disk in the first pass (or, incremental, what its top image
//! holds), then in each pass what the guest wrote since the last one, the last of it in
//! the stop-and-copy (`source`). The destination's agent checks what arrives against the
//! DISKS record and writes it through its own disks' daemons (`sink`). The format is in
//! docs/migration-stream.md.

#[cfg(test)]
mod fake;
pub mod records;
pub mod sink;
pub mod source;

/// What failed on a disk channel, said plainly.
pub fn channel_error(disk: u32, e: ipc::disk_channel::ChannelError) -> String {
    use ipc::disk_channel::ChannelError;
    let why = match e {
        ChannelError::Io(e) => match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset => {
                "its block daemon closed the disk channel".to_string()
            }
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                "its block daemon did not answer within {} s",
                CHANNEL_TIMEOUT.as_secs()
            ),
            _ => format!("the disk channel: {}", ipc::errno_text(&e)),
        },
        other => other.to_string(),
    };
    format!("block migration of disk {disk}: {why}")
}

/// How long a block daemon may take to answer on a disk channel (a take waits for the
/// guest's requests in flight, up to the daemon's 30 s quiesce).
pub const CHANNEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A disk channel from its fd, with `CHANNEL_TIMEOUT` on its reads and writes.
pub fn channel(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<ipc::disk_channel::Client<std::os::unix::net::UnixStream>> {
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_read_timeout(Some(CHANNEL_TIMEOUT))?;
    stream.set_write_timeout(Some(CHANNEL_TIMEOUT))?;
    Ok(ipc::disk_channel::Client::new(stream))
}
