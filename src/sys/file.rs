//! Calls on an open file that std does not offer. Dependencies: libc.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use super::{cvt, cvt_size};

/// `fallocate(2)` on an open file (`mode`: `FALLOC_FL_*`).
pub fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (off, len) = match (i64::try_from(offset), i64::try_from(len)) {
        (Ok(o), Ok(l)) => (o, l),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    // SAFETY: a valid descriptor borrowed from `f`; fallocate takes no pointers.
    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) }).map(drop)
}

/// `copy_file_range(2)` of up to `len` bytes from `src` at `src_off` to `dst` at `dst_off`,
/// leaving both files' positions alone; how many were copied (0 at the end of `src`).
pub fn copy_file_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: usize,
) -> io::Result<usize> {
    let (mut s, mut d) = match (i64::try_from(src_off), i64::try_from(dst_off)) {
        (Ok(s), Ok(d)) => (s, d),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    // SAFETY: valid descriptors borrowed from `src` and `dst`; the offset pointers point to
    // live locals the call only reads and updates.
    cvt_size(unsafe {
        libc::copy_file_range(src.as_raw_fd(), &mut s, dst.as_raw_fd(), &mut d, len, 0)
    })
}

/// Starts writeback of `len` bytes of `f` at `offset` without waiting for it
/// (`sync_file_range(2)` with `SYNC_FILE_RANGE_WRITE`); no durability by itself.
pub fn start_writeback(f: &File, offset: u64, len: u64) -> io::Result<()> {
    let (off, len) = match (i64::try_from(offset), i64::try_from(len)) {
        (Ok(o), Ok(l)) => (o, l),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let flags = libc::SYNC_FILE_RANGE_WRITE;
    // SAFETY: a valid descriptor borrowed from `f`; sync_file_range takes no pointers.
    cvt(unsafe { libc::sync_file_range(f.as_raw_fd(), off, len, flags) }).map(drop)
}
