//! Calls on an open file that std does not offer. Dependencies: libc.

use std::io;

use super::cvt;

/// `fallocate(2)` on an open file (`mode`: `FALLOC_FL_*`).
pub fn fallocate(f: &std::fs::File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (off, len) = match (i64::try_from(offset), i64::try_from(len)) {
        (Ok(o), Ok(l)) => (o, l),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    // SAFETY: a valid descriptor borrowed from `f`; fallocate takes no pointers.
    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) }).map(drop)
}
