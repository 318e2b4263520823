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

/// Changes the attributes of the file `f` is open on, any kind of descriptor (an `O_PATH`
/// one too), in the order a path's would be: owner and group, mode, size, times (as
/// `utimensat(2)` takes them); `None` leaves one as it is. For a file with no name left:
/// `/proc/self/fd/N` reaches it through the descriptor alone.
pub fn set_file_attrs(
    f: &File,
    owner: (Option<u32>, Option<u32>),
    mode: Option<u32>,
    size: Option<u64>,
    times: Option<&[libc::timespec; 2]>,
) -> io::Result<()> {
    let p = super::c_bytes(super::fd_path(f).as_bytes())?;
    if owner.0.is_some() || owner.1.is_some() {
        // -1 leaves an id as it is.
        let id = |v: Option<u32>| v.unwrap_or(u32::MAX);
        // SAFETY: a valid descriptor and C string; fchownat takes no other pointers.
        cvt(unsafe {
            libc::fchownat(
                f.as_raw_fd(),
                c"".as_ptr(),
                id(owner.0),
                id(owner.1),
                libc::AT_EMPTY_PATH,
            )
        })?;
    }
    if let Some(m) = mode {
        chmod_fd(f, m)?;
    }
    if let Some(size) = size {
        let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: a valid C string naming the descriptor's file.
        cvt(unsafe { libc::truncate(p.as_ptr(), size) })?;
    }
    if let Some(t) = times {
        // SAFETY: a valid C string and a pointer to two timespecs.
        cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), t.as_ptr(), 0) })?;
    }
    Ok(())
}

/// Sets the permission bits of the file `fd` is open on, any kind of descriptor (an `O_PATH`
/// one too), through its `/proc/self/fd` link.
pub(super) fn chmod_fd(fd: &impl AsRawFd, mode: u32) -> io::Result<()> {
    let p = super::c_bytes(super::fd_path(fd).as_bytes())?;
    // SAFETY: a valid C string naming the descriptor's file.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode & 0o7777) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_change_through_an_o_path_descriptor_of_an_unlinked_file() {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, "hello").unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        let t = [(7, 1), (9, 2)].map(|(s, n)| libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        });
        let me = (Some(nix::unistd::getuid().as_raw()), None);
        set_file_attrs(&f, me, Some(0o640), Some(2), Some(&t)).unwrap();
        let m = f.metadata().unwrap();
        assert_eq!((m.mode() & 0o7777, m.len(), m.nlink()), (0o640, 2, 0));
        assert_eq!(
            (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec()),
            (7, 1, 9, 2)
        );
        // Nothing asked, nothing changed.
        set_file_attrs(&f, (None, None), None, None, None).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 2);
    }
}
